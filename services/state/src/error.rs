//! Why a state operation failed, as types: a refusal by the state machine, a state that is unavailable for
//! now (and why), or storage that failed. The retry loops here and the callers' Status mappings decide on
//! these variants and on the typed errors they carry (openraft's, tonic's, redb's), never on a message.

use std::path::PathBuf;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};

use crate::types::NodeId;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state machine refused the command; the state is unchanged.
    #[error(transparent)]
    Rejected(#[from] gofer_domain::Error),
    /// Raft or a peer could not take or answer the call now: no leader, a leader change, an unreachable
    /// node, a node that is shut down. The same call may succeed later.
    #[error("state is unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// Opening or reading the node's files failed.
    #[error("state storage: {0}")]
    Storage(#[from] Storage),
    /// A blob could not be written or read on this node.
    #[error(transparent)]
    Blob(#[from] crate::BlobError),
}

/// Why the state is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("invalid raft config: {0}")]
    Config(#[source] Box<openraft::ConfigError>),
    #[error("starting raft: {0}")]
    Start(#[source] Box<Fatal<NodeId>>),
    /// Raft on this node stopped: it was shut down, or its storage failed.
    #[error(transparent)]
    Stopped(Box<Fatal<NodeId>>),
    #[error("initializing raft: {0}")]
    Initialize(#[source] Box<RaftError<NodeId, InitializeError<NodeId, BasicNode>>>),
    /// Raft's metrics did not reach what was waited for in time, or raft shut down meanwhile.
    #[error(transparent)]
    Wait(#[from] openraft::metrics::WaitError),
    /// Raft on this node did not take a write (its raft stopped).
    #[error(transparent)]
    Write(Box<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>),
    /// The leader refused a membership change: another is in progress (retried for a while), or a voter to
    /// add is not a learner yet.
    #[error(transparent)]
    ChangeMembership(Box<ChangeMembershipError<NodeId>>),
    /// This node could not serve a linearizable read (its raft stopped).
    #[error(transparent)]
    Linearize(Box<RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>>),
    /// No leader is known yet: an election is under way.
    #[error("no leader is known yet; retry")]
    NoLeader,
    /// The cluster has not committed its first command yet.
    #[error("the cluster is not initialized yet")]
    NotInitialized,
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("peer address {address:?}: {source}")]
    PeerAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("peer TLS: {0}")]
    PeerTls(#[source] tonic::transport::Error),
    /// A task proposing a role's first commands (the cluster id, the event retention, the built-in
    /// extensions) ended without finishing.
    #[error("the first commands: {0}")]
    FirstCommands(#[source] tokio::task::JoinError),
    /// The in-process test harness cut the link to this node.
    #[error("node {0}: cut by the test harness")]
    Cut(NodeId),
    #[error("node {0}: snapshots are sent whole, not in chunks")]
    ChunkedSnapshot(NodeId),
    /// A call to another state node failed; its Status keeps the code and the transport error behind it.
    #[error("{call}: {}", .status.message())]
    Call {
        call: Call,
        #[source]
        status: Box<tonic::Status>,
    },
    /// Another state node's reply could not be decoded.
    #[error("decoding a state node's reply: {0}")]
    Reply(#[source] serde_json::Error),
    /// No state node answered a process away from them.
    #[error("no state node answered within {} s: {}", .waited.as_secs(), .addresses.join(", "))]
    NoAnswer { waited: Duration, addresses: Vec<String> },
    /// The mirror of a process away from the state nodes stopped following them.
    #[error("the mirror stopped")]
    MirrorStopped,
    /// The mirror did not apply an index the leader had; it moves to another node.
    #[error("the state node this process follows has not applied index {0}; moving to another; retry")]
    MirrorBehind(u64),
    /// The node the mirror follows ended its stream.
    #[error("the node closed the stream")]
    FollowEnded,
    /// The node the mirror follows said nothing, not even a heartbeat, for this long.
    #[error("the node said nothing for {} s", .0.as_secs())]
    FollowSilent(Duration),
    #[error("raft ended badly: {0}")]
    Shutdown(#[source] tokio::task::JoinError),
    #[error("the redb file is still open {} s after raft stopped", .0.as_secs())]
    StillOpen(Duration),
    /// Too few state nodes stored a blob for it to count as written.
    #[error(
        "blob {digest} was stored on {stored} of {voters} state nodes; {needed} are needed{}",
        .last.as_ref().map(|e| format!(" (last failure: {e})")).unwrap_or_default()
    )]
    NoBlobMajority {
        digest: String,
        stored: usize,
        needed: usize,
        voters: usize,
        last: Option<Box<Error>>,
    },
    /// No state node could serve a blob: none that holds it answered with bytes matching its digest.
    #[error(
        "no state node could serve blob {digest} (asked nodes {asked:?}){}",
        .last.as_ref().map(|e| format!("; last failure: {e}")).unwrap_or_default()
    )]
    BlobUnreadable {
        digest: String,
        asked: Vec<NodeId>,
        last: Option<Box<Error>>,
    },
}

/// Which call to another state node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Raft's own messages to a peer.
    Raft(NodeId),
    /// A write forwarded to the leader, which failed after it may have been appended.
    Forward,
    /// A write sent to a node that does not lead (any more): it appended nothing.
    NotLeader,
    /// A write whose connection was never made: it never left.
    NeverSent,
    ReadIndex,
    /// A write sent to a state node from away, which failed after it may have been appended.
    Propose,
    ClusterStatus,
    ChangeMembership,
    Follow,
    ReadLog(NodeId),
    StoreLog(NodeId),
    WriteBlob(NodeId),
    ReadBlob(NodeId),
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Raft(node) => write!(f, "node {node}"),
            Call::Forward => f.write_str("forwarding to the leader"),
            Call::NotLeader => f.write_str("the node asked does not lead"),
            Call::NeverSent => f.write_str("the connection was never made"),
            Call::ReadIndex => f.write_str("asking for a read index"),
            Call::Propose => f.write_str("proposing to a state node"),
            Call::ClusterStatus => f.write_str("asking for the cluster status"),
            Call::ChangeMembership => f.write_str("asking for a membership change"),
            Call::Follow => f.write_str("following a state node"),
            Call::ReadLog(node) => write!(f, "reading the log from node {node}"),
            Call::StoreLog(node) => write!(f, "storing the log on node {node}"),
            Call::WriteBlob(node) => write!(f, "writing a blob on node {node}"),
            Call::ReadBlob(node) => write!(f, "reading a blob from node {node}"),
        }
    }
}

