//! The `DispatchService` handlers: the executors' control stream and their log uploads.
//!
//! An executor is the one its stream's hello, or its log upload, names: checked against its client
//! certificate when it presented one. Its reports are committed as that executor's, and apply counts them
//! only from the executor the attempt is assigned to; a log is stored only for a live attempt of its own.

use std::pin::Pin;

use futures_util::StreamExt;
use gofer_domain::executors::ExecutorInfo;
use gofer_domain::lease::Role;
use gofer_domain::{AttemptId, AttemptOutcome, Command, Error};
use gofer_proto::v1::{self, dispatch_request, dispatch_service_server::DispatchService};
use gofer_proto::{into_status, unavailable};
use gofer_state::{LeaseHolder, LogStore, StateHandle};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::reconcile::{Scheduler, live_attempts};

/// Serves executors for a [`Scheduler`].
#[derive(Clone)]
pub struct DispatchHandler {
    scheduler: Scheduler,
    /// The task log archive of the state node in this process; `None` when the state nodes are elsewhere
    /// and logs are sent to the one that keeps them.
    logs: Option<LogStore>,
    /// The state node each attempt's log was stored on, by executor and attempt, until that executor's
    /// final report carries it (another executor's report about the attempt does not take it).
    stored_on: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, AttemptId), u64>>>,
    /// Reports on their way to [`commit_reports`]; bounded, so that executors that report faster than the
    /// log commits are slowed down (their streams are not read) instead of growing the queue.
    reports: mpsc::Sender<Report>,
}

impl DispatchHandler {
    /// Serves executors for `scheduler`, storing their logs in `logs` or sending them to a state node.
    /// Starts the task that commits the executors' reports, on the scheduler's tracker until `shutdown`.
    pub(crate) fn new(scheduler: Scheduler, logs: Option<LogStore>, shutdown: CancellationToken) -> Self {
        let (reports, queue) = report_queue();
        scheduler
            .tracker
            .spawn(commit_reports(scheduler.clone(), queue, shutdown));
        DispatchHandler {
            scheduler,
            logs,
            stored_on: std::sync::Arc::default(),
            reports,
        }
    }

    /// The scheduler lease this handler's scheduler acts under.
    pub fn lease(&self) -> &LeaseHolder {
        &self.scheduler.lease
    }
}

/// Refuses an executor here as FailedPrecondition, pointing it at the active scheduler when the scheduler
/// lease says where that is (the message says it, and the `gofer-scheduler-address` metadata carries it).
fn standby(state: &StateHandle, why: &str) -> Status {
    let address = state.read(|s| {
        s.leases
            .roles
            .get(&Role::Scheduler)
            .map(|lease| lease.address.clone())
            .unwrap_or_default()
    });
    let mut metadata = tonic::metadata::MetadataMap::new();
    let message = match address.parse() {
        Ok(value) if !address.is_empty() => {
            metadata.insert(gofer_proto::SCHEDULER_ADDRESS_METADATA, value);
            format!("{why}; the active scheduler is at {address}")
        }
        _ => why.to_string(),
    };
    Status::with_metadata(tonic::Code::FailedPrecondition, message, metadata)
}

/// The dispatch service of a process that runs no scheduler (an api or state node): it points every
/// executor at the active scheduler.
#[derive(Clone)]
pub struct DispatchRedirect {
    state: StateHandle,
}

