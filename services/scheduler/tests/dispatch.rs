//! The dispatch stream's hello and welcome, served over a real loopback connection.

use gofer_domain::Command;
use gofer_proto::v1::dispatch_service_client::DispatchServiceClient;
use gofer_proto::v1::dispatch_service_server::DispatchServiceServer;
use gofer_proto::v1::{self, dispatch_request, dispatch_response};
use gofer_scheduler::{DispatchHandler, Scheduler};
use gofer_state::{LogStore, StateNode};
use tokio_stream::StreamExt;

async fn hello(
    client: &mut DispatchServiceClient<tonic::transport::Channel>,
) -> Result<v1::DispatchResponse, tonic::Status> {
    let hello = v1::DispatchRequest {
        kind: Some(dispatch_request::Kind::Hello(v1::ExecutorHello {
            executor_id: "node1".into(),
        })),
    };
    // The stream stays open (pending) after the hello, as an executor's does.
    let outbound = tokio_stream::iter([hello]).chain(tokio_stream::pending());
    let mut inbound = client.dispatch(outbound).await?.into_inner();
    match inbound.message().await? {
        Some(first) => Ok(first),
        None => Err(tonic::Status::internal("the stream closed without a message")),
    }
}

#[tokio::test]
async fn an_executor_is_welcomed_only_once_the_cluster_has_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateNode::open_single(&dir.path().join("state")).await.unwrap();
    let handler = DispatchHandler::new(Scheduler::new(state.clone()), LogStore::new(dir.path().join("logs")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatchServiceServer::new(handler))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = DispatchServiceClient::connect(format!("http://{addr}")).await.unwrap();

    // Before Init, a welcome would carry an empty cluster id, and "this cluster's containers" would
    // match every cluster's on the Docker host: the hello is refused as retryable instead.
    let refused = hello(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    state
        .propose(Command::Init {
            cluster_id: "c0ffee".into(),
            at: 1,
        })
        .await
        .unwrap();
    let welcomed = hello(&mut client).await.unwrap();
    match welcomed.kind {
        Some(dispatch_response::Kind::Welcome(welcome)) => {
            assert_eq!(welcome.cluster_id, "c0ffee");
            assert!(welcome.live_attempts.is_empty());
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    server.abort();
}
