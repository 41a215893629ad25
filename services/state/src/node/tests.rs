//! A single node across restarts: from the log alone, and from a snapshot with the log before it purged.

use std::time::Duration;

use gofer_domain::{Applied, Command, ErrorKind, PipelineConfig, State};
use openraft::SnapshotPolicy;

use super::*;

fn pipeline() -> PipelineConfig {
    PipelineConfig::from_json(
        r#"{"id": "p", "tasks": [{"id": "a", "image": "busybox"}, {"id": "b", "image": "busybox", "depends_on": {"a": "success"}}]}"#,
    )
    .unwrap()
}

fn start_run(at: i64) -> Command {
    Command::StartRun {
        namespace: "team".into(),
        pipeline: "p".into(),
        request_id: String::new(),
        parameters: Default::default(),
        retry_of: 0,
        at,
    }
}

/// Init, a namespace, a pipeline in it and one run.
async fn populate(node: &StateNode) {
    assert_eq!(
        node.propose(Command::Init {
            cluster_id: "c".into(),
            at: 1
        })
        .await
        .unwrap(),
        Applied::Done
    );
    assert_eq!(
        node.propose(Command::CreateNamespace {
            namespace: "team".into(),
            at: 2
        })
        .await
        .unwrap(),
        Applied::Done
    );
    let register = Command::RegisterPipeline {
        namespace: "team".into(),
        config: pipeline(),
        at: 3,
    };
    assert_eq!(node.propose(register).await.unwrap(), Applied::Version(1));
    assert_eq!(node.propose(start_run(4)).await.unwrap(), Applied::Run(1));
}

fn snapshot_of(node: &StateNode) -> State {
    node.read(State::clone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_ids_keep_counting() {
    let dir = tempfile::tempdir().unwrap();
    let node = StateNode::open_single(dir.path()).await.unwrap();
    let mut applied = node.subscribe();
    let before_populate = *applied.borrow_and_update();
    populate(&node).await;
    assert!(applied.has_changed().unwrap(), "the applied index is announced");
    assert!(*applied.borrow_and_update() >= before_populate + 4);
    let before = snapshot_of(&node);
    assert_eq!(before.cluster_id, "c");
    assert_eq!(before.pipeline("team", "p").unwrap().versions, vec![pipeline()]);
    node.shutdown().await.unwrap();

    let node = StateNode::open_single(dir.path()).await.unwrap();
    assert_eq!(snapshot_of(&node), before);
    assert_eq!(node.propose(start_run(5)).await.unwrap(), Applied::Run(2));
    let runs: Vec<u64> = node.read(|s| s.pipeline("team", "p").unwrap().runs.keys().copied().collect());
    assert_eq!(runs, vec![1, 2]);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = StateNode::open_single(dir.path()).await.unwrap();
    populate(&node).await;
    let before = snapshot_of(&node);
    let index = *node.subscribe().borrow();

    let refused = node
        .propose(Command::CreateNamespace {
            namespace: "team".into(),
            at: 9,
        })
        .await;
    match refused {
        Err(Error::Rejected(error)) => assert_eq!(error.kind(), ErrorKind::AlreadyExists),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(snapshot_of(&node), before);
    // The refusal is still a log entry: applied, with no change to the state.
    assert_eq!(*node.subscribe().borrow(), index + 1);

    // A refusal does not stop later commands.
    assert_eq!(node.propose(start_run(10)).await.unwrap(), Applied::Run(2));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_comes_back_from_a_snapshot_after_the_log_was_purged() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 5,
        ..raft_config()
    };
    let node = StateNode::open_with(dir.path(), config()).await.unwrap();
    populate(&node).await;
    for at in 5..40 {
        node.propose(start_run(at)).await.unwrap();
    }
    let before = snapshot_of(&node);
    let metrics = node
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some() && m.purged.is_some(), "a snapshot and a purge")
        .await
        .unwrap();
    let purged = metrics.purged.unwrap().index;
    node.shutdown().await.unwrap();

    let node = StateNode::open_with(dir.path(), config()).await.unwrap();
    let metrics = node.inner.raft.metrics().borrow().clone();
    assert!(metrics.purged.is_some_and(|p| p.index >= purged), "{metrics:?}");
    assert!(metrics.snapshot.is_some(), "{metrics:?}");
    assert_eq!(snapshot_of(&node), before);
    assert_eq!(node.propose(start_run(40)).await.unwrap(), Applied::Run(37));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_snapshot_restores_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = StateNode::open_single(dir.path()).await.unwrap();
    populate(&node).await;
    let before = snapshot_of(&node);
    // The applied-index watch is updated inside apply, so it is current once `propose` returned; raft's own
    // metrics may still lag behind it.
    let applied = *node.subscribe().borrow();
    node.inner.raft.trigger().snapshot().await.unwrap();
    node.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "the snapshot of everything applied",
        )
        .await
        .unwrap();
    node.shutdown().await.unwrap();

    let node = StateNode::open_single(dir.path()).await.unwrap();
    assert_eq!(snapshot_of(&node), before);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_use_is_refused_and_a_closed_node_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let node = StateNode::open_single(dir.path()).await.unwrap();
    match StateNode::open_single(dir.path()).await {
        Err(Error::Storage(_)) => {}
        other => panic!("expected a storage error, got {:?}", other.map(|_| "a node")),
    }
    node.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    match node
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
    {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// A pipeline whose four tasks carry 60 kB of command each: one entry that makes the state, and so its
/// snapshot, large.
fn big_pipeline(id: &str) -> Command {
    let script = "x".repeat(60_000);
    let tasks: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"id": "t{i}", "image": "i", "command": ["{script}"]}}"#))
        .collect();
    let json = format!(r#"{{"id": "{id}", "tasks": [{}]}}"#, tasks.join(","));
    Command::RegisterPipeline {
        namespace: "team".into(),
        config: PipelineConfig::from_json(&json).unwrap(),
        at: 5,
    }
}

/// A node snapshots after N entries while its state is small, but once the state is large it waits for a
/// log of a quarter of the snapshot's size, however many small entries come: it does not write the whole
/// state again for a little log (`node/compaction.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_is_snapshotted_again_only_once_its_log_is_a_quarter_of_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 5,
        ..raft_config()
    };
    let node = StateNode::open_with(dir.path(), config).await.unwrap();
    populate(&node).await;
    node.propose(big_pipeline("big")).await.unwrap();
    let namespace = |i: usize| Command::CreateNamespace {
        namespace: format!("ns-{i}"),
        at: 6,
    };
    // No snapshot yet: N entries are enough.
    for i in 0..20 {
        node.propose(namespace(i)).await.unwrap();
    }
    let first = node
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "the first snapshot")
        .await
        .unwrap()
        .snapshot
        .unwrap()
        .index;
    // Three times N small entries: a few kB of log against a snapshot of about 240 kB.
    for i in 20..80 {
        node.propose(namespace(i)).await.unwrap();
        let snapshot = node.metrics().snapshot.map_or(0, |s| s.index);
        assert_eq!(snapshot, first, "snapshotted again after {} small entries", i - 19);
    }
    // A large entry brings the log past a quarter of the snapshot: the next one is taken.
    let big = node.propose(big_pipeline("bigger")).await.unwrap();
    assert_eq!(big, Applied::Version(1));
    node.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index > first), "the next snapshot")
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}
