//! openraft's state machine: [`gofer_domain::State`] in memory, applied entry by entry, and its
//! snapshots in their file beside the redb file.
//!
//! Applying is [`State::apply`] and nothing else; a refused command is a normal result carried back in
//! the [`Response`], not a storage error. The applied state (state, last applied log id, membership) sits
//! behind one std `RwLock` that is never held across an `.await`.
//!
//! Snapshots are built from a second copy, the [`Shadow`], never from the applied state itself: cloning a
//! state of a million runs under the lock took over a second (bench/RESULTS.md, `state-scale`), and no
//! command could apply meanwhile. Every applied entry is queued for the shadow (a pointer to the command,
//! under the lock); a build replays the queue onto the shadow and encodes it on the blocking pool, so
//! applies never wait for a snapshot. Apply is deterministic, so the shadow is the applied state as of
//! the last entry it replayed. It costs a second copy of the state in memory.
//! Snapshots are `serde_json` of [`AppliedState`], a persisted format: add defaulted fields, never change
//! or remove one. This file refuses to persist anything per apply; durability comes from the log.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gofer_domain::{Applied, Command, State};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::{Change, RedbFile, blocking};
use crate::types::{NodeId, Response, TypeConfig};

/// Everything applying the log produced: what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, BasicNode>,
    pub(crate) state: State,
}

/// An entry applied to the state and not yet to the shadow.
enum Pending {
    Blank(LogId<NodeId>),
    Normal(LogId<NodeId>, Arc<Command>),
    Membership(StoredMembership<NodeId, BasicNode>),
}

/// The copy of the applied state that snapshots are built from, and the entries it has yet to apply.
pub(crate) struct Shadow {
    state: Mutex<AppliedState>,
    pending: Mutex<Vec<Pending>>,
}

impl Shadow {
    fn new(state: AppliedState) -> Shadow {
        Shadow {
            state: Mutex::new(state),
            pending: Mutex::default(),
        }
    }

    fn queue(&self, entry: Pending) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
    }

    /// Applies the queued entries to the copy and returns it locked (on the blocking pool: this is work).
    /// Entries the copy holds already (a snapshot installed since they were queued) are passed over.
    fn caught_up(&self, pending: Vec<Pending>) -> std::sync::MutexGuard<'_, AppliedState> {
        let mut shadow = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let done = |shadow: &AppliedState, log_id: &LogId<NodeId>| {
            shadow.last_applied.is_some_and(|last| log_id.index <= last.index)
        };
        for entry in pending {
            match entry {
                Pending::Blank(log_id) if !done(&shadow, &log_id) => shadow.last_applied = Some(log_id),
                Pending::Normal(log_id, command) if !done(&shadow, &log_id) => {
                    shadow.last_applied = Some(log_id);
                    // Refusals are part of the log: the copy refuses alike and changes nothing.
                    let _ = shadow.state.apply(&command);
                }
                Pending::Membership(membership) => {
                    if let Some(log_id) = membership.log_id()
                        && !done(&shadow, log_id)
                    {
                        shadow.last_applied = Some(*log_id);
                        shadow.membership = membership;
                    }
                }
                _ => {}
            }
        }
        shadow
    }
}

/// The state machine openraft drives from its state machine task.
pub(crate) struct StateMachineStore {
    pub(super) file: Arc<RedbFile>,
    applied: Arc<RwLock<AppliedState>>,
    /// What snapshots are built from.
    shadow: Arc<Shadow>,
    applied_index: watch::Sender<u64>,
    changes: broadcast::Sender<Change>,
    /// Counts snapshots built by this process, to keep snapshot ids unique.
    snapshots_built: Arc<AtomicU64>,
}

/// Builds one snapshot from the shadow, brought up to the entries applied when the build runs.
pub(crate) struct SnapshotBuilder {
    file: Arc<RedbFile>,
    shadow: Arc<Shadow>,
    snapshots_built: Arc<AtomicU64>,
}

const POISONED: &str = "the applied state lock is poisoned: an apply panicked";

fn read_lock(applied: &RwLock<AppliedState>) -> Result<RwLockReadGuard<'_, AppliedState>, StorageIOError<NodeId>> {
    applied
        .read()
        .map_err(|_| StorageIOError::read_state_machine(AnyError::error(POISONED)))
}

fn write_lock(applied: &RwLock<AppliedState>) -> Result<RwLockWriteGuard<'_, AppliedState>, StorageIOError<NodeId>> {
    applied
        .write()
        .map_err(|_| StorageIOError::write_state_machine(AnyError::error(POISONED)))
}

