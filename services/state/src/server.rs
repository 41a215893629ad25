//! The `RaftService` a state node serves to its peers: raft's own RPCs, and the leader's side of
//! forwarded writes and read indexes. It is mounted behind mutual TLS: only holders of a certificate from
//! the cluster CA reach it, and each call only with the roles their certificate records
//! ([`crate::peers`]).

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};

use gofer_proto::v1;
use gofer_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use openraft::Snapshot;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::membership::{ForwardOr, refusal_status};
use crate::peers::{RaftCall, may_call, may_propose};
use crate::store::Change;
use crate::{Error, StateNode, Unavailable};
use gofer_tls::listen::Peer;

/// Serves one node's raft to its peers.
#[derive(Clone)]
pub struct RaftHandler {
    pub(crate) node: StateNode,
    /// The node's task log archive, read by peers that serve a log they do not keep.
    pub(crate) logs: Option<crate::LogStore>,
    /// What stamps the commands it proposes (a stored log's `PutBlob`).
    pub(crate) clock: gofer_clock::Clock,
    /// Runs the follow streams.
    pub(crate) tracker: tokio_util::task::TaskTracker,
    /// Ends the follow streams.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

/// How large a request the raft port reads, by call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimits {
    /// For `InstallSnapshot`, which carries the whole state.
    pub(crate) snapshot: usize,
    /// For every other call.
    pub(crate) other: usize,
}

impl MessageLimits {
    /// The limits a state node serves with.
    pub(crate) const DEFAULT: MessageLimits = MessageLimits {
        snapshot: crate::types::MAX_SNAPSHOT_MESSAGE_BYTES,
        other: crate::types::MAX_RAFT_MESSAGE_BYTES,
    };
}

/// The `RaftService` with a bound on each request it reads: a request over its call's bound is refused
/// (OutOfRange) from its length prefix, before its bytes are buffered. tonic bounds a whole service, so the
/// service is built twice and each call is routed to the one with its bound.
#[derive(Clone)]
pub struct RaftServer {
    snapshots: RaftServiceServer<RaftHandler>,
    other: RaftServiceServer<RaftHandler>,
}

impl RaftServer {
    pub(crate) fn new(handler: RaftHandler, limits: MessageLimits) -> Self {
        let bounded = |limit: usize| {
            RaftServiceServer::new(handler.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(crate::types::MAX_SNAPSHOT_MESSAGE_BYTES)
        };
        RaftServer {
            snapshots: bounded(limits.snapshot),
            other: bounded(limits.other),
        }
    }
}

impl tonic::server::NamedService for RaftServer {
    const NAME: &'static str = <RaftServiceServer<RaftHandler> as tonic::server::NamedService>::NAME;
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for RaftServer
where
    RaftServiceServer<RaftHandler>: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = <RaftServiceServer<RaftHandler> as tonic::codegen::Service<tonic::codegen::http::Request<B>>>::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Self::Response, Self::Error>>,
        <RaftServiceServer<RaftHandler> as tonic::codegen::Service<tonic::codegen::http::Request<B>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        std::task::ready!(self.snapshots.poll_ready(cx))?;
        self.other.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(<Self as tonic::server::NamedService>::NAME))
            .and_then(|method| method.strip_prefix('/'));
        // Refused before a byte of the request is read: the caller's certificate lacks the role.
        if let Some(call) = method.and_then(RaftCall::of) {
            let anonymous = Peer::default();
            let peer = request.extensions().get::<Peer>().unwrap_or(&anonymous);
            if let Err(refused) = may_call(peer, call) {
                let refusal = Status::permission_denied(refused.to_string()).into_http();
                return futures_util::future::Either::Left(std::future::ready(Ok(refusal)));
            }
        }
        futures_util::future::Either::Right(if method == Some("InstallSnapshot") {
            self.snapshots.call(request)
        } else {
            self.other.call(request)
        })
    }
}

/// A blob that could not be written or read here, as a Status.
fn blob_status(err: crate::BlobError) -> Status {
    use crate::BlobError;
    match err {
        BlobError::Corrupt { .. } | BlobError::Size { .. } | BlobError::Digest(_) => {
            Status::invalid_argument(err.to_string())
        }
        BlobError::DiskFull(_) => Status::resource_exhausted(err.to_string()),
        BlobError::Io { .. } | BlobError::Task(_) | BlobError::Shared(_) | BlobError::SharedUrl(_) => {
            Status::internal(err.to_string())
        }
        BlobError::NotShared(_) => Status::failed_precondition(err.to_string()),
    }
}

fn bad_payload(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("payload: {e}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft messages always serialize")
}

