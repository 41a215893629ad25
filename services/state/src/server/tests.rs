//! The raft port's bound on each request: a request over its call's bound is refused before it is read,
//! `InstallSnapshot` has a bound of its own, and the largest command Gofer makes fits the other one.

use std::time::Duration;

use gofer_domain::{AttemptOutcome, AttemptRef, Command};
use gofer_proto::v1::raft_service_client::RaftServiceClient;

use super::*;

/// Serves a single node's `RaftService` on loopback with `limits` until `shutdown`; returns a client
/// that sends and reads anything up to 1 GiB.
async fn serve(
    node: &StateNode,
    limits: MessageLimits,
    shutdown: &tokio_util::sync::CancellationToken,
) -> RaftServiceClient<tonic::transport::Channel> {
    let handler = RaftHandler {
        node: node.clone(),
        logs: None,
        clock: gofer_clock::Clock::system(),
        tracker: tokio_util::task::TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    // Every call comes as from a state node's certificate: the bounds are under test here, not the roles.
    let state_node = |mut request: Request<()>| {
        request.extensions_mut().insert(Peer {
            certificate: Some(std::sync::Arc::from(&b"verified"[..])),
            roles: gofer_tls::Roles::ALL,
            ..Peer::default()
        });
        Ok(request)
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(state_node))
            .add_service(RaftServer::new(handler, limits))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            }),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    RaftServiceClient::new(channel)
        .max_decoding_message_size(crate::types::MAX_SNAPSHOT_MESSAGE_BYTES)
        .max_encoding_message_size(crate::types::MAX_SNAPSHOT_MESSAGE_BYTES)
}

/// The code a call failed with, within 10 s.
async fn code_of<T: std::fmt::Debug>(call: impl std::future::Future<Output = Result<T, Status>>) -> tonic::Code {
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends within 10 s");
    result.expect_err("the call is refused").code()
}

#[tokio::test]
async fn a_request_over_its_calls_bound_is_refused_and_a_snapshot_has_a_bound_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = StateNode::open_single(&dir.path().join("state")).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let limits = MessageLimits {
        snapshot: 64 * 1024,
        other: 1024,
    };
    let mut client = serve(&node, limits, &shutdown).await;
    let bytes = |n: usize| vec![b'x'; n];

    // Within the bound a call reaches its handler (which refuses what is not JSON); over it, it does not.
    let propose = |command| v1::ProposeRequest { command };
    assert_eq!(
        code_of(client.propose(propose(bytes(512)))).await,
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code_of(client.propose(propose(bytes(2 * 1024)))).await,
        tonic::Code::OutOfRange
    );
    let append = v1::AppendEntriesRequest {
        payload: bytes(2 * 1024),
    };
    assert_eq!(code_of(client.append_entries(append)).await, tonic::Code::OutOfRange);

    // A snapshot is read up to its own, larger bound.
    let snapshot = |data| v1::InstallSnapshotRequest {
        vote: b"not json".to_vec(),
        meta: Vec::new(),
        data,
    };
    assert_eq!(
        code_of(client.install_snapshot(snapshot(bytes(2 * 1024)))).await,
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code_of(client.install_snapshot(snapshot(bytes(128 * 1024)))).await,
        tonic::Code::OutOfRange
    );
    shutdown.cancel();
    node.shutdown().await.unwrap();
}

#[test]
fn the_largest_batch_of_reports_fits_a_raft_message() {
    // A scheduler's Batch holds at most MAX_BATCH commands; a report's reason is cut to MAX_REASON_CHARS
    // before it is queued, and a control character is the worst case, six bytes of JSON each.
    let reason = "\u{1}".repeat(gofer_domain::inputs::MAX_REASON_CHARS);
    let target = AttemptRef {
        namespace: "n".repeat(gofer_domain::MAX_ID_LEN),
        pipeline: "p".repeat(gofer_domain::MAX_ID_LEN),
        run: u64::MAX,
        task: "t".repeat(gofer_domain::MAX_ID_LEN),
    };
    let report = Command::AttemptFinished {
        target,
        attempt: u32::MAX,
        outcome: AttemptOutcome::Error(reason),
        log_node: u64::MAX,
        executor: "e".repeat(gofer_domain::MAX_ID_LEN),
        at: i64::MIN,
    };
    let batch = Command::Batch {
        commands: vec![report; gofer_domain::MAX_BATCH],
    };
    let bytes = serde_json::to_vec(&batch).unwrap().len();
    assert!(
        bytes < crate::types::MAX_RAFT_MESSAGE_BYTES,
        "{bytes} bytes of JSON do not fit a raft message"
    );
}
