//! A raft node's storage: the raft log in a write-ahead log of its own ([`wal`]), and one redb file
//! with the rest, and the blocking reads and writes the log store ([`log`]) and the state machine
//! ([`state_machine`]) make on it.
//!
//! The redb file holds the vote, the committed log id and the last purged log id; the latest snapshot
//! (meta and data) is a file of its own beside it ([`SNAPSHOT_FILE`]), written whole under another name,
//! fsynced and renamed into place. A snapshot of a large state is hundreds of megabytes, and written in a
//! redb transaction it held redb's single writer long enough to stall the log's small records behind it
//! (bench/RESULTS.md, `snapshot-stall`). The state machine's applied state is not written on every apply: it is the latest
//! snapshot plus the committed log after it, which openraft re-applies at startup from `read_committed`.
//! Before the log had its own file it lived in redb too (index → JSON entry); opening such a store moves
//! it over once.
//!
//! Disk IO and fsync block, so every redb call and every write to the log file runs in `spawn_blocking`.
//! This module refuses to interpret commands: it stores bytes and openraft's own types, nothing else.

// openraft's storage traits fix their error type, `StorageError` (over 200 bytes); the helpers here pass
// it on unchanged rather than boxing it only to unbox it again.
#![allow(clippy::result_large_err)]

mod log;
mod state_machine;
#[cfg(test)]
mod tests;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::{AnyError, SnapshotMeta};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use tokio::sync::{broadcast, oneshot, watch};

pub(crate) use log::RaftLogStore;
pub(crate) use state_machine::{AppliedState, StateMachineStore};

use crate::types::NodeId;
use crate::{Error, Storage};

/// Where the raft log was kept before it had a file of its own: entry index → the entry as JSON. Read
/// once, to move it over, and emptied.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's own records, each JSON, under the `*_KEY` names below.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Where the latest snapshot was kept before it had a file of its own: its meta as JSON under
/// [`SNAPSHOT_META_KEY`], its data under [`SNAPSHOT_DATA_KEY`]. Read once, to move it over, and emptied.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
/// Set once the raft log lives in its own file ([`LOG_DIR`]) rather than in [`LOG`].
const LOG_IN_FILE_KEY: &str = "log_in_file";
const SNAPSHOT_META_KEY: &str = "meta";
const SNAPSHOT_DATA_KEY: &str = "data";

/// The latest snapshot's file, beside the redb file: the meta as one line of JSON, a newline, then the
/// data.
const SNAPSHOT_FILE: &str = "snapshot";

/// How the log and the snapshot grew, for the node's compaction (`node/compaction.rs`).
#[derive(Debug, Default)]
pub(crate) struct LogGrowth {
    /// Bytes of entries appended to the log since the store opened.
    pub(crate) appended: std::sync::atomic::AtomicU64,
    /// The size of the latest stored snapshot's data.
    pub(crate) snapshot_bytes: std::sync::atomic::AtomicU64,
}

/// How much of a snapshot is written between two syncs of its file.
const SNAPSHOT_SYNC_BYTES: usize = 8 << 20;

/// The open redb file and the snapshot file beside it, shared by the log store, its readers, the state machine and snapshot builders.
///
/// openraft drops these owners in several tasks after `Raft::shutdown` returns, so the file closes a
/// little later. Dropping the last `Arc<RedbFile>` drops `_closed`, which tells the node the file is
/// closed and the directory may be opened again (redb refuses a second open of a file in use).
pub(crate) struct RedbFile {
    // Fields drop in order: the database closes before `_closed` reports it.
    db: Database,
    /// The latest snapshot's file.
    snapshot_path: PathBuf,
    /// Held while a snapshot is stored, so that an older one never replaces a newer one.
    storing: std::sync::Mutex<()>,
    /// How the log and the snapshot grew.
    growth: Arc<LogGrowth>,
    /// The last log id of the snapshot stored in the file, sent after each store.
    snapshot_stored: watch::Sender<Option<openraft::LogId<NodeId>>>,
    _closed: oneshot::Sender<()>,
}

