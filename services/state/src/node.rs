//! [`StateNode`]: one running raft node with its store, and the calls the rest of Gofer makes on it.
//!
//! It owns the node's life: open the store, start raft, initialize a fresh single-voter membership or join
//! the members it is given, wait until it has applied what was committed, and shut down until the store
//! is closed. It refuses to bypass raft: every change goes through `client_write` (forwarded to the leader
//! from a follower), and reads see only applied state. `read` is local; `read_linearizable` first waits
//! until this node has applied the leader's read index, so it sees every write acknowledged anywhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use gofer_domain::{Applied, Command, State};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState};
use tokio::sync::{oneshot, watch};

use crate::network::{Faults, PeerNetwork};
use crate::store::{self, AppliedState};
use crate::types::{NodeId, TypeConfig, raft_config};
use crate::{Call, Error, Storage, Unavailable};

/// The id of the only node of a single-node cluster.
const SINGLE_NODE_ID: NodeId = 1;
/// The redb file's name inside the data directory.
const STATE_FILE: &str = "state.redb";
/// The blob directory's name inside the data directory.
const BLOBS_DIR: &str = "blobs";
/// How long opening waits for leadership, and shutting down for the redb file to close.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why a forwarded write did not come back with a result.
enum Forwarded {
    /// Certainly not appended: safe to try again.
    NotSent(Unavailable),
    /// Perhaps appended: trying again could commit the command twice.
    Failed(Error),
}

/// How a cluster member compacts its log.
#[derive(Debug, Clone, Copy)]
pub struct MemberOptions {
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Keep this many entries before a snapshot, so a follower that lags a little catches up from the
    /// log; one that lags more gets the snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            snapshot_every_entries: 5000,
            logs_kept_after_snapshot: 1000,
        }
    }
}

