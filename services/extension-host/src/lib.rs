//! Gofer's extension host: the built-in `interval`, `cron` and `webhook` triggers, and (with the
//! extension protocol) the stream that other extensions register over.
//!
//! Every trigger turns an event into a `Fire` with an idempotency key and commits it through the
//! replicated log ([`FireQueue`]); the state machine makes the run, applies the overlap policy and remembers
//! the key. The host keeps no state of its own that matters across restarts: what was fired and skipped is
//! in the log, so a restarted host catches up from there. It never touches redb, and reaches Docker only
//! through `gofer-docker`.
//!
//! A process starts it with [`run`], which spawns every task of the role (its lease, the fire batcher,
//! the timers, the webhook listener, the extension containers' launcher, one task per extension stream)
//! on the `TaskTracker` it is given.

mod fires;
mod launcher;
mod schedules;
mod sealed;
mod service;
#[cfg(test)]
mod testing;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gofer_clock::Clock;
use gofer_domain::Command;
use gofer_domain::lease::Role;
use gofer_domain::triggers::{Registration, SettingSpec};
use gofer_state::{LeaseHolder, Startup, StateHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fires::{FireQueue, FireResult};
pub use launcher::{LaunchConfig, ServeExtensions};
pub use service::ExtensionHandler;

/// Why the extension host could not commit a fire, or refused a webhook delivery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fire queue's batching task stopped: the host is shutting down.
    #[error("the fire queue stopped")]
    QueueStopped,
    /// The log did not take the batch the fire was in; every fire of the batch shares this error.
    #[error(transparent)]
    State(Arc<gofer_state::Error>),
    /// The log took the batch but applying it gave something other than fire results.
    #[error("unexpected result {0:?}")]
    UnexpectedResult(gofer_domain::Applied),
    #[error("missing X-Hub-Signature-256 header")]
    SignatureMissing,
    #[error("X-Hub-Signature-256 is not text")]
    SignatureNotText,
    #[error("X-Hub-Signature-256 must be sha256=<hex>")]
    SignatureNotSha256,
    #[error("X-Hub-Signature-256 is not hex")]
    SignatureNotHex,
    /// Also what a delivery to a subscription that does not exist gets, so that names cannot be probed.
    #[error("the signature does not match the body, or no webhook subscription has this URL")]
    SignatureMismatch,
    #[error("the body is not valid JSON: {0}")]
    BodyNotJson(#[source] serde_json::Error),
    /// The extension network could not be made or inspected.
    #[error("the extension network: {0}")]
    ExtensionNetwork(#[from] gofer_docker::Error),
    /// The network named by `--extension-network` does not exist.
    #[error("the extension network {0:?} does not exist")]
    ExtensionNetworkMissing(String),
    /// The certificate of the extension service on the extension network could not be made.
    #[error("the extension listener's certificate: {0}")]
    ExtensionCertificate(#[source] gofer_tls::Error),
    /// The extension service could not listen on the extension network's gateway.
    #[error("listening for extensions on {address}: {source}")]
    ExtensionListener {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the extension-host role is told.
pub struct Config {
    /// Who holds the extension-host lease for this process: unique per start.
    pub holder: String,
    /// How extension containers are started and reach this process.
    pub launch: LaunchConfig,
    /// Whether `run` returns only once the built-in extensions are registered.
    pub startup: Startup,
    /// The webhook listener's base URL as callers reach it (`--webhook-url`), when that is not the
    /// address it listens on (a listener on 0.0.0.0, behind a published port); recorded on the lease so
    /// that every node's API shows webhook URLs.
    pub webhook_url: Option<String>,
}

/// What the extension-host role needs.
pub struct Deps {
    pub state: StateHandle,
    /// The webhook port, bound by the caller.
    pub webhooks: TcpListener,
    /// What stamps registrations and fires, and times the schedules.
    pub clock: Clock,
    /// Opens the secret settings of subscriptions.
    pub keyring: Arc<gofer_secrets::Keyring>,
}

/// Starts the extension-host role on `tracker` until `shutdown`: contends for the extension-host lease,
/// registers the built-in extensions once the cluster is initialized, and runs the fire batcher, the
/// timers (while it holds the lease), the webhook listener and the extension containers (while it holds
/// the lease). Returns the host, whose [`ExtensionHost::handler`] is mounted on the API port.
pub async fn run(
    config: Config,
    deps: Deps,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<ExtensionHost, gofer_state::Error> {
    let Config {
        holder,
        launch,
        startup,
        webhook_url,
    } = config;
    let Deps {
        state,
        webhooks,
        clock,
        keyring,
    } = deps;
    let listening = webhooks.local_addr().ok().map(|addr| format!("http://{addr}"));
    let webhook_url = webhook_url.map(|url| url.trim_end_matches('/').to_string());
    // The lease carries the webhook base and the extensions connected here, for every node's API. A listen
    // address is advertised only if another host could dial it: not loopback, not every address.
    let advertised = webhook_url.clone().or_else(|| {
        webhooks
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_loopback() && !addr.ip().is_unspecified())
            .map(|addr| format!("http://{addr}"))
    });
    let webhook_base = webhook_url.or(listening);
    let (reported, reports) = tokio::sync::watch::channel(Vec::new());
    let lease = LeaseHolder::spawn_reporting(
        state.clone(),
        Role::ExtensionHost,
        holder,
        advertised.unwrap_or_default(),
        Some(reports),
        clock.clone(),
        tracker,
        shutdown.clone(),
    );
    let host = ExtensionHost::new(
        state,
        lease,
        reported,
        clock,
        keyring,
        tracker.clone(),
        shutdown.clone(),
    );
    *host.webhook_base.lock().expect("webhook base lock") = webhook_base;
    let builtins = tracker.spawn(host.clone().register_builtins_once_initialized());
    if startup == Startup::AwaitFirstCommands {
        builtins
            .await
            .map_err(|e| gofer_state::Error::Unavailable(gofer_state::Unavailable::FirstCommands(e)))?;
    }
    tracker.spawn(host.clone().run_schedules());
    tracker.spawn(host.clone().run_launcher(launch));
    tracker.spawn(host.clone().serve_webhooks(webhooks));
    Ok(host)
}

/// The version built-in extensions register with.
const BUILTIN_VERSION: &str = env!("CARGO_PKG_VERSION");

fn setting(name: &str, required: bool, secret: bool, description: &str) -> SettingSpec {
    SettingSpec {
        name: name.to_string(),
        required,
        description: description.to_string(),
        secret,
    }
}

fn schedule_settings(first: SettingSpec) -> Vec<SettingSpec> {
    vec![
        first,
        setting(
            "jitter",
            false,
            false,
            "a random delay up to this bound (such as 10s), the same for the same fire on every node",
        ),
        setting(
            "overlap",
            false,
            false,
            "while the previous run goes: allow (default), skip, buffer_one or cancel_other",
        ),
        setting(
            "catchup_window",
            false,
            false,
            "fires missed while Gofer was down that are at most this old run once each (default 60s); older ones are skipped",
        ),
    ]
}

/// What each built-in extension registers.
pub fn builtin_registrations(at: i64) -> Vec<(&'static str, Registration)> {
    let registration = |documentation: &str, settings| Registration {
        version: BUILTIN_VERSION.to_string(),
        documentation: documentation.to_string(),
        settings,
        registered_at: at,
    };
    vec![
        (
            "interval",
            registration(
                "Fires every `every` (at least 1s), counted from the subscription's creation.",
                schedule_settings(setting("every", true, false, "how often, such as 30s, 5m or 1h")),
            ),
        ),
        (
            "cron",
            registration(
                "Fires on a cron schedule in a time zone, right across daylight saving time.",
                {
                    let mut settings = schedule_settings(setting(
                        "expression",
                        true,
                        false,
                        "5 fields (minute hour day month weekday), or 6 with seconds first",
                    ));
                    settings.insert(
                        1,
                        setting(
                            "timezone",
                            false,
                            false,
                            "an IANA time zone such as Europe/Berlin (default UTC)",
                        ),
                    );
                    settings
                },
            ),
        ),
        (
            "webhook",
            registration(
                "Fires on a signed HTTP POST to the webhook port (GitHub's X-Hub-Signature-256 format).",
                vec![
                    setting(
                        "secret",
                        true,
                        true,
                        "the HMAC-SHA256 key the sender signs the raw body with",
                    ),
                    setting(
                        "fields",
                        false,
                        false,
                        "comma-separated JSON paths of the payload (such as ref,repository.full_name) passed to the run as parameters",
                    ),
                ],
            ),
        ),
    ]
}

/// The extension host of one node.
#[derive(Clone)]
pub struct ExtensionHost {
    state: StateHandle,
    /// The extension-host lease: only its holder runs the timers and the extension containers.
    lease: gofer_state::LeaseHolder,
    fires: FireQueue,
    /// What stamps registrations, fires and schedules.
    clock: Clock,
    /// Runs the host's tasks, which end on `shutdown`.
    tracker: TaskTracker,
    shutdown: CancellationToken,
    connected: Arc<Mutex<HashMap<String, u64>>>,
    /// Where the names of the extensions connected here go, for the lease to report.
    reported: Arc<tokio::sync::watch::Sender<Vec<String>>>,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
    webhook_base: Arc<Mutex<Option<String>>>,
    /// Why each extension's container could not run last time, by name.
    launch_errors: Arc<Mutex<HashMap<String, String>>>,
    /// Opens the secret settings of subscriptions (`sealed.rs`).
    keyring: Arc<gofer_secrets::Keyring>,
}

impl ExtensionHost {
    /// A host over `state` that runs timers and extension containers while it holds `lease` (telling it the
    /// extensions connected here through `reported`), on `clock`, its tasks on `tracker` until `shutdown`.
    /// It starts the fire batcher.
    fn new(
        state: StateHandle,
        lease: LeaseHolder,
        reported: tokio::sync::watch::Sender<Vec<String>>,
        clock: Clock,
        keyring: Arc<gofer_secrets::Keyring>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let fires = FireQueue::start(state.clone(), clock.clone(), &tracker, shutdown.clone());
        ExtensionHost {
            state,
            lease,
            fires,
            clock,
            tracker,
            shutdown,
            connected: Arc::default(),
            reported: Arc::new(reported),
            next_connection: Arc::default(),
            webhook_base: Arc::default(),
            launch_errors: Arc::default(),
            keyring,
        }
    }

    /// Registers the built-in extensions once the cluster is initialized, trying until it can or the host
    /// shuts down.
    async fn register_builtins_once_initialized(self) {
        let shutdown = self.shutdown.clone();
        gofer_state::retry(
            "waiting for the cluster to register the built-in extensions",
            &shutdown,
            || async {
                if self.state.read_linearizable(|s| s.cluster_id.is_empty()).await? {
                    return Err(gofer_state::Unavailable::NotInitialized.into());
                }
                self.register_builtins().await
            },
        )
        .await;
    }

    /// Registers the built-in extensions (installing them on first use).
    async fn register_builtins(&self) -> Result<(), gofer_state::Error> {
        let at = self.clock.now_millis();
        for (name, registration) in builtin_registrations(at) {
            let current = self.state.read(|s| {
                s.extensions
                    .get(name)
                    .and_then(|e| e.registration.clone())
                    .map(|r| (r.version, r.settings))
            });
            if current == Some((registration.version.clone(), registration.settings.clone())) {
                continue;
            }
            self.state
                .propose(Command::RegisterExtension {
                    name: name.to_string(),
                    builtin: true,
                    registration,
                    at,
                })
                .await?;
        }
        Ok(())
    }

    /// The fire queue every trigger commits through.
    pub fn fires(&self) -> &FireQueue {
        &self.fires
    }

    /// Runs the interval and cron triggers until shutdown.
    async fn run_schedules(self) {
        schedules::run(&self).await
    }

    /// Serves the webhook trigger on `listener` until shutdown.
    async fn serve_webhooks(self, listener: TcpListener) {
        webhook::serve(
            self.state.clone(),
            self.fires.clone(),
            self.keyring.clone(),
            listener,
            webhook::Limits::DEFAULT,
            &self.tracker,
            self.shutdown.clone(),
        )
        .await;
    }

    /// Records (or, with `None`, clears) why an extension's container could not run.
    pub(crate) fn set_launch_error(&self, extension: &str, error: Option<String>) {
        let mut errors = self.launch_errors.lock().expect("launch errors lock");
        match error {
            Some(error) => errors.insert(extension.to_string(), error),
            None => errors.remove(extension),
        };
    }

    /// Runs installed extensions as containers until shutdown.
    async fn run_launcher(self, config: LaunchConfig) {
        let shutdown = self.shutdown.clone();
        launcher::run(self, config, shutdown).await
    }

    /// The `ExtensionService` handler.
    pub fn handler(&self) -> ExtensionHandler {
        ExtensionHandler::new(self.clone())
    }

    /// Marks an extension connected; returns the connection's id.
    fn connect(&self, name: &str) -> u64 {
        let id = self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut connected = self.connected.lock().expect("connected lock");
        connected.insert(name.to_string(), id);
        self.report(&connected);
        id
    }

    /// Hands the names of the extensions connected here to the lease, which reports them as it renews.
    fn report(&self, connected: &HashMap<String, u64>) {
        let mut names: Vec<String> = connected.keys().cloned().collect();
        names.sort();
        names.truncate(gofer_domain::lease::MAX_CONNECTED);
        self.reported.send_replace(names);
    }

    /// Marks an extension gone, unless a newer connection replaced this one.
    fn disconnect(&self, name: &str, id: u64) {
        let mut connected = self.connected.lock().expect("connected lock");
        if connected.get(name) == Some(&id) {
            connected.remove(name);
            self.report(&connected);
        }
    }

    /// Whether an extension holds a stream to this host now (the built-ins always do).
    pub fn is_connected(&self, extension: &str) -> bool {
        if gofer_domain::triggers::BUILTIN_EXTENSIONS.contains(&extension) {
            return true;
        }
        self.connected.lock().expect("connected lock").contains_key(extension)
    }

    /// The webhook listener's base URL, such as `http://127.0.0.1:7080`, once it listens.
    pub fn webhook_base(&self) -> Option<String> {
        self.webhook_base.lock().expect("webhook base lock").clone()
    }

    /// Why the extension's container could not run last time, if it could not.
    pub fn launch_error(&self, extension: &str) -> Option<String> {
        self.launch_errors
            .lock()
            .expect("launch errors lock")
            .get(extension)
            .cloned()
    }
}
