//! Wiring one node's roles together, shared by `goferd dev` and `goferd server`: [`start`] runs each role
//! the process plays through that service's own `run(config, deps, tracker, shutdown)` (the state, the
//! extension host, the api, the scheduler, the executor) and serves the API port with what they return.
//! It owns shutdown: one `CancellationToken` and one `TaskTracker` that every role spawns its tasks on.
//! It knows what each role needs from the process, not how the role works.

use std::time::Duration;

use anyhow::{Context, bail};
use gofer_api::{ApiService, NoTriggers, TriggerDirectory};
use gofer_auth::{TokenAuth, TokenDirectory};
use gofer_clock::Clock;
use gofer_docker::Engine;
use gofer_domain::access::Caller;
use gofer_extension_host::{ExtensionHost, LaunchConfig, ServeExtensions};
use gofer_scheduler::{DispatchHandler, DispatchRedirect};
use gofer_state::{Placement, RunningState, Startup, StateHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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

/// PEMs a process serves and dials with.
pub struct Credentials {
    /// The cluster CA's certificate.
    pub ca_pem: String,
    /// The process's certificate, recording its roles, and its key.
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a process needs to start its roles.
pub struct NodeSetup {
    /// Where the replicated state is: a node in this process or nodes elsewhere; `None` for a process
    /// that only executes, and talks to the schedulers alone.
    pub state: Option<Placement>,
    pub roles: Roles,
    /// Names this process among its peers: its executor id, and its leases' holder with a suffix drawn
    /// per start.
    pub name: String,
    /// Docker, for the executor and the extension host's containers.
    pub docker: Option<Engine>,
    pub auth: TokenAuth,
    /// The cluster CA, and the certificate and key the process presents (the API port's, and the
    /// executor's to schedulers elsewhere).
    pub credentials: Credentials,
    /// The API port, when the process serves one (see [`Roles`]).
    pub api_listener: Option<TcpListener>,
    /// The webhook port, for the extension host.
    pub webhook_listener: Option<TcpListener>,
    /// The token the executor presents to the schedulers.
    pub executor_token: String,
    /// The API address others reach this process at (`https://host:port`), when it differs from the one it
    /// listens on; the scheduler lease records it.
    pub advertise_api: Option<String>,
    /// The webhook listener's base URL as callers reach it, when not the address it listens on.
    pub webhook_url: Option<String>,
    /// An existing Docker network for the extension containers, which this process is on too.
    pub extension_network: Option<String>,
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
    /// The changes to the cluster's task defaults and ceilings this process was told (`--task-max-memory`
    /// …); it makes them once the cluster is initialized.
    pub task_limits: gofer_domain::limits::TaskLimitChanges,
    /// The object limits this process was told (`--object-max-size`, `--object-max-count`; 0 for not
    /// told); it sets them once the cluster is initialized.
    pub object_limits: gofer_domain::blobs::ObjectLimits,
    /// The S3 tier for blobs (`--blob-store s3://…`), or the state nodes' disks.
    pub shared_store: Option<gofer_state::SharedStoreConfig>,
    /// The wall clock every role stamps its commands with.
    pub clock: Clock,
    /// The secret keys (`--secret-key-file`, `--secret-old-key-file`), for the api, scheduler and
    /// extension-host roles; `None` for a process that only executes.
    pub keyring: Option<std::sync::Arc<gofer_secrets::Keyring>>,
}

/// A process whose roles are running.
pub struct RunningNode {
    pub api_host: Option<String>,
    pub webhook_addr: Option<std::net::SocketAddr>,
    state: Option<StateHandle>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The extension host as the API shows it: the two services meet only here, in the wiring.
struct HostDirectory(ExtensionHost);

impl TriggerDirectory for HostDirectory {
    fn is_connected(&self, extension: &str) -> bool {
        self.0.is_connected(extension)
    }

    fn webhook_base(&self) -> Option<String> {
        self.0.webhook_base()
    }

    fn last_error(&self, extension: &str) -> Option<String> {
        self.0.launch_error(extension)
    }
}

/// The API tokens as the replicated state keeps them, for the auth layer: a token works while it is
/// neither disabled nor past its expiry by this process's clock.
struct StateTokens {
    state: StateHandle,
    clock: Clock,
    /// Checks run task tokens' signatures.
    keyring: Option<std::sync::Arc<gofer_secrets::Keyring>>,
}

impl TokenDirectory for StateTokens {
    fn caller(&self, hash_hex: &str) -> Option<Caller> {
        let now = self.clock.now_millis();
        self.state.read(|s| {
            s.tokens
                .by_hash(hash_hex)
                .filter(|(_, token)| token.works_at(now))
                .map(|(name, token)| Caller::of_token(name, token))
        })
    }

    fn run_caller(&self, token: &str) -> Option<Caller> {
        let run = self.keyring.as_ref()?.verify_run_token(token)?;
        let live = self.state.read(|s| {
            s.run(&run.namespace, &run.pipeline, run.run)
                .is_ok_and(|(record, _)| !record.state.is_terminal())
        });
        live.then(|| Caller::of_run(run))
    }
}

/// What every role of the process shares: its clock, its tasks, its shutdown, and who it is.
struct Process {
    clock: Clock,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// The lease holder this start contends as.
    holder: String,
    /// Seals and opens secrets, for the roles that do.
    keyring: Option<std::sync::Arc<gofer_secrets::Keyring>>,
    /// The webhook base URL to advertise, if told.
    webhook_url: Option<String>,
}

/// The roles the API port serves, as their services returned them.
struct PortRoles {
    extension_host: Option<ExtensionHost>,
    api: Option<ApiService>,
    dispatch: Option<DispatchHandler>,
}

/// Starts every role of the process.
pub async fn start(setup: NodeSetup) -> anyhow::Result<RunningNode> {
    let NodeSetup {
        state,
        roles,
        name,
        docker,
        auth,
        credentials,
        api_listener,
        webhook_listener,
        executor_token,
        advertise_api,
        webhook_url,
        extension_network,
        schedulers,
        executor_capacity,
        executor_labels,
        benchmark_backend,
        new_cluster_id,
        event_retention_ms,
        task_limits,
        object_limits,
        shared_store,
        clock,
        keyring,
    } = setup;
    // A single node commits at once: `goferd dev` is ready only once its first commands are in force.
    // In a new cluster they wait for a quorum in the background.
    let startup = match &state {
        Some(Placement::Local { raft: None, .. }) => Startup::AwaitFirstCommands,
        _ => Startup::Background,
    };
    let process = Process {
        clock,
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        // Each start is a new lease holder: a restarted process waits for its old lease to lapse (or
        // finds it released) rather than acting in an epoch its previous life may still be acting in.
        holder: format!("{name}/{}", crate::random::hex(2)?),
        keyring: keyring.clone(),
        webhook_url,
    };
    if roles.serves() && keyring.is_none() {
        bail!("secret_key_file is required for the api, scheduler and extension-host roles");
    }

    let state = match state {
        Some(placement) => Some(
            process
                .state(
                    placement,
                    new_cluster_id,
                    event_retention_ms,
                    (task_limits, object_limits),
                    shared_store,
                    startup,
                )
                .await?,
        ),
        None => None,
    };
    let (mut api_host, mut webhook_addr, mut server, mut own_port) = (None, None, None, None);
    if roles.serves() {
        let api_listener =
            api_listener.context("an API port is needed for the api, scheduler and extension-host roles")?;
        let state = state
            .as_ref()
            .context("the api, scheduler and extension-host roles need the state")?;
        let host = own_address(&api_listener)?;
        let advertised = advertise_api.unwrap_or_else(|| host.clone());
        let extension_host = if roles.extension_host {
            let webhooks = webhook_listener.context("the extension host needs a webhook port")?;
            webhook_addr = Some(webhooks.local_addr()?);
            let launch = LaunchConfig {
                node: name.clone(),
                serve: process.extension_listener(auth.clone()),
                auth: auth.clone(),
                docker: docker.clone().context("the extension host runs extensions in Docker")?,
                network: extension_network.clone(),
            };
            Some(process.extension_host(&state.handle, webhooks, launch, startup).await?)
        } else {
            None
        };
        let api = match roles.api {
            true => Some(process.api(state, extension_host.as_ref()).await),
            false => None,
        };
        let dispatch = match roles.scheduler {
            // The lease records where executors reach this scheduler, so that other processes point there.
            true => Some(process.scheduler(state, advertised.clone()).await),
            false => None,
        };
        let served = PortRoles {
            extension_host,
            api,
            dispatch,
        };
        let tls = gofer_tls::listen::server_config(
            &credentials.ca_pem,
            &credentials.cert_pem,
            &credentials.key_pem,
            gofer_tls::listen::ClientCertificates::Optional,
        )
        .context("the API port's TLS")?;
        server = Some(process.serve(api_listener, tls, auth, &state.handle, served));
        own_port = Some(OwnPort {
            address: host.clone(),
            advertised,
        });
        api_host = Some(host);
    }
    if roles.executor {
        let backend = if benchmark_backend {
            tracing::warn!("the executor runs the benchmark-noop backend: attempts run nothing and exit 0");
            gofer_executor::Backend::BenchmarkNoop
        } else {
            gofer_executor::Backend::Docker(docker.context("the executor runs tasks in Docker")?)
        };
        // An executor with a token (beside its own scheduler in `goferd dev`) is who its token says; one
        // without presents this process's certificate, which must name it.
        let identity = executor_token
            .is_empty()
            .then(|| Identity::from_pem(&credentials.cert_pem, &credentials.key_pem));
        let config = gofer_executor::Config {
            executor_id: name,
            token: executor_token,
            capacity: executor_capacity,
            labels: executor_labels,
            api_relay: None,
            size: Default::default(),
        };
        let place = SchedulerPlace {
            own_port: own_port.as_ref(),
            schedulers: &schedulers,
            ca_pem: &credentials.ca_pem,
            identity: identity.as_ref(),
        };
        process.executor(config, backend, place).await?;
    }
    let Process { tracker, shutdown, .. } = process;
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
        state: state.map(|s| s.handle),
        shutdown,
        tracker,
        server,
    })
}

/// The address clients on this machine (the executor, extensions) reach `listener` at: loopback when it
/// listens on every address.
fn own_address(listener: &TcpListener) -> anyhow::Result<String> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("https://{addr}"))
}