/// A freshly opened store, ready to hand to `Raft::new`.
pub(crate) struct OpenStore {
    pub(crate) log: RaftLogStore,
    pub(crate) state_machine: StateMachineStore,
    /// The applied state, shared with the state machine.
    pub(crate) applied: Arc<RwLock<AppliedState>>,
    /// The last applied log index, sent after every apply batch and snapshot install.
    pub(crate) applied_index: watch::Receiver<u64>,
    /// Every applied entry, in order, for the nodes' followers (see [`Change`]).
    pub(crate) changes: broadcast::Sender<Change>,
    /// Completes (with an error, as nothing is ever sent) once the redb file is closed.
    pub(crate) closed: oneshot::Receiver<()>,
    /// How the log and the snapshot grew, and the last log id of each snapshot stored.
    pub(crate) growth: Arc<LogGrowth>,
    pub(crate) snapshot_stored: watch::Receiver<Option<openraft::LogId<NodeId>>>,
}

/// One change of the applied state, as followers of a node see it.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// The entry at `index` was applied; `command` is `None` for a blank or membership entry.
    Entry {
        index: u64,
        command: Option<Arc<gofer_domain::Command>>,
    },
    /// A snapshot replaced the whole state.
    Reset,
}

/// How many changes a slow follower may fall behind before it is sent the whole state again.
const CHANGES_KEPT: usize = 4096;

/// The raft log's directory, beside the redb file.
const LOG_DIR: &str = "raft-log";

/// Opens or creates the redb file at `path` and the raft log beside it, and loads the latest snapshot
/// and the log into memory.
pub(crate) async fn open(path: PathBuf) -> Result<OpenStore, Error> {
    let (closed_tx, closed) = oneshot::channel();
    let (file, snapshot, wal, log) = tokio::task::spawn_blocking(move || -> Result<_, Storage> {
        let redb = |source: redb::Error| Storage::Redb {
            path: path.clone(),
            source,
        };
        let db = Database::create(&path).map_err(|e| redb(e.into()))?;
        // Read transactions fail on a table that was never created, so create them all up front.
        let created = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.open_table(SNAPSHOT)?;
            txn.commit()?;
            Ok(())
        };
        created().map_err(redb)?;
        let file = RedbFile {
            db,
            snapshot_path: path.with_file_name(SNAPSHOT_FILE),
            storing: std::sync::Mutex::default(),
            growth: Arc::default(),
            snapshot_stored: watch::Sender::new(None),
            _closed: closed_tx,
        };
        let snapshot = open_snapshot(&file, &path)?;
        let snapshot_index = match &snapshot {
            Some(stored) => last_log_id(stored)?.map_or(0, |l| l.index),
            None => 0,
        };
        let (wal, log) = open_log(&file, &path, snapshot_index)?;
        Ok((file, snapshot, wal, log))
    })
    .await
    .map_err(Storage::Task)??;

    let applied = match snapshot {
        None => AppliedState::default(),
        Some(StoredSnapshot { meta, data }) => {
            let meta: SnapshotMeta<NodeId, openraft::BasicNode> =
                serde_json::from_slice(&meta).map_err(Storage::DecodeSnapshotMeta)?;
            let applied: AppliedState = serde_json::from_slice(&data).map_err(Storage::DecodeSnapshot)?;
            if applied.last_applied != meta.last_log_id || applied.membership != meta.last_membership {
                return Err(Storage::SnapshotMismatch(meta.snapshot_id).into());
            }
            file.snapshot_stored.send_replace(meta.last_log_id);
            file.growth
                .snapshot_bytes
                .store(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            applied
        }
    };
    let (applied_tx, applied_index) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
    let applied = Arc::new(RwLock::new(applied));
    let file = Arc::new(file);
    let (changes, _) = broadcast::channel(CHANGES_KEPT);
    let growth = file.growth.clone();
    let snapshot_stored = file.snapshot_stored.subscribe();
    Ok(OpenStore {
        log: RaftLogStore::new(file.clone(), wal, log).map_err(Storage::LogWriter)?,
        state_machine: StateMachineStore::new(file, applied.clone(), applied_tx, changes.clone()),
        applied,
        applied_index,
        changes,
        closed,
        growth,
        snapshot_stored,
    })
}

