//! openraft's log storage: entries in the write-ahead log ([`super::wal`]), held in memory as well, and
//! the vote, committed and purged log ids in the redb file.
//!
//! "Acknowledged means durable": `append` reports the entries flushed only after the log file holding
//! them was synced. The committed log id is the one record written without fsync, and off raft's path
//! (see [`RaftLogStore::save_committed`]). This file refuses to look inside entries: it stores and returns
//! them as openraft gave them.
//!
//! Appends are written by one writer thread, in order, so `append` returns as soon as the entries are queued
//! and readable (every entry of the log is kept in memory; a snapshot purges the old ones); appends that
//! queue up during a sync share the next one. Truncate, purge and the vote wait for the queue to drain.
//! That is what the patched openraft (`vendor/openraft/PATCHED.md`) needs: a leader replicates the entries
//! while they are being synced here and counts itself towards a quorum only once the callback reports them
//! flushed; a follower waits for the callback before it answers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::Durability;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::wal::Wal;
use super::{COMMITTED_KEY, LAST_PURGED_KEY, RedbFile, VOTE_KEY, blocking};
use crate::types::{NodeId, TypeConfig};

/// The raft log store. Cloning it is cheap; clones are the log readers openraft hands to replication.
#[derive(Clone)]
pub(crate) struct RaftLogStore {
    file: Arc<RedbFile>,
    wal: Arc<Mutex<Wal>>,
    log: Arc<Mutex<Log>>,
    writer: mpsc::Sender<Write>,
    gate: SyncGate,
    synced: Arc<Synced>,
    /// The latest committed log id raft gave this process, and the thread that records it in redb.
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    committed_saver: mpsc::Sender<Option<LogId<NodeId>>>,
    /// The thread that deletes purged segments and frees purged entries.
    purger: mpsc::Sender<Purged>,
    /// Whether a purge waits for a stored snapshot that holds what it purges (always, but for
    /// openraft's storage suite, which purges logs with no snapshot).
    pub(super) purge_waits_for_snapshot: bool,
}

/// What a purge leaves for the purger thread: the segments to delete and the entries to free.
struct Purged {
    segments: super::wal::Detached,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// How long a purge waits for the snapshot that holds what it purges.
const SNAPSHOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The log as raft sees it: every entry after the purged ones, those still being synced included.
pub(crate) struct Log {
    pub(crate) entries: BTreeMap<u64, Entry<TypeConfig>>,
    pub(crate) purged: Option<LogId<NodeId>>,
}

/// The last log index the writer has synced, for the committed id's recorder: a leader now commits
/// entries its followers synced before it synced them itself, and a committed id recorded beyond what
/// this node's log holds would stop it from starting after a crash (raft replays up to it).
#[derive(Default)]
struct Synced {
    /// The index, and whether the writer has stopped.
    state: Mutex<(u64, bool)>,
    changed: std::sync::Condvar,
}

impl Synced {
    fn update(&self, f: impl FnOnce(&mut (u64, bool))) {
        f(&mut self.state.lock().expect("synced lock"));
        self.changed.notify_all();
    }