/// This process's own API port, as the executor beside it reaches it.
struct OwnPort {
    /// Where it is dialled: on loopback (`own_address`).
    address: String,
    /// Where others reach it, as the scheduler lease records it: the process's certificate must name its
    /// host, and that name is what the executor beside it verifies.
    advertised: String,
}

/// The host of `address` (`https://host:port`) as a certificate names it, an IPv6 address without brackets.
fn certificate_host(address: &str) -> anyhow::Result<String> {
    let uri: tonic::transport::Uri = address.parse().with_context(|| format!("address {address:?}"))?;
    let host = uri.host().with_context(|| format!("address {address:?} has no host"))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Where the executor finds its schedulers: this process's own API port, or the addresses it was given.
struct SchedulerPlace<'a> {
    own_port: Option<&'a OwnPort>,
    schedulers: &'a [String],
    ca_pem: &'a str,
    /// The client certificate it presents, if it presents one.
    identity: Option<&'a Identity>,
}

impl SchedulerPlace<'_> {
    /// The API ports the executor's relay forwards its tasks to: this process's own, or the schedulers'.
    fn api_ports(&self) -> anyhow::Result<Vec<crate::relay::ApiPort>> {
        match self.own_port {
            Some(own) => Ok(vec![crate::relay::ApiPort {
                address: own.address.clone(),
                certificate_host: certificate_host(&own.advertised)?,
            }]),
            None => self
                .schedulers
                .iter()
                .map(|address| {
                    Ok(crate::relay::ApiPort {
                        address: address.clone(),
                        certificate_host: certificate_host(address)?,
                    })
                })
                .collect(),
        }
    }

    /// The channels to the schedulers, and how to reach the one the executor is pointed at: a process
    /// without the lease points it at the active scheduler, wherever that runs, and it follows. It presents
    /// this process's certificate everywhere (which must name it), unless it has a token minted per start
    /// by the scheduler beside it (`goferd dev`).
    fn channels(&self) -> anyhow::Result<(Vec<tonic::transport::Channel>, Option<gofer_executor::Connect>)> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem));
        if let Some(identity) = self.identity {
            tls = tls.identity(identity.clone());
        }
        // `name`: the name the certificate must carry when it is not the address's own host.
        let endpoint = move |address: &str, name: Option<String>| -> anyhow::Result<tonic::transport::Channel> {
            let tls = match name {
                Some(name) => tls.clone().domain_name(name),
                None => tls.clone(),
            };
            Ok(Endpoint::from_shared(address.to_string())
                .with_context(|| format!("scheduler address {address:?}"))?
                .connect_timeout(Duration::from_secs(2))
                // A paused or cut-off scheduler is noticed by its silence within about 3 s, and the
                // executor moves on to the one that holds the lease.
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true)
                .tls_config(tls)?
                .connect_lazy())
        };
        let channels = match (self.own_port, self.schedulers.is_empty()) {
            // This process's own port, dialled on loopback, must present the certificate for the name
            // executors elsewhere are told to reach it at, not any certificate of the cluster.
            (Some(own), true) => vec![endpoint(&own.address, Some(certificate_host(&own.advertised)?))?],
            (None, true) => bail!("an executor without a scheduler beside it needs the schedulers' addresses"),
            (_, false) => self
                .schedulers
                .iter()
                .map(|address| endpoint(address, None))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        // Where a process without the lease points it (the address the active scheduler advertises).
        let connect: gofer_executor::Connect = std::sync::Arc::new(move |address: &str| endpoint(address, None).ok());
        Ok((channels, Some(connect)))
    }
}

