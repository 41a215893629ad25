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

# Cron fire skew at 1, 100 and 1,000 subscriptions; writes bench/RESULTS.md.
bench-fire-skew:
    cargo run --release -p gofer-bench --bin fire-skew

# Replicated writes and failover against a three-member etcd (apt-get install etcd-server etcd-client).
bench-raft:
    cargo run --release -p gofer-bench --bin raft-write
