//! Wiring one node's roles together, shared by `goferd dev` and `goferd server`: the API, dispatch and
//! extension services on the TLS API port, the Raft service on its own mutual-TLS port (server mode), the
//! scheduler, the extension host (timers, webhooks, extension containers) and an executor that reaches the
//! scheduler through the API port like a remote one would. It owns shutdown: a `CancellationToken` and a
//! `TaskTracker` for every task it spawns.

use std::time::Duration;

use anyhow::{Context, bail};
use gofer_api::{ApiService, NoTriggers, TokenAuth};
use gofer_clock::Clock;
use gofer_domain::Command;
use gofer_domain::lease::Role;
use gofer_executor::DockerBackend;
use gofer_extension_host::{ExtensionHost, LaunchConfig};
use gofer_scheduler::{DispatchHandler, Scheduler};
use gofer_state::{LeaseHolder, LogStore, RemoteState, StateHandle, StateNode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// Which roles besides the state this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub scheduler: bool,
    pub extension_host: bool,
    pub executor: bool,
}

impl Roles {
    /// Every role: what `goferd dev` and a default `goferd server` run.
    pub const ALL: Roles = Roles {
        api: true,
        scheduler: true,
        extension_host: true,
        executor: true,
    };

    /// Whether the process serves gRPC on an API port: the api, or a scheduler's dispatch service, or an
    /// extension host's extension service.
    pub fn serves(&self) -> bool {
        self.api || self.scheduler || self.extension_host
    }

    /// Whether the process plays any role besides the state.
    pub fn serves_or_executes(&self) -> bool {
        self.serves() || self.executor
    }
}

/// Where the replicated state is.
pub enum StateSetup {
    /// A state node in this process, with its task log archive and its Raft port and mutual-TLS config
    /// (`None` for `goferd dev`'s single node).
    Local {
        node: StateNode,
        logs: LogStore,
        raft: Option<(TcpListener, ServerTlsConfig)>,
    },
    /// State nodes elsewhere, followed over mutual TLS.
    Remote(RemoteState),
    /// No state: a process that only executes, and talks to the schedulers alone.
    None,
}

/// What a process needs to start its roles.
pub struct NodeSetup {
    pub state: StateSetup,
    pub roles: Roles,
    /// Names this process among its peers: its executor id, and its leases' holder with a suffix drawn
    /// per start.
    pub name: String,
    /// Docker, for the executor and the extension host's containers.
    pub docker: Option<DockerBackend>,
    pub auth: TokenAuth,
    /// The certificate and key the API port presents.
    pub identity: Identity,
    pub ca_pem: String,
    /// The API port, when the process serves one (see [`Roles`]).
    pub api_listener: Option<TcpListener>,
    /// The webhook port, for the extension host.
    pub webhook_listener: Option<TcpListener>,
    /// The token the executor presents to the schedulers.
    pub executor_token: String,
    /// The API address others reach this process at (`https://host:port`), when it differs from the one it
    /// listens on; the scheduler lease records it.
    pub advertise_api: Option<String>,
    /// The schedulers the executor may reach (`https://host:port`); empty for this process's API port.
    pub schedulers: Vec<String>,
    /// How many attempts the executor runs at once (0: no limit), and its labels.
    pub executor_capacity: u32,
    pub executor_labels: std::collections::BTreeMap<String, String>,
    /// Runs the executor on the benchmark-noop backend (no containers) instead of Docker.
    pub benchmark_backend: bool,
    /// The cluster id a state node proposes if the log has none yet.
    pub new_cluster_id: String,
    /// How long the cluster keeps events, when this process was told (`--event-retention`); it sets it
    /// once the cluster is initialized.
    pub event_retention_ms: Option<u64>,
    /// The wall clock every role stamps its commands with.
    pub clock: Clock,
}