impl Process {
    /// The state role: a node here, or a mirror of nodes elsewhere.
    async fn state(
        &self,
        placement: Placement,
        new_cluster_id: String,
        event_retention_ms: Option<u64>,
        (task_limits, object_limits): (
            gofer_domain::limits::TaskLimitChanges,
            gofer_domain::blobs::ObjectLimits,
        ),
        shared_store: Option<gofer_state::SharedStoreConfig>,
        startup: Startup,
    ) -> anyhow::Result<RunningState> {
        let config = gofer_state::Config {
            new_cluster_id,
            event_retention_ms,
            task_limits,
            object_limits,
            shared_store,
            startup,
        };
        let deps = gofer_state::Deps {
            placement,
            clock: self.clock.clone(),
        };
        gofer_state::run(config, deps, &self.tracker, &self.shutdown)
            .await
            .context("starting the state role")
    }

    /// The keyring, which every role but the executor's needs (checked at start).
    fn keyring(&self) -> anyhow::Result<std::sync::Arc<gofer_secrets::Keyring>> {
        self.keyring.clone().context("secret_key_file is required")
    }

    /// The extension host: triggers, webhooks and extension containers.
    async fn extension_host(
        &self,
        state: &StateHandle,
        webhooks: TcpListener,
        launch: LaunchConfig,
        startup: Startup,
    ) -> anyhow::Result<ExtensionHost> {
        let config = gofer_extension_host::Config {
            holder: self.holder.clone(),
            launch,
            startup,
            webhook_url: self.webhook_url.clone(),
        };
        let deps = gofer_extension_host::Deps {
            state: state.clone(),
            webhooks,
            clock: self.clock.clone(),
            keyring: self.keyring()?,
        };
        gofer_extension_host::run(config, deps, &self.tracker, &self.shutdown)
            .await
            .context("starting the extension host")
    }

