//! The state role of a process, started by [`run`]: a state node in the process (serving raft to its
//! peers, proposing the cluster's id, pruning the logs of pruned runs) or a mirror of state nodes
//! elsewhere, and in either case the event retention and task limits this process was told.
//!
//! Like every service's `run`, it takes its config, its dependencies, the `TaskTracker` every task it
//! spawns goes through, and the `CancellationToken` that ends them; it binds no socket and reads no flag
//! (`goferd` does both). It refuses nothing about what the cluster holds: that is apply's.

use std::time::Duration;

use gofer_clock::Clock;
use gofer_domain::limits::TaskLimitChanges;
use gofer_domain::{Command, State};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::{Error, LogStore, PeerNetwork, RemoteState, StateHandle, StateNode, Unavailable};

/// Whether a role's `run` waits for its first commands (the cluster's id, its event retention and task
/// limits, the built-in extensions) to commit before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// Waits: a single node commits at once, and its process is ready only once they are in force.
    AwaitFirstCommands,
    /// Commits them in the background: a new cluster may wait for a quorum.
    Background,
}

/// What the state role is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster id a state node proposes if the log has none yet.
    pub new_cluster_id: String,
    /// How long the cluster keeps events, when this process was told; set once the cluster is
    /// initialized.
    pub event_retention_ms: Option<u64>,
    /// The changes to the cluster's task defaults and ceilings this process was told; made once the
    /// cluster is initialized. The limits it was told nothing of keep the cluster's values.
    pub task_limits: TaskLimitChanges,
    /// The object limits this process was told (0: keep the cluster's); set once the cluster is
    /// initialized.
    pub object_limits: gofer_domain::blobs::ObjectLimits,
    /// The S3 tier for blobs (`blob_store = "s3://…"`); the state nodes' disks when `None`.
    pub shared_store: Option<crate::SharedStoreConfig>,
    pub startup: Startup,
}

/// Where the replicated state is, for a process that plays a role over it.
pub enum Placement {
    /// A state node in this process, with its task log archive and, in a cluster, its raft port.
    Local {
        node: StateNode,
        logs: LogStore,
        raft: Option<RaftPort>,
    },
    /// State nodes elsewhere, followed over `network`'s mutual TLS at their raft `addresses`; the role
    /// gives up if none answers within `patience`.
    Remote {
        network: PeerNetwork,
        addresses: Vec<String>,
        patience: Duration,
    },
}

/// A state node's raft port, bound by the caller, and the mutual-TLS config it serves with (from
/// `gofer_tls::listen::server_config`, requiring client certificates).
pub struct RaftPort {
    pub listener: TcpListener,
    pub tls: std::sync::Arc<rustls::ServerConfig>,
}

/// What the state role needs.
pub struct Deps {
    pub placement: Placement,
    /// What stamps the commands it proposes.
    pub clock: Clock,
}

/// The state as the process's other roles reach it.
pub struct RunningState {
    pub handle: StateHandle,
    /// The task log archive of the state node in this process, if there is one.
    pub logs: Option<LogStore>,
}

