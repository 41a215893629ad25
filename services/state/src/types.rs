//! The raft type config (what a log entry carries and what applying one returns) and the raft timing.
//!
//! It exists so that the store, the network and the node agree on one set of types in one place. It
//! refuses to hold behaviour: no IO here, only types and the tuned [`raft_config`].

use gofer_domain::{Applied, Command};
use openraft::{Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};

/// Raft node ids. Node 1 is the single node of `StateNode::open_single`.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Gofer's raft types: log entries carry a [`Command`], applying one gives a [`Response`].
    pub(crate) TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// What applying one log entry produced.
///
/// A refused command is not a raft failure: its `Err` is the deterministic result of that entry on every
/// node. Blank and membership entries produce `Ok(Applied::Done)`; no client waits for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Response(pub(crate) Result<Applied, gofer_domain::Error>);

/// The largest request a state node reads on its raft port, but for `InstallSnapshot`: 128 MiB.
///
/// It fits the largest legitimate one: a single command, forwarded in a `Propose` or alone in an
/// `AppendEntries`. The largest commands are a `RegisterPipeline` from a 16 MiB API request (at worst
/// about 96 MiB of JSON, were every byte escaped), a scheduler `Batch` of at most 4096 commands (1024
/// reports whose reasons are cut to 4096 characters: under 25 MiB at worst), and a `Fire` batch, which the
/// extension host cuts at 16 MiB. An `AppendEntries` that would be larger is sent as several smaller ones
/// (`network.rs`), and a task log travels in chunks of at most 16 MiB, the API port's message bound.
pub(crate) const MAX_RAFT_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// The largest `InstallSnapshot` a state node reads, and the largest message it writes: 1 GiB. A snapshot
/// travels whole, as one message (and so does the state a mirror's `Follow` starts with), so this bounds
/// the state a follower that fell behind the compacted log can be given; sending snapshots in chunks would
/// let it shrink to the bound above.
pub(crate) const MAX_SNAPSHOT_MESSAGE_BYTES: usize = 1024 * 1024 * 1024;

/// The raft timing and log compaction Gofer runs with.
///
/// Heartbeats every 50 ms and election timeouts of 250 to 500 ms. A follower that heard from its leader
/// waits out the leader lease (openraft makes it the longest election timeout) and then its own timeout,
/// so a lost leader is replaced 750 to 1000 ms after its last heartbeat (etcd's defaults, 100 ms and 1 s,
/// take about two; see `bench/RESULTS.md`, raft-write). 200 to 350 ms cut the failover to about 700 ms,
/// but under a loaded host (a replication that times out backs off for 500 ms) it let followers start
/// elections, and a compose test saw the scheduler lease not move for a minute; it is not used until that
/// is understood. A snapshot is taken every 5000 entries and the last
/// 1000 entries before it stay in the log, so a follower that lags a little catches up from the log instead
/// of a snapshot.
pub(crate) fn raft_config() -> Config {
    Config {
        cluster_name: "gofer".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 250,
        election_timeout_max: 500,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Config::default()
    }
}