/// Reads the latest snapshot from its file, moving one kept in redb (an older Gofer's store) over first:
/// written to the file, then emptied from redb. When both hold one (a crash in between, or an older
/// Gofer run on this directory since), the newer wins. A snapshot file left half-written by a crash is
/// deleted.
fn open_snapshot(file: &RedbFile, path: &Path) -> Result<Option<StoredSnapshot>, Storage> {
    let redb = |source: redb::Error| Storage::Redb {
        path: path.to_path_buf(),
        source,
    };
    let snapshot_io = |source| Storage::Io {
        path: file.snapshot_path.clone(),
        source,
    };
    file.remove_unfinished_snapshots().map_err(snapshot_io)?;
    let legacy = file.legacy_snapshot().map_err(redb)?;
    let current = file.read_snapshot().map_err(snapshot_io)?;
    let Some(legacy) = legacy else { return Ok(current) };
    let newer = match &current {
        Some(current) => last_log_id(&legacy)? > last_log_id(current)?,
        None => true,
    };
    if newer {
        file.write_snapshot(&legacy.meta, &legacy.data).map_err(snapshot_io)?;
    }
    file.forget_legacy_snapshot().map_err(redb)?;
    Ok(if newer { Some(legacy) } else { current })
}

fn last_log_id(stored: &StoredSnapshot) -> Result<Option<openraft::LogId<NodeId>>, Storage> {
    let meta: SnapshotMeta<NodeId, openraft::BasicNode> =
        serde_json::from_slice(&stored.meta).map_err(Storage::DecodeSnapshotMeta)?;
    Ok(meta.last_log_id)
}

/// Opens the raft log beside the redb file at `path` (moving a log kept in redb over first) and decodes
/// its entries.
///
/// The redb file records that the log moved (`LOG_IN_FILE_KEY`, in the same transaction that empties
/// its old table), so a log directory that went missing, or a redb table that filled again (an older
/// Gofer run on this data directory), is refused rather than taken for an empty log.
/// The log after `snapshot_index` counts as appended since the last snapshot (for the compaction).
fn open_log(file: &RedbFile, path: &Path, snapshot_index: u64) -> Result<(wal::Wal, log::Log), Storage> {
    let dir = &path.with_file_name(LOG_DIR);
    let redb = |source: redb::Error| Storage::Redb {
        path: path.to_path_buf(),
        source,
    };
    let file_io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Storage::Io { path, source }
    };
    let log_io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Storage::Log { path, source }
    };
    let purged: Option<openraft::LogId<NodeId>> = match file.meta(LAST_PURGED_KEY).map_err(redb)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(Storage::DecodePurged)?,
        None => None,
    };
    let moved = file.meta(LOG_IN_FILE_KEY).map_err(redb)?.is_some();
    let rows = file.log_rows().map_err(redb)?;
    match (dir.exists(), moved) {
        (true, true) if !rows.is_empty() => return Err(Storage::TwoLogs(dir.clone())),
        (true, true) => {}
        (false, true) => return Err(Storage::LogDirMissing(dir.clone())),
        (false, false) => {
            // Written whole under another name, checked, then renamed: a crash midway leaves the old log
            // in place.
            let staging = dir.with_extension("import");
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(file_io(&staging))?;
            }
            let (mut fresh, _) = wal::Wal::open(&staging, None).map_err(log_io(&staging))?;
            if !rows.is_empty() {
                fresh.append(&rows).map_err(log_io(&staging))?;
            }
            drop(fresh);
            wal::Wal::open(&staging, purged.map(|p| p.index)).map_err(Storage::LogMoveCheck)?;
            std::fs::rename(&staging, dir).map_err(file_io(dir))?;
            if let Some(parent) = dir.parent() {
                wal::sync_dir(parent).map_err(file_io(parent))?;
            }
            file.mark_log_moved().map_err(redb)?;
        }
        // The rename was durable before a crash cut the move short: the directory holds the whole log.
        (true, false) => file.mark_log_moved().map_err(redb)?,
    }
    let (wal, rows) = wal::Wal::open(dir, purged.map(|p| p.index)).map_err(log_io(dir))?;
    let mut entries = std::collections::BTreeMap::new();
    let since_snapshot: usize = rows
        .iter()
        .filter(|(index, _)| *index > snapshot_index)
        .map(|(_, bytes)| bytes.len())
        .sum();
    file.growth
        .appended
        .store(since_snapshot as u64, std::sync::atomic::Ordering::Relaxed);
    for (index, bytes) in rows {
        let entry: openraft::Entry<crate::types::TypeConfig> =
            serde_json::from_slice(&bytes).map_err(|source| Storage::DecodeEntry { index, source })?;
        entries.insert(index, entry);
    }
    Ok((wal, log::Log { entries, purged }))
}

/// Runs blocking redb work on the blocking pool, turning its error (or its panic) into an [`AnyError`]
/// for openraft's storage errors.
async fn blocking<T, E, F>(work: F) -> Result<T, AnyError>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(AnyError::new(&e)),
        Err(e) => Err(AnyError::new(&e)),
    }
}