    /// Waits until `index` is synced; false if the writer stopped first.
    fn wait_for(&self, index: u64) -> bool {
        let state = self.state.lock().expect("synced lock");
        let state = self
            .changed
            .wait_while(state, |(synced, stopped)| *synced < index && !*stopped)
            .expect("synced lock");
        state.0 >= index
    }
}

/// Where the test harness can hold back or lose log writes (see `Faults::hold_log_syncs`). Every member
/// node has one; in production its `Faults` are empty, and a batch costs one uncontended read lock, as
/// each raft message's `Faults::is_cut` does.
#[derive(Clone, Default)]
struct SyncGate(Arc<std::sync::OnceLock<(crate::Faults, NodeId)>>);

impl SyncGate {
    /// Returns once the harness does not hold this node's writes: whether they may go to disk (false
    /// when the harness has them lost).
    fn wait(&self) -> bool {
        let Some((faults, id)) = self.0.get() else { return true };
        loop {
            match faults.log_sync_fault(*id) {
                None => return true,
                Some(crate::network::LogSyncFault::Lost) => return false,
                Some(crate::network::LogSyncFault::Held) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }
}

/// What the writer thread does, in the order it was asked.
enum Write {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answered once every write queued before it is done.
    Drained(oneshot::Sender<()>),
}

impl RaftLogStore {
    /// A store over `wal` (already opened and holding `log`), with its writer thread, which ends when
    /// the last clone is dropped.
    pub(super) fn new(file: Arc<RedbFile>, wal: Wal, log: Log) -> io::Result<Self> {
        let on_disk = log.entries.keys().next_back().copied().or(log.purged.map(|p| p.index));
        let synced = Arc::new(Synced::default());
        synced.update(|s| s.0 = on_disk.unwrap_or(0));
        let (writer, queue) = mpsc::channel();
        let wal = Arc::new(Mutex::new(wal));
        let (held, wal_for_writer) = (file.clone(), wal.clone());
        let gate = SyncGate::default();
        // A thread of its own rather than a task that hands each batch to the blocking pool: a write
        // waits on two fewer thread hand-offs, and it is on the path of every acknowledged write twice.
        std::thread::Builder::new().name("gofer-raft-log".into()).spawn({
            let (gate, reported) = (gate.clone(), synced.clone());
            move || {
                write_loop(&held, &wal_for_writer, &queue, &gate, &reported);
                reported.update(|s| s.1 = true);
            }
        })?;
        let (committed_saver, commits) = mpsc::channel();
        let held = file.clone();
        std::thread::Builder::new().name("gofer-raft-commit".into()).spawn({
            let synced = synced.clone();
            move || save_committed_loop(&held, &commits, &synced)
        })?;
        let (purger, purged) = mpsc::channel::<Purged>();
        // It holds the file too, so the store counts as closed only once its last deletion is done.
        let held = file.clone();
        std::thread::Builder::new()
            .name("gofer-raft-purge".into())
            .spawn(move || {
                let _held = held;
                for Purged { segments, entries } in purged {
                    drop(entries);
                    if let Err(error) = segments.remove() {
                        tracing::warn!(%error, "deleting purged log segments; the next start finishes it");
                    }
                }
            })?;
        Ok(RaftLogStore {
            file,
            wal,
            purger,
            log: Arc::new(Mutex::new(log)),
            writer,
            gate,
            synced,
            committed: Arc::new(Mutex::new(None)),
            committed_saver,
            purge_waits_for_snapshot: true,
        })
    }

    /// Lets the test harness's `faults` hold back this node's (`id`'s) log writes.
    pub(crate) fn gate_with(&self, faults: crate::Faults, id: NodeId) {
        let _ = self.gate.0.set((faults, id));
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().expect("raft log lock")
    }

    /// Waits until every queued append is synced (or failed).
    async fn drained(&self) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Write::Drained(tx))
            .map_err(|_| AnyError::error("the log writer stopped"))?;
        rx.await.map_err(|_| AnyError::error("the log writer stopped"))
    }

    /// Runs `work` on the log file, on the blocking pool.
    async fn with_wal(&self, work: impl FnOnce(&mut Wal) -> io::Result<()> + Send + 'static) -> Result<(), AnyError> {
        let wal = self.wal.clone();
        blocking(move || work(&mut wal.lock().expect("raft log file lock"))).await
    }

    /// Whether the redb file holds no log entries (for tests: the log lives in its own file).
    #[cfg(test)]
    pub(crate) async fn file_log_is_empty(&self) -> bool {
        let file = self.file.clone();
        blocking(move || file.log_rows().map(|rows| rows.is_empty()))
            .await
            .unwrap()
    }

    async fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        error: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let file = self.file.clone();
        let Some(bytes) = blocking(move || file.meta(key)).await.map_err(error)? else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::from_slice(&bytes).map_err(|e| error(AnyError::new(&e)))?,
        ))
    }
}

/// Turns a range of log indexes into `first..=last`, or `None` when it holds no index.
fn inclusive(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let first = match range.start_bound() {
        Bound::Included(&first) => first,
        Bound::Excluded(&before) => before.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&last) => last,
        Bound::Excluded(&after) => after.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

/// Syncs queued appends in order, each batch of those waiting with one write and one sync, then tells
/// raft they are flushed. Holds the redb file only so that it stays open while appends are in flight.
/// Ends once every sender is gone.
fn write_loop(
    _file: &Arc<RedbFile>,
    wal: &Mutex<Wal>,
    queue: &mpsc::Receiver<Write>,
    gate: &SyncGate,
    synced: &Synced,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let mut rows = Vec::new();
        let mut callbacks = Vec::new();
        let mut drained = Vec::new();
        for write in batch {
            match write {
                Write::Append { rows: more, callback } => {
                    rows.extend(more);
                    callbacks.push(callback);
                }
                Write::Drained(tx) => drained.push(tx),
            }
        }
        if !rows.is_empty() {
            let result = if gate.wait() {
                wal.lock().expect("raft log file lock").append(&rows)
            } else {
                Err(io::Error::other("lost by the test harness"))
            };
            if let (Ok(()), Some((last, _))) = (&result, rows.last()) {
                synced.update(|s| s.0 = s.0.max(*last));
            }
            // The sync returned, so the entries are on disk: only now may raft count them.
            for callback in callbacks {
                let outcome = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                callback.log_io_completed(outcome);
            }
        }
        for tx in drained {
            let _ = tx.send(());
        }
    }
}

