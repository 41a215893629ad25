//! The executor's book, as its dispatch session (`session.rs`) and its attempts (`attempt.rs`) share it:
//! who it is, which schedulers it reaches, the attempts it runs, the final reports it keeps until they
//! are acknowledged, and how a report goes out. It talks to no scheduler and runs no attempt itself, and
//! imports neither module.

use std::collections::HashMap;
use std::sync::Mutex;

use gofer_domain::AttemptId;
use gofer_proto::v1::{self, dispatch_request, dispatch_service_client::DispatchServiceClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Adds the bearer token to every call; `None` for an executor that presents a client certificate instead.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.0 {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub(crate) type Client = DispatchServiceClient<InterceptedService<Channel, Bearer>>;

/// An attempt this executor is running.
pub(crate) struct Active {
    pub(crate) stop: CancellationToken,
    /// Set once the attempt's task is spawned.
    pub(crate) task: Option<tokio::task::AbortHandle>,
    /// When its container was reported running (Unix milliseconds), or 0 before.
    pub(crate) started_at: i64,
    /// Why `stop` was cancelled, set just before it is.
    pub(crate) stopping: Option<Stopping>,
}

/// Why an attempt's container is being stopped.
#[derive(Clone, Copy)]
pub(crate) enum Stopping {
    /// Its run was cancelled; the container gets this long between SIGTERM and SIGKILL.
    Cancelled(std::time::Duration),
    /// The cluster no longer counts it live (declared LOST while this executor was cut off).
    FencedOff,
}

pub(crate) struct Executor {
    pub(crate) id: String,
    pub(crate) capacity: u32,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    pub(crate) api_relay: Option<crate::ApiRelay>,
    pub(crate) size: gofer_domain::executors::Need,
    backend: crate::Backend,
    /// The schedulers it may reach; it talks to the one at `current`, the one that holds the lease.
    channels: Vec<Channel>,
    /// Where a process that is not the active scheduler pointed it, tried before `channels`.
    redirect: Mutex<Option<(String, Channel)>>,
    pub(crate) current: std::sync::atomic::AtomicUsize,
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// Attempts with a task running them.
    pub(crate) active: Mutex<HashMap<AttemptId, Active>>,
    /// Final reports, kept until the scheduler stops listing the attempt as live.
    pub(crate) finished: Mutex<HashMap<AttemptId, v1::AttemptFinished>>,
    /// Attempts waiting for the scheduler to confirm their final report.
    pub(crate) acks: Mutex<HashMap<AttemptId, tokio::sync::oneshot::Sender<()>>>,
    /// Where reports go while a stream is up.
    pub(crate) outbound: Mutex<Option<mpsc::UnboundedSender<v1::DispatchRequest>>>,
    pub(crate) cluster: Mutex<String>,
    /// What stamps its reports.
    pub(crate) clock: gofer_clock::Clock,
    /// Runs its heartbeat, its attempts and their log uploads.
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

impl Executor {
    pub(crate) fn new(
        config: crate::Config,
        backend: crate::Backend,
        channels: Vec<Channel>,
        header: Option<MetadataValue<tonic::metadata::Ascii>>,
        clock: gofer_clock::Clock,
        tracker: tokio_util::task::TaskTracker,
    ) -> Self {
        Executor {
            id: config.executor_id,
            capacity: config.capacity,
            labels: config.labels,
            api_relay: config.api_relay,
            size: config.size,
            backend,
            channels,
            redirect: Mutex::default(),
            current: std::sync::atomic::AtomicUsize::new(0),
            header,
            active: Mutex::default(),
            finished: Mutex::default(),
            acks: Mutex::default(),
            outbound: Mutex::default(),
            cluster: Mutex::default(),
            clock,
            tracker,
        }
    }

    /// Docker, unless this executor runs the benchmark backend.
    pub(crate) fn docker(&self) -> Option<&gofer_docker::Engine> {
        match &self.backend {
            crate::Backend::Docker(docker) => Some(docker),
            crate::Backend::BenchmarkNoop => None,
        }
    }

    pub(crate) fn client(&self) -> Client {
        let redirected = self
            .redirect
            .lock()
            .expect("redirect lock")
            .as_ref()
            .map(|(_, c)| c.clone());
        let channel = redirected.unwrap_or_else(|| {
            let current = self.current.load(std::sync::atomic::Ordering::SeqCst) % self.channels.len();
            self.channels[current].clone()
        });
        DispatchServiceClient::with_interceptor(channel, Bearer(self.header.clone()))
            .max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Where it was redirected to last, if it still talks there.
    pub(crate) fn redirected_to(&self) -> Option<String> {
        self.redirect
            .lock()
            .expect("redirect lock")
            .as_ref()
            .map(|(a, _)| a.clone())
    }

    /// Talks to `channel` at `address` from the next session on, or (with `None`) to its own list again.
    pub(crate) fn redirect(&self, to: Option<(String, Channel)>) {
        *self.redirect.lock().expect("redirect lock") = to;
    }

    /// Sends a report if a stream is up; a report that cannot be sent now is recovered by the re-sent Start.
    pub(crate) fn report(&self, kind: dispatch_request::Kind) {
        if let dispatch_request::Kind::Finished(finished) = &kind
            && let Some(key) = &finished.key
        {
            self.finished
                .lock()
                .expect("finished lock")
                .insert(AttemptId::from(key), finished.clone());
        }
        if let Some(tx) = self.outbound.lock().expect("outbound lock").as_ref() {
            let _ = tx.send(v1::DispatchRequest { kind: Some(kind) });
        }
    }

    /// Stops following every attempt, leaving their containers as they are: the next executor adopts them
    /// and ships their output again from the start. Called on shutdown, so that no log upload keeps the
    /// node's server from draining.
    pub(crate) fn abandon_all(&self) {
        for (_, active) in self.active.lock().expect("active lock").drain() {
            if let Some(task) = active.task {
                task.abort();
            }
        }
    }
}
