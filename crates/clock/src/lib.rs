//! The wall clock of Gofer's services: [`Clock`], a cheap handle that reads Unix milliseconds from the
//! system ([`Clock::system`], what `goferd` runs on) or from a [`ManualClock`] a test sets and advances
//! ([`Clock::manual`]).
//!
//! Services stamp commands, reports and leases with [`Clock::now_millis`] and never read `SystemTime`
//! themselves, so a test can move time forward without waiting for it (`tests/tidy` checks). Durations
//! that only time a wait stay on tokio's clock (`tokio::time::{sleep, interval, Instant}`), which a test
//! pauses instead. A loop that sleeps until a wall-clock instant also waits on [`Clock::changes`], so that
//! moving a manual clock wakes it at once; the system clock never reports a change.
//!
//! This crate decides nothing: it has no notion of leases, schedules or timeouts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// The wall clock a service reads. Clones share the source.
#[derive(Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Clone)]
enum Source {
    System,
    Manual(Arc<watch::Sender<i64>>),
}

impl Clock {
    /// The system's wall clock: what every process but a test runs on.
    pub fn system() -> Clock {
        Clock { source: Source::System }
    }

    /// A clock that reads `start_millis` until the returned [`ManualClock`] sets or advances it.
    pub fn manual(start_millis: i64) -> (Clock, ManualClock) {
        let (time, _) = watch::channel(start_millis);
        let time = Arc::new(time);
        let clock = Clock {
            source: Source::Manual(time.clone()),
        };
        (clock, ManualClock { time })
    }

    /// Milliseconds since the Unix epoch: the time stamped into commands and reports.
    pub fn now_millis(&self) -> i64 {
        match &self.source {
            Source::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Source::Manual(time) => *time.borrow(),
        }
    }

    /// A receiver of this clock's jumps: a manual clock's every move, and nothing for the system clock.
    pub fn changes(&self) -> Changes {
        Changes {
            time: match &self.source {
                Source::System => None,
                Source::Manual(time) => Some(time.subscribe()),
            },
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::System => f.write_str("Clock::system"),
            Source::Manual(time) => write!(f, "Clock::manual({})", *time.borrow()),
        }
    }
}

/// Tells a loop that its [`Clock`] was moved, so it recomputes what it sleeps until.
pub struct Changes {
    time: Option<watch::Receiver<i64>>,
}

impl Changes {
    /// Completes once the clock was moved since this receiver was made or last completed; never for the
    /// system clock, nor once the manual clock is dropped.
    pub async fn changed(&mut self) {
        let moved = match &mut self.time {
            Some(time) => time.changed().await.is_ok(),
            None => false,
        };
        if !moved {
            std::future::pending::<()>().await;
        }
    }
}

/// The hand on a manual [`Clock`]: a test sets and advances the time every clone of the clock reads.
#[derive(Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// The time the clock reads, in Unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        *self.time.borrow()
    }

    /// Sets the time, forward or back, and wakes every loop waiting on the clock's changes.
    pub fn set(&self, millis: i64) {
        self.time.send_replace(millis);
    }

    /// Moves the time forward by `by` and wakes every loop waiting on the clock's changes; returns the new
    /// time.
    pub fn advance(&self, by: Duration) -> i64 {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let mut now = 0;
        self.time.send_modify(|time| {
            *time = time.saturating_add(by);
            now = *time;
        });
        now
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManualClock({})", self.now_millis())
    }
}

#[cfg(test)]
mod tests;