    /// How the extension host serves its containers on their network: the extension service alone, on
    /// a listener of its own, behind the same token table as the API port, until shutdown.
    fn extension_listener(&self, auth: TokenAuth) -> ServeExtensions {
        let (tracker, shutdown) = (self.tracker.clone(), self.shutdown.clone());
        std::sync::Arc::new(move |handler, address, pki: &gofer_tls::DevPki| {
            let tls = gofer_tls::listen::server_config(
                &pki.ca.cert_pem,
                &pki.server.cert_pem,
                &pki.server.key_pem,
                gofer_tls::listen::ClientCertificates::Optional,
            )
            .map_err(std::io::Error::other)?;
            let listener = std::net::TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            let listening = listener.local_addr()?;
            let services = crate::server::Services {
                api: None,
                dispatch: None,
                redirect: None,
                extension: Some(handler),
            };
            let serving =
                crate::server::serve(listener, tls, auth.clone(), services, tracker.clone(), shutdown.clone());
            tracker.spawn(async move {
                if let Err(err) = serving.await {
                    tracing::error!(%listening, err = format!("{err:#}"), "the extension listener stopped");
                }
            });
            Ok(listening)
        })
    }

    /// The public API, showing what the extension host beside it knows about triggers.
    async fn api(&self, state: &RunningState, extension_host: Option<&ExtensionHost>) -> ApiService {
        let deps = gofer_api::Deps {
            state: state.handle.clone(),
            logs: state.logs.clone(),
            triggers: match extension_host {
                Some(host) => std::sync::Arc::new(HostDirectory(host.clone())),
                None => std::sync::Arc::new(NoTriggers),
            },
            clock: self.clock.clone(),
            keyring: self.keyring().expect("checked at start"),
        };
        gofer_api::run(gofer_api::Config::default(), deps, &self.tracker, &self.shutdown).await
    }

