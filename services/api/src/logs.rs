//! Streaming a task's logs to a client: everything stored so far, then, with `follow`, every new byte
//! until the task execution ends. Any number of clients can follow the same task; each reads the
//! archive file on its own and is woken by the `LogStore`'s notifier or by a state change.

use std::pin::Pin;
use std::time::Duration;

use gofer_domain::{AttemptRef, Error};
use gofer_proto::{internal, unavailable, v1};
use tokio_stream::Stream;
use tonic::Status;

use crate::api::{ApiService, namespace_or_default};

const CHUNK: usize = 64 * 1024;

/// Where a task execution stands, as a log reader needs it.
struct TaskView {
    attempt: u32,
    ended: bool,
    /// The state node that keeps the attempt's log (0: this one, for logs from before nodes were named).
    log_node: u64,
    /// The attempt's whole log as a replicated blob, once it is archived: its digest and holders.
    archived: Option<(String, std::collections::BTreeSet<u64>)>,
}

fn task_view(api: &ApiService, target: &AttemptRef) -> Result<TaskView, Status> {
    api.read(|s| {
        let (run, _) = s.run(&target.namespace, &target.pipeline, target.run)?;
        let task = run
            .task(&target.task)
            .ok_or_else(|| Error::NotFound(format!("task {:?} in run {}", target.task, target.run)))?;
        let key = gofer_domain::blobs::task_log_key(target, task.attempt);
        let archived = s
            .blobs
            .get(&key)
            .map(|(blob, copies)| (blob.digest.clone(), copies.holders.clone()));
        Ok(TaskView {
            attempt: task.attempt,
            ended: task.state.is_terminal(),
            log_node: task.log_node,
            archived,
        })
    })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<v1::GetTaskLogsResponse, Status>> + Send>>;

/// Checks the request and returns the stream of log chunks.
#[allow(clippy::result_large_err)]
pub(crate) fn stream_task_logs(api: ApiService, request: v1::GetTaskLogsRequest) -> Result<LogStream, Status> {
    let target = AttemptRef {
        namespace: namespace_or_default(request.namespace_id),
        pipeline: request.pipeline_id,
        run: request.run_id,
        task: request.task_id,
    };
    let follow = request.follow;
    // Fail fast, before the stream opens, on an unknown namespace, pipeline, run or task.
    task_view(&api, &target)?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let tracker = api.tracker.clone();
    tracker.spawn(async move {
        if let Err(status) = pump(&api, &target, follow, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn pump(
    api: &ApiService,
    target: &AttemptRef,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<Result<v1::GetTaskLogsResponse, Status>>,
) -> Result<(), Status> {
    let mut state_changes = api.state.subscribe();
    let mut view = task_view(api, target)?;
    // Before the first attempt there is nothing to read; a follower waits for the task to start or end.
    while follow && view.attempt == 0 && !view.ended {
        wait(api, &mut state_changes, None, tx).await?;
        view = task_view(api, target)?;
    }
    if view.attempt == 0 {
        return Ok(());
    }
    let attempt = view.attempt;
    // Another node keeps this log when it received the attempt's output (or this process keeps no logs):
    // read it from there, and, with no local append to wake on, look again every quarter second while
    // following.
    let local = match &api.logs {
        Some(logs) if view.log_node == 0 || view.log_node == api.state.local_node() => {
            let path = logs
                .path(target, attempt)
                .map_err(|e| internal("reading task logs", &e))?;
            let appends = logs.subscribe(&path);
            Some((logs, path, appends))
        }
        _ => None,
    };
    let (remote, mut appends) = match &local {
        Some((_, _, appends)) => (None, Some(appends.clone())),
        None => (Some(view.log_node), None),
    };
    let mut offset = 0u64;
    loop {
        // Read whether the task ended before reading the file: bytes are durable before the end is
        // committed, so a reader that saw the end and then read to EOF has them all. Once the log is
        // archived it is whole and final: it is read from any state node that holds it, checked against
        // its digest, whatever became of the node that received it.
        let now = task_view(api, target)?;
        if let Some((digest, holders)) = now.archived.filter(|_| now.attempt == attempt) {
            let data = api
                .state
                .read_blob(&digest, &holders)
                .await
                .map_err(|e| unavailable("reading the archived task log", &e))?;
            let rest = data.get(offset as usize..).unwrap_or_default();
            for chunk in rest.chunks(CHUNK) {
                if tx
                    .send(Ok(v1::GetTaskLogsResponse { data: chunk.to_vec() }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            return Ok(());
        }
        let ended = now.ended;
        loop {
            let data = match &local {
                Some((logs, path, _)) => logs
                    .read_at(path, offset, CHUNK)
                    .await
                    .map_err(|e| internal("reading task logs", &e))?,
                None => api
                    .state
                    .read_peer_log(view.log_node, target, attempt, offset, CHUNK as u32)
                    .await
                    .map_err(|e| unavailable("reading task logs from their node", &e))?,
            };
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            if tx.send(Ok(v1::GetTaskLogsResponse { data })).await.is_err() {
                return Ok(());
            }
        }
        if !follow || ended {
            return Ok(());
        }
        match remote {
            Some(_) => {
                tokio::select! {
                    result = wait(api, &mut state_changes, None, tx) => result?,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            None => wait(api, &mut state_changes, appends.as_mut(), tx).await?,
        }
    }
}

/// Waits for a state change or an append, whichever comes first; gives up quietly when the client left,
/// and with Unavailable when the node shuts down.
async fn wait(
    api: &ApiService,
    state_changes: &mut tokio::sync::watch::Receiver<u64>,
    appends: Option<&mut tokio::sync::watch::Receiver<u64>>,
    tx: &tokio::sync::mpsc::Sender<Result<v1::GetTaskLogsResponse, Status>>,
) -> Result<(), Status> {
    let appended = async {
        match appends {
            Some(rx) => {
                let _ = rx.changed().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        changed = state_changes.changed() => changed.map_err(|_| Status::unavailable("the node is shutting down")),
        () = appended => Ok(()),
        () = api.shutdown.cancelled() => Err(Status::unavailable("the node is shutting down")),
        () = tx.closed() => Err(Status::cancelled("client went away")),
        // A safety net: a missed wake-up costs at most this long, never a hung follower.
        () = tokio::time::sleep(Duration::from_secs(5)) => Ok(()),
    }
}
