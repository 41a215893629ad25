//! The raft network over gRPC: each node dials its peers' `RaftService` with mutual TLS and sends
//! openraft's messages as JSON. A node with no peers (`goferd dev`) never dials anyone.
//!
//! [`Faults`] lets the in-process test harness drop the traffic between chosen nodes, so partitions and
//! node loss are tested on the real network code; production code never sets a fault.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gofer_proto::v1::{self, raft_service_client::RaftServiceClient};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::types::{MAX_RAFT_MESSAGE_BYTES, MAX_SNAPSHOT_MESSAGE_BYTES, NodeId, TypeConfig};
use crate::{Call, Unavailable};

/// Traffic the test harness drops: `(from, to)` pairs; and nodes whose raft log syncs it holds back.
/// Empty in production.
#[derive(Clone, Default)]
pub struct Faults {
    blocked: Arc<RwLock<HashSet<(NodeId, NodeId)>>>,
    log_syncs: Arc<RwLock<HashMap<NodeId, LogSyncFault>>>,
}

/// What the test harness does to one node's raft log writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LogSyncFault {
    /// Held back until released.
    Held,
    /// Never written, and failed.
    Lost,
}

impl Faults {
    /// Drops everything between `a` and `b`, both ways.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut blocked = self.blocked.write().expect("faults lock");
        blocked.insert((a, b));
        blocked.insert((b, a));
    }

    /// Restores all traffic.
    pub fn heal(&self) {
        self.blocked.write().expect("faults lock").clear();
    }

    /// Holds back node `id`'s raft log writes (and so their syncs) until [`Faults::release_log_syncs`]:
    /// a disk that has stopped answering.
    pub fn hold_log_syncs(&self, id: NodeId) {
        self.log_syncs
            .write()
            .expect("faults lock")
            .insert(id, LogSyncFault::Held);
    }

    /// Node `id`'s held and future log writes never reach its disk and fail, as in a crash: raft on that
    /// node stops. Restart the node only after [`Faults::release_log_syncs`].
    pub fn lose_log_syncs(&self, id: NodeId) {
        self.log_syncs
            .write()
            .expect("faults lock")
            .insert(id, LogSyncFault::Lost);
    }

    /// Lets every held log write go, and ends every loss.
    pub fn release_log_syncs(&self) {
        self.log_syncs.write().expect("faults lock").clear();
    }

    /// What the harness does to node `id`'s log writes now, if anything.
    pub(crate) fn log_sync_fault(&self, id: NodeId) -> Option<LogSyncFault> {
        self.log_syncs.read().expect("faults lock").get(&id).copied()
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.read().expect("faults lock").contains(&(from, to))
    }
}

/// Whether a failed call certainly never reached its server: the connection was never made (a refused or
/// timed-out connect, a name that does not resolve, a TLS handshake that failed). Only then may a write be
/// sent again elsewhere.
///
/// tonic's channel wraps every failure of its connector (TCP connect, DNS, TLS handshake: all before the
/// first HTTP/2 frame) in [`tonic::ConnectError`], and the Status it makes of a failed call keeps that
/// error in its source chain. A connection that breaks once made fails with hyper's or h2's errors
/// instead, and the request may have reached the server. A refused connect is told apart by its
/// `io::ErrorKind` too, should it ever arrive unwrapped.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// How a node reaches its peers.
#[derive(Clone)]
pub struct PeerNetwork {
    pub(crate) id: NodeId,
    tls: Option<ClientTlsConfig>,
    pub(crate) faults: Faults,
    /// One channel per peer address for the calls outside raft's own replication (forwarded writes, read
    /// indexes, task logs, the mirror), so each does not pay a TCP and TLS handshake.
    shared: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
}

impl PeerNetwork {
    /// Node `id`'s network, dialing peers with `tls` (mutual TLS with the cluster CA); `None` only for
    /// a single node that never dials.
    pub fn new(id: NodeId, tls: Option<ClientTlsConfig>, faults: Faults) -> Self {
        PeerNetwork {
            id,
            tls,
            faults,
            shared: Arc::default(),
        }
    }

