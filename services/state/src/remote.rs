//! [`RemoteState`]: the replicated state as a process away from the state nodes sees it (an api, a
//! scheduler or an extension host deployed on its own), over the nodes' mutual-TLS `RaftService`.
//!
//! It keeps a mirror: it follows one node's applied state (the whole state, then every applied command,
//! replayed through the same pure [`State::apply`]), so reads are local and cheap exactly as on a node.
//! Writes go to the leader (found by trying the nodes); a linearizable read asks the leader for its read
//! index and waits until the mirror has applied it; a write returns once the mirror has applied it, so a
//! read right after sees it. A mirror that stops keeping up (a partitioned or lagging node) is moved to
//! another node. It refuses to retry a write that may have been appended, as [`crate::StateNode`] does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gofer_domain::{Applied, Command, State};
use gofer_proto::v1::{self, raft_service_client::RaftServiceClient};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::network::PeerNetwork;
use crate::{Call, ClusterStatus, Error, MembershipChange, NodeId, Unavailable};

/// How long a call keeps trying while the leader changes.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long one call to a state node may take: a commit takes milliseconds, an election about a second;
/// a node that takes longer is paused or cut off.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the mirror may take to apply an index the leader already has before it moves to another node.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The replicated state, reached over the network. Clones share the mirror.
#[derive(Clone)]
pub struct RemoteState {
    inner: Arc<Inner>,
}

struct Inner {
    network: PeerNetwork,
    addresses: Vec<String>,
    state: RwLock<State>,
    applied_index: watch::Sender<u64>,
    /// Which address the mirror follows, and the node id behind it (0 until known).
    following: AtomicUsize,
    following_node: AtomicU64,
    /// The address that last accepted a write: tried first next time.
    leader_hint: AtomicUsize,
    /// Tells the follow loop to move to another node.
    switch: Notify,
    /// Ends the follow loop.
    stop: CancellationToken,
    /// The S3 tier of the blob layer, if the process was given one.
    shared: std::sync::OnceLock<crate::SharedStore>,
}

impl RemoteState {
    /// Keeps blobs in the S3 tier `store` from now on (set once, before the process serves).
    pub fn use_shared_store(&self, store: crate::SharedStore) {
        let _ = self.inner.shared.set(store);
    }

    /// The S3 tier of the blob layer, if the process was given one.
    pub(crate) fn shared_store(&self) -> Option<&crate::SharedStore> {
        self.inner.shared.get()
    }

    /// Follows the state nodes at `addresses` (their raft addresses, `https://host:port`), dialing them with
    /// `network`'s mutual TLS, from a task on `tracker` that ends on `shutdown`.
    /// Returns once the mirror holds a node's state, or `Error::Unavailable` after `wait` if no node
    /// answered.
    pub async fn connect(
        network: PeerNetwork,
        addresses: Vec<String>,
        wait: Duration,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<RemoteState, Error> {
        if addresses.is_empty() {
            return Err(gofer_domain::Error::invalid("state_nodes", "name at least one state node").into());
        }
        let (applied_index, _) = watch::channel(0);
        let remote = RemoteState {
            inner: Arc::new(Inner {
                network,
                addresses,
                state: RwLock::default(),
                applied_index,
                following: AtomicUsize::new(0),
                following_node: AtomicU64::new(0),
                leader_hint: AtomicUsize::new(0),
                switch: Notify::new(),
                stop: shutdown.child_token(),
                shared: std::sync::OnceLock::new(),
            }),
        };
        let (ready_tx, mut ready) = watch::channel(false);
        tracker.spawn(follow_loop(remote.clone(), ready_tx));
        tokio::time::timeout(wait, ready.wait_for(|r| *r))
            .await
            .map_err(|_| Unavailable::NoAnswer {
                waited: wait,
                addresses: remote.inner.addresses.clone(),
            })?
            .map_err(|_| Unavailable::MirrorStopped)?;
        Ok(remote)
    }

    fn client(&self, index: usize) -> Result<RaftServiceClient<Channel>, Unavailable> {
        let address = &self.inner.addresses[index % self.inner.addresses.len()];
        self.inner.network.shared_client(address)
    }

    /// Runs `f` on the mirrored state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.inner.state.read().expect("the mirrored state is poisoned"))
    }

