# Gofer's everyday commands (https://just.systems; `pip install rust-just`).

# Every test: unit, storage suite, end to end against Docker, tidy checks.
test:
    cargo test

# The quick start: build, start goferd dev, run the example pipeline, stop.
demo:
    cargo demo

# Lints: protos (buf STANDARD), formatting, clippy.
lint:
    buf lint
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# StartRun-to-finished latency against raw Docker; writes bench/RESULTS.md.
bench:
    cargo run --release -p gofer-bench --bin dispatch-latency

# What CI runs.
ci:
    bash .ci/run
