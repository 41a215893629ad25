//! Gofer's executor: it holds a `Dispatch` stream to the scheduler, runs each attempt it is given as a
//! Docker container through bollard, ships the container's output to the log archive, and reports what
//! ran.
//!
//! A Start for an attempt it already runs is a no-op, and a Start for an attempt whose container exists
//! adopts that container, so a re-sent Start never makes a second container. Containers are labelled with
//! the cluster, executor, namespace, pipeline, run, task and attempt; on every (re)connection the executor
//! removes its containers that belong to no live attempt, and stops (and reports) the attempts it is still
//! running that the cluster no longer counts live: those it declared LOST while this executor was cut off.
//! It heartbeats every second on its stream, which keeps its executor lease. It reaches Docker only
//! through `gofer-docker`.
//!
//! A process starts it with [`run`], which spawns every task of the role (the session loop, its
//! heartbeat, one task per attempt and per log upload) on the `TaskTracker` it is given.

mod attempt;
mod containers;
mod executor;
mod mask;
mod session;

use std::sync::Arc;
use std::time::Duration;

use gofer_clock::Clock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

/// What runs the attempts.
pub enum Backend {
    /// Docker containers: the product.
    Docker(gofer_docker::Engine),
    /// For benchmarks of the control plane only: every attempt "runs" no container, reports started and
    /// then exited 0 at once, and ships no log. Never use it for real work.
    BenchmarkNoop,
}

/// Why the executor stopped, or an attempt could not run or keep its output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid executor config: name at least one scheduler")]
    NoSchedulers,
    #[error("invalid executor config: the token has characters a header cannot carry")]
    TokenNotAHeader,
    /// A Docker Engine call failed.
    #[error(transparent)]
    Docker(#[from] gofer_docker::Error),
    #[error("storing the logs timed out")]
    LogUploadTimedOut,
    #[error("the log upload task failed: {0}")]
    LogUploadTask(#[source] tokio::task::JoinError),
    /// The scheduler (or the state node behind it) refused or lost the upload.
    #[error("storing the logs: {}", .0.message())]
    LogUpload(#[source] Box<tonic::Status>),
}

/// What an executor needs to know about itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unique among the cluster's executors; labels its containers.
    pub executor_id: String,
    /// The bearer token it presents to the scheduler; empty when it presents its certificate instead.
    pub token: String,
    /// How many attempts it runs at once; 0 means no limit.
    pub capacity: u32,
    /// What it tells the scheduler about itself, such as `zone=a`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The relay to the API this executor's containers can reach, given to each task that asked for the
    /// API (`inject_api_token`); `None` when there is none, and such a task keeps the scheduler's
    /// address.
    pub api_relay: Option<ApiRelay>,
    /// Its size, which the `cpu` and `memory` of the attempts it runs at once may add up to; zeros for
    /// no limit.
    pub size: gofer_domain::executors::Need,
}

/// Where a task's container reaches the API, and what it verifies it with.
#[derive(Debug, Clone)]
pub struct ApiRelay {
    /// `https://<address>:<port>`, the task's `GOFER_HOST`.
    pub host: String,
    /// The CA certificate (PEM) the relay's certificate is verified against, the task's
    /// `GOFER_CA_CERT_PEM`.
    pub ca_pem: String,
}

/// Opens a channel to a scheduler at an `https://host:port` address it was pointed to; `None` if the
/// address cannot be used.
pub type Connect = Arc<dyn Fn(&str) -> Option<Channel> + Send + Sync>;

/// What an executor needs.
pub struct Deps {
    pub backend: Backend,
    /// The schedulers it may reach.
    pub schedulers: Vec<Channel>,
    /// Opens a channel to where a process that is not the active scheduler points it; `None` to stay
    /// with `schedulers`.
    pub connect: Option<Connect>,
    /// What stamps its reports.
    pub clock: Clock,
}

/// Starts the executor on `tracker` until `shutdown` is cancelled: it connects to the scheduler that holds
/// the lease among `deps.schedulers` (a standby, or a process without a scheduler, refuses the stream and
/// points it at the active scheduler, which it tries next through `deps.connect`; without a pointer it
/// moves on to the next in its list), and reconnects with backoff whenever the stream breaks. Containers
/// keep running across reconnections. Fails at once on a config it cannot run with.
pub async fn run(config: Config, deps: Deps, tracker: &TaskTracker, shutdown: &CancellationToken) -> Result<(), Error> {
    let Deps {
        backend,
        schedulers,
        connect,
        clock,
    } = deps;
    if schedulers.is_empty() {
        return Err(Error::NoSchedulers);
    }
    let header = (!config.token.is_empty())
        .then(|| format!("Bearer {}", config.token).parse())
        .transpose()
        .map_err(|_| Error::TokenNotAHeader)?;
    let count = schedulers.len();
    let executor = Arc::new(executor::Executor::new(
        config,
        backend,
        schedulers,
        header,
        clock,
        tracker.clone(),
    ));
    tracker.spawn(keep_connected(executor, count, connect, shutdown.clone()));
    Ok(())
}

/// Holds a session with the active scheduler until `shutdown`, reconnecting with backoff.
async fn keep_connected(
    executor: Arc<executor::Executor>,
    count: usize,
    connect: Option<Connect>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures_in_a_row = 0;
    loop {
        let connected_at = tokio::time::Instant::now();
        let pause = match executor.clone().session(&shutdown).await {
            Ok(()) => {
                executor.abandon_all();
                return;
            }
            Err(status) => {
                if connected_at.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                    failures_in_a_row = 0;
                }
                let pointed = (status.code() == tonic::Code::FailedPrecondition)
                    .then(|| status.metadata().get(gofer_proto::SCHEDULER_ADDRESS_METADATA))
                    .flatten()
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string);
                let was_redirected = executor.redirected_to();
                match (pointed, &connect) {
                    // Pointed somewhere new: go there next, at once.
                    (Some(address), Some(connect)) if was_redirected.as_deref() != Some(address.as_str()) => {
                        if let Some(channel) = connect(&address) {
                            tracing::info!(%address, "pointed at the active scheduler");
                            executor.redirect(Some((address, channel)));
                            tokio::select! {
                                () = shutdown.cancelled() => {
                                    executor.abandon_all();
                                    return;
                                }
                                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                            }
                            continue;
                        }
                    }
                    // The place it was pointed at failed, or points at itself (the lease is moving):
                    // back to its own list.
                    _ if was_redirected.is_some() => executor.redirect(None),
                    _ => {}
                }
                failures_in_a_row += 1;
                if count > 1 {
                    executor.current.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let standby = status.code() == tonic::Code::FailedPrecondition;
                if standby {
                    tracing::debug!(%status, "the scheduler is standing by; trying the next one");
                } else {
                    tracing::warn!(%status, "dispatch stream ended; reconnecting");
                }
                // Back off only after every scheduler was tried. Standbys answer at once and a lease
                // moves within seconds, so they are asked again every quarter second.
                if standby && failures_in_a_row % count == 0 {
                    Duration::from_millis(250)
                } else if failures_in_a_row % count == 0 {
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    pause
                } else {
                    Duration::from_millis(50)
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                executor.abandon_all();
                return;
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}