/// A process whose roles are running.
pub struct RunningNode {
    pub api_host: Option<String>,
    pub webhook_addr: Option<std::net::SocketAddr>,
    local: Option<StateNode>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
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
                Ok(_) | Err(gofer_state::Error::Rejected(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
}

/// Sets the cluster's event retention once it is initialized, unless it already is that.
async fn set_event_retention(state: StateHandle, retention_ms: u64, clock: Clock, shutdown: CancellationToken) {
    retry(
        "waiting for the cluster to set the event retention",
        &shutdown,
        || async {
            let (initialized, current) = state
                .read_linearizable(|s| (!s.cluster_id.is_empty(), s.events.retention_ms()))
                .await?;
            if !initialized {
                return Err(gofer_state::Error::Unavailable(
                    "the cluster is not initialized yet".into(),
                ));
            }
            if current != retention_ms {
                let command = Command::SetEventRetention {
                    retention_millis: retention_ms,
                    at: clock.now_millis(),
                };
                match state.propose(command).await {
                    Ok(_) => {}
                    Err(gofer_state::Error::Rejected(e)) => {
                        tracing::error!(error = %e, "the event retention was refused");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Registers the built-in extensions once the cluster is initialized.
async fn register_builtins(state: StateHandle, host: ExtensionHost, shutdown: CancellationToken) {
    retry(
        "waiting for the cluster to register the built-in extensions",
        &shutdown,
        || async {
            if state.read_linearizable(|s| s.cluster_id.is_empty()).await? {
                return Err(gofer_state::Error::Unavailable(
                    "the cluster is not initialized yet".into(),
                ));
            }
            host.register_builtins().await
        },
    )
    .await;
}

async fn retry<F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), gofer_state::Error>>,
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

/// Starts every role of the process.
pub async fn start(setup: NodeSetup) -> anyhow::Result<RunningNode> {
    let NodeSetup {
        state,
        roles,
        name,
        docker,
        auth,
        identity,
        ca_pem,
        api_listener,
        webhook_listener,
        executor_token,
        advertise_api,
        schedulers,
        executor_capacity,
        executor_labels,
        benchmark_backend,
        new_cluster_id,
        event_retention_ms,
        clock,
    } = setup;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut single_node = false;
    let (handle, local, logs): (Option<StateHandle>, _, _) = match state {
        StateSetup::Local { node, logs, raft } => {
            single_node = raft.is_none();
            tracker.spawn(prune_logs(
                StateHandle::from(node.clone()),
                logs.clone(),
                shutdown.clone(),
            ));
            if let Some((listener, tls)) = raft {
                let service = node.raft_service(Some(logs.clone()), shutdown.clone());
                let raft_shutdown = shutdown.clone();
                tracker.spawn(async move {
                    let served = Server::builder()
                        .tls_config(tls)
                        .context("configuring the raft port's TLS")?
                        .add_service(service)
                        .serve_with_incoming_shutdown(
                            // Without nodelay, a reply split into small writes can wait 40 ms for a delayed ACK.
                            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                            raft_shutdown.cancelled(),
                        )
                        .await;
                    served.context("serving raft")
                });
            }
            let handle = StateHandle::from(node.clone());
            // In a single node this commits at once; in a new cluster it waits for a quorum in the background.
            let init = tracker.spawn(initialize(
                handle.clone(),
                new_cluster_id,
                clock.clone(),
                shutdown.clone(),
            ));
            if single_node {
                init.await.context("initializing the node")?;
            }
            (Some(handle), Some(node), Some(logs))
        }
        StateSetup::Remote(remote) => (Some(StateHandle::from(remote)), None, None),
        StateSetup::None => (None, None, None),
    };
    if let (Some(handle), Some(retention)) = (&handle, event_retention_ms) {
        let set = tracker.spawn(set_event_retention(
            handle.clone(),
            retention,
            clock.clone(),
            shutdown.clone(),
        ));
        // A single node commits at once: `goferd dev` is ready only once the retention is in force.
        if single_node {
            set.await.context("setting the event retention")?;
        }
    }
    // Each start is a new lease holder: a restarted process waits for its old lease to lapse (or finds it
    // released) rather than acting in an epoch its previous life may still be acting in.
    let holder = format!("{name}/{}", crate::dev::random_hex(2)?);

    let mut api_host = None;
    let mut webhook_addr = None;
    let mut server = None;
    if roles.serves() {
        let api_listener =
            api_listener.context("an API port is needed for the api, scheduler and extension-host roles")?;
        let handle = handle.context("the api, scheduler and extension-host roles need the state")?;
        // Clients on this machine (the executor, extensions) dial loopback when the port listens on every
        // address.
        let mut addr = api_listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let host = format!("https://{addr}");
        let host_role = if roles.extension_host {
            let lease = LeaseHolder::spawn(
                handle.clone(),
                Role::ExtensionHost,
                holder.clone(),
                clock.clone(),
                shutdown.clone(),
            );
            let host_role = ExtensionHost::new(handle.clone(), lease, clock.clone());
            let builtins = tracker.spawn(register_builtins(handle.clone(), host_role.clone(), shutdown.clone()));
            // A single node commits at once: `goferd dev` is ready only once the built-in triggers are.
            if single_node {
                builtins.await.context("registering the built-in extensions")?;
            }
            tracker.spawn(host_role.clone().run_schedules(shutdown.clone()));
            let docker = docker.clone().context("the extension host runs extensions in Docker")?;
            let launch = LaunchConfig {
                api_host: host.clone(),
                ca_pem: ca_pem.clone(),
                auth: auth.clone(),
                docker,
            };
            tracker.spawn(host_role.clone().run_launcher(launch, shutdown.clone()));
            let webhook_listener = webhook_listener.context("the extension host needs a webhook port")?;
            webhook_addr = Some(webhook_listener.local_addr()?);
            let webhook_shutdown = shutdown.clone();
            let webhooks = host_role.clone();
            tracker.spawn(async move {
                if let Err(err) = webhooks.serve_webhooks(webhook_listener, webhook_shutdown).await {
                    tracing::error!(%err, "the webhook listener stopped");
                }
            });
            Some(host_role)
        } else {
            None
        };
        let api = roles.api.then(|| {
            let directory = match &host_role {
                Some(host_role) => host_role.directory(),
                None => std::sync::Arc::new(NoTriggers),
            };
            ApiService::new(handle.clone(), logs.clone(), directory, clock.clone())
        });
        let dispatch = if roles.scheduler {
            // The lease records where executors reach this scheduler, so that other processes point there.
            let address = advertise_api.clone().unwrap_or_else(|| host.clone());
            let lease = LeaseHolder::spawn_advertising(
                handle.clone(),
                Role::Scheduler,
                holder.clone(),
                address,
                clock.clone(),
                shutdown.clone(),
            );
            let scheduler = Scheduler::new(handle.clone(), lease, clock.clone());
            tracker.spawn(scheduler.clone().run(shutdown.clone()));
            Some(DispatchHandler::new(scheduler, logs.clone()))
        } else {
            None
        };
        let redirect = (!roles.scheduler).then(|| gofer_scheduler::DispatchRedirect::new(handle.clone()));
        let services = crate::server::Services {
            api,
            dispatch,
            redirect,
            extension: host_role.map(|h| h.handler()),
        };
        server = Some(tracker.spawn(crate::server::serve(
            api_listener,
            identity.clone(),
            auth.clone(),
            Some(Certificate::from_pem(&ca_pem)),
            services,
            shutdown.clone(),
        )));
        api_host = Some(host);
    }

    if roles.executor {
        let backend = if benchmark_backend {
            tracing::warn!("the executor runs the benchmark-noop backend: attempts run nothing and exit 0");
            gofer_executor::Backend::BenchmarkNoop
        } else {
            gofer_executor::Backend::Docker(docker.context("the executor runs tasks in Docker")?)
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
        let (channels, connect) = if schedulers.is_empty() {
            let Some(host) = &api_host else {
                bail!("an executor without a scheduler beside it needs the schedulers' addresses");
            };
            // This process's own port: its certificate names localhost.
            let own = Endpoint::from_shared(host.clone())?
                .tls_config(tls.domain_name("localhost"))?
                .connect_lazy();
            (vec![own], None)
        } else {
            // Schedulers elsewhere: the executor presents this process's certificate, which must name it.
            let tls = tls.identity(identity.clone());
            let endpoint = move |address: &str| -> anyhow::Result<tonic::transport::Channel> {
                Ok(Endpoint::from_shared(address.to_string())
                    .with_context(|| format!("scheduler address {address:?}"))?
                    .connect_timeout(Duration::from_secs(2))
                    // A paused or cut-off scheduler is noticed by its silence within about 3 s, and the
                    // executor moves on to the one that holds the lease.
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .tls_config(tls.clone())?
                    .connect_lazy())
            };
            let channels = schedulers
                .iter()
                .map(|address| endpoint(address))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Where a process without the lease points it (the address the active scheduler advertises).
            let connect: gofer_executor::Connect = std::sync::Arc::new(move |address: &str| endpoint(address).ok());
            (channels, Some(connect))
        };
        let executor_config = gofer_executor::ExecutorConfig {
            executor_id: name.clone(),
            token: executor_token,
            capacity: executor_capacity,
            labels: executor_labels,
        };
        let executor_shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(err) =
                gofer_executor::run(executor_config, backend, channels, connect, clock, executor_shutdown).await
            {
                tracing::error!(%err, "the executor stopped");
            }
        });
    }
    let server = match server {
        Some(server) => server,
        // Nothing is served on an API port: the process runs until it is told to stop.
        None => {
            let stop = shutdown.clone();
            tracker.spawn(async move {
                stop.cancelled().await;
                Ok(())
            })
        }
    };
    tracker.close();
    Ok(RunningNode {
        api_host,
        webhook_addr,
        local,
        shutdown,
        tracker,
        server,
    })
}

impl RunningNode {
    /// Runs until SIGINT or SIGTERM (or the API server fails), then stops every role and the state.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        let RunningNode {
            local,
            shutdown,
            tracker,
            server,
            ..
        } = self;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; shutting down"); None }
            _ = terminate.recv() => { tracing::info!("terminated; shutting down"); None }
            result = server => Some(match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("the server task failed: {err}")),
            }),
        };
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10 s");
        }
        if let Some(state) = local {
            state.shutdown().await.context("shutting the state down")?;
        }
        failed.unwrap_or(Ok(()))
    }
}

/// Removes the task logs of runs the state pruned: on a change to the state, at most every 10 s.
async fn prune_logs(state: StateHandle, logs: LogStore, shutdown: CancellationToken) {
    let mut changes = state.subscribe();
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            last = Some(tokio::time::Instant::now());
            let kept = state.read(LogStore::kept_runs);
            match logs.prune(kept).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed the logs of pruned runs"),
                Err(err) => tracing::warn!(%err, "could not remove the logs of pruned runs"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
