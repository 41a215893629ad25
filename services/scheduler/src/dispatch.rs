//! The `DispatchService` handlers: the executors' control stream and their log uploads.

use std::pin::Pin;

use futures_util::StreamExt;
use gofer_domain::{AttemptOutcome, Command, Error};
use gofer_proto::v1::{self, dispatch_request, dispatch_service_server::DispatchService};
use gofer_proto::{attempt_ref, internal, into_status};
use gofer_state::LogStore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::Scheduler;
use crate::reconcile::live_attempts;

/// Serves executors for a [`Scheduler`].
#[derive(Clone)]
pub struct DispatchHandler {
    scheduler: Scheduler,
    logs: LogStore,
}

impl DispatchHandler {
    /// Serves executors for `scheduler`, storing their logs in `logs`.
    pub fn new(scheduler: Scheduler, logs: LogStore) -> Self {
        DispatchHandler { scheduler, logs }
    }

    /// Commits one report from an executor. A stale report (an attempt that is no longer live) is
    /// refused by the state machine and dropped here: the executor has nothing to do about it.
    async fn commit(&self, command: Command) -> Result<(), Status> {
        match self.scheduler.state.propose(command).await {
            Ok(_) => Ok(()),
            Err(gofer_state::Error::Rejected(err)) => {
                tracing::debug!(%err, "stale executor report dropped");
                Ok(())
            }
            Err(err) => Err(internal("committing an executor report", &err, true)),
        }
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchHandler {
    type DispatchStream = Pin<Box<dyn Stream<Item = Result<v1::DispatchResponse, Status>> + Send + 'static>>;

    async fn dispatch(
        &self,
        request: Request<Streaming<v1::DispatchRequest>>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
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
        gofer_domain::validate_id("hello.executor_id", &hello.executor_id).map_err(into_status)?;
        let executor = hello.executor_id;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (cluster_id, live) = self.scheduler.state.read(|s| {
            let live = live_attempts(s)
                .into_iter()
                .filter(|a| a.executor == executor)
                .map(|a| gofer_proto::attempt_key(&a.target, a.attempt))
                .collect();
            (s.cluster_id.clone(), live)
        });
        // Containers are owned by (cluster, executor): until the cluster has its id, a welcome would let
        // the executor label, adopt or clean up containers of another cluster on the same Docker host.
        if cluster_id.is_empty() {
            return Err(Status::unavailable(
                "the cluster is not initialized yet; try again shortly",
            ));
        }
        // The welcome goes first, before the scheduler can queue any Start on this stream.
        let welcome = v1::Welcome {
            cluster_id,
            live_attempts: live,
        };
        let _ = tx.send(Ok(v1::DispatchResponse {
            kind: Some(v1::dispatch_response::Kind::Welcome(welcome)),
        }));
        let acks = tx.clone();
        let connection = self.scheduler.connect(&executor, tx);
        tracing::info!(%executor, "executor connected");
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let mut ack = None;
                let command = match message {
                    Ok(v1::DispatchRequest {
                        kind: Some(dispatch_request::Kind::Started(started)),
                    }) => {
                        let Some(key) = started.key else { continue };
                        let (target, attempt) = attempt_ref(&key);
                        Command::AttemptStarted {
                            target,
                            attempt,
                            at: started.started_unix_millis,
                        }
                    }
                    Ok(v1::DispatchRequest {
                        kind: Some(dispatch_request::Kind::Finished(finished)),
                    }) => {
                        let Some(key) = finished.key.as_ref() else { continue };
                        ack = Some(key.clone());
                        let (target, attempt) = attempt_ref(key);
                        Command::AttemptFinished {
                            target,
                            attempt,
                            outcome: outcome(&finished),
                            at: finished.ended_unix_millis,
                        }
                    }
                    Ok(_) => continue,
                    Err(status) => {
                        tracing::info!(%executor, %status, "executor stream ended");
                        break;
                    }
                };
                if let Err(status) = this.commit(command).await {
                    tracing::warn!(%executor, %status, "could not commit a report; the executor will resend it");
                    break;
                }
                if let Some(key) = ack {
                    let kind = v1::dispatch_response::Kind::FinishedAck(v1::FinishedAck { key: Some(key) });
                    let _ = acks.send(Ok(v1::DispatchResponse { kind: Some(kind) }));
                }
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
        let (target, attempt) = attempt_ref(&key);
        self.scheduler
            .state
            .read(|s| {
                let (run, _) = s.run(&target.namespace, &target.pipeline, target.run)?;
                match run.task(&target.task) {
                    Some(task) if attempt >= 1 && attempt <= task.attempt => Ok(()),
                    _ => Err(Error::NotFound(format!("attempt {attempt} of task {:?}", target.task))),
                }
            })
            .map_err(into_status)?;
        let mut writer = self
            .logs
            .writer(&target, attempt)
            .await
            .map_err(|e| internal("storing task logs", &e, true))?;
        writer
            .append(&first.data)
            .await
            .map_err(|e| internal("storing task logs", &e, true))?;
        while let Some(message) = inbound.next().await.transpose()? {
            writer
                .append(&message.data)
                .await
                .map_err(|e| internal("storing task logs", &e, true))?;
        }
        let stored_bytes = writer
            .finish()
            .await
            .map_err(|e| internal("storing task logs", &e, true))?;
        Ok(Response::new(v1::PushTaskLogsResponse { stored_bytes }))
    }
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
