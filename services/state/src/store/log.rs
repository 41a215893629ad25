//! openraft's log storage on the redb file: entries, vote, committed and purged log ids.
//!
//! "Acknowledged means durable": `append` reports the entries flushed only after the redb transaction
//! that holds them committed, and redb's commit fsyncs before it returns. The committed log id is the one
//! record written without fsync (see [`RaftLogStore::save_committed`]). This file refuses to look inside
//! entries: it stores and returns them as openraft gave them.
//!
//! Appends are written by one writer task, in order, so `append` returns as soon as the entries are queued
//! and readable (from `pending`) and raft goes on while they are fsynced: a leader replicates entries to
//! its followers while it flushes them itself, instead of one fsync after the other, and appends that
//! queue up during an fsync share the next one. Truncate, purge and the vote wait for the queue to drain.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::Durability;
use tokio::sync::{mpsc, oneshot};

use super::{COMMITTED_KEY, RedbFile, VOTE_KEY, blocking};
use crate::types::{NodeId, TypeConfig};

/// The raft log store. Cloning it is cheap; clones are the log readers openraft hands to replication.
#[derive(Clone)]
pub(crate) struct RaftLogStore {
    file: Arc<RedbFile>,
    /// Entries queued for the writer and not yet committed, by index.
    pending: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    writer: mpsc::UnboundedSender<Write>,
}

/// What the writer task does, in the order it was asked.
enum Write {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answered once every write queued before it is done.
    Drained(oneshot::Sender<()>),
}

impl RaftLogStore {
    /// A store on `file`, with its writer task (which ends when the last clone is dropped).
    pub(super) fn new(file: Arc<RedbFile>) -> Self {
        let (writer, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        tokio::spawn(write_loop(file.clone(), pending.clone(), queue));
        RaftLogStore { file, pending, writer }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry<TypeConfig>>> {
        self.pending.lock().expect("pending entries lock")
    }

    /// Waits until every queued append is committed (or failed).
    async fn drained(&self) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Write::Drained(tx))
            .map_err(|_| AnyError::error("the log writer stopped"))?;
        rx.await.map_err(|_| AnyError::error("the log writer stopped"))
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

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    serde_json::from_slice(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

/// Commits queued appends in order, each batch of those waiting in one transaction (one fsync), then tells
/// raft they are flushed.
async fn write_loop(
    file: Arc<RedbFile>,
    pending: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    mut queue: mpsc::UnboundedReceiver<Write>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
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
            let indexes: Vec<u64> = rows.iter().map(|(index, _)| *index).collect();
            let target = file.clone();
            let result = blocking(move || target.append(&rows)).await;
            {
                let mut pending = pending.lock().expect("pending entries lock");
                for index in indexes {
                    pending.remove(&index);
                }
            }
            // The transaction committed, so the entries are on disk: only now may raft count them.
            for callback in callbacks {
                let outcome = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                callback.log_io_completed(outcome);
            }
        }
        for tx in drained {
            let _ = tx.send(());
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
        // Pending entries first: one committed meanwhile leaves `pending` after it is readable from redb.
        let queued: Vec<Entry<TypeConfig>> = self.pending().range(first..=last).map(|(_, e)| e.clone()).collect();
        let file = self.file.clone();
        let rows = blocking(move || file.log_range(first, last))
            .await
            .map_err(StorageIOError::read_logs)?;
        let mut entries = BTreeMap::new();
        for row in rows {
            let entry = decode_entry(&row)?;
            entries.insert(entry.log_id.index, entry);
        }
        for entry in queued {
            entries.insert(entry.log_id.index, entry);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let queued_last = self.pending().values().next_back().map(|e| e.log_id);
        let file = self.file.clone();
        let stored = blocking(move || file.log_state())
            .await
            .map_err(StorageIOError::read_logs)?;
        let last_purged_log_id: Option<LogId<NodeId>> = match stored.last_purged {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?,
            None => None,
        };
        let last_log_id = match stored.last_entry {
            Some(bytes) => Some(decode_entry(&bytes)?.log_id),
            // Everything was purged (or nothing was ever written): the last log id is the purged one.
            None => last_purged_log_id,
        };
        let last_log_id = last_log_id.max(queued_last);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
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

    /// Records the committed log id without waiting for fsync.
    ///
    /// This runs whenever the commit index moves, so an fsync here would double the fsyncs per write.
    /// It is safe to lose: the next durable commit (the next append) carries it to disk, and a committed
    /// id that is behind after a crash only means fewer entries are re-applied at startup; the rest are
    /// applied once the leader commits an entry of its new term.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let file = self.file.clone();
        blocking(move || file.put_meta(COMMITTED_KEY, &bytes, Durability::None))
            .await
            .map_err(StorageIOError::write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
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
        // Readable at once; flushed (and reported so) by the writer.
        self.pending().extend(queued.into_iter().map(|e| (e.log_id.index, e)));
        self.writer
            .send(Write::Append { rows, callback })
            .map_err(|_| StorageIOError::write_logs(AnyError::error("the log writer stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.drained().await.map_err(StorageIOError::write_logs)?;
        let file = self.file.clone();
        blocking(move || file.truncate(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.drained().await.map_err(StorageIOError::write_logs)?;
        let file = self.file.clone();
        blocking(move || file.purge(log_id.index, &bytes))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}
