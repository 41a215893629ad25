//! Gofer's executor: it holds a `Dispatch` stream to the scheduler, runs each attempt it is given as a
//! Docker container through bollard, ships the container's output to the log archive, and reports what
//! ran.
//!
//! A Start for an attempt it already runs is a no-op, and a Start for an attempt whose container exists
//! adopts that container, so a re-sent Start never makes a second container. Containers are labelled with
//! the cluster, executor, namespace, pipeline, run, task and attempt; on every (re)connection the executor
//! removes its containers that belong to no live attempt, and stops (and reports) the attempts it is still
//! running that the cluster no longer counts live: those it declared LOST while this executor was cut off.
//! It heartbeats every second on its stream, which keeps its executor lease. This is the only crate that
//! talks to Docker.

mod attempt;
mod docker;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use docker::DockerBackend;

/// What runs the attempts.
pub enum Backend {
    /// Docker containers: the product.
    Docker(DockerBackend),
    /// For benchmarks of the control plane only: every attempt "runs" no container, reports started and
    /// then exited 0 at once, and ships no log. Never use it for real work.
    BenchmarkNoop,
}

/// Why the executor stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Docker: {0}")]
    Docker(String),
    #[error("invalid executor config: {0}")]
    Config(String),
}

/// What an executor needs to know about itself.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Unique among the cluster's executors; labels its containers.
    pub executor_id: String,
    /// The bearer token it presents to the scheduler.
    pub token: String,
    /// How many attempts it runs at once; 0 means no limit.
    pub capacity: u32,
    /// What it tells the scheduler about itself, such as `zone=a`.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Runs the executor until `shutdown` is cancelled: connects to the scheduler that holds the lease among
/// `schedulers` (a standby refuses the stream, and the executor moves on to the next), and reconnects with
/// backoff whenever the stream breaks. Containers keep running across reconnections.
pub async fn run(
    config: ExecutorConfig,
    backend: Backend,
    schedulers: Vec<Channel>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if schedulers.is_empty() {
        return Err(Error::Config("name at least one scheduler".into()));
    }
    let header = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| Error::Config("the token has characters a header cannot carry".into()))?;
    let count = schedulers.len();
    let executor = Arc::new(session::Executor::new(config, backend, schedulers, header));
    let mut backoff = Duration::from_millis(100);
    let mut failures_in_a_row = 0;
    loop {
        let connected_at = std::time::Instant::now();
        let pause = match executor.clone().session(&shutdown).await {
            Ok(()) => {
                executor.abandon_all();
                return Ok(());
            }
            Err(status) => {
                if connected_at.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                    failures_in_a_row = 0;
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
                return Ok(());
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}
