//! The redb store under openraft's storage suite, and across a reopen of the same file.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError, StorageIOError, Vote};
use tempfile::TempDir;

use super::*;
use crate::types::TypeConfig;

/// Builds each store in a temp dir of its own, which lives as long as the suite's test does.
struct TempDirStoreBuilder;

impl StoreBuilder<TypeConfig, RaftLogStore, StateMachineStore, TempDir> for TempDirStoreBuilder {
    async fn build(&self) -> Result<(TempDir, RaftLogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let mut store = open(dir.path().join("state.redb"))
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        // The suite purges logs that no snapshot holds.
        store.log.purge_waits_for_snapshot = false;
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn passes_the_openraft_storage_suite() {
    Suite::test_all(TempDirStoreBuilder).unwrap();
}

fn command_entry(index: u64, namespace: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(gofer_domain::Command::CreateNamespace {
            namespace: namespace.into(),
            at: 7,
        }),
    }
}

fn init_entry() -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(gofer_domain::Command::Init {
            cluster_id: "c".into(),
            at: 1,
        }),
    }
}

/// Applies `entries` to the store's state machine and builds (and stores) a snapshot of it.
async fn apply_and_snapshot(store: &mut OpenStore, entries: Vec<Entry<TypeConfig>>) -> openraft::Snapshot<TypeConfig> {
    store.state_machine.apply(entries).await.unwrap();
    store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reopened_file_keeps_vote_log_committed_purged_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let init = init_entry();

    let (snapshot_meta, closed) = {
        let mut store = open(path.clone()).await.unwrap();
        store.log.save_vote(&Vote::new(3, 1)).await.unwrap();
        store
            .log
            .blocking_append(vec![init.clone(), command_entry(2, "a"), command_entry(3, "b")])
            .await
            .unwrap();
        store.log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        let snapshot = apply_and_snapshot(&mut store, vec![init, command_entry(2, "a")]).await;
        store.log.purge(log_id(1, 1, 1)).await.unwrap();
        let applied = *store.applied_index.borrow();
        assert_eq!(applied, 2);
        (snapshot.meta, store.closed)
    };
    // The log writer lets go of the file once the store is dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), closed).await;

    let mut store = open(path).await.unwrap();
    assert_eq!(store.log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(store.log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    let state = store.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
    let entries = store.log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![2, 3]);

    // The state machine comes back from the snapshot alone; raft re-applies entry 3 after it.
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 2)));
    assert_eq!(*store.applied_index.borrow(), 2);
    let namespaces: Vec<String> = store.applied.read().unwrap().state.namespaces.keys().cloned().collect();
    assert_eq!(namespaces, vec!["a".to_string(), "default".to_string()]);
    let current = store.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot_meta);
}

/// A store from before the raft log had its own file keeps its log in redb: opening it moves the log
/// over once, and it stays there.
#[tokio::test]
async fn a_log_kept_in_redb_by_an_older_version_is_moved_to_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let entries = vec![command_entry(2, "a"), command_entry(3, "b"), command_entry(4, "c")];
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for entry in &entries {
                log.insert(entry.log_id.index, serde_json::to_vec(entry).unwrap().as_slice())
                    .unwrap();
            }
            let purged = serde_json::to_vec(&Some(log_id(1, 1, 1))).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(LAST_PURGED_KEY, purged.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    for _ in 0..2 {
        let mut store = open(path.clone()).await.unwrap();
        let state = store.log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 1)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        let read = store.log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&entries).unwrap()
        );
        assert!(dir.path().join(LOG_DIR).is_dir());
        assert!(store.log.file_log_is_empty().await, "redb no longer holds the log");
        drop(store.log);
        drop(store.state_machine);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), store.closed).await;
    }
}

/// Once the log lives in its own directory, a directory that went missing is not taken for an empty
/// log (the node would forget entries it acknowledged), and a log that reappeared in redb (an older
/// Gofer run on the data directory) is not silently thrown away.
#[tokio::test]
async fn a_missing_log_directory_or_a_log_back_in_redb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let closed = {
        let mut store = open(path.clone()).await.unwrap();
        store.log.blocking_append(vec![command_entry(1, "a")]).await.unwrap();
        store.closed
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), closed).await;

    let log_dir = dir.path().join(LOG_DIR);
    let aside = dir.path().join("aside");
    std::fs::rename(&log_dir, &aside).unwrap();
    let err = open(path.clone())
        .await
        .err()
        .expect("a missing log directory is refused");
    assert!(err.to_string().contains("is missing"), "{err}");
    std::fs::rename(&aside, &log_dir).unwrap();

    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let entry = serde_json::to_vec(&command_entry(2, "b")).unwrap();
        txn.open_table(LOG).unwrap().insert(2, entry.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let err = open(path.clone()).await.err().expect("a second log in redb is refused");
    assert!(err.to_string().contains("both"), "{err}");
}

