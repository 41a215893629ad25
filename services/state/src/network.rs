//! The raft network: for now, one that reaches nobody.
//!
//! A single-voter cluster never sends an RPC, so openraft never calls these connections; they exist so
//! that `StateNode` is a real openraft node and not a shortcut around raft. Every RPC answers
//! `Unreachable`, which openraft treats as "back off and retry", never as a reply. The gRPC network
//! (append entries, vote, snapshot transfer between goferd processes) arrives with the three-node issue
//! and replaces this file; it refuses to pretend to deliver anything until then.

use std::future::Future;

use openraft::error::{
    Fatal, InstallSnapshotError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};

use crate::Error;
use crate::types::{NodeId, TypeConfig};

/// Makes connections to peers; each one is [`Unconnected`].
pub(crate) struct NoNetwork;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = Unconnected;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Unconnected {
        Unconnected { target }
    }
}

/// A connection to `target` that fails every RPC as unreachable.
pub(crate) struct Unconnected {
    target: NodeId,
}

impl Unconnected {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&Error::Unavailable(format!(
            "no raft network to node {} yet: gofer-state runs a single node",
            self.target
        )))
    }
}

impl RaftNetwork<TypeConfig> for Unconnected {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote<NodeId>,
        _snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