#[tonic::async_trait]
impl RaftService for RaftHandler {
    type FollowStream = Pin<Box<dyn Stream<Item = Result<v1::FollowResponse, Status>> + Send + 'static>>;
    type ReadBlobStream = Pin<Box<dyn Stream<Item = Result<v1::ReadBlobResponse, Status>> + Send + 'static>>;

    async fn write_blob(
        &self,
        request: Request<Streaming<v1::WriteBlobRequest>>,
    ) -> Result<Response<v1::WriteBlobResponse>, Status> {
        let store = self.node.blobs().clone();
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Status::invalid_argument("digest: the first message must name the blob"))?;
        if first.size > gofer_domain::blobs::MAX_BLOB_BYTES {
            return Err(Status::invalid_argument(format!(
                "size: a blob is at most {} bytes",
                gofer_domain::blobs::MAX_BLOB_BYTES
            )));
        }
        let mut writer = store.writer(&first.digest, first.size).map_err(blob_status)?;
        let mut data = first.data;
        loop {
            writer = tokio::task::spawn_blocking(move || writer.append(&data).map(|()| writer))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(blob_status)?;
            match inbound.next().await.transpose()? {
                Some(message) => data = message.data,
                None => break,
            }
        }
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(blob_status)?;
        Ok(Response::new(v1::WriteBlobResponse {}))
    }

    async fn read_blob(&self, request: Request<v1::ReadBlobRequest>) -> Result<Response<Self::ReadBlobStream>, Status> {
        let digest = request.into_inner().digest;
        gofer_domain::blobs::check_digest("digest", &digest).map_err(gofer_proto::into_status)?;
        let data = self
            .node
            .blobs()
            .read(&digest)
            .await
            .map_err(blob_status)?
            .ok_or_else(|| Status::not_found(format!("blob {digest} is not on this node")))?;
        let chunks: Vec<Result<v1::ReadBlobResponse, Status>> = data
            .chunks(crate::blob_copies::BLOB_CHUNK)
            .map(|chunk| Ok(v1::ReadBlobResponse { data: chunk.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn follow(&self, _request: Request<v1::FollowRequest>) -> Result<Response<Self::FollowStream>, Status> {
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = follow(node, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cluster_status(
        &self,
        _request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        Ok(Response::new(v1::ClusterStatusResponse {
            status: encode(&self.node.cluster_status()),
        }))
    }

    async fn store_task_log(
        &self,
        request: Request<Streaming<v1::StoreTaskLogRequest>>,
    ) -> Result<Response<v1::StoreTaskLogResponse>, Status> {
        let logs = self
            .logs
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node keeps no task logs"))?;
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Status::invalid_argument("key: the first message must name the attempt"))?;
        let key = first.key.ok_or_else(|| Status::invalid_argument("key: is required"))?;
        let gofer_domain::AttemptId { task: target, attempt } = gofer_domain::AttemptId::from(&key);
        let executor = first.executor_id;
        gofer_domain::validate_id("executor_id", &executor).map_err(gofer_proto::into_status)?;
        // Only for a live attempt of the executor that uploaded it (the scheduler checked the executor is
        // who it says), so a finished attempt's log is never replaced. The sender's assignment is
        // committed, but this node may not have applied it yet.
        self.node
            .read_linearizable(|s| s.check_log_upload(&target, attempt, &executor))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .map_err(gofer_proto::into_status)?;
        let chunks = inbound.map(|m| m.map(|m| m.data));
        let stored_bytes = logs.store_stream(&target, attempt, &first.data, chunks).await?;
        // The log counts as stored once it is a blob on a majority of the state nodes.
        crate::StateHandle::from(self.node.clone())
            .archive_task_log(logs, &target, attempt, self.clock.now_millis())
            .await
            .map_err(|e| Status::unavailable(format!("replicating the task log: {e}")))?;
        Ok(Response::new(v1::StoreTaskLogResponse { stored_bytes }))
    }

    async fn append_entries(
        &self,
        request: Request<v1::AppendEntriesRequest>,
    ) -> Result<Response<v1::AppendEntriesResponse>, Status> {
        let rpc = serde_json::from_slice(&request.into_inner().payload).map_err(bad_payload)?;
        let result = self.node.raft().append_entries(rpc).await;
        Ok(Response::new(v1::AppendEntriesResponse {
            payload: encode(&result),
        }))
    }

    async fn vote(&self, request: Request<v1::VoteRequest>) -> Result<Response<v1::VoteResponse>, Status> {
        let rpc = serde_json::from_slice(&request.into_inner().payload).map_err(bad_payload)?;
        let result = self.node.raft().vote(rpc).await;
        Ok(Response::new(v1::VoteResponse {
            payload: encode(&result),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<v1::InstallSnapshotRequest>,
    ) -> Result<Response<v1::InstallSnapshotResponse>, Status> {
        let request = request.into_inner();
        let vote = serde_json::from_slice(&request.vote).map_err(bad_payload)?;
        let meta = serde_json::from_slice(&request.meta).map_err(bad_payload)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(request.data)),
        };
        let result = self.node.raft().install_full_snapshot(vote, snapshot).await;
        Ok(Response::new(v1::InstallSnapshotResponse {
            payload: encode(&result),
        }))
    }

    async fn propose(&self, request: Request<v1::ProposeRequest>) -> Result<Response<v1::ProposeResponse>, Status> {
        let (name, roles) = match request.extensions().get::<Peer>() {
            Some(peer) => (peer.name.clone(), peer.roles),
            None => (String::new(), gofer_tls::Roles::NONE),
        };
        let command = serde_json::from_slice(&request.into_inner().command).map_err(bad_payload)?;
        may_propose(&name, roles, &command).map_err(|refused| Status::permission_denied(refused.to_string()))?;
        let (result, index) = self
            .node
            .propose_here(command)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::failed_precondition("not the leader: nothing was appended"))?;
        Ok(Response::new(v1::ProposeResponse {
            result: encode(&result),
            index,
        }))
    }

    async fn change_membership(
        &self,
        request: Request<v1::ChangeMembershipRequest>,
    ) -> Result<Response<v1::ChangeMembershipResponse>, Status> {
        let change = serde_json::from_slice(&request.into_inner().change).map_err(bad_payload)?;
        match self.node.change_here(&change).await {
            Ok(()) => Ok(Response::new(v1::ChangeMembershipResponse {})),
            Err(ForwardOr::Forward(leader)) => Err(Status::unavailable(format!(
                "not the leader any more; the leader is at {}",
                leader.addr
            ))),
            Err(ForwardOr::Failed(Error::Unavailable(Unavailable::ChangeMembership(refused)))) => {
                Err(refusal_status(&refused))
            }
            Err(ForwardOr::Failed(e)) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn read_task_log(
        &self,
        request: Request<v1::ReadTaskLogRequest>,
    ) -> Result<Response<v1::ReadTaskLogResponse>, Status> {
        let request = request.into_inner();
        let logs = self
            .logs
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node keeps no task logs"))?;
        let target = gofer_domain::AttemptRef {
            namespace: request.namespace_id,
            pipeline: request.pipeline_id,
            run: request.run_id,
            task: request.task_id,
        };
        let path = logs
            .path(&target, request.attempt)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let max = (request.max_bytes as usize).clamp(1, 1024 * 1024);
        let data = logs
            .read_at(&path, request.offset, max)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::ReadTaskLogResponse { data }))
    }

    async fn read_index(
        &self,
        _request: Request<v1::ReadIndexRequest>,
    ) -> Result<Response<v1::ReadIndexResponse>, Status> {
        let read = self.node.raft().ensure_linearizable().await.map_err(|e| {
            match e.forward_to_leader::<openraft::BasicNode>() {
                Some(_) => Status::failed_precondition(format!("not the leader: {e}")),
                None => Status::unavailable(e.to_string()),
            }
        })?;
        Ok(Response::new(v1::ReadIndexResponse {
            index: read.map_or(0, |log_id| log_id.index),
        }))
    }
}

/// How long a follow stream stays silent before it says it is still there.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// Sends the node's whole state, then every applied entry after it, until the follower leaves.
async fn follow(node: StateNode, tx: tokio::sync::mpsc::Sender<Result<v1::FollowResponse, Status>>) {
    'snapshot: loop {
        let (at, state, mut changes) = node.follow();
        let whole = v1::FollowResponse {
            index: at,
            change: Some(v1::follow_response::Change::State(state)),
        };
        if tx.send(Ok(whole)).await.is_err() {
            return;
        }
        let mut sent = at;
        loop {
            // Silence is broken every half second with the last index sent, so a follower can tell a
            // quiet node from a paused or unreachable one.
            let change = match tokio::time::timeout(HEARTBEAT, changes.recv()).await {
                Ok(change) => change,
                Err(_) => {
                    let heartbeat = v1::FollowResponse {
                        index: sent,
                        change: None,
                    };
                    if tx.send(Ok(heartbeat)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let message = match change {
                Ok(Change::Entry { index, .. }) if index <= at => continue,
                Ok(Change::Entry { index, command }) => {
                    sent = index;
                    v1::FollowResponse {
                        index,
                        change: command.map(|c| v1::follow_response::Change::Command(encode(&*c))),
                    }
                }
                // Fell behind, or a snapshot replaced the state: start again from the whole state.
                Err(RecvError::Lagged(_)) | Ok(Change::Reset) => continue 'snapshot,
                Err(RecvError::Closed) => return,
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
