//! A lease holder on a manual clock: it takes the lease, and stands by once another process took it.

use std::time::Duration;

use gofer_clock::Clock;
use gofer_domain::{Applied, Command};
use tokio_util::task::TaskTracker;

use super::*;
use crate::StateNode;

/// Looks with `look` every 20 ms until `done` takes what it saw, failing after 10 s with what it saw last.
async fn wait_for<T: std::fmt::Debug>(what: &str, mut look: impl FnMut() -> T, done: impl Fn(&T) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = look();
        if done(&seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Two workers: should the holder's task block its thread, the test still reaches its deadline and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stands_by_once_another_process_took_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateHandle::from(StateNode::open_single(&dir.path().join("state")).await.unwrap());
    let (clock, hand) = Clock::manual(1_000_000);
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let lease = LeaseHolder::spawn(
        state.clone(),
        Role::Scheduler,
        "a".into(),
        clock,
        &tracker,
        shutdown.clone(),
    );
    wait_for("the lease", || lease.epoch(), |epoch| *epoch == Some(1)).await;

    // Another process, whose clock runs well ahead, finds the lease run out and takes it.
    let taken = state
        .propose(Command::AcquireLease {
            role: Role::Scheduler,
            holder: "b".into(),
            ttl_millis: 60_000,
            address: String::new(),
            connected: Vec::new(),
            at: hand.now_millis() + 10 * LEASE_TTL.as_millis() as i64,
        })
        .await
        .unwrap();
    assert!(
        matches!(taken, Applied::Lease(ref l) if l.holder == "b" && l.epoch == 2),
        "{taken:?}"
    );
    wait_for("the holder to stand by", || lease.epoch(), Option::is_none).await;
    let fenced = lease
        .propose(Command::CreateNamespace {
            namespace: "x".into(),
            at: hand.now_millis(),
        })
        .await
        .unwrap_err();
    assert!(matches!(&fenced, Error::Rejected(e) if e.is_fenced()), "{fenced:?}");

    shutdown.cancel();
    tracker.close();
    let drained = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    assert!(drained.is_ok(), "the holder's task ends on shutdown");
    if let StateHandle::Local(node) = state {
        node.shutdown().await.unwrap();
    }
}