impl StateMachineStore {
    pub(super) fn new(
        file: Arc<RedbFile>,
        applied: Arc<RwLock<AppliedState>>,
        applied_index: watch::Sender<u64>,
        changes: broadcast::Sender<Change>,
    ) -> Self {
        // The one clone of the whole state, made before raft starts, so no apply waits for it.
        let copy = applied.read().unwrap_or_else(PoisonError::into_inner).clone();
        StateMachineStore {
            file,
            applied,
            shadow: Arc::new(Shadow::new(copy)),
            applied_index,
            changes,
            snapshots_built: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let applied = read_lock(&self.applied)?;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (responses, last_index) = {
            let mut guard = write_lock(&self.applied)?;
            let applied = &mut *guard;
            let mut responses = Vec::new();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let mut applied_command = None;
                let result = match entry.payload {
                    EntryPayload::Blank => {
                        self.shadow.queue(Pending::Blank(entry.log_id));
                        Ok(Applied::Done)
                    }
                    EntryPayload::Normal(command) => {
                        let result = applied.state.apply(&command);
                        if let Err(error) = &result {
                            tracing::debug!(index = entry.log_id.index, %error, "command refused");
                        }
                        let command = Arc::new(command);
                        self.shadow.queue(Pending::Normal(entry.log_id, command.clone()));
                        applied_command = Some(command);
                        result
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        self.shadow.queue(Pending::Membership(applied.membership.clone()));
                        Ok(Applied::Done)
                    }
                };
                // Sent under the write lock, so followers see entries in apply order, and none that a
                // state read under the lock already holds is sent after it without its index.
                let _ = self.changes.send(Change::Entry {
                    index: entry.log_id.index,
                    command: applied_command,
                });
                responses.push(Response(result));
            }
            (responses, applied.last_applied.map(|l| l.index))
        };
        if let Some(index) = last_index {
            self.applied_index.send_replace(index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            file: self.file.clone(),
            shadow: self.shadow.clone(),
            snapshots_built: self.snapshots_built.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = meta.signature();
        let data = snapshot.into_inner();
        let file = self.file.clone();
        let stored_meta = meta.clone();
        let installed = blocking(move || -> Result<AppliedState, AnyError> {
            let installed: AppliedState = serde_json::from_slice(&data).map_err(|e| AnyError::new(&e))?;
            if installed.last_applied != stored_meta.last_log_id || installed.membership != stored_meta.last_membership
            {
                return Err(AnyError::error("the snapshot data disagrees with its meta"));
            }
            if !file.put_snapshot(&stored_meta, &data)? {
                return Err(AnyError::error("a newer snapshot is already stored"));
            }
            Ok(installed)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), e))?;

        let index = installed.last_applied.map_or(0, |l| l.index);
        // The shadow takes a copy, made before the applied state's lock is taken; the entries queued for it
        // are all older than the snapshot.
        let copy = installed.clone();
        {
            let mut applied = write_lock(&self.applied)?;
            let mut installed = installed;
            // Readers tracking the subscriptions must see a replaced state as changed.
            installed.state.subscriptions_changed = applied.state.subscriptions_changed.after(Default::default());
            *applied = installed;
            self.shadow
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            *self.shadow.state.lock().unwrap_or_else(PoisonError::into_inner) = copy;
            let _ = self.changes.send(Change::Reset);
        }
        self.applied_index.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let file = self.file.clone();
        let stored = blocking(move || file.read_snapshot())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        let Some(super::StoredSnapshot { meta, data }) = stored else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Take what was applied since the last build, then replay, encode and write on the blocking pool:
        // applies never wait for a snapshot (see `Shadow`).
        let pending = std::mem::take(&mut *self.shadow.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let file = self.file.clone();
        let shadow = self.shadow.clone();
        let (meta, data) = blocking(
            move || -> Result<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>), AnyError> {
                let view = shadow.caught_up(pending);
                let snapshot_id = match view.last_applied {
                    Some(l) => format!("{}-{}-{}-{built}", l.leader_id.term, l.leader_id.node_id, l.index),
                    None => format!("none-{built}"),
                };
                let meta = SnapshotMeta {
                    last_log_id: view.last_applied,
                    last_membership: view.membership.clone(),
                    snapshot_id,
                };
                let data = serde_json::to_vec(&*view).map_err(|e| AnyError::new(&e))?;
                drop(view);
                if !file.put_snapshot(&meta, &data)? {
                    tracing::info!(snapshot = %meta.snapshot_id, "a newer snapshot is stored already; keeping it");
                }
                Ok((meta, data))
            },
        )
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
