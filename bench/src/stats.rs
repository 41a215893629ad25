//! Summaries of latency samples. Percentiles use the nearest-rank method, so every reported figure is
//! a latency that was actually observed (except the median of an even count, the mean of the middle two).

use std::time::Duration;

#[cfg(test)]
mod tests;

/// The count, median, 95th percentile and mean of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub median: Duration,
    pub p95: Duration,
    pub mean: Duration,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let count = sorted.len();
        let median = if count % 2 == 1 {
            sorted[count / 2]
        } else {
            (sorted[count / 2 - 1] + sorted[count / 2]) / 2
        };
        // Nearest rank: the smallest sample with at least 95 % of the samples at or below it.
        let rank = (count * 95).div_ceil(100).max(1);
        let p95 = sorted[rank - 1];
        let total: Duration = sorted.iter().sum();
        let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
        Some(Summary {
            count,
            median,
            p95,
            mean,
        })
    }
}

/// A duration in milliseconds with one decimal, the unit every table here uses.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
