//! Gofer's scheduler: it turns the pure plan into committed assignments and serves the executors'
//! `DispatchService` stream, through which it tells them what to start and stop and hears back what ran.
//!
//! The order is the dispatch protocol's: an assignment is committed to the replicated log *before* the
//! executor is told, and every report an executor sends is committed before it counts. Whatever is
//! assigned to a connected executor and not yet sent on its current stream is (re)sent, so a reconnecting
//! executor gets all its live attempts again; executors treat a Start they already run as a no-op.
//! The scheduler never touches Docker or redb; it reaches state through `gofer-state`.
//!
//! A process starts it with [`run`], which spawns every task of the role (the scheduler lease, the loop,
//! the report committer, one task per executor stream) on the `TaskTracker` it is given.

mod dispatch;
mod reconcile;
mod secrets;

use gofer_clock::Clock;
use gofer_domain::lease::Role;
use gofer_state::{LeaseHolder, LogStore, StateHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dispatch::{DispatchHandler, DispatchRedirect};
pub use reconcile::EXECUTOR_LEASE;
use reconcile::Scheduler;

/// What the scheduler role is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Who holds the scheduler lease for this process: unique per start.
    pub holder: String,
    /// Where executors reach this scheduler (`https://host:port`), recorded on the lease so that other
    /// processes point them here; empty if nobody needs to know.
    pub address: String,
}

/// What the scheduler role needs.
pub struct Deps {
    pub state: StateHandle,
    /// The task log archive of the state node in this process; `None` when the state nodes are elsewhere.
    pub logs: Option<LogStore>,
    /// What stamps its commands and times the executors' leases.
    pub clock: Clock,
    /// Opens the secrets the tasks it dispatches name.
    pub keyring: std::sync::Arc<gofer_secrets::Keyring>,
}

/// Starts the scheduler role on `tracker` until `shutdown`: it contends for the scheduler lease and,
/// while it holds it, assigns and dispatches. Returns the `DispatchService` to mount on the API port.
pub async fn run(config: Config, deps: Deps, tracker: &TaskTracker, shutdown: &CancellationToken) -> DispatchHandler {
    let Deps {
        state,
        logs,
        clock,
        keyring,
    } = deps;
    let api_host = std::sync::Arc::from(config.address.as_str());
    let lease = LeaseHolder::spawn_advertising(
        state.clone(),
        Role::Scheduler,
        config.holder,
        config.address,
        clock.clone(),
        tracker,
        shutdown.clone(),
    );
    let mut scheduler = Scheduler::new(state, lease, clock, keyring, tracker.clone());
    scheduler.api_host = api_host;
    tracker.spawn(scheduler.clone().run(shutdown.clone()));
    DispatchHandler::new(scheduler, logs, shutdown.clone())
}
