//! [`StateNode`]: one running raft node with its redb store, and the calls the rest of Gofer makes on it.
//!
//! It owns the node's life: open the store, start raft, initialize a fresh single-voter membership, wait
//! until it leads and has applied what was committed, and shut down until the redb file is closed. It
//! refuses to bypass raft: every change goes through `client_write`, and reads see only applied state.
//! Reads are local and not linearizable; a caller that must see its own write waits for `propose`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use gofer_domain::{Applied, Command, State};
use openraft::{BasicNode, Config, Raft, ServerState};
use tokio::sync::{oneshot, watch};

use crate::Error;
use crate::network::NoNetwork;
use crate::store::{self, AppliedState};
use crate::types::{NodeId, TypeConfig, raft_config};

/// The id of the only node of a single-node cluster.
const SINGLE_NODE_ID: NodeId = 1;
/// The redb file's name inside the data directory.
const STATE_FILE: &str = "state.redb";
/// How long opening waits for leadership, and shutting down for the redb file to close.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running state node: openraft, its redb store, and the applied [`State`] in memory.
///
/// Clones share the node. Call [`StateNode::shutdown`] before dropping the last clone: only that stops
/// raft's tasks and closes the redb file.
#[derive(Clone)]
pub struct StateNode {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    applied: Arc<RwLock<AppliedState>>,
    applied_index: watch::Receiver<u64>,
    /// Taken by the first `shutdown`; completes once the redb file is closed.
    closed: Mutex<Option<oneshot::Receiver<()>>>,
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
        let config = config
            .validate()
            .map_err(|e| Error::Unavailable(format!("invalid raft config: {e}")))?;
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|e| Error::Storage(format!("creating {}: {e}", data_dir.display())))?;
        let store = store::open(data_dir.join(STATE_FILE)).await?;
        let raft = Raft::new(
            SINGLE_NODE_ID,
            Arc::new(config),
            NoNetwork,
            store.log,
            store.state_machine,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("starting raft: {e}")))?;
        let node = StateNode {
            inner: Arc::new(Inner {
                raft,
                applied: store.applied,
                applied_index: store.applied_index,
                closed: Mutex::new(Some(store.closed)),
            }),
        };
        if let Err(error) = node.become_leader().await {
            if let Err(shutdown_error) = node.shutdown().await {
                tracing::warn!(%shutdown_error, "shutting down a state node that failed to open");
            }
            return Err(error);
        }
        tracing::info!(data_dir = %data_dir.display(), applied = *node.inner.applied_index.borrow(), "state node open");
        Ok(node)
    }

    /// Initializes a fresh store, then waits until this node leads and has applied an entry of its own
    /// term: raft commits earlier entries only through one, so then everything committed is applied.
    async fn become_leader(&self) -> Result<(), Error> {
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        if !initialized {
            // The address stays empty until the three-node issue gives nodes a gRPC address.
            let members = BTreeMap::from([(SINGLE_NODE_ID, BasicNode::default())]);
            raft.initialize(members)
                .await
                .map_err(|e| Error::Unavailable(format!("initializing raft: {e}")))?;
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
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Proposes a command through raft; returns after it is committed (fsynced) and applied.
    ///
    /// A command the state machine refused comes back as `Error::Rejected`, and changed nothing.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let response = self
            .inner
            .raft
            .client_write(command)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(response.data.0?)
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

    /// A receiver whose value is the last applied log index; it changes after every apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_index.clone()
    }

    /// Shuts raft down and waits (10 s at most) until the redb file is closed, so the same directory can
    /// be opened again. Calling it again is harmless.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Unavailable(format!("raft ended badly: {e}")))?;
        let closed = self.inner.closed.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Nothing is ever sent on `closed`: its sender drops with the last handle on the redb file, and
        // the receiver's error is that signal. Only a timeout is a failure.
        if let Some(closed) = closed
            && tokio::time::timeout(DEADLINE, closed).await.is_err()
        {
            return Err(Error::Unavailable(format!(
                "the redb file is still open {} s after raft stopped",
                DEADLINE.as_secs()
            )));
        }
        tracing::info!("state node shut down");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