/// The blocking operations. Each is one redb transaction; every write commits with immediate
/// durability (fsynced before `commit` returns) unless it says otherwise.
impl RedbFile {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8], durability: Durability) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Every entry of a log kept in redb, as stored (a store from before the log had its own file).
    fn log_rows(&self) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut rows = Vec::new();
        for row in table.range(0..)? {
            let (index, entry) = row?;
            rows.push((index.value(), entry.value().to_vec()));
        }
        Ok(rows)
    }

    /// Records that the log lives in its own file, and empties the table that held it, in one
    /// transaction.
    fn mark_log_moved(&self) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(LOG)?.retain(|_, _| false)?;
        txn.open_table(META)?.insert(LOG_IN_FILE_KEY, b"1".as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The snapshot an older Gofer kept in redb, if any.
    fn legacy_snapshot(&self) -> Result<Option<StoredSnapshot>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let meta = table.get(SNAPSHOT_META_KEY)?.map(|v| v.value().to_vec());
        let data = table.get(SNAPSHOT_DATA_KEY)?.map(|v| v.value().to_vec());
        Ok(meta.zip(data).map(|(meta, data)| StoredSnapshot { meta, data }))
    }

    fn forget_legacy_snapshot(&self) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(SNAPSHOT)?.retain(|_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes the temporary files of snapshots a crash cut short.
    fn remove_unfinished_snapshots(&self) -> std::io::Result<()> {
        let dir = self.snapshot_path.parent().unwrap_or(Path::new("."));
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SNAPSHOT_FILE) && name.ends_with(".tmp") {
                std::fs::remove_file(dir.join(name.as_ref()))?;
            }
        }
        Ok(())
    }

    /// The latest snapshot's meta and data, from its file.
    fn read_snapshot(&self) -> std::io::Result<Option<StoredSnapshot>> {
        use std::io::{BufRead, Read};
        let file = match std::fs::File::open(&self.snapshot_path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut meta = Vec::new();
        reader.read_until(b'\n', &mut meta)?;
        if meta.pop() != Some(b'\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the snapshot file has no meta line",
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_sub(meta.len() + 1));
        reader.read_to_end(&mut data)?;
        Ok(Some(StoredSnapshot { meta, data }))
    }

    /// Writes the snapshot file whole under another name, fsyncs it, renames it into place and fsyncs
    /// the directory: a crash leaves the old snapshot or the new one, never part of one. The data goes
    /// out [`SNAPSHOT_SYNC_BYTES`] at a time, each synced before the next, so the raft log's own syncs on
    /// the same disk never queue behind hundreds of megabytes of snapshot flushed at once.
    fn write_snapshot(&self, meta: &[u8], data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let dir = self.snapshot_path.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::Builder::new()
            .prefix(SNAPSHOT_FILE)
            .suffix(".tmp")
            .tempfile_in(dir)?;
        let out = file.as_file_mut();
        out.write_all(meta)?;
        out.write_all(b"\n")?;
        for chunk in data.chunks(SNAPSHOT_SYNC_BYTES) {
            out.write_all(chunk)?;
            out.sync_data()?;
        }
        file.as_file().sync_all()?;
        file.persist(&self.snapshot_path).map_err(|e| e.error)?;
        wal::sync_dir(dir)
    }

    /// Stores a snapshot unless the stored one is newer, and says whether it stored it.
    ///
    /// A snapshot build runs in its own task and may finish after a newer snapshot was installed from
    /// the leader (which also purged the log up to it); overwriting that one would leave a gap between
    /// the stored snapshot and the log at the next start.
    fn put_snapshot(&self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, data: &[u8]) -> Result<bool, AnyError> {
        let encoded_meta = serde_json::to_vec(meta).map_err(|e| AnyError::new(&e))?;
        let _storing = self.storing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *self.snapshot_stored.borrow() > meta.last_log_id {
            return Ok(false);
        }
        self.write_snapshot(&encoded_meta, data)
            .map_err(|e| AnyError::new(&e))?;
        self.growth
            .snapshot_bytes
            .store(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.snapshot_stored.send_if_modified(|stored| {
            let newer = meta.last_log_id > *stored;
            if newer {
                *stored = meta.last_log_id;
            }
            newer
        });
        Ok(true)
    }
}

/// The latest snapshot as stored: its meta and its data, both JSON.
struct StoredSnapshot {
    meta: Vec<u8>,
    data: Vec<u8>,
}