/// A purge waits for a stored snapshot that holds what it purges: a follower is told to purge while
/// its state machine may still be storing the leader's snapshot, and a crash in between must not leave
/// neither the entries nor a snapshot holding them.
#[tokio::test]
async fn a_purge_waits_for_the_snapshot_that_holds_what_it_purges() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path().join("state.redb")).await.unwrap();
    let init = init_entry();
    let entries = vec![init, command_entry(2, "a"), command_entry(3, "b")];
    store.log.blocking_append(entries.clone()).await.unwrap();
    let mut purging = store.log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(1, 1, 2)).await });
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !purge.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "the purge went ahead with no snapshot holding entry 2");
    assert_eq!(store.log.try_get_log_entries(0..).await.unwrap().len(), 3);

    apply_and_snapshot(&mut store, entries).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), purge)
        .await
        .expect("the purge goes ahead once the snapshot is stored")
        .unwrap()
        .unwrap();
    let kept = store.log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(kept.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3]);
}

#[tokio::test]
// The applied state's lock is held across the build on purpose: the build must not need it.
#[allow(clippy::await_holding_lock)]
async fn a_snapshot_is_built_without_the_applied_states_lock_and_holds_every_entry_applied_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path().join("state.redb")).await.unwrap();
    let mut entries = vec![init_entry()];
    entries.extend((2..=50).map(|i| command_entry(i, &format!("n{i}"))));
    // A refused command (the namespace exists) is replayed as a refusal.
    entries.push(command_entry(51, "n2"));
    store.state_machine.apply(entries).await.unwrap();
    let mut builder = store.state_machine.get_snapshot_builder().await;
    // Hold the applied state's write lock, as a long apply would: a build that needed the lock would
    // wait for ever; it needs only the shadow copy.
    let held = store.applied.write().unwrap();
    let snapshot = tokio::time::timeout(std::time::Duration::from_secs(30), builder.build_snapshot())
        .await
        .expect("the build does not wait for the applied state's lock")
        .unwrap();
    let applied = held.clone();
    drop(held);
    let _ = &applied;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 51)));
    let decoded: AppliedState = serde_json::from_slice(snapshot.snapshot.get_ref()).unwrap();
    assert_eq!(decoded, applied);
    // Entries applied after a build go into the next one.
    store
        .state_machine
        .apply(vec![command_entry(52, "later")])
        .await
        .unwrap();
    let next = store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let decoded: AppliedState = serde_json::from_slice(next.snapshot.get_ref()).unwrap();
    assert!(decoded.state.namespaces.contains_key("later"));
    assert_eq!(decoded, *store.applied.read().unwrap());
}

/// A store from before the snapshot had its own file keeps it in redb: opening it moves the snapshot to
/// its file and empties redb's table, and later snapshots never touch redb (a large one held redb's one
/// writer long enough to stall the log's records).
#[tokio::test]
async fn a_snapshot_kept_in_redb_by_an_older_version_is_moved_to_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (legacy, closed) = {
        let mut store = open(path.clone()).await.unwrap();
        let snapshot = apply_and_snapshot(&mut store, vec![init_entry(), command_entry(2, "a")]).await;
        (snapshot, store.closed)
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), closed).await;
    // Put it back where an older Gofer kept it.
    std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SNAPSHOT).unwrap();
            let meta = serde_json::to_vec(&legacy.meta).unwrap();
            table.insert(SNAPSHOT_META_KEY, meta.as_slice()).unwrap();
            table
                .insert(SNAPSHOT_DATA_KEY, legacy.snapshot.get_ref().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let mut store = open(path.clone()).await.unwrap();
    assert!(
        dir.path().join(SNAPSHOT_FILE).is_file(),
        "the snapshot moved to its file"
    );
    let namespaces: Vec<String> = store.applied.read().unwrap().state.namespaces.keys().cloned().collect();
    assert_eq!(namespaces, vec!["a".to_string(), "default".to_string()]);
    let current = store.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, legacy.meta);
    assert_eq!(current.snapshot.get_ref(), legacy.snapshot.get_ref());

    let next = apply_and_snapshot(&mut store, vec![command_entry(3, "b")]).await;
    assert_eq!(next.meta.last_log_id, Some(log_id(1, 1, 3)));
    let file = store.state_machine.file.clone();
    let legacy_left = tokio::task::spawn_blocking(move || file.legacy_snapshot().unwrap())
        .await
        .unwrap();
    assert!(legacy_left.is_none(), "redb no longer holds a snapshot");
    let current = store.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, next.meta);
    let decoded: AppliedState = serde_json::from_slice(current.snapshot.get_ref()).unwrap();
    assert!(decoded.state.namespaces.contains_key("b"));
}

/// An older snapshot finishing after a newer one was stored (a build overtaken by an install from the
/// leader) does not replace it.
#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path().join("state.redb")).await.unwrap();
    let newer = apply_and_snapshot(&mut store, vec![init_entry(), command_entry(2, "a")]).await;
    let mut older = newer.meta.clone();
    older.last_log_id = Some(log_id(1, 1, 1));
    older.snapshot_id = "older".into();
    let file = store.state_machine.file.clone();
    let stored = tokio::task::spawn_blocking(move || file.put_snapshot(&older, b"{}").unwrap())
        .await
        .unwrap();
    assert!(!stored, "the older snapshot was refused");
    let current = store.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, newer.meta);
}
