//! Gofer's executor: it holds a `Dispatch` stream to the scheduler, runs each attempt it is given as a
//! Docker container through bollard, ships the container's output to the log archive, and reports what
//! ran.
//!
//! A Start for an attempt it already runs is a no-op, and a Start for an attempt whose container exists
//! adopts that container, so a re-sent Start never makes a second container. Containers are labelled with
//! the cluster, executor, namespace, pipeline, run, task and attempt; on every (re)connection the executor
//! removes its containers that belong to no live attempt. This is the only crate that talks to Docker.

mod attempt;
mod docker;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use docker::DockerBackend;

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
}

/// Runs the executor until `shutdown` is cancelled: connects to the scheduler over `channel`, and
/// reconnects with backoff whenever the stream breaks. Containers keep running across reconnections.
pub async fn run(
    config: ExecutorConfig,
    docker: DockerBackend,
    channel: Channel,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let header = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| Error::Config("the token has characters a header cannot carry".into()))?;
    let executor = Arc::new(session::Executor::new(config.executor_id, docker, channel, header));
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected_at = std::time::Instant::now();
        match executor.clone().session(&shutdown).await {
            Ok(()) => {
                executor.abandon_all();
                return Ok(());
            }
            Err(status) => tracing::warn!(%status, "dispatch stream ended; reconnecting"),
        }
        if connected_at.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                executor.abandon_all();
                return Ok(());
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