impl Unavailable {
    /// A failed call to another state node.
    pub(crate) fn call(call: Call, status: tonic::Status) -> Unavailable {
        Unavailable::Call {
            call,
            status: Box::new(status),
        }
    }
}

/// Why a node's files could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum Storage {
    #[error("creating {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {}: {source}", .path.display())]
    Redb {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The raft log in `path` could not be opened or written: damaged, out of order, unreadable.
    #[error("the raft log in {}: {source}", .path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checking the raft log moved out of redb: {0}")]
    LogMoveCheck(#[source] std::io::Error),
    #[error(
        "both {} and the redb file hold a raft log: was an older Gofer run on this data directory? Refusing to \
         choose one",
        .0.display()
    )]
    TwoLogs(PathBuf),
    #[error(
        "the raft log directory {} is missing, and this node's log was there: restore it, or remove the whole \
         data directory to start the node afresh",
        .0.display()
    )]
    LogDirMissing(PathBuf),
    #[error("decoding the last purged log id: {0}")]
    DecodePurged(#[source] serde_json::Error),
    #[error("decoding raft log entry {index}: {source}")]
    DecodeEntry {
        index: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding the snapshot meta: {0}")]
    DecodeSnapshotMeta(#[source] serde_json::Error),
    #[error("decoding the snapshot: {0}")]
    DecodeSnapshot(#[source] serde_json::Error),
    /// The stored snapshot's state is not at the log id its meta names.
    #[error("the snapshot disagrees with its meta {0}")]
    SnapshotMismatch(String),
    #[error("the blocking open failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("starting the raft log writer: {0}")]
    LogWriter(#[source] std::io::Error),
}
