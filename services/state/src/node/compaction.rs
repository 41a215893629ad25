//! When a state node snapshots its state and compacts its log.
//!
//! openraft's own policy snapshots every N entries. A snapshot is the whole state, so at a million runs
//! (715 MiB, 2.4 s to encode; bench/RESULTS.md, `state-scale`) a snapshot every 5,000 small entries
//! would write the state over and over for a little log. Here a node snapshots once both hold:
//! at least N entries were applied since the last snapshot, and the log appended since then has grown
//! to a quarter of the last snapshot's size. Small states snapshot every N entries as before; large
//! ones write at most four bytes of snapshot per byte of log, and a restart replays about a quarter of
//! the snapshot's size in log after it at most (the log on disk after the snapshot counts at open).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::{LogId, Raft};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::LogGrowth;
use crate::types::{NodeId, TypeConfig};

/// The log since the last snapshot must reach this fraction of the snapshot's size (1/`LOG_SHARE`).
const LOG_SHARE: u64 = 4;

/// Whether a node that applied `entries` and appended `log_bytes` since its last snapshot, of
/// `snapshot_bytes`, takes the next one.
pub(crate) fn due(entries: u64, log_bytes: u64, snapshot_bytes: u64, every: u64) -> bool {
    entries >= every && log_bytes.saturating_mul(LOG_SHARE) >= snapshot_bytes
}

/// What the compaction loop watches.
pub(crate) struct Watched {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) applied_index: watch::Receiver<u64>,
    pub(crate) snapshot_stored: watch::Receiver<Option<LogId<NodeId>>>,
    pub(crate) growth: Arc<LogGrowth>,
    pub(crate) every: u64,
}

/// Asks raft for a snapshot whenever one is [`due`], until `stop`. A request that produced no stored
/// snapshot (a failed build) is asked again after another `every` entries.
pub(crate) async fn keep_compacting(watched: Watched, stop: CancellationToken) {
    let Watched {
        raft,
        mut applied_index,
        mut snapshot_stored,
        growth,
        every,
    } = watched;
    // Where the log stood at the last stored snapshot: its last index and the bytes appended by then.
    let mut base = (
        snapshot_index(&snapshot_stored),
        growth.appended.load(Ordering::Relaxed),
    );
    let mut requested_at: Option<u64> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = applied_index.changed() => if changed.is_err() { return },
            changed = snapshot_stored.changed() => {
                if changed.is_err() {
                    return;
                }
                base = (snapshot_index(&snapshot_stored), growth.appended.load(Ordering::Relaxed));
                requested_at = None;
                continue;
            }
        }
        let applied = *applied_index.borrow_and_update();
        let entries = applied.saturating_sub(base.0);
        let log_bytes = growth.appended.load(Ordering::Relaxed).saturating_sub(base.1);
        let snapshot_bytes = growth.snapshot_bytes.load(Ordering::Relaxed);
        let waiting = requested_at.is_some_and(|at| applied < at.saturating_add(every));
        if !waiting && due(entries, log_bytes, snapshot_bytes, every) {
            tracing::debug!(entries, log_bytes, snapshot_bytes, "asking for a snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            requested_at = Some(applied);
        }
    }
}

fn snapshot_index(stored: &watch::Receiver<Option<LogId<NodeId>>>) -> u64 {
    stored.borrow().map_or(0, |l| l.index)
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn a_small_state_snapshots_every_n_entries_and_a_large_one_once_its_log_is_a_quarter_of_it() {
        // A small state: N entries are enough.
        assert!(!due(4_999, 2_000_000, 100_000, 5_000));
        assert!(due(5_000, 1_500_000, 100_000, 5_000));
        // A large one: N entries are not, until the log reaches a quarter of the snapshot.
        assert!(!due(5_000, 1_500_000, 715 << 20, 5_000));
        assert!(!due(600_000, (715 << 20) / 4 - 1, 715 << 20, 5_000));
        assert!(due(600_000, (715 << 20) / 4, 715 << 20, 5_000));
        // No snapshot yet: N entries.
        assert!(due(5_000, 0, 0, 5_000));
    }
}
