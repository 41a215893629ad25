//! Wiring one node's roles together, shared by `goferd dev` and `goferd server`: the API, dispatch and
//! extension services on the TLS API port, the Raft service on its own mutual-TLS port (server mode), the
//! scheduler, the extension host (timers, webhooks, extension containers) and an executor that reaches the
//! scheduler through the API port like a remote one would. It owns shutdown: a `CancellationToken` and a
//! `TaskTracker` for every task it spawns.

use std::time::Duration;

use anyhow::Context;
use gofer_api::{ApiService, TokenAuth};
use gofer_domain::Command;
use gofer_executor::DockerBackend;
use gofer_extension_host::{ExtensionHost, LaunchConfig};
use gofer_scheduler::{DispatchHandler, Scheduler};
use gofer_state::{LogStore, StateNode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// What a node needs to start its roles.
pub struct NodeSetup {
    pub state: StateNode,
    pub logs: LogStore,
    pub docker: DockerBackend,
    pub auth: TokenAuth,
    /// The certificate and key the API port presents.
    pub identity: Identity,
    pub ca_pem: String,
    pub api_listener: TcpListener,
    pub webhook_listener: TcpListener,
    /// The Raft port and its mutual-TLS config; `None` for `goferd dev`'s single node.
    pub raft: Option<(TcpListener, ServerTlsConfig)>,
    pub executor_id: String,
    pub executor_token: String,
    /// The cluster id to propose if the log has none yet.
    pub new_cluster_id: String,
}

/// A node whose roles are running.
pub struct RunningNode {
    pub api_host: String,
    pub webhook_addr: std::net::SocketAddr,
    state: StateNode,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Proposes the cluster's first commands (its id, the built-in extensions) until they commit: in a
/// cluster that has no quorum yet they wait for one. Every node does this; the first `Init` wins.
async fn initialize(state: StateNode, host: ExtensionHost, cluster_id: String, shutdown: CancellationToken) {
    loop {
        let init = async {
            if state.read(|s| s.cluster_id.is_empty()) {
                let command = Command::Init {
                    cluster_id: cluster_id.clone(),
                    at: gofer_proto::now_millis(),
                };
                match state.propose(command).await {
                    Ok(_) | Err(gofer_state::Error::Rejected(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            host.register_builtins().await
        };
        match init.await {
            Ok(()) => return,
            Err(err) => tracing::info!(%err, "waiting for a leader to initialize the cluster"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Starts every role of the node.
pub async fn start(setup: NodeSetup) -> anyhow::Result<RunningNode> {
    let NodeSetup {
        state,
        logs,
        docker,
        auth,
        identity,
        ca_pem,
        api_listener,
        webhook_listener,
        raft,
        executor_id,
        executor_token,
        new_cluster_id,
    } = setup;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let host_role = ExtensionHost::new(state.clone());
    // Clients on this machine (the executor, extensions, the written client config) dial loopback when the
    // API listens on every address.
    let mut api_addr = api_listener.local_addr()?;
    if api_addr.ip().is_unspecified() {
        api_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let api_host = format!("https://{api_addr}");
    let webhook_addr = webhook_listener.local_addr()?;

    let single_node = raft.is_none();
    if let Some((listener, tls)) = raft {
        let service = state.raft_service(Some(logs.clone()));
        let raft_shutdown = shutdown.clone();
        tracker.spawn(async move {
            let served = Server::builder()
                .tls_config(tls)
                .context("configuring the raft port's TLS")?
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    raft_shutdown.cancelled(),
                )
                .await;
            served.context("serving raft")
        });
    }
    // In a single node this commits at once; in a new cluster it waits for a quorum in the background.
    let init = tracker.spawn(initialize(
        state.clone(),
        host_role.clone(),
        new_cluster_id,
        shutdown.clone(),
    ));
    if single_node {
        init.await.context("initializing the node")?;
    }

    let scheduler = Scheduler::new(state.clone());
    let api = ApiService::new(state.clone(), logs.clone(), host_role.directory());
    let dispatch = DispatchHandler::new(scheduler.clone(), logs);
    let server = tracker.spawn(crate::server::serve(
        api_listener,
        identity,
        auth.clone(),
        api,
        dispatch,
        host_role.handler(),
        shutdown.clone(),
    ));
    tracker.spawn(scheduler.run(shutdown.clone()));
    tracker.spawn(host_role.clone().run_schedules(shutdown.clone()));
    let launch = LaunchConfig {
        api_host: api_host.clone(),
        ca_pem: ca_pem.clone(),
        auth,
        docker: docker.clone(),
    };
    tracker.spawn(host_role.clone().run_launcher(launch, shutdown.clone()));
    let webhook_shutdown = shutdown.clone();
    let webhooks = host_role.clone();
    tracker.spawn(async move {
        if let Err(err) = webhooks.serve_webhooks(webhook_listener, webhook_shutdown).await {
            tracing::error!(%err, "the webhook listener stopped");
        }
    });

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(api_host.clone())?.tls_config(tls)?.connect_lazy();
    let executor_config = gofer_executor::ExecutorConfig {
        executor_id,
        token: executor_token,
    };
    let executor_shutdown = shutdown.clone();
    tracker.spawn(async move {
        if let Err(err) = gofer_executor::run(executor_config, docker, channel, executor_shutdown).await {
            tracing::error!(%err, "the executor stopped");
        }
    });
    tracker.close();
    Ok(RunningNode {
        api_host,
        webhook_addr,
        state,
        shutdown,
        tracker,
        server,
    })
}

impl RunningNode {
    /// Runs until SIGINT or SIGTERM (or the API server fails), then stops every role and the state.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        let RunningNode {
            state,
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
        state.shutdown().await.context("shutting the state down")?;
        failed.unwrap_or(Ok(()))
    }
}
