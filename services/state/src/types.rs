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
