//! What the scheduler's integration tests share: an initialized single-node state, a dispatch service on
//! loopback, a manual clock, and waiting for a condition with a deadline.

#![allow(dead_code)]

use gofer_clock::{Clock, ManualClock};
use gofer_domain::Command;
use gofer_proto::v1::dispatch_service_client::DispatchServiceClient;
use gofer_proto::v1::dispatch_service_server::{DispatchService, DispatchServiceServer};
use gofer_state::{StateHandle, StateNode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type Client = DispatchServiceClient<tonic::transport::Channel>;

/// A manual clock at an ordinary time; the test moves it.
pub fn manual_clock() -> (Clock, ManualClock) {
    Clock::manual(1_700_000_000_000)
}

/// A single state node under `dir`, initialized as cluster `c`.
pub async fn initialized_state(dir: &std::path::Path) -> StateHandle {
    let state = StateHandle::from(StateNode::open_single(&dir.join("state")).await.unwrap());
    state
        .propose(Command::Init {
            cluster_id: "c".into(),
            at: 1,
        })
        .await
        .unwrap();
    state
}

/// Serves `service` on a loopback port until `shutdown`; returns a client of it.
pub async fn serve_dispatch<S: DispatchService>(service: S, shutdown: &CancellationToken) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatchServiceServer::new(service))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            }),
    );
    DispatchServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

/// Looks with `look` until `done` takes what it saw; returns that. Fails the test after 10 s, saying what
/// it saw last.
pub async fn wait_for<T: std::fmt::Debug>(what: &str, mut look: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = look();
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last saw {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Cancels `shutdown` and waits, for at most 10 s, until every task on `tracker` ended.
pub async fn stop(tracker: &TaskTracker, shutdown: &CancellationToken) {
    shutdown.cancel();
    tracker.close();
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait()).await;
    assert!(drained.is_ok(), "{} tasks still run 10 s after shutdown", tracker.len());
}

/// When the log last renewed `executor`'s lease (0 if it never did).
pub fn renewed_at(state: &StateHandle, executor: &str) -> i64 {
    state.read(|s| s.executors.executors.get(executor).map_or(0, |e| e.renewed_at))
}