/// Writes the latest committed log id handed over to redb (without fsync), skipping those a newer one
/// replaced while the last was written. Ends once every sender is gone, after writing what was queued.
fn save_committed_loop(file: &RedbFile, commits: &mpsc::Receiver<Option<LogId<NodeId>>>, synced: &Synced) {
    while let Ok(mut committed) = commits.recv() {
        if let Some(newest) = commits.try_iter().last() {
            committed = newest;
        }
        // Never beyond what this node's own log has synced.
        if let Some(id) = committed
            && !synced.wait_for(id.index)
        {
            return;
        }
        let written = serde_json::to_vec(&committed)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                file.put_meta(COMMITTED_KEY, &bytes, Durability::None)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            // Only startup reads it, and a missing or older id there is safe (see `save_committed`).
            tracing::warn!(error = %e, "recording the committed log id failed");
        }
    }
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let Some((first, last)) = inclusive(&range) else {
            return Ok(Vec::new());
        };
        Ok(self.log().entries.range(first..=last).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.log();
        let last_log_id = log.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: log.purged,
            // Everything was purged (or nothing was ever written): the last log id is the purged one.
            last_log_id: last_log_id.or(log.purged),
        })
    }

    async fn get_log_reader(&mut self) -> RaftLogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.drained().await.map_err(StorageIOError::write_vote)?;
        let file = self.file.clone();
        blocking(move || file.put_meta(VOTE_KEY, &bytes, Durability::Immediate))
            .await
            .map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY, StorageIOError::read_vote).await
    }

    /// Records the committed log id, neither synced nor waited for.
    ///
    /// raft calls this each time the commit index moves and applies the entries only once it returns,
    /// so it is on the path of every write: it hands the id to a thread that writes the latest one to
    /// redb (without fsync), and returns. Losing it is safe: a committed id that is behind after a crash
    /// only means fewer entries are re-applied at startup; the rest are applied once the leader commits
    /// an entry of its new term.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        *self.committed.lock().expect("committed lock") = committed;
        self.committed_saver
            .send(committed)
            .map_err(|_| StorageIOError::write(AnyError::error("the committed id writer stopped")))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(committed) = *self.committed.lock().expect("committed lock") {
            return Ok(Some(committed));
        }
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY, StorageIOError::read)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut queued = Vec::new();
        let rows = entries
            .into_iter()
            .map(|entry| {
                let bytes = serde_json::to_vec(&entry)
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
                let index = entry.log_id.index;
                queued.push(entry);
                Ok((index, bytes))
            })
            .collect::<Result<Vec<_>, StorageIOError<NodeId>>>()?;
        let bytes: usize = rows.iter().map(|(_, row)| row.len()).sum();
        self.file
            .growth
            .appended
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        // Readable at once; synced (and reported so) by the writer.
        self.log()
            .entries
            .extend(queued.into_iter().map(|e| (e.log_id.index, e)));
        self.writer
            .send(Write::Append { rows, callback })
            .map_err(|_| StorageIOError::write_logs(AnyError::error("the log writer stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.drained().await.map_err(StorageIOError::write_logs)?;
        self.with_wal(move |wal| wal.truncate(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        self.log().entries.split_off(&log_id.index);
        self.synced.update(|s| s.0 = s.0.min(log_id.index.saturating_sub(1)));
        Ok(())
    }

    /// Records `log_id` as purged (durably, first: a crash after it leaves segments that opening skips
    /// and deletes), then deletes the segments that hold nothing after it.
    ///
    /// raft purges only what a snapshot holds, but a follower installing the leader's snapshot is told
    /// to purge while its state machine may still be storing that snapshot; a crash in between would
    /// leave neither the entries nor the snapshot holding them. So the purge first waits for a stored
    /// snapshot that reaches `log_id`.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        if self.purge_waits_for_snapshot {
            let mut stored = self.file.snapshot_stored.subscribe();
            let covered = tokio::time::timeout(SNAPSHOT_PATIENCE, stored.wait_for(|s| *s >= Some(log_id))).await;
            if !matches!(covered, Ok(Ok(_))) {
                return Err(StorageIOError::write_logs(AnyError::error(format!(
                    "no snapshot reaching {log_id} was stored within {SNAPSHOT_PATIENCE:?}; the log up to it is kept"
                )))
                .into());
            }
        }
        self.drained().await.map_err(StorageIOError::write_logs)?;
        let file = self.file.clone();
        blocking(move || file.put_meta(LAST_PURGED_KEY, &bytes, Durability::Immediate))
            .await
            .map_err(StorageIOError::write_logs)?;
        let wal = self.wal.clone();
        let segments =
            blocking(move || Ok::<_, io::Error>(wal.lock().expect("raft log file lock").detach_purged(log_id.index)))
                .await
                .map_err(StorageIOError::write_logs)?;
        let entries = {
            let mut log = self.log();
            let kept = log.entries.split_off(&(log_id.index + 1));
            log.purged = Some(log_id);
            std::mem::replace(&mut log.entries, kept)
        };
        // Deleting the segments and freeing the entries take a while on a large log, and raft's core
        // waits for a purge: the purger thread does both, off its path and off the writer's lock.
        if let Err(mpsc::SendError(left)) = self.purger.send(Purged { segments, entries }) {
            drop(left);
            tracing::warn!("the log purger stopped; purged segments stay until the next start");
        }
        Ok(())
    }
}
