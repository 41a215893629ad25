//! The `RaftService` a state node serves to its peers: raft's own RPCs, and the leader's side of
//! forwarded writes and read indexes. It is mounted behind mutual TLS: only holders of a certificate from
//! the cluster CA reach it.

use std::io::Cursor;

use gofer_proto::v1::{self, raft_service_server::RaftService};
use openraft::Snapshot;
use tonic::{Request, Response, Status};

use crate::StateNode;
use crate::membership::ForwardOr;

/// Serves one node's raft to its peers.
#[derive(Clone)]
pub struct RaftHandler {
    pub(crate) node: StateNode,
    /// The node's task log archive, read by peers that serve a log they do not keep.
    pub(crate) logs: Option<crate::LogStore>,
}

fn bad_payload(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("payload: {e}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft messages always serialize")
}

#[tonic::async_trait]
impl RaftService for RaftHandler {
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
        let command = serde_json::from_slice(&request.into_inner().command).map_err(bad_payload)?;
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
            .ok_or_else(|| Status::unavailable("this node keeps no task logs"))?;
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
        let read = self
            .node
            .raft()
            .ensure_linearizable()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(v1::ReadIndexResponse {
            index: read.map_or(0, |log_id| log_id.index),
        }))
    }
}
