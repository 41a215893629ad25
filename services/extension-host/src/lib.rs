//! Gofer's extension host: the built-in `interval`, `cron` and `webhook` triggers, and (with the
//! extension protocol) the stream that other extensions register over.
//!
//! Every trigger turns an event into a `Fire` with an idempotency key and commits it through the
//! replicated log ([`FireQueue`]); the state machine makes the run, applies the overlap policy and remembers
//! the key. The host keeps no state of its own that matters across restarts: what was fired and skipped is
//! in the log, so a restarted host catches up from there. It never touches redb, and reaches Docker only
//! through `gofer-executor`.

mod fires;
mod launcher;
mod schedules;
mod service;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gofer_clock::Clock;
use gofer_domain::Command;
use gofer_domain::triggers::{Registration, SettingSpec};
use gofer_state::StateHandle;
use tokio_util::sync::CancellationToken;

pub use fires::{FireQueue, FireResult};
pub use launcher::LaunchConfig;
pub use service::ExtensionHandler;

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
    connected: Arc<Mutex<HashMap<String, u64>>>,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
    webhook_base: Arc<Mutex<Option<String>>>,
    /// Why each extension's container could not run last time, by name.
    launch_errors: Arc<Mutex<HashMap<String, String>>>,
}

impl ExtensionHost {
    /// A host over `state` that runs timers and extension containers while it holds `lease`, on `clock`.
    /// Call from inside a tokio runtime: it starts the fire batcher.
    pub fn new(state: StateHandle, lease: gofer_state::LeaseHolder, clock: Clock) -> Self {
        let fires = FireQueue::start(state.clone(), clock.clone());
        ExtensionHost {
            state,
            lease,
            fires,
            clock,
            connected: Arc::default(),
            next_connection: Arc::default(),
            webhook_base: Arc::default(),
            launch_errors: Arc::default(),
        }
    }

    /// Registers the built-in extensions (installing them on first use).
    pub async fn register_builtins(&self) -> Result<(), gofer_state::Error> {
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

    /// Runs the interval and cron triggers until `shutdown`.
    pub async fn run_schedules(self, shutdown: CancellationToken) {
        schedules::run(
            self.state.clone(),
            self.lease.clone(),
            self.fires.clone(),
            self.clock.clone(),
            shutdown,
        )
        .await
    }

    /// Serves the webhook trigger on `listener` until `shutdown`.
    pub async fn serve_webhooks(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            *self.webhook_base.lock().expect("webhook base lock") = Some(format!("http://{addr}"));
        }
        webhook::serve(self.state.clone(), self.fires.clone(), listener, shutdown).await
    }

    /// Records (or, with `None`, clears) why an extension's container could not run.
    pub(crate) fn set_launch_error(&self, extension: &str, error: Option<String>) {
        let mut errors = self.launch_errors.lock().expect("launch errors lock");
        match error {
            Some(error) => errors.insert(extension.to_string(), error),
            None => errors.remove(extension),
        };
    }

    /// Runs installed extensions as containers until `shutdown`.
    pub async fn run_launcher(self, config: LaunchConfig, shutdown: CancellationToken) {
        launcher::run(self, config, shutdown).await
    }

    /// The `ExtensionService` handler.
    pub fn handler(&self) -> ExtensionHandler {
        ExtensionHandler::new(self.clone())
    }

    /// Marks an extension connected; returns the connection's id.
    fn connect(&self, name: &str) -> u64 {
        let id = self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.connected
            .lock()
            .expect("connected lock")
            .insert(name.to_string(), id);
        id
    }

    /// Marks an extension gone, unless a newer connection replaced this one.
    fn disconnect(&self, name: &str, id: u64) {
        let mut connected = self.connected.lock().expect("connected lock");
        if connected.get(name) == Some(&id) {
            connected.remove(name);
        }
    }

    /// What the API shows about this host.
    pub fn directory(&self) -> Arc<dyn gofer_api::TriggerDirectory> {
        Arc::new(Directory { host: self.clone() })
    }
}

struct Directory {
    host: ExtensionHost,
}

impl gofer_api::TriggerDirectory for Directory {
    fn is_connected(&self, extension: &str) -> bool {
        if gofer_domain::triggers::BUILTIN_EXTENSIONS.contains(&extension) {
            return true;
        }
        self.host
            .connected
            .lock()
            .expect("connected lock")
            .contains_key(extension)
    }

    fn webhook_base(&self) -> Option<String> {
        self.host.webhook_base.lock().expect("webhook base lock").clone()
    }

    fn last_error(&self, extension: &str) -> Option<String> {
        self.host
            .launch_errors
            .lock()
            .expect("launch errors lock")
            .get(extension)
            .cloned()
    }
}
