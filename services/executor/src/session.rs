//! One executor and its dispatch session: the hello, the welcome (orphan cleanup), Starts and Stops in,
//! reports out. Reports of attempts that ended are kept until the scheduler no longer lists them as
//! live, and re-sent when it asks to start them again, so a report lost with a broken stream is not lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use gofer_proto::v1::{self, dispatch_request, dispatch_response, dispatch_service_client::DispatchServiceClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::DockerBackend;

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

pub(crate) use gofer_proto::attempt_key_text as key_string;

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
    capacity: u32,
    labels: std::collections::BTreeMap<String, String>,
    backend: crate::Backend,
    /// The schedulers it may reach; it talks to the one at `current`, the one that holds the lease.
    channels: Vec<Channel>,
    /// Where a process that is not the active scheduler pointed it, tried before `channels`.
    redirect: Mutex<Option<(String, Channel)>>,
    pub(crate) current: std::sync::atomic::AtomicUsize,
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// Attempts with a task running them, by key.
    pub(crate) active: Mutex<HashMap<String, Active>>,
    /// Final reports, by key, kept until the scheduler stops listing the attempt as live.
    pub(crate) finished: Mutex<HashMap<String, v1::AttemptFinished>>,
    /// Attempts waiting for the scheduler to confirm their final report, by key.
    pub(crate) acks: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Where reports go while a stream is up.
    outbound: Mutex<Option<mpsc::UnboundedSender<v1::DispatchRequest>>>,
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
    pub(crate) fn docker(&self) -> Option<&DockerBackend> {
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
                .insert(key_string(key), finished.clone());
        }
        if let Some(tx) = self.outbound.lock().expect("outbound lock").as_ref() {
            let _ = tx.send(v1::DispatchRequest { kind: Some(kind) });
        }
    }

    /// One dispatch session: returns Ok on shutdown, Err when the stream broke.
    pub(crate) async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> Result<(), Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = v1::DispatchRequest {
            kind: Some(dispatch_request::Kind::Hello(v1::ExecutorHello {
                executor_id: self.id.clone(),
                capacity: self.capacity,
                labels: self.labels.clone().into_iter().collect(),
                heartbeats: true,
            })),
        };
        tx.send(hello)
            .map_err(|_| Status::internal("the report queue closed"))?;
        // A scheduler answers a hello at once (welcome or refusal); one that does not is gone or cut off,
        // and the executor tries the next instead of waiting on it.
        let mut client = self.client();
        let opened = client.dispatch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let mut inbound = tokio::time::timeout(std::time::Duration::from_secs(5), opened)
            .await
            .map_err(|_| Status::unavailable("the scheduler did not answer the hello within 5 s"))??
            .into_inner();
        *self.outbound.lock().expect("outbound lock") = Some(tx.clone());
        // The heartbeat keeps this executor's lease; a scheduler that stops hearing it for the lease's
        // length declares it lost and its attempts go elsewhere. It beats from its own task, so that slow
        // Docker calls while handling a message never silence it.
        let beating = CancellationToken::new();
        let _stop_beating = beating.clone().drop_guard();
        self.tracker.spawn(async move {
            let mut heartbeat = tokio::time::interval(std::time::Duration::from_secs(1));
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = beating.cancelled() => return,
                    _ = heartbeat.tick() => {}
                }
                let beat = dispatch_request::Kind::Heartbeat(v1::Heartbeat {});
                if tx.send(v1::DispatchRequest { kind: Some(beat) }).is_err() {
                    return;
                }
            }
        });
        let result = loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                message = inbound.next() => message,
            };
            match message {
                Some(Ok(v1::DispatchResponse { kind: Some(kind) })) => self.handle(kind).await,
                Some(Ok(_)) => {}
                Some(Err(status)) => break Err(status),
                None => break Err(Status::unavailable("the scheduler closed the stream")),
            }
        };
        *self.outbound.lock().expect("outbound lock") = None;
        result
    }

    async fn handle(self: &Arc<Self>, kind: dispatch_response::Kind) {
        match kind {
            dispatch_response::Kind::Welcome(welcome) if welcome.cluster_id.is_empty() => {
                // Without a cluster id, "ours" would match every cluster's containers on this host.
                tracing::warn!("the scheduler welcomed this executor without a cluster id; ignoring it");
            }
            dispatch_response::Kind::Welcome(welcome) => {
                tracing::info!(live = welcome.live_attempts.len(), "welcomed by the scheduler");
                *self.cluster.lock().expect("cluster lock") = welcome.cluster_id.clone();
                let live: std::collections::HashSet<String> = welcome.live_attempts.iter().map(key_string).collect();
                self.finished
                    .lock()
                    .expect("finished lock")
                    .retain(|key, _| live.contains(key));
                self.stop_fenced_off(&live);
                self.remove_orphans(&welcome.cluster_id, &live).await;
            }
            dispatch_response::Kind::Start(start) => {
                let Some(key) = start.key.clone() else { return };
                let key = key_string(&key);
                // Bound first: a lock guard in the `if let` would live through the block, and `report`
                // locks `finished` again.
                let finished = self.finished.lock().expect("finished lock").get(&key).cloned();
                if let Some(finished) = finished {
                    self.report(dispatch_request::Kind::Finished(finished));
                    return;
                }
                let stop = {
                    let mut active = self.active.lock().expect("active lock");
                    if let Some(running) = active.get(&key) {
                        // Already running here: nothing to start. If the scheduler has no record of it
                        // running (that report was lost with a stream), it is said again.
                        let started_at = running.started_at;
                        drop(active);
                        if !start.already_started && started_at > 0 {
                            self.report(dispatch_request::Kind::Started(v1::AttemptStarted {
                                key: start.key.clone(),
                                started_unix_millis: started_at,
                            }));
                        }
                        return;
                    }
                    let stop = CancellationToken::new();
                    active.insert(
                        key.clone(),
                        Active {
                            stop: stop.clone(),
                            task: None,
                            started_at: 0,
                            stopping: None,
                        },
                    );
                    stop
                };
                let this = self.clone();
                let task_key = key.clone();
                let task = self.tracker.spawn(async move {
                    crate::attempt::run(&this, &task_key, start, stop).await;
                    this.active.lock().expect("active lock").remove(&task_key);
                });
                if let Some(active) = self.active.lock().expect("active lock").get_mut(&key) {
                    active.task = Some(task.abort_handle());
                }
            }
            dispatch_response::Kind::FinishedAck(ack) => {
                let Some(key) = ack.key else { return };
                let key = key_string(&key);
                self.finished.lock().expect("finished lock").remove(&key);
                if let Some(waiter) = self.acks.lock().expect("acks lock").remove(&key) {
                    let _ = waiter.send(());
                }
            }
            dispatch_response::Kind::Stop(stop) => {
                let Some(key) = stop.key else { return };
                let key_text = key_string(&key);
                let grace = std::time::Duration::from_millis(u64::try_from(stop.grace_millis).unwrap_or(0));
                if let Some(active) = self.active.lock().expect("active lock").get_mut(&key_text) {
                    active.stopping = Some(Stopping::Cancelled(grace));
                    active.stop.cancel();
                    return;
                }
                let finished = self.finished.lock().expect("finished lock").get(&key_text).cloned();
                if let Some(finished) = finished {
                    self.report(dispatch_request::Kind::Finished(finished));
                    return;
                }
                // Never started here: there is no container to stop, but there may be one left from
                // before a restart.
                let this = self.clone();
                self.tracker
                    .spawn(async move { crate::attempt::stop_unstarted(&this, &key_text, key).await });
            }
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

    /// Stops the attempts this executor still runs that the cluster no longer counts live: they were
    /// declared LOST (and maybe retried elsewhere) while it was cut off, so they must not run on. Each is
    /// reported stopped, and the scheduler records that on the LOST attempt.
    fn stop_fenced_off(&self, live: &std::collections::HashSet<String>) {
        let mut active = self.active.lock().expect("active lock");
        for (key, attempt) in active.iter_mut().filter(|(key, _)| !live.contains(*key)) {
            tracing::warn!(attempt = %key, "stopping an attempt the cluster no longer counts live (fenced off)");
            attempt.stopping = Some(Stopping::FencedOff);
            attempt.stop.cancel();
        }
    }

    /// Removes containers of this cluster and executor that belong to no live or active attempt.
    async fn remove_orphans(&self, cluster: &str, live: &std::collections::HashSet<String>) {
        let Some(docker) = self.docker() else { return };
        let ours = match docker.ours(cluster, &self.id).await {
            Ok(ours) => ours,
            Err(err) => {
                tracing::warn!(%err, "could not list containers to clean up");
                return;
            }
        };
        for (id, key) in ours {
            let active = self.active.lock().expect("active lock").contains_key(&key);
            if !live.contains(&key) && !active {
                tracing::info!(container = %id, attempt = %key, "removing a container no live attempt owns");
                if let Err(err) = docker.remove(&id).await {
                    tracing::warn!(%err, container = %id, "could not remove an orphaned container");
                    continue;
                }
                // Said to the scheduler, which keeps it on the attempt if it was declared LOST while this
                // executor was away (and drops it otherwise).
                if let Some(key) = gofer_proto::parse_attempt_key_text(&key) {
                    let reason = format!(
                        "executor {} removed its container on starting: the attempt was no longer live",
                        self.id
                    );
                    self.report(dispatch_request::Kind::Finished(v1::AttemptFinished {
                        key: Some(key),
                        outcome: v1::AttemptOutcome::Stopped as i32,
                        exit_code: None,
                        reason,
                        ended_unix_millis: self.clock.now_millis(),
                    }));
                }
            }
        }
    }
}
