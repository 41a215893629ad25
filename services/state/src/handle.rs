//! [`StateHandle`]: what the roles (api, scheduler, extension host) hold to reach the replicated state,
//! whether a state node runs in the same process or the state nodes are elsewhere. One mechanism either
//! way: propose, read, read linearizably, watch the applied index.

use gofer_domain::{Applied, AttemptRef, Command, State};
use gofer_proto::v1;
use tokio::sync::watch;

use crate::{Call, ClusterStatus, Error, MembershipChange, NodeId, RemoteState, StateNode, Unavailable};

/// The replicated state as a role reaches it. Clones share the node or the mirror.
#[derive(Clone)]
pub enum StateHandle {
    /// A state node in this process.
    Local(StateNode),
    /// State nodes elsewhere, followed over mutual TLS.
    Remote(RemoteState),
}

impl From<StateNode> for StateHandle {
    fn from(node: StateNode) -> Self {
        StateHandle::Local(node)
    }
}

impl From<RemoteState> for StateHandle {
    fn from(remote: RemoteState) -> Self {
        StateHandle::Remote(remote)
    }
}

impl StateHandle {
    /// Commits `command` and returns its result once this process can read it.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        match self {
            StateHandle::Local(node) => node.propose(command).await,
            StateHandle::Remote(remote) => remote.propose(command).await,
        }
    }

    /// Runs `f` on the state as this process has applied it (not linearizable).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self {
            StateHandle::Local(node) => node.read(f),
            StateHandle::Remote(remote) => remote.read(f),
        }
    }

    /// Runs `f` on the state once it holds everything committed before the call.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, Error> {
        match self {
            StateHandle::Local(node) => node.read_linearizable(f).await,
            StateHandle::Remote(remote) => remote.read_linearizable(f).await,
        }
    }

    /// A receiver whose value is the last applied log index; it changes after every apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            StateHandle::Local(node) => node.subscribe(),
            StateHandle::Remote(remote) => remote.subscribe(),
        }
    }

    /// The state node in this process, 0 if there is none.
    pub fn local_node(&self) -> NodeId {
        match self {
            StateHandle::Local(node) => node.id(),
            StateHandle::Remote(_) => 0,
        }
    }

    /// The state node that keeps the task logs this process receives: this process's node, or the one
    /// its mirror follows (0 while unknown).
    pub fn log_keeper(&self) -> NodeId {
        match self {
            StateHandle::Local(node) => node.id(),
            StateHandle::Remote(remote) => remote.following_node(),
        }
    }

    /// The state node to send a task log to now: this process's node, or a live one the mirror knows.
    pub async fn log_keeper_now(&self) -> Result<NodeId, Error> {
        match self {
            StateHandle::Local(node) => Ok(node.id()),
            StateHandle::Remote(remote) => remote.log_keeper().await,
        }
    }

    /// A state node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        match self {
            StateHandle::Local(node) => Ok(node.cluster_status()),
            StateHandle::Remote(remote) => remote.cluster_status().await,
        }
    }

    /// Adds or removes a state node.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        match self {
            StateHandle::Local(node) => node.change_membership(change).await,
            StateHandle::Remote(remote) => remote.change_membership(change).await,
        }
    }

    /// Reads part of an attempt's log from state node `node`, which keeps it. A read changes nothing,
    /// so one the network failed (a connect that timed out on a busy host, a connection cut) is tried
    /// again (the shared channel dials anew after a failed connection) for up to [`PEER_READ_PATIENCE`].
    pub async fn read_peer_log(
        &self,
        node: NodeId,
        target: &AttemptRef,
        attempt: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<Vec<u8>, Error> {
        let request = v1::ReadTaskLogRequest {
            namespace_id: target.namespace.clone(),
            pipeline_id: target.pipeline.clone(),
            run_id: target.run,
            task_id: target.task.clone(),
            attempt,
            offset,
            max_bytes,
        };
        let deadline = tokio::time::Instant::now() + PEER_READ_PATIENCE;
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let failure: Error = match self.member_client(node).await {
                Ok(mut client) => match client.read_task_log(request.clone()).await {
                    Ok(reply) => return Ok(reply.into_inner().data),
                    Err(s) if !transient(&s) => return Err(Unavailable::call(Call::ReadLog(node), s).into()),
                    Err(s) => Unavailable::call(Call::ReadLog(node), s).into(),
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(failure);
            }
            tracing::debug!(%failure, "trying the log read again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(800));
        }
    }

    /// The shared client of the state node at `address`, for a caller that read the membership already.
    pub(crate) fn client_at(
        &self,
        address: &str,
    ) -> Result<v1::raft_service_client::RaftServiceClient<tonic::transport::Channel>, Error> {
        match self {
            StateHandle::Local(local) => local.peer_client(address),
            StateHandle::Remote(remote) => remote.client_at(address),
        }
    }

    pub(crate) async fn member_client(
        &self,
        node: NodeId,
    ) -> Result<v1::raft_service_client::RaftServiceClient<tonic::transport::Channel>, Error> {
        match self {
            StateHandle::Local(local) => local.member_client(node),
            StateHandle::Remote(remote) => remote.member_client(node).await,
        }
    }

    /// Sends an attempt's whole log, uploaded by `executor`, to state node `node` to keep, and returns the
    /// bytes it stored.
    pub async fn send_log(
        &self,
        node: NodeId,
        key: v1::AttemptKey,
        executor: &str,
        chunks: impl futures_util::Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Result<u64, Error> {
        use futures_util::StreamExt;
        let mut client = self.member_client(node).await?;
        let first = v1::StoreTaskLogRequest {
            key: Some(key),
            data: Vec::new(),
            executor_id: executor.to_string(),
        };
        let rest = chunks.map(|data| v1::StoreTaskLogRequest {
            data,
            ..Default::default()
        });
        let reply = client
            .store_task_log(futures_util::stream::iter([first]).chain(rest))
            .await
            .map_err(|s| Unavailable::call(Call::StoreLog(node), s))?;
        Ok(reply.into_inner().stored_bytes)
    }
}

/// How long a read from another state node keeps trying through network failures.
const PEER_READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a failed call may succeed if made again: the network failed or the peer was busy, rather
/// than the request being wrong.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}
