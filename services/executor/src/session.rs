//! An executor's dispatch session: the hello, the welcome (orphan cleanup), Starts and Stops in, reports
//! out. Reports of attempts that ended are kept until the scheduler no longer lists them as live, and
//! re-sent when it asks to start them again, so a report lost with a broken stream is not lost. Each
//! Start becomes an attempt (`attempt.rs`) on the executor's tracker.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use gofer_proto::v1::{self, dispatch_request, dispatch_response};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use gofer_domain::AttemptId;

use crate::executor::{Active, Executor, Stopping};

impl Executor {
    /// One dispatch session: returns Ok on shutdown, Err when the stream broke.
    pub(crate) async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> Result<(), Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = v1::DispatchRequest {
            kind: Some(dispatch_request::Kind::Hello(v1::ExecutorHello {
                executor_id: self.id.clone(),
                capacity: self.capacity,
                labels: self.labels.clone().into_iter().collect(),
                heartbeats: true,
                millicpus: self.size.millicpus,
                memory_bytes: self.size.memory_bytes,
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
                let live: HashSet<AttemptId> = welcome.live_attempts.iter().map(AttemptId::from).collect();
                self.finished
                    .lock()
                    .expect("finished lock")
                    .retain(|key, _| live.contains(key));
                self.stop_fenced_off(&live);
                self.remove_orphans(&welcome.cluster_id, &live).await;
            }
            dispatch_response::Kind::Start(start) => {
                let Some(key) = start.key.as_ref() else { return };
                let key = AttemptId::from(key);
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
                let key = AttemptId::from(&key);
                self.finished.lock().expect("finished lock").remove(&key);
                if let Some(waiter) = self.acks.lock().expect("acks lock").remove(&key) {
                    let _ = waiter.send(());
                }
            }
            dispatch_response::Kind::Stop(stop) => {
                let Some(key) = stop.key else { return };
                let key = AttemptId::from(&key);
                let grace = std::time::Duration::from_millis(u64::try_from(stop.grace_millis).unwrap_or(0));
                if let Some(active) = self.active.lock().expect("active lock").get_mut(&key) {
                    active.stopping = Some(Stopping::Cancelled(grace));
                    active.stop.cancel();
                    return;
                }
                let finished = self.finished.lock().expect("finished lock").get(&key).cloned();
                if let Some(finished) = finished {
                    self.report(dispatch_request::Kind::Finished(finished));
                    return;
                }
                // Never started here: there is no container to stop, but there may be one left from
                // before a restart.
                let this = self.clone();
                self.tracker
                    .spawn(async move { crate::attempt::stop_unstarted(&this, &key).await });
            }
        }
    }

    /// Stops the attempts this executor still runs that the cluster no longer counts live: they were
    /// declared LOST (and maybe retried elsewhere) while it was cut off, so they must not run on. Each is
    /// reported stopped, and the scheduler records that on the LOST attempt.
    fn stop_fenced_off(&self, live: &HashSet<AttemptId>) {
        let mut active = self.active.lock().expect("active lock");
        for (key, attempt) in active.iter_mut().filter(|(key, _)| !live.contains(*key)) {
            tracing::warn!(attempt = %key, "stopping an attempt the cluster no longer counts live (fenced off)");
            attempt.stopping = Some(Stopping::FencedOff);
            attempt.stop.cancel();
        }
    }

    /// Removes containers of this cluster and executor that belong to no live or active attempt.
    async fn remove_orphans(&self, cluster: &str, live: &HashSet<AttemptId>) {
        let Some(docker) = self.docker() else { return };
        let ours = match crate::containers::ours(docker, cluster, &self.id).await {
            Ok(ours) => ours,
            Err(err) => {
                tracing::warn!(%err, "could not list containers to clean up");
                return;
            }
        };
        for (id, attempt) in ours {
            let owned = attempt.as_ref().is_some_and(|attempt| {
                live.contains(attempt) || self.active.lock().expect("active lock").contains_key(attempt)
            });
            if !owned {
                let named = attempt
                    .as_ref()
                    .map_or_else(|| "none".to_string(), AttemptId::to_string);
                tracing::info!(container = %id, attempt = %named, "removing a container no live attempt owns");
                if let Err(err) = docker.remove(&id).await {
                    tracing::warn!(%err, container = %id, "could not remove an orphaned container");
                    continue;
                }
                // Said to the scheduler, which keeps it on the attempt if it was declared LOST while this
                // executor was away (and drops it otherwise).
                if let Some(attempt) = &attempt {
                    let reason = format!(
                        "executor {} removed its container on starting: the attempt was no longer live",
                        self.id
                    );
                    self.report(dispatch_request::Kind::Finished(v1::AttemptFinished {
                        key: Some(v1::AttemptKey::from(attempt)),
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