    /// A receiver whose value is the mirror's last applied log index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_index.subscribe()
    }

    /// The id of the state node the mirror follows (0 until known): it keeps the logs this process sends.
    pub fn following_node(&self) -> NodeId {
        self.inner.following_node.load(Ordering::SeqCst)
    }

    /// A state node to keep the logs this process receives: the one the mirror follows, or, while that is
    /// not known, the first that answers.
    pub async fn log_keeper(&self) -> Result<NodeId, Error> {
        match self.following_node() {
            0 => Ok(self.cluster_status().await?.node_id),
            node => Ok(node),
        }
    }

    /// Waits until the mirror has applied `index`; moves it to another node if it does not within 2 s.
    async fn wait_applied(&self, index: u64) -> Result<(), Error> {
        let mut applied = self.subscribe();
        match tokio::time::timeout(CATCH_UP, applied.wait_for(|i| *i >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.inner.switch.notify_one();
                Err(Unavailable::MirrorBehind(index).into())
            }
        }
    }

    /// Commits `command` on the leader and returns once the mirror has applied it.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let request = v1::ProposeRequest {
            command: serde_json::to_vec(&command).expect("commands always serialize"),
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut tried = self.inner.leader_hint.load(Ordering::SeqCst);
        loop {
            let mut client = self.client(tried)?;
            let answer = within(client.propose(request.clone())).await;
            let not_sent = match answer {
                Ok(reply) => {
                    self.inner.leader_hint.store(tried, Ordering::SeqCst);
                    let reply = reply.into_inner();
                    let result: Result<Applied, gofer_domain::Error> =
                        serde_json::from_slice(&reply.result).map_err(Unavailable::Reply)?;
                    // Committed: from here on the answer is the result, never an error that invites a
                    // retry. The mirror is given until the deadline to show it, moving node if it must.
                    while self.wait_applied(reply.index).await.is_err() {
                        if tokio::time::Instant::now() >= deadline {
                            tracing::warn!(index = reply.index, "a committed write is not yet visible here");
                            break;
                        }
                    }
                    return Ok(result?);
                }
                // Not the leader: it appended nothing.
                Err(s) if s.code() == tonic::Code::FailedPrecondition => Unavailable::call(Call::NotLeader, s),
                // Never connected: the request never left.
                Err(s) if crate::network::never_sent(&s) => Unavailable::call(Call::NeverSent, s),
                Err(s) => {
                    // Perhaps appended: not retried. The next call starts from another node.
                    self.inner.leader_hint.store(tried + 1, Ordering::SeqCst);
                    return Err(Unavailable::call(Call::Propose, s).into());
                }
            };
            tried += 1;
            if tokio::time::Instant::now() >= deadline {
                return Err(not_sent.into());
            }
            if tried.is_multiple_of(self.inner.addresses.len()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Runs `f` on the mirror once it has applied everything the cluster committed before the call.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, Error> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut tried = self.inner.leader_hint.load(Ordering::SeqCst);
        loop {
            let mut client = self.client(tried)?;
            let answer = within(client.read_index(v1::ReadIndexRequest {})).await;
            let outcome = match answer {
                Ok(reply) => {
                    self.inner.leader_hint.store(tried, Ordering::SeqCst);
                    self.wait_applied(reply.into_inner().index).await
                }
                Err(s) => Err(Unavailable::call(Call::ReadIndex, s).into()),
            };
            match outcome {
                Ok(()) => return Ok(self.read(f)),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
            tried += 1;
            if tried.is_multiple_of(self.inner.addresses.len()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The view of the cluster of the first state node that answers.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let mut last = None;
        for i in 0..self.inner.addresses.len() {
            let start = self.inner.following.load(Ordering::SeqCst);
            let mut client = self.client(start + i)?;
            let answer = within(client.cluster_status(v1::ClusterStatusRequest {})).await;
            match answer {
                Ok(reply) => {
                    return Ok(serde_json::from_slice(&reply.into_inner().status).map_err(Unavailable::Reply)?);
                }
                Err(s) => last = Some(Unavailable::call(Call::ClusterStatus, s)),
            }
        }
        Err(last.expect("`connect` refuses an empty list of state nodes").into())
    }

    /// Asks the state nodes to change the membership; a follower forwards it to the leader.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        let request = v1::ChangeMembershipRequest {
            change: serde_json::to_vec(&change).expect("changes always serialize"),
        };
        let mut last = None;
        for i in 0..self.inner.addresses.len() {
            let start = self.inner.leader_hint.load(Ordering::SeqCst);
            match self.client(start + i)?.change_membership(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::InvalidArgument || s.code() == tonic::Code::NotFound => {
                    return Err(Unavailable::call(Call::ChangeMembership, s).into());
                }
                Err(s) => last = Some(Unavailable::call(Call::ChangeMembership, s)),
            }
        }
        Err(last.expect("`connect` refuses an empty list of state nodes").into())
    }

    /// A client for member `node`, found through the cluster status.
    /// The shared client of the state node at `address` (its raft address).
    pub(crate) fn client_at(&self, address: &str) -> Result<RaftServiceClient<Channel>, Error> {
        Ok(self.inner.network.shared_client(address)?)
    }

    pub(crate) async fn member_client(&self, node: NodeId) -> Result<RaftServiceClient<Channel>, Error> {
        let status = self.cluster_status().await?;
        let address = status
            .members
            .iter()
            .find(|m| m.id == node)
            .map(|m| m.address.clone())
            .ok_or(Unavailable::NotAMember(node))?;
        Ok(self.inner.network.shared_client(&address)?)
    }

    /// Replaces the mirror with a node's whole state at `index`.
    fn reset(&self, index: u64, state: State) {
        let mut mirrored = self.inner.state.write().expect("the mirrored state is poisoned");
        let mut state = state;
        // Readers tracking the subscriptions must see a replaced state as changed.
        state.subscriptions_changed = mirrored.subscriptions_changed.after(state.subscriptions_changed);
        *mirrored = state;
        drop(mirrored);
        self.inner.applied_index.send_replace(index);
    }

    /// Applies one followed entry.
    fn apply(&self, index: u64, command: Option<Command>) {
        if let Some(command) = command {
            // The result was decided on the nodes; the same pure apply gives the same state here.
            let _ = self
                .inner
                .state
                .write()
                .expect("the mirrored state is poisoned")
                .apply(&command);
        }
        // Heartbeats repeat the index: only a new one wakes the watchers.
        self.inner.applied_index.send_if_modified(|applied| {
            let changed = *applied != index;
            *applied = index;
            changed
        });
    }
}

/// One call to a state node, given up after [`CALL_TIMEOUT`].
async fn within<T>(call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(
            "the state node did not answer in time",
        ))
    })
}

