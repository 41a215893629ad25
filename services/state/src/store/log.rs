//! openraft's log storage on the redb file: entries, vote, committed and purged log ids.
//!
//! "Acknowledged means durable": `append` reports the entries flushed only after the redb transaction
//! that holds them committed, and redb's commit fsyncs before it returns. The committed log id is the one
//! record written without fsync (see [`RaftLogStore::save_committed`]). This file refuses to look inside
//! entries: it stores and returns them as openraft gave them.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::Durability;

use super::{COMMITTED_KEY, RedbFile, VOTE_KEY, blocking};
use crate::types::{NodeId, TypeConfig};

/// The raft log store. Cloning it is cheap; clones are the log readers openraft hands to replication.
#[derive(Clone)]
pub(crate) struct RaftLogStore {
    file: Arc<RedbFile>,
}

impl RaftLogStore {
    pub(super) fn new(file: Arc<RedbFile>) -> Self {
        RaftLogStore { file }
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

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let Some((first, last)) = inclusive(&range) else {
            return Ok(Vec::new());
        };
        let file = self.file.clone();
        let rows = blocking(move || file.log_range(first, last))
            .await
            .map_err(StorageIOError::read_logs)?;
        rows.iter().map(|row| decode_entry(row)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
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
        let rows = entries
            .into_iter()
            .map(|entry| {
                let bytes = serde_json::to_vec(&entry)
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
                Ok((entry.log_id.index, bytes))
            })
            .collect::<Result<Vec<_>, StorageIOError<NodeId>>>()?;
        let file = self.file.clone();
        match blocking(move || file.append(&rows)).await {
            Ok(()) => {
                // The transaction committed, so the entries are on disk: only now may raft count them.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let file = self.file.clone();
        blocking(move || file.truncate(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let file = self.file.clone();
        blocking(move || file.purge(log_id.index, &bytes))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}
