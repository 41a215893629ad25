//! What Gofer's benchmarks share: summarising samples (median, p95, mean) and keeping `bench/RESULTS.md`,
//! where each benchmark owns one `## <name>` section and replaces only that.
//!
//! It holds no measurement of its own and touches neither Docker nor goferd; the binaries in `src/` do.

mod results;
mod stats;

pub use results::{replace_section, utc_timestamp};
pub use stats::{Summary, millis};
