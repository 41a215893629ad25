//! Gofer's end-to-end test crate. The tests live in `e2e/` (one binary, `cargo test -p gofer-e2e`) and use
//! `gofer-testkit` to start real `goferd dev` processes against real Docker; this library is empty.
