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

/// The nearest-rank `percent`th percentile of `sorted` (not empty, ascending): a latency actually seen.
pub fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() * percent).div_ceil(100).max(1) - 1]
}

/// Now as Unix milliseconds, by this machine's clock.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A duration in milliseconds with one decimal, the unit every table here uses.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The fires among `runs` scheduled from `first` to `last` (Unix milliseconds): how many runs each
/// (subscription, instant) made, and each run's skew (scheduled instant to run created).
pub fn fire_skews(
    runs: &[gofer_proto::v1::Run],
    first: i64,
    last: i64,
) -> (std::collections::BTreeMap<(String, i64), usize>, Vec<Duration>) {
    let mut per_fire = std::collections::BTreeMap::new();
    let mut skews = Vec::new();
    for run in runs {
        let Some(trigger) = &run.trigger else { continue };
        let instant = trigger.scheduled_unix_millis;
        if instant < first || instant > last {
            continue;
        }
        *per_fire.entry((trigger.subscription.clone(), instant)).or_default() += 1;
        skews.push(Duration::from_millis((run.created_unix_millis - instant).max(0) as u64));
    }
    (per_fire, skews)
}