/// A running state node: openraft, its redb store, and the applied [`State`] in memory.
///
/// Clones share the node. Call [`StateNode::shutdown`] before dropping the last clone: only that stops
/// raft's tasks and closes the redb file.
#[derive(Clone)]
pub struct StateNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    network: PeerNetwork,
    applied: Arc<RwLock<AppliedState>>,
    applied_index: watch::Receiver<u64>,
    changes: tokio::sync::broadcast::Sender<store::Change>,
    /// The blob files this node keeps (see `blob_copies.rs`).
    blobs: crate::BlobStore,
    /// The S3 tier of the blob layer, if the process was given one.
    shared: std::sync::OnceLock<crate::SharedStore>,
    /// Taken by the first `shutdown`; completes once the redb file is closed.
    closed: Mutex<Option<oneshot::Receiver<()>>>,
    /// The node's own tasks (its compaction), stopped by `shutdown`.
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl StateNode {
    /// Opens (or creates) `data_dir/state.redb`, builds raft node 1, and on a fresh store initializes a
    /// one-node membership. Returns once this node is leader and has applied everything committed, or
    /// `Error::Unavailable` after 10 s.
    pub async fn open_single(data_dir: &Path) -> Result<StateNode, Error> {
        StateNode::open_with(data_dir, raft_config()).await
    }

    /// [`StateNode::open_single`] with a given raft config, so tests can snapshot after a few entries.
    pub(crate) async fn open_with(data_dir: &Path, config: Config) -> Result<StateNode, Error> {
        let network = PeerNetwork::new(SINGLE_NODE_ID, None, Faults::default());
        let node = StateNode::start(data_dir, config, network).await?;
        if let Err(error) = node.become_leader().await {
            if let Err(shutdown_error) = node.shutdown().await {
                tracing::warn!(%shutdown_error, "shutting down a state node that failed to open");
            }
            return Err(error);
        }
        tracing::info!(data_dir = %data_dir.display(), applied = *node.inner.applied_index.borrow(), "state node open");
        Ok(node)
    }

    /// Opens node `network.id` of a cluster on `data_dir`. With `bootstrap`, a fresh node initializes the
    /// cluster with those members (id → raft address); every member of a new cluster may be given the
    /// same list. It returns without waiting for a leader.
    pub async fn open_member(
        data_dir: &Path,
        network: PeerNetwork,
        bootstrap: Option<BTreeMap<NodeId, String>>,
        options: MemberOptions,
    ) -> Result<StateNode, Error> {
        let mut config = raft_config();
        config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_every_entries);
        config.max_in_snapshot_log_to_keep = options.logs_kept_after_snapshot;
        let config = config.validate().map_err(|e| Unavailable::Config(Box::new(e)))?;
        let node = StateNode::start(data_dir, config, network).await?;
        if let Some(members) = bootstrap {
            let initialized = node
                .inner
                .raft
                .is_initialized()
                .await
                .map_err(|e| Unavailable::Stopped(Box::new(e)))?;
            if !initialized {
                let members: BTreeMap<NodeId, BasicNode> =
                    members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                match node.inner.raft.initialize(members).await {
                    Ok(()) => {}
                    // Another member initialized first, and its log reached us: that is the same cluster.
                    Err(e) if e.api_error().is_some() => tracing::info!(%e, "cluster already initialized"),
                    Err(e) => return Err(Unavailable::Initialize(Box::new(e)).into()),
                }
            }
        }
        Ok(node)
    }

    /// Starts raft on the store in `data_dir`. The config's `LogsSinceLast(N)` is the fewest entries
    /// between snapshots; the node itself decides when one is due (`node/compaction.rs`), so raft's own
    /// policy is turned off.
    async fn start(data_dir: &Path, mut config: Config, network: PeerNetwork) -> Result<StateNode, Error> {
        let every = match config.snapshot_policy {
            openraft::SnapshotPolicy::LogsSinceLast(every) => Some(every),
            openraft::SnapshotPolicy::Never => None,
        };
        config.snapshot_policy = openraft::SnapshotPolicy::Never;
        let config = config.validate().map_err(|e| Unavailable::Config(Box::new(e)))?;
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| Storage::CreateDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let blobs_dir = data_dir.join(BLOBS_DIR);
        let blobs = tokio::task::spawn_blocking(move || crate::BlobStore::open(&blobs_dir))
            .await
            .map_err(Storage::Task)??;
        let store = store::open(data_dir.join(STATE_FILE)).await?;
        store.log.gate_with(network.faults.clone(), network.id);
        let raft = Raft::new(
            network.id,
            Arc::new(config),
            network.clone(),
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| Unavailable::Start(Box::new(e)))?;
        let (tracker, stop) = (
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        if let Some(every) = every {
            let watched = compaction::Watched {
                raft: raft.clone(),
                applied_index: store.applied_index.clone(),
                snapshot_stored: store.snapshot_stored,
                growth: store.growth,
                every,
            };
            tracker.spawn(compaction::keep_compacting(watched, stop.clone()));
        }
        tracker.close();
        Ok(StateNode {
            inner: Arc::new(Inner {
                id: network.id,
                raft,
                network,
                applied: store.applied,
                applied_index: store.applied_index,
                changes: store.changes,
                blobs,
                shared: std::sync::OnceLock::new(),
                closed: Mutex::new(Some(store.closed)),
                tracker,
                stop,
            }),
        })
    }

    /// Initializes a fresh store, then waits until this node leads and has applied an entry of its own
    /// term: raft commits earlier entries only through one, so then everything committed is applied.
    async fn become_leader(&self) -> Result<(), Error> {
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Unavailable::Stopped(Box::new(e)))?;
        if !initialized {
            // The address stays empty until the three-node issue gives nodes a gRPC address.
            let members = BTreeMap::from([(SINGLE_NODE_ID, BasicNode::default())]);
            raft.initialize(members)
                .await
                .map_err(|e| Unavailable::Initialize(Box::new(e)))?;
        }
        raft.wait(Some(DEADLINE))
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.current_leader == Some(SINGLE_NODE_ID)
                        && m.last_applied
                            .is_some_and(|applied| applied.leader_id.term == m.current_term)
                },
                "leader with an applied entry of its term",
            )
            .await
            .map_err(Unavailable::from)?;
        Ok(())
    }

    /// Proposes a command through raft; returns after it is committed (fsynced) and applied.
    ///
    /// A command the state machine refused comes back as `Error::Rejected`, and changed nothing.
    /// On a follower the command is forwarded to the leader, and this returns once this node has applied
    /// it too, so a read here right after sees the write.
    ///
    /// While the leader changes, the write is tried again for up to 10 s, but only when it certainly was
    /// not appended anywhere (no leader known, a leader that says it no longer leads, a connection that was
    /// never made): a retry must never commit a command twice.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut metrics = self.inner.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            let not_sent = match self.inner.raft.client_write(command.clone()).await {
                Ok(response) => return Ok(response.data.0?),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                    leader_node: Some(leader),
                    ..
                }))) => match self.forward(&leader.addr, &command).await {
                    Ok((result, index)) => {
                        self.wait_applied(index).await?;
                        return Ok(result?);
                    }
                    Err(Forwarded::NotSent(why)) => why,
                    Err(Forwarded::Failed(e)) => return Err(e),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Unavailable::NoLeader,
                Err(e) => return Err(Unavailable::Write(Box::new(e)).into()),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(not_sent.into());
            }
            // Tried again as soon as this node hears of another leader, and every 50 ms in any case.
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                metrics.wait_for(|m| m.current_leader != leader),
            )
            .await;
        }
    }

    /// Commits a command on this node, which must lead; returns its result and log index.
    /// `Ok(None)` means this node does not lead (any more) and appended nothing.
    pub(crate) async fn propose_here(
        &self,
        command: Command,
    ) -> Result<Option<(Result<Applied, gofer_domain::Error>, u64)>, Error> {
        match self.inner.raft.client_write(command).await {
            Ok(response) => Ok(Some((response.data.0, response.log_id.index))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(e) => Err(Unavailable::Write(Box::new(e)).into()),
        }
    }

    async fn forward(
        &self,
        leader: &str,
        command: &Command,
    ) -> Result<(Result<Applied, gofer_domain::Error>, u64), Forwarded> {
        let mut client = self.peer_client(leader).map_err(Forwarded::Failed)?;
        let request = gofer_proto::v1::ProposeRequest {
            command: serde_json::to_vec(command).expect("commands always serialize"),
        };
        let reply = match client.propose(request).await {
            Ok(reply) => reply.into_inner(),
            // The leader appended nothing: it no longer leads.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(Forwarded::NotSent(Unavailable::call(Call::NotLeader, s)));
            }
            // The connection was never made, so the request never left.
            Err(s) if crate::network::never_sent(&s) => {
                return Err(Forwarded::NotSent(Unavailable::call(Call::NeverSent, s)));
            }
            Err(s) => return Err(Forwarded::Failed(Unavailable::call(Call::Forward, s).into())),
        };
        let result =
            serde_json::from_slice(&reply.result).map_err(|e| Forwarded::Failed(Unavailable::Reply(e).into()))?;
        Ok((result, reply.index))
    }

    /// Waits (10 s at most) until this node has applied `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), Error> {
        self.inner
            .raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "applied the forwarded write")
            .await
            .map(|_| ())
            .map_err(|e| Unavailable::from(e).into())
    }

    /// Runs `f` on the applied state once this node has applied everything the cluster committed before
    /// the call: a linearizable read, through the leader's read index.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, Error> {
        // Reads change nothing, so any failure while the leader changes is tried again, for up to 10 s.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match self.read_barrier().await {
                Ok(()) => return Ok(self.read(f)),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until this node has applied the leader's read index.
    async fn read_barrier(&self) -> Result<(), Error> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(ForwardToLeader {
                leader_node: Some(leader),
                ..
            }))) => {
                let mut client = self.peer_client(&leader.addr)?;
                let index = client
                    .read_index(gofer_proto::v1::ReadIndexRequest {})
                    .await
                    .map_err(|s| Unavailable::call(Call::ReadIndex, s))?
                    .into_inner()
                    .index;
                self.wait_applied(index).await
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(Unavailable::NoLeader.into()),
            Err(e) => Err(Unavailable::Linearize(Box::new(e)).into()),
        }
    }

    /// A client for the peer at `addr`.
    pub(crate) fn peer_client(
        &self,
        addr: &str,
    ) -> Result<gofer_proto::v1::raft_service_client::RaftServiceClient<tonic::transport::Channel>, Error> {
        Ok(self.inner.network.shared_client(addr)?)
    }

    /// Whether this node leads the cluster right now. Roles that must act once per cluster (the
    /// scheduler, the trigger timers, extension containers) act only while it does.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A client for member `node`, at the address the membership lists.
    pub(crate) fn member_client(
        &self,
        node: NodeId,
    ) -> Result<gofer_proto::v1::raft_service_client::RaftServiceClient<tonic::transport::Channel>, Error> {
        let address = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
            .ok_or(Unavailable::NotAMember(node))?;
        self.peer_client(&address)
    }

    /// The blob files this node keeps.
    pub fn blobs(&self) -> &crate::BlobStore {
        &self.inner.blobs
    }

    /// Keeps blobs in the S3 tier `store` from now on instead of on the state nodes (set once, before the
    /// process serves).
    pub fn use_shared_store(&self, store: crate::SharedStore) {
        let _ = self.inner.shared.set(store);
    }

    /// The S3 tier of the blob layer, if the process was given one.
    pub(crate) fn shared_store(&self) -> Option<&crate::SharedStore> {
        self.inner.shared.get()
    }

    /// This node's raft id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The raft handle, for the node's RPC server.
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// The `RaftService` this node serves to its peers, reading task logs from `logs`; mount it behind
    /// mutual TLS. Its long-lived streams (`Follow`) run on `tracker` and end when `shutdown` is
    /// cancelled, so the server can drain.
    pub fn raft_service(
        &self,
        logs: Option<crate::LogStore>,
        clock: gofer_clock::Clock,
        tracker: tokio_util::task::TaskTracker,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> crate::server::RaftServer {
        let handler = crate::server::RaftHandler {
            node: self.clone(),
            logs,
            clock,
            tracker,
            shutdown,
        };
        crate::server::RaftServer::new(handler, crate::server::MessageLimits::DEFAULT)
    }

    /// Raft's view of the cluster: leader, term, indexes, membership.
    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Waits (up to `deadline`) until this node knows a leader; returns its id.
    pub async fn wait_for_leader(&self, deadline: Duration) -> Result<NodeId, Error> {
        let metrics = self
            .inner
            .raft
            .wait(Some(deadline))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await
            .map_err(Unavailable::from)?;
        Ok(metrics.current_leader.ok_or(Unavailable::NoLeader)?)
    }

    /// Runs `f` on the applied state, under a read lock that `f` must not hold on to.
    ///
    /// # Panics
    ///
    /// If a panic inside `State::apply` poisoned the lock: that state may be half applied and is not
    /// served.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let applied = self
            .inner
            .applied
            .read()
            .expect("the applied state is poisoned by a panic in apply");
        f(&applied.state)
    }

    /// The applied state as JSON with the index it is at, and a receiver of every change after it.
    pub(crate) fn follow(&self) -> (u64, Vec<u8>, tokio::sync::broadcast::Receiver<store::Change>) {
        let applied = self
            .inner
            .applied
            .read()
            .expect("the applied state is poisoned by a panic in apply");
        // Subscribed under the read lock: apply sends under the write lock, so nothing falls between.
        let changes = self.inner.changes.subscribe();
        let json = serde_json::to_vec(&applied.state).expect("the state always serializes");
        (applied.last_applied.map_or(0, |l| l.index), json, changes)
    }

    /// A receiver whose value is the last applied log index; it changes after every apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_index.clone()
    }

    /// Shuts raft down and waits (10 s at most) until the redb file is closed, so the same directory can
    /// be opened again. Calling it again is harmless.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.stop.cancel();
        self.inner.tracker.wait().await;
        self.inner.raft.shutdown().await.map_err(Unavailable::Shutdown)?;
        let closed = self.inner.closed.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Nothing is ever sent on `closed`: its sender drops with the last handle on the redb file, and
        // the receiver's error is that signal. Only a timeout is a failure.
        if let Some(closed) = closed
            && tokio::time::timeout(DEADLINE, closed).await.is_err()
        {
            return Err(Unavailable::StillOpen(DEADLINE).into());
        }
        tracing::info!("state node shut down");
        Ok(())
    }
}

mod compaction;
#[cfg(test)]
mod tests;
