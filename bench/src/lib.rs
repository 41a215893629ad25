//! What Gofer's benchmarks share: summarising samples (median, p95, mean) and keeping `bench/RESULTS.md`,
//! where each benchmark owns one `## <name>` section and replaces only that.
//!
//! It holds no measurement of its own; the binaries in `src/` measure, with the shared gRPC client and
//! machine description here.

mod client;
pub mod cluster;
mod machine;
mod results;
mod stats;

pub use client::{Api, ClientConfig, all_runs, connect};
pub use machine::Machine;
pub use results::{publish, record, replace_section, utc_timestamp};
pub use stats::{Summary, fire_skews, millis, now_millis, percentile};