    /// The client of the peer at `addr` that this process's calls outside replication share. Its
    /// channel connects on first use and again after its connection fails: a peer that restarts or is
    /// replaced at the same address is dialled anew, and one that falls silent is dropped by the
    /// keep-alive within a few seconds.
    pub(crate) fn shared_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, Unavailable> {
        let mut shared = self.shared.lock().expect("peer channels lock");
        if let Some(client) = shared.get(addr) {
            return Ok(client.clone());
        }
        let client = self.client(addr)?;
        shared.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// A client for the peer at `addr` (such as `https://10.0.0.2:7444`).
    pub(crate) fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, Unavailable> {
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|source| Unavailable::PeerAddress {
                address: addr.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_millis(250))
            .tcp_nodelay(true)
            // A peer that is paused or cut off is noticed by its silence, not only by a closed socket.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            // No domain name is set: tonic verifies the peer's certificate against the address's own host
            // (a DNS name, or an IP address, IPv6 without its brackets), so only that peer's certificate
            // passes, not any other the cluster CA signed.
            endpoint = endpoint.tls_config(tls.clone()).map_err(Unavailable::PeerTls)?;
        }
        Ok(RaftServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_SNAPSHOT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_SNAPSHOT_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            client: self.client(&node.addr),
        }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    network: PeerNetwork,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, Unavailable>,
}

/// Room left in a raft message for the protobuf framing around a JSON payload.
const FRAMING_BYTES: usize = 64;

/// How many of `entries` to send at once when their payload of `payload_bytes` is too large for a peer
/// that reads messages of at most `limit` bytes; `None` when it fits, or is one entry and cannot be cut.
/// Entries are taken as equally large, so the estimate may take another round to fit.
fn entries_that_fit(entries: usize, payload_bytes: usize, limit: usize) -> Option<u64> {
    let room = limit.saturating_sub(FRAMING_BYTES);
    if payload_bytes <= room || entries <= 1 {
        return None;
    }
    let fits = (entries as u128 * room as u128 / payload_bytes as u128) as u64;
    Some(fits.clamp(1, entries as u64 - 1))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft messages always serialize")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, NetworkError> {
    serde_json::from_slice(bytes).map_err(|e| NetworkError::new(&e))
}

impl PeerConnection {
    /// The client, unless the harness cut this link or the address is bad.
    fn client(&self) -> Result<RaftServiceClient<Channel>, Unreachable> {
        if self.network.faults.is_cut(self.network.id, self.target) {
            return Err(Unreachable::new(&Unavailable::Cut(self.target)));
        }
        match &self.client {
            Ok(client) => Ok(client.clone()),
            Err(e) => Err(Unreachable::new(e)),
        }
    }

    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

fn transport<E: std::error::Error>(target: NodeId, status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&Unavailable::call(Call::Raft(target), status)))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let payload = encode(&rpc);
        if let Some(fits) = entries_that_fit(rpc.entries.len(), payload.len(), MAX_RAFT_MESSAGE_BYTES) {
            // Too large for the peer to read: openraft sends fewer entries at a time for a while.
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fits)));
        }
        let request = Self::request(v1::AppendEntriesRequest { payload }, &option);
        let reply = client
            .append_entries(request)
            .await
            .map_err(|s| transport(self.target, s))?;
        let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            decode(&reply.into_inner().payload).map_err(RPCError::Network)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        // Snapshots travel whole through `full_snapshot`; openraft calls this chunked form only from its
        // default `full_snapshot`, which is replaced below.
        Err(RPCError::Unreachable(Unreachable::new(&Unavailable::ChunkedSnapshot(
            self.target,
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let request = Self::request(v1::VoteRequest { payload: encode(&rpc) }, &option);
        let reply = client.vote(request).await.map_err(|s| transport(self.target, s))?;
        let result: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            decode(&reply.into_inner().payload).map_err(RPCError::Network)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        let message = v1::InstallSnapshotRequest {
            vote: encode(&vote),
            meta: encode(&snapshot.meta),
            data: snapshot.snapshot.into_inner(),
        };
        let reply =
            client
                .install_snapshot(Self::request(message, &option))
                .await
                .map_err(|status| match transport::<Fatal<NodeId>>(self.target, status) {
                    RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                    RPCError::Network(e) => StreamingError::Network(e),
                    other => StreamingError::Network(NetworkError::new(&other)),
                })?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            decode(&reply.into_inner().payload).map_err(StreamingError::Network)?;
        result.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[cfg(test)]
mod tests;
