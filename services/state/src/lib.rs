//! Gofer's replicated state: an openraft node whose log, vote and snapshots live in one redb file, and
//! whose state machine is [`gofer_domain::State`] kept in memory.
//!
//! [`StateNode`] is the only door: propose a [`gofer_domain::Command`], read the applied state, watch the
//! applied index. Everything else (the raft type config, the redb store, the network) stays inside.
//!
//! This crate is the only one that touches redb. It never decides anything about pipelines or runs:
//! apply is [`gofer_domain::State::apply`], pure and deterministic, and this crate only orders, persists
//! and replays the commands it is given. It runs a single voter for now; the gRPC network that makes it a
//! three-node cluster arrives with the three-node issue (see `network.rs`). The task log archive lives
//! here too (`logs`): files under the data dir, not redb, because big bytes stay out of the log.
//!
//! A process starts its state role with [`run`] (`role.rs`): a node here or a mirror of nodes elsewhere.
//! Every task the crate spawns goes through the `TaskTracker` it is given.

mod handle;
mod lease;
mod logs;
mod membership;
mod network;
mod node;
mod remote;
mod role;
mod server;
mod store;
mod types;

pub use handle::StateHandle;
pub use lease::{LEASE_TTL, LeaseHolder};
pub use logs::{LOG_CAP_BYTES, LogStore, LogWriter};
pub use membership::{ClusterStatus, MemberStatus, MembershipChange};
pub use network::{Faults, PeerNetwork};
pub use node::{MemberOptions, StateNode};
pub use remote::RemoteState;
pub use role::{Config, Deps, Placement, RaftPort, RunningState, Startup, retry, run};
pub use server::RaftHandler;
pub use types::NodeId;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state machine refused the command; the state is unchanged.
    #[error(transparent)]
    Rejected(#[from] gofer_domain::Error),
    /// Raft or its storage failed, this node is not the leader, or it is shut down.
    #[error("state is unavailable: {0}")]
    Unavailable(String),
    /// Opening or reading the redb file failed.
    #[error("state storage: {0}")]
    Storage(String),
}