    /// The scheduler, advertising `address` to the executors.
    async fn scheduler(&self, state: &RunningState, address: String) -> DispatchHandler {
        let config = gofer_scheduler::Config {
            holder: self.holder.clone(),
            address,
        };
        let deps = gofer_scheduler::Deps {
            state: state.handle.clone(),
            logs: state.logs.clone(),
            clock: self.clock.clone(),
            keyring: self.keyring().expect("checked at start"),
        };
        gofer_scheduler::run(config, deps, &self.tracker, &self.shutdown).await
    }

    /// The executor, reaching the schedulers `place` names, with a relay to the API for its Docker tasks.
    async fn executor(
        &self,
        mut config: gofer_executor::Config,
        backend: gofer_executor::Backend,
        place: SchedulerPlace<'_>,
    ) -> anyhow::Result<()> {
        let (schedulers, connect) = place.channels()?;
        if let gofer_executor::Backend::Docker(docker) = &backend {
            // Its size is the Docker host's: the cpu and memory of the tasks it runs at once add up to it.
            match docker.host_size().await {
                Ok((millicpus, memory_bytes)) => {
                    config.size = gofer_domain::executors::Need {
                        millicpus,
                        memory_bytes,
                    }
                }
                Err(err) => tracing::warn!(%err, "the executor's size is unknown: placement counts no cpu or memory"),
            }
            let now_seconds = self.clock.now_millis() / 1000;
            config.api_relay = crate::relay::start(
                docker,
                &place.api_ports()?,
                place.ca_pem,
                now_seconds,
                &self.tracker,
                &self.shutdown,
            )
            .await;
        }
        let deps = gofer_executor::Deps {
            backend,
            schedulers,
            connect,
            clock: self.clock.clone(),
        };
        gofer_executor::run(config, deps, &self.tracker, &self.shutdown)
            .await
            .context("starting the executor")
    }

    /// Serves the roles' services on the API port until shutdown; a process without a scheduler points
    /// executors at the active one.
    fn serve(
        &self,
        listener: TcpListener,
        tls: std::sync::Arc<rustls::ServerConfig>,
        auth: TokenAuth,
        state: &StateHandle,
        roles: PortRoles,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let redirect = roles.dispatch.is_none().then(|| DispatchRedirect::new(state.clone()));
        let services = crate::server::Services {
            api: roles.api,
            dispatch: roles.dispatch,
            redirect,
            extension: roles.extension_host.map(|host| host.handler()),
        };
        // The API tokens the cluster keeps are admitted as they stand in this process's view of the state.
        let directory = StateTokens {
            state: state.clone(),
            clock: self.clock.clone(),
            keyring: self.keyring.clone(),
        };
        self.tracker.spawn(crate::server::serve(
            listener,
            tls,
            auth.with_directory(std::sync::Arc::new(directory)),
            services,
            self.tracker.clone(),
            self.shutdown.clone(),
        ))
    }
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
        if let Some(StateHandle::Local(node)) = state {
            node.shutdown().await.context("shutting the state down")?;
        }
        failed.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_verified_on_the_own_port_is_the_advertised_host() {
        assert_eq!(certificate_host("https://node1:7443").unwrap(), "node1");
        assert_eq!(certificate_host("https://127.0.0.1:7443").unwrap(), "127.0.0.1");
        assert_eq!(certificate_host("https://[::1]:7443").unwrap(), "::1");
        assert!(certificate_host("not an address").is_err());
    }
}