impl DispatchRedirect {
    /// Points executors at the scheduler the lease in `state` names.
    pub fn new(state: StateHandle) -> Self {
        DispatchRedirect { state }
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchRedirect {
    type DispatchStream = Pin<Box<dyn Stream<Item = Result<v1::DispatchResponse, Status>> + Send + 'static>>;

    async fn dispatch(
        &self,
        _request: Request<Streaming<v1::DispatchRequest>>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
        Err(standby(&self.state, "this process runs no scheduler"))
    }

    async fn push_task_logs(
        &self,
        _request: Request<Streaming<v1::PushTaskLogsRequest>>,
    ) -> Result<Response<v1::PushTaskLogsResponse>, Status> {
        Err(standby(&self.state, "this process runs no scheduler"))
    }
}

/// One executor report waiting to be committed, and where its outcome goes.
struct Report {
    command: Command,
    /// What the executor said with it, kept on a LOST attempt if the report comes late.
    detail: String,
    /// The key to acknowledge once the report is committed (final reports only).
    ack: Option<v1::AttemptKey>,
    acks: mpsc::UnboundedSender<Result<v1::DispatchResponse, Status>>,
    /// Cancelled to end the report's stream when it could not be committed: the executor resends it to
    /// the scheduler that holds the lease.
    refused: CancellationToken,
}

/// The most reports committed in one log entry.
const MAX_REPORTS_PER_ENTRY: usize = 1024;

/// The most reports waiting to be committed: two log entries' worth. A stream whose report finds the
/// queue full waits, reading nothing more, until the committer takes some.
const MAX_QUEUED_REPORTS: usize = 2 * MAX_REPORTS_PER_ENTRY;

/// The queue from the executors' streams to [`commit_reports`].
fn report_queue() -> (mpsc::Sender<Report>, mpsc::Receiver<Report>) {
    mpsc::channel(MAX_QUEUED_REPORTS)
}

/// Commits the executors' reports in arrival order, every report waiting at the time in one fenced
/// `Batch` (one log entry), and acknowledges the final ones once committed. A report of an attempt that
/// is no longer live is refused by apply and dropped (acknowledged: the executor has nothing to do about
/// it); if the attempt was declared LOST, what the executor reported is recorded on it.
async fn commit_reports(scheduler: Scheduler, mut queue: mpsc::Receiver<Report>, shutdown: CancellationToken) {
    // On shutdown the reports waiting are dropped unacknowledged: their executors send them again.
    while let Some(first) = tokio::select! {
        () = shutdown.cancelled() => None,
        first = queue.recv() => first,
    } {
        let mut reports = vec![first];
        while reports.len() < MAX_REPORTS_PER_ENTRY
            && let Ok(more) = queue.try_recv()
        {
            reports.push(more);
        }
        let commands = reports.iter().map(|r| r.command.clone()).collect();
        let results = match scheduler.lease.propose(Command::Batch { commands }).await {
            Ok(gofer_domain::Applied::Batch(results)) => results,
            Ok(other) => {
                tracing::error!(?other, "a batch of reports applied as something else");
                continue;
            }
            // Not committed (fenced off, the lease lost, or the state unreachable): not acknowledged.
            // The streams end and their executors resend to the scheduler that holds the lease.
            Err(err) => {
                tracing::warn!(%err, reports = reports.len(), "could not commit executor reports; their executors will resend them");
                for report in &reports {
                    report.refused.cancel();
                }
                continue;
            }
        };
        let mut late = Vec::new();
        for (report, result) in reports.into_iter().zip(results) {
            if let Err(err) = &result {
                tracing::debug!(%err, "stale executor report dropped");
                late.extend(late_report(&report.command, &report.detail));
            }
            if let Some(key) = report.ack {
                let kind = v1::dispatch_response::Kind::FinishedAck(v1::FinishedAck { key: Some(key) });
                let _ = report.acks.send(Ok(v1::DispatchResponse { kind: Some(kind) }));
            }
        }
        if !late.is_empty()
            && let Err(err) = scheduler.lease.propose(Command::Batch { commands: late }).await
        {
            tracing::debug!(%err, "late reports were not recorded");
        }
    }
}

/// A final report of an attempt that is no longer live, as a record for the attempt in case it was
/// declared LOST: the executor came back and says how it ended (usually that it stopped the container).
/// Apply refuses it for an attempt that was not LOST.
fn late_report(command: &Command, detail: &str) -> Option<Command> {
    let Command::AttemptFinished {
        target,
        attempt,
        executor,
        outcome,
        at,
        ..
    } = command
    else {
        return None;
    };
    let report = match outcome {
        AttemptOutcome::Exited(code) => format!("its executor reported it exited with code {code}"),
        AttemptOutcome::Error(reason) | AttemptOutcome::Lost(reason) => {
            format!("its executor reported an error: {reason}")
        }
        AttemptOutcome::Stopped if !detail.is_empty() => format!("its executor reported it stopped: {detail}"),
        AttemptOutcome::Stopped => "its executor reported it stopped".to_string(),
    };
    Some(Command::AttemptReportedLate {
        target: target.clone(),
        attempt: *attempt,
        executor: executor.clone(),
        report,
        at: *at,
    })
}

#[tonic::async_trait]
impl DispatchService for DispatchHandler {
    type DispatchStream = Pin<Box<dyn Stream<Item = Result<v1::DispatchResponse, Status>> + Send + 'static>>;

    async fn dispatch(
        &self,
        request: Request<Streaming<v1::DispatchRequest>>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
        let certificate = client_certificate(&request);
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(v1::DispatchRequest {
                kind: Some(dispatch_request::Kind::Hello(hello)),
            })) => hello,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(into_status(Error::invalid(
                    "hello",
                    "the first message must be a hello",
                )));
            }
        };
        check_executor_name(certificate.as_deref(), "hello.executor_id", &hello.executor_id)?;
        // Who this stream speaks for: every report on it is committed as this executor's, never as one a
        // report names, and apply counts a report only from the executor its attempt is assigned to.
        let executor = hello.executor_id;
        let info = ExecutorInfo {
            id: executor.clone(),
            capacity: hello.capacity,
            labels: hello.labels.into_iter().collect(),
            millicpus: hello.millicpus,
            memory_bytes: hello.memory_bytes,
        };
        if self.scheduler.lease.epoch().is_none() {
            return Err(standby(
                &self.scheduler.state,
                "this scheduler is standing by: it does not hold the scheduler lease",
            ));
        }
        // Containers are owned by (cluster, executor): until the cluster has its id, a welcome would let
        // the executor label, adopt or clean up containers of another cluster on the same Docker host.
        if self.scheduler.state.read(|s| s.cluster_id.is_empty()) {
            return Err(Status::unavailable(
                "the cluster is not initialized yet; try again shortly",
            ));
        }
        // The executor's lease is renewed before the welcome, so that an executor declared lost while it
        // was away may be given attempts again, and the welcome's live list is read after it.
        let renewal = Command::RenewExecutors {
            executors: vec![info.clone()],
            ttl_millis: crate::reconcile::EXECUTOR_LEASE.as_millis() as u64,
            at: self.scheduler.clock.now_millis(),
        };
        match self.scheduler.lease.propose(renewal).await {
            Ok(_) => {}
            Err(gofer_state::Error::Rejected(err)) if !err.is_fenced() => return Err(into_status(err)),
            Err(err) => return Err(unavailable("registering the executor", &err)),
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Linearizable: a scheduler following remote state nodes must not welcome with a stale live list,
        // which would make the executor stop an attempt that is live.
        let read = self.scheduler.state.read_linearizable(|s| {
            let live: Vec<v1::AttemptKey> = live_attempts(s)
                .into_iter()
                .filter(|a| a.executor == executor)
                .map(|a| v1::AttemptKey::from(&a.id))
                .collect();
            (s.cluster_id.clone(), live)
        });
        let (cluster_id, live) = read.await.map_err(|e| unavailable("reading the live attempts", &e))?;
        // The welcome goes first, before the scheduler can queue any Start on this stream.
        let welcome = v1::Welcome {
            cluster_id,
            live_attempts: live,
        };
        let _ = tx.send(Ok(v1::DispatchResponse {
            kind: Some(v1::dispatch_response::Kind::Welcome(welcome)),
        }));
        let acks = tx.clone();
        let mut lease = self.scheduler.lease.watch();
        let epoch = *lease.borrow_and_update();
        let (connection, closed, heard) = self.scheduler.connect(info, hello.heartbeats, tx);
        tracing::info!(%executor, "executor connected");
        let this = self.clone();
        self.scheduler.tracker.spawn(async move {
            // Ends when the executor leaves, the scheduler drops the connection (a newer stream, the lease
            // lost, a silent executor) or a report could not be committed: dropping `acks` then ends the
            // response stream, and the executor looks again. The stream also ends as soon as this
            // scheduler stops holding the lease it was opened under.
            let lease_moved = lease.wait_for(move |now| *now != epoch);
            tokio::pin!(lease_moved);
            let refused = CancellationToken::new();
            while let Some(message) = tokio::select! {
                message = inbound.next() => message,
                () = closed.cancelled() => None,
                () = refused.cancelled() => None,
                _ = &mut lease_moved => None,
            } {
                let now = this.scheduler.clock.now_millis();
                heard.store(now, std::sync::atomic::Ordering::Relaxed);
                let mut ack = None;
                let mut detail = String::new();
                let command = match message {
                    Ok(v1::DispatchRequest {
                        kind: Some(dispatch_request::Kind::Started(started)),
                    }) => {
                        let Some(key) = started.key else { continue };
                        let AttemptId { task: target, attempt } = AttemptId::from(&key);
                        Command::AttemptStarted {
                            target,
                            attempt,
                            executor: executor.clone(),
                            at: started.started_unix_millis.min(now),
                        }
                    }
                    Ok(v1::DispatchRequest {
                        kind: Some(dispatch_request::Kind::Finished(mut finished)),
                    }) => {
                        // Kept to the bound apply keeps, before it is queued or written to the log.
                        gofer_domain::inputs::truncate_reason(&mut finished.reason);
                        let Some(key) = finished.key.as_ref() else { continue };
                        ack = Some(key.clone());
                        detail = finished.reason.clone();
                        let id = AttemptId::from(key);
                        let stored = (executor.clone(), id.clone());
                        let log_node = this.stored_on.lock().expect("stored_on lock").remove(&stored);
                        let AttemptId { task: target, attempt } = id;
                        Command::AttemptFinished {
                            target,
                            attempt,
                            executor: executor.clone(),
                            outcome: outcome(&finished),
                            log_node: log_node.unwrap_or(0),
                            // An executor's clock ahead of this one must not push a retry's backoff out.
                            at: finished.ended_unix_millis.min(now),
                        }
                    }
                    Ok(_) => continue,
                    Err(status) => {
                        tracing::info!(%executor, %status, "executor stream ended");
                        break;
                    }
                };
                let report = Report {
                    command,
                    detail,
                    ack,
                    acks: acks.clone(),
                    refused: refused.clone(),
                };
                if this.reports.send(report).await.is_err() {
                    break;
                }
            }
            if refused.is_cancelled() {
                tracing::warn!(%executor, "a report could not be committed; the executor will resend it");
            }
            this.scheduler.disconnect(&executor, connection);
            tracing::info!(%executor, "executor disconnected");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn push_task_logs(
        &self,
        request: Request<Streaming<v1::PushTaskLogsRequest>>,
    ) -> Result<Response<v1::PushTaskLogsResponse>, Status> {
        let certificate = client_certificate(&request);
        let mut inbound = request.into_inner();
        let Some(first) = inbound.next().await.transpose()? else {
            return Err(into_status(Error::invalid(
                "key",
                "the first message must name the attempt",
            )));
        };
        let key = first
            .key
            .ok_or_else(|| into_status(Error::invalid("key", "is required")))?;
        // The uploader is the executor the request names, as a stream's hello names it; a certificate
        // must be issued for it. Only the assignee of a live attempt stores its log: a log sent again
        // from its first byte (the upload failed) replaces what was stored, a finished attempt's never.
        check_executor_name(certificate.as_deref(), "executor_id", &first.executor_id)?;
        let executor = first.executor_id;
        let id = AttemptId::from(&key);
        let (target, attempt) = (&id.task, id.attempt);
        let state = &self.scheduler.state;
        // Linearizable: a lagging view could show an attempt that has finished as live.
        state
            .read_linearizable(|s| s.check_log_upload(target, attempt, &executor))
            .await
            .map_err(|e| unavailable("reading the attempt", &e))?
            .map_err(into_status)?;
        // The log goes to this process's state node, or else to the node its mirror follows, which it has
        // heard from within the last two seconds; the final report records which.
        let keeper = state
            .log_keeper_now()
            .await
            .map_err(|e| unavailable("finding a state node to keep the log", &e))?;
        let chunks = inbound.map(|m| m.map(|m| m.data));
        let stored_bytes = match &self.logs {
            Some(logs) => {
                let stored = logs.store_stream(target, attempt, &first.data, chunks).await?;
                // The log counts as stored once it is a blob on a majority of the state nodes.
                state
                    .archive_task_log(logs, target, attempt, self.scheduler.clock.now_millis())
                    .await
                    .map_err(|e| unavailable("replicating the task log", &e))?;
                stored
            }
            None => {
                // The keeper is a state node elsewhere: the bytes go there. A broken upload ends the
                // forwarded stream early and fails this call; the executor sends the whole log again.
                let broken = std::sync::Arc::new(std::sync::Mutex::new(None));
                let seen = broken.clone();
                let rest = tokio_stream::StreamExt::map_while(chunks, move |chunk| match chunk {
                    Ok(data) => Some(data),
                    Err(status) => {
                        *seen.lock().expect("upload lock") = Some(status);
                        None
                    }
                });
                let data = futures_util::stream::iter([first.data]).chain(rest);
                let stored = state
                    .send_log(keeper, key, &executor, data)
                    .await
                    .map_err(|e| unavailable("storing task logs", &e))?;
                if let Some(status) = broken.lock().expect("upload lock").take() {
                    return Err(status);
                }
                stored
            }
        };
        self.stored_on
            .lock()
            .expect("stored_on lock")
            .insert((executor, id), keeper);
        Ok(Response::new(v1::PushTaskLogsResponse { stored_bytes }))
    }
}

/// The client certificate a caller presented, if any (the TLS handshake verified it against the cluster
/// CA). A caller without one got in with a token.
fn client_certificate<T>(request: &Request<T>) -> Option<Vec<u8>> {
    let peer = request.extensions().get::<gofer_tls::listen::Peer>()?;
    peer.certificate.as_deref().map(<[u8]>::to_vec)
}

/// Checks the executor a caller says it is (`field`: a stream's hello, a log upload): a valid id, and one
/// its client certificate is issued for when it presented one. A caller with a token instead (the
/// in-process executor's, or an admin's) names itself unchecked, since the token names no executor.
#[allow(clippy::result_large_err)]
fn check_executor_name(certificate: Option<&[u8]>, field: &str, executor: &str) -> Result<(), Status> {
    gofer_domain::validate_id(field, executor).map_err(into_status)?;
    if let Some(der) = certificate
        && !gofer_tls::certificate_names(der, executor)
    {
        return Err(Status::permission_denied(format!(
            "{field}: the client certificate is not issued for executor {executor:?}"
        )));
    }
    Ok(())
}

fn outcome(finished: &v1::AttemptFinished) -> AttemptOutcome {
    match v1::AttemptOutcome::try_from(finished.outcome) {
        Ok(v1::AttemptOutcome::Exited) => AttemptOutcome::Exited(finished.exit_code.unwrap_or(-1)),
        Ok(v1::AttemptOutcome::Stopped) => AttemptOutcome::Stopped,
        _ => AttemptOutcome::Error(if finished.reason.is_empty() {
            "the executor reported an error".to_string()
        } else {
            finished.reason.clone()
        }),
    }
}

#[cfg(test)]
mod tests;
