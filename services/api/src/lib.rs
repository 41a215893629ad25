//! Gofer's public API: the `gofer.v1.GoferService` handlers. The bearer-token check every service of a
//! node shares is `gofer-auth`'s.
//!
//! Handlers are thin: convert the request, propose one command or read the applied state, convert back.
//! This crate never touches redb or Docker; it reaches state through `gofer-state` and logs through its
//! `LogStore`.
//!
//! A process starts it with [`run`]; the streams it serves (run watches, task logs, events) run on the
//! `TaskTracker` it is given and end on its shutdown.

mod api;
mod events;
mod logs;
mod objects;
mod paging;
mod secrets;
mod service;
mod tokens;

use std::sync::Arc;

use gofer_clock::Clock;
use gofer_state::{LogStore, StateHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::{ApiService, NoTriggers, TriggerDirectory};
pub use paging::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// What the api role is told: nothing yet. It keeps `run`'s shape the same as every service's.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// What the api role needs.
pub struct Deps {
    pub state: StateHandle,
    /// The task log archive of the state node in this process; without it, logs are read from the state
    /// nodes that keep them.
    pub logs: Option<LogStore>,
    /// What the extension host knows about triggers ([`NoTriggers`] in a process without one).
    pub triggers: Arc<dyn TriggerDirectory>,
    /// What stamps the commands it proposes.
    pub clock: Clock,
    /// Seals secret values before they are proposed, and again in a key rotation.
    pub keyring: Arc<gofer_secrets::Keyring>,
}

/// Starts the api role: returns the `GoferService` to mount on the API port, whose streams run on
/// `tracker` until `shutdown`.
pub async fn run(_config: Config, deps: Deps, tracker: &TaskTracker, shutdown: &CancellationToken) -> ApiService {
    ApiService::new(deps, tracker.clone(), shutdown.clone())
}