/// Starts the state role on `tracker` until `shutdown`: serves raft on a cluster node's port, proposes
/// the cluster's id, keeps the event retention this process was told and prunes the logs of pruned runs;
/// or, away from the state nodes, follows them. With [`Startup::AwaitFirstCommands`] it returns once the
/// cluster's id and retention are committed. The caller shuts a local node down once `tracker` drained.
pub async fn run(
    config: Config,
    deps: Deps,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<RunningState, Error> {
    let Deps { placement, clock } = deps;
    let shared = config.shared_store.as_ref().map(crate::SharedStore::open).transpose()?;
    let mut first_commands = Vec::new();
    let running = match placement {
        Placement::Local { node, logs, raft } => {
            if let Some(shared) = shared {
                node.use_shared_store(shared);
            }
            let handle = StateHandle::from(node.clone());
            tracker.spawn(prune_logs(
                handle.clone(),
                logs.clone(),
                clock.clone(),
                shutdown.clone(),
            ));
            tracker.spawn(crate::keep_blobs(node.clone(), clock.clone(), shutdown.clone()));
            if let Some(port) = raft {
                serve_raft(&node, &logs, clock.clone(), port, tracker, shutdown)?;
            }
            first_commands.push(tracker.spawn(initialize(
                handle.clone(),
                config.new_cluster_id,
                clock.clone(),
                shutdown.clone(),
            )));
            RunningState {
                handle,
                logs: Some(logs),
            }
        }
        Placement::Remote {
            network,
            addresses,
            patience,
        } => {
            let remote = RemoteState::connect(network, addresses, patience, tracker, shutdown).await?;
            if let Some(shared) = shared {
                remote.use_shared_store(shared);
            }
            RunningState {
                handle: StateHandle::from(remote),
                logs: None,
            }
        }
    };
    // The cluster settings this process was told, each with what to propose given the state.
    let mut settings: Vec<(&'static str, SettingCommand)> = Vec::new();
    if let Some(retention_ms) = config.event_retention_ms {
        let clock = clock.clone();
        settings.push((
            "event retention",
            Box::new(move |s| {
                (s.events.retention_ms() != retention_ms).then(|| Command::SetEventRetention {
                    retention_millis: retention_ms,
                    at: clock.now_millis(),
                })
            }),
        ));
    }
    if !config.task_limits.is_empty() {
        let changes = config.task_limits;
        let clock = clock.clone();
        settings.push((
            "task limits",
            Box::new(move |s| {
                let limits = changes.applied_to(s.task_limits);
                (limits != s.task_limits).then(|| Command::SetTaskLimits {
                    limits,
                    at: clock.now_millis(),
                })
            }),
        ));
    }
    if !config.object_limits.is_unset() {
        let told = config.object_limits;
        let clock = clock.clone();
        settings.push((
            "object limits",
            Box::new(move |s| {
                let mut limits = s.object_limits;
                if told.max_bytes != 0 {
                    limits.max_bytes = told.max_bytes;
                }
                if told.max_count != 0 {
                    limits.max_count = told.max_count;
                }
                (limits != s.object_limits).then(|| Command::SetObjectLimits {
                    limits,
                    at: clock.now_millis(),
                })
            }),
        ));
    }
    for (what, command) in settings {
        let setting = keep_setting(running.handle.clone(), what, command, shutdown.clone());
        first_commands.push(tracker.spawn(setting));
    }
    if config.startup == Startup::AwaitFirstCommands {
        for command in first_commands {
            command
                .await
                .map_err(|e| Error::Unavailable(Unavailable::FirstCommands(e)))?;
        }
    }
    Ok(running)
}

/// Serves `node`'s raft (and its task log archive) to its peers on `port` until `shutdown`.
fn serve_raft(
    node: &StateNode,
    logs: &LogStore,
    clock: Clock,
    port: RaftPort,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let service = node.raft_service(Some(logs.clone()), clock, tracker.clone(), shutdown.clone());
    let router = Server::builder().add_service(service);
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(port.listener);
    let incoming = gofer_tls::listen::incoming(tcp, port.tls, tracker, shutdown);
    let stop = shutdown.clone();
    tracker.spawn(async move {
        if let Err(err) = router.serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
            tracing::error!(%err, "the raft port stopped serving");
        }
    });
    Ok(())
}

/// Tries `attempt` every half second until it succeeds or `shutdown`, saying `what` it waits for after
/// each failure.
pub async fn retry<F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(err) => tracing::info!(%err, "{what}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Proposes the cluster's first command, its id, until it commits: in a cluster that has no quorum yet it
/// waits for one. Every state node does this; the first `Init` wins.
async fn initialize(state: StateHandle, cluster_id: String, clock: Clock, shutdown: CancellationToken) {
    retry("waiting for a leader to initialize the cluster", &shutdown, || async {
        if state.read(|s| s.cluster_id.is_empty()) {
            let command = Command::Init {
                cluster_id: cluster_id.clone(),
                at: clock.now_millis(),
            };
            match state.propose(command).await {
                Ok(_) | Err(Error::Rejected(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
}

/// What to propose for one of the cluster's settings, given the state: nothing if it is already so.
type SettingCommand = Box<dyn Fn(&State) -> Option<Command> + Send + Sync>;

/// Sets one of the cluster's settings (`what`) once it is initialized: `command` reads the state and says
/// what to propose, if anything differs from what this process was told. A refused setting is logged and
/// not tried again.
async fn keep_setting(state: StateHandle, what: &'static str, command: SettingCommand, shutdown: CancellationToken) {
    let waiting = format!("waiting for the cluster to set the {what}");
    retry(&waiting, &shutdown, || async {
        let (initialized, proposal) = state
            .read_linearizable(|s| (!s.cluster_id.is_empty(), command(s)))
            .await?;
        if !initialized {
            return Err(Unavailable::NotInitialized.into());
        }
        if let Some(proposal) = proposal {
            match state.propose(proposal).await {
                Ok(_) => {}
                Err(Error::Rejected(e)) => tracing::error!(error = %e, "setting the {what} was refused"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
}

/// How long a live log file stays after its log was archived.
const ARCHIVED_LIVE_FILE_MS: i64 = 60_000;

/// Removes the task logs of runs the state pruned, and the live files of archived logs: on a change to
/// the state, at most every 10 s.
async fn prune_logs(state: StateHandle, logs: LogStore, clock: Clock, shutdown: CancellationToken) {
    let mut changes = state.subscribe();
    let mut last: Option<tokio::time::Instant> = None;
    // The archive time up to which live files were removed; 0 at start, so a restart looks at them all.
    let mut archived_until = 0i64;
    loop {
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            last = Some(tokio::time::Instant::now());
            let kept = state.read(LogStore::kept_runs);
            match logs.prune(kept).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed the logs of pruned runs"),
                Err(err) => tracing::warn!(%err, "could not remove the logs of pruned runs"),
            }
            // A live file is a second copy once its log is archived: readers go to the archive. It stays a
            // minute more, for a reader that opened it before the archive was named.
            let until = clock.now_millis() - ARCHIVED_LIVE_FILE_MS;
            let archived = state.read(|s| {
                s.blobs
                    .keys
                    .iter()
                    .filter(|(_, blob)| blob.at > archived_until && blob.at <= until)
                    .filter_map(|(key, _)| gofer_domain::blobs::task_log_of(key))
                    .collect::<Vec<_>>()
            });
            match logs.remove_archived(archived).await {
                Ok(removed) => {
                    archived_until = until;
                    if removed > 0 {
                        tracing::debug!(removed, "removed live log files whose logs are archived");
                    }
                }
                Err(err) => tracing::warn!(%err, "could not remove live log files whose logs are archived"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
