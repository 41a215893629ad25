//! Gofer's replicated state: an openraft node whose log lives in a write-ahead file of its own
//! (`store/wal.rs`), whose vote, commit and purge marks live in one redb file and its latest snapshot in a
//! file of its own, and whose state machine is [`gofer_domain::State`] kept in memory.
//!
//! [`StateNode`] is the only door: propose a [`gofer_domain::Command`], read the applied state, watch the
//! applied index. Everything else (the raft type config, the redb store, the network) stays inside.
//!
//! This crate is the only one that touches redb. It never decides anything about pipelines or runs:
//! apply is [`gofer_domain::State::apply`], pure and deterministic, and this crate only orders, persists
//! and replays the commands it is given. A node runs alone (`goferd dev`) or as a member of a cluster,
//! reaching its peers over mutual-TLS gRPC (`network.rs`, `server.rs`); a process away from the state
//! nodes follows one of them through [`RemoteState`]. The task log archive lives here too (`logs`):
//! files under the data dir, not redb, because big bytes stay out of the log.
//!
//! A process starts its state role with [`run`] (`role.rs`): a node here or a mirror of nodes elsewhere.
//! Every task the crate spawns goes through the `TaskTracker` it is given.

mod blob_copies;
mod blobs;
mod error;
mod handle;
mod lease;
mod logs;
mod membership;
mod network;
mod node;
mod peers;
mod remote;
mod role;
mod server;
mod shared_store;
mod store;
mod types;

pub use blob_copies::{WrittenBlob, keep_blobs};
pub use blobs::{BlobError, BlobStore, digest_of};
pub use error::{Call, Error, Storage, Unavailable};
pub use handle::StateHandle;
pub use lease::{LEASE_TTL, LeaseHolder};
pub use logs::{LOG_CAP_BYTES, LogStore, LogWriter};
pub use membership::{ClusterStatus, MemberStatus, MembershipChange};
pub use network::{Faults, PeerNetwork};
pub use node::{MemberOptions, StateNode};
pub use remote::RemoteState;
pub use role::{Config, Deps, Placement, RaftPort, RunningState, Startup, retry, run};
pub use server::{RaftHandler, RaftServer};
pub use shared_store::{SharedStore, SharedStoreConfig};
pub use types::NodeId;