/// Follows one node after another until the mirror is closed.
async fn follow_loop(remote: RemoteState, ready: watch::Sender<bool>) {
    let inner = remote.inner.clone();
    loop {
        let index = inner.following.load(Ordering::SeqCst);
        let address = &inner.addresses[index % inner.addresses.len()];
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = inner.switch.notified() => {
                tracing::info!(%address, "the followed state node fell behind; following another");
            }
            result = follow_one(&remote, index, &ready) => if let Err(why) = result {
                tracing::info!(%address, %why, "following another state node");
            },
        }
        inner.following.store(index + 1, Ordering::SeqCst);
        inner.following_node.store(0, Ordering::SeqCst);
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Follows the node at address `index` until its stream ends.
async fn follow_one(remote: &RemoteState, index: usize, ready: &watch::Sender<bool>) -> Result<(), Unavailable> {
    let mut client = remote.client(index)?;
    if let Ok(status) = within(client.cluster_status(v1::ClusterStatusRequest {})).await
        && let Ok(status) = serde_json::from_slice::<ClusterStatus>(&status.into_inner().status)
    {
        remote.inner.following_node.store(status.node_id, Ordering::SeqCst);
    }
    let mut stream = within(client.follow(v1::FollowRequest {}))
        .await
        .map_err(|s| Unavailable::call(Call::Follow, s))?
        .into_inner();
    loop {
        // A node sends at least a heartbeat every half second: silence means it is paused or cut off.
        let message = match tokio::time::timeout(CATCH_UP, stream.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return Err(Unavailable::FollowEnded),
            Ok(Err(s)) => return Err(Unavailable::call(Call::Follow, s)),
            Err(_) => return Err(Unavailable::FollowSilent(CATCH_UP)),
        };
        match message.change {
            Some(v1::follow_response::Change::State(json)) => {
                let state: State = serde_json::from_slice(&json).map_err(Unavailable::Reply)?;
                remote.reset(message.index, state);
                ready.send_replace(true);
            }
            Some(v1::follow_response::Change::Command(json)) => {
                let command: Command = serde_json::from_slice(&json).map_err(Unavailable::Reply)?;
                remote.apply(message.index, Some(command));
            }
            // An entry without a command, or a heartbeat repeating the last index.
            None => remote.apply(message.index, None),
        }
    }
}
