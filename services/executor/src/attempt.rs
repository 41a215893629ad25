//! The life of one attempt on this executor: adopt or create its container, ship its output, wait for it,
//! store its logs, remove it, report how it ended.

use std::time::Duration;

use futures_util::StreamExt;
use gofer_clock::Clock;
use gofer_domain::AttemptId;
use gofer_proto::v1::{self, dispatch_request::Kind};

use crate::Error;
use crate::containers;
use crate::executor::{Executor, Stopping};

/// A final report, stamped now by `clock`.
fn finished(
    clock: &Clock,
    key: &v1::AttemptKey,
    outcome: v1::AttemptOutcome,
    exit_code: Option<i64>,
    reason: String,
) -> Kind {
    Kind::Finished(v1::AttemptFinished {
        key: Some(key.clone()),
        outcome: outcome as i32,
        exit_code,
        reason,
        ended_unix_millis: clock.now_millis(),
    })
}

/// How long a container gets between SIGTERM and SIGKILL when no cancel said otherwise.
const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one attempt to its end and reports it.
pub(crate) async fn run(
    executor: &Executor,
    attempt: &AttemptId,
    start: v1::StartAttempt,
    stop: tokio_util::sync::CancellationToken,
) {
    let key = v1::AttemptKey::from(attempt);
    let Some(docker) = executor.docker() else {
        return run_benchmark_noop(executor, attempt).await;
    };
    let cluster = executor.cluster.lock().expect("cluster lock").clone();
    let report_error = |reason: String| {
        tracing::info!(%attempt, %reason, "attempt failed to run");
        executor.report(finished(&executor.clock, &key, v1::AttemptOutcome::Error, None, reason));
    };
    let (container, since) = match containers::find(docker, &cluster, attempt).await {
        Err(err) => return report_error(err.to_string()),
        Ok(Some(existing)) => {
            tracing::info!(%attempt, container = %existing.id, "adopting the attempt's container");
            (existing.id, existing.created_unix_millis)
        }
        Ok(None) if start.already_started => {
            return report_error("the attempt's container was lost before it finished".to_string());
        }
        Ok(None) => {
            // A secret the task names could not be given to it: no container is made.
            if !start.secret_error.is_empty() {
                return report_error(start.secret_error.clone());
            }
            if stop.is_cancelled() {
                return executor.report(finished(
                    &executor.clock,
                    &key,
                    v1::AttemptOutcome::Stopped,
                    None,
                    String::new(),
                ));
            }
            match docker.has_image(&start.image).await {
                Ok(true) => {}
                Ok(false) => {
                    return report_error(format!(
                        "image {:?} not found locally (there is no registry to pull from: build or load it first)",
                        start.image
                    ));
                }
                Err(err) => return report_error(err.to_string()),
            }
            let since = executor.clock.now_millis();
            let spec = containers::spec(&cluster, &executor.id, executor.api_relay.as_ref(), attempt, &start);
            match docker.create_and_start(spec).await {
                Ok(id) => (id, since),
                Err(err) => return report_error(err.to_string()),
            }
        }
    };
    let started_at = executor.clock.now_millis();
    if let Some(active) = executor.active.lock().expect("active lock").get_mut(attempt) {
        active.started_at = started_at;
    }
    executor.report(Kind::Started(v1::AttemptStarted {
        key: Some(key.clone()),
        started_unix_millis: started_at,
    }));
    tracing::info!(%attempt, container = %container, "attempt running");

    let logs = async {
        // An upload that fails is sent again from the first byte (the archive replaces what it had), a
        // few times: the scheduler or the state node keeping the log may be moving.
        let mut tries = 0;
        loop {
            match ship_logs(executor, docker, &key, &container, &start.secrets).await {
                Err(err) if tries < 3 => {
                    tries += 1;
                    tracing::info!(%attempt, %err, "storing the logs failed; sending them again");
                    tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                }
                done => break done,
            }
        }
    };
    // The timeout counts from the container's creation, so an executor that adopts the attempt after a
    // restart gives it only what is left.
    let timeout = u64::try_from(start.timeout_millis).ok().filter(|ms| *ms > 0).map(|ms| {
        let spent = u64::try_from(executor.clock.now_millis().saturating_sub(since)).unwrap_or(0);
        std::time::Duration::from_millis(ms.saturating_sub(spent))
    });
    let timed_out = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let waited = async {
        tokio::select! {
            code = docker.wait(&container) => (code, Ended::Itself),
            () = stop.cancelled() => {
                let grace = match stopping(executor, attempt) {
                    Some(Stopping::Cancelled(grace)) => grace,
                    _ => DEFAULT_GRACE,
                };
                if let Err(err) = docker.stop(&container, grace).await {
                    tracing::warn!(%err, "could not stop a cancelled attempt's container");
                }
                (docker.wait(&container).await, Ended::Stopped)
            }
            () = timed_out => {
                tracing::info!(%attempt, "the attempt ran past its timeout; stopping it");
                if let Err(err) = docker.stop(&container, DEFAULT_GRACE).await {
                    tracing::warn!(%err, "could not stop a timed-out attempt's container");
                }
                (docker.wait(&container).await, Ended::TimedOut)
            }
        }
    };
    let (shipped, (code, ended)) = tokio::join!(logs, waited);
    let stopped = ended == Ended::Stopped;
    let fenced = stopped && matches!(stopping(executor, attempt), Some(Stopping::FencedOff));
    match shipped {
        Ok(()) => {}
        // The attempt ended in the cluster (LOST) while this executor was away, and a finished attempt's
        // log is never stored again: it is reported stopped, as the LOST attempt records, and its
        // container goes once that is acknowledged.
        Err(err) if fenced => tracing::info!(%attempt, %err, "a fenced-off attempt's log was not stored"),
        Err(err) => {
            // The attempt's output could not be archived: fail it loudly rather than report a success
            // whose logs are missing. The container stays for an operator to inspect.
            return report_error(format!("the attempt ran but its logs could not be stored: {err}"));
        }
    }
    if let (Err(err), false) = (&code, stopped) {
        // Waiting failed, so the container may still run: it is stopped before the attempt is reported
        // failed, so that a retry never runs beside it.
        tracing::warn!(%attempt, %err, "could not wait for the container; stopping it");
        if let Err(err) = docker.stop(&container, DEFAULT_GRACE).await {
            tracing::warn!(%err, "could not stop a container that could not be waited for");
        }
    }
    let oom_killed = ended == Ended::Itself && start.memory_bytes > 0 && docker.oom_killed(&container).await;
    let kind = match (code, stopped) {
        (_, false) if ended == Ended::TimedOut => finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Error,
            None,
            format!(
                "timed out after {}",
                gofer_domain::limits::format_duration(start.timeout_millis)
            ),
        ),
        (Ok(code), false) if oom_killed => finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Error,
            Some(code),
            format!(
                "killed: out of memory (the task's limit is {} MiB)",
                start.memory_bytes / (1024 * 1024)
            ),
        ),
        (_, true) if fenced => finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Stopped,
            None,
            format!(
                "executor {} stopped its container on reconnecting: the attempt had been fenced off",
                executor.id
            ),
        ),
        (_, true) => finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Stopped,
            None,
            "stopped".into(),
        ),
        (Ok(code), false) => finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Exited,
            Some(code),
            String::new(),
        ),
        (Err(err), false) => finished(&executor.clock, &key, v1::AttemptOutcome::Error, None, err.to_string()),
    };
    // The container goes only once the scheduler confirms the report is committed: if this process stops
    // first, the next one adopts the exited container and reports it again, instead of calling it lost.
    tracing::info!(%attempt, "attempt finished");
    if report_final(executor, attempt, kind).await
        && let Err(err) = docker.remove(&container).await
    {
        tracing::warn!(%err, container = %container, "could not remove a finished container");
    }
}

/// Streams the container's output to the log archive and returns once every byte is durable there.
/// How long a follow may stay quiet after its container stopped before the log is read again instead.
const FOLLOW_DRAIN: Duration = Duration::from_secs(2);

async fn ship_logs(
    executor: &Executor,
    docker: &gofer_docker::Engine,
    key: &v1::AttemptKey,
    container: &str,
    secrets: &std::collections::HashMap<String, String>,
) -> Result<(), Error> {
    // Every byte goes through the masker before it leaves for the archive or a follower.
    let mut masker = crate::mask::Masker::new(secrets.values().map(String::as_str));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let requests = log_requests(&executor.id, key, rx);
    let mut client = executor.client();
    let upload = executor
        .tracker
        .spawn(async move { client.push_task_logs(requests).await });
    // The Engine's follow can end early (or go quiet) when its log file rotates under a large output; so
    // once the container has stopped, the whole log is read again and whatever the follow missed, after
    // the last piece it delivered, is sent too.
    let mut output = Box::pin(docker.logs(container, true));
    let mut exited = std::pin::pin!(docker.wait(container));
    let mut stopped = false;
    let mut last = (gofer_docker::Stamp::default(), 0usize);
    let mut read_error = None;
    loop {
        let next = tokio::select! {
            next = output.next() => next,
            _ = &mut exited, if !stopped => {
                stopped = true;
                continue;
            }
            () = tokio::time::sleep(FOLLOW_DRAIN), if stopped => None,
        };
        match next {
            Some(Ok((stamp, data))) => {
                if stamp == last.0 {
                    last.1 += 1;
                } else {
                    last = (stamp, 1);
                }
                let data = masker.push(&data);
                if !data.is_empty() && tx.send(data).await.is_err() {
                    break;
                }
            }
            Some(Err(err)) => {
                read_error = Some(err);
                break;
            }
            None => break,
        }
    }
    drop(output);
    if read_error.is_none() {
        if !stopped {
            let _ = exited.await;
        }
        let mut again = Box::pin(docker.logs(container, false));
        let mut same = 0;
        while let Some(piece) = again.next().await {
            let (stamp, data) = match piece {
                Ok(piece) => piece,
                Err(err) => {
                    read_error = Some(err);
                    break;
                }
            };
            if stamp < last.0 {
                continue;
            }
            if stamp == last.0 && same < last.1 {
                same += 1;
                continue;
            }
            let data = masker.push(&data);
            if !data.is_empty() && tx.send(data).await.is_err() {
                break;
            }
        }
    }
    let rest = masker.finish();
    if !rest.is_empty() {
        let _ = tx.send(rest).await;
    }
    drop(tx);
    let uploaded = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .map_err(|_| Error::LogUploadTimedOut)?
        .map_err(Error::LogUploadTask)?;
    uploaded.map_err(|status| Error::LogUpload(Box::new(status)))?;
    match read_error {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

/// The most output one log message carries, unless one piece alone is larger.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// How long output waits for more to go with it. A container printing line by line would otherwise send a
/// message of a few bytes per line; HTTP/2 receivers count small DATA frames they hold against a budget
/// and close the whole connection with ENHANCE_YOUR_CALM when a busy receiver falls behind on them. Kept
/// short, since followers see output only once it is sent.
const LOG_LINGER: Duration = Duration::from_millis(20);

/// The pieces of output from `pieces`, in order, joined into messages of up to `max_bytes`: a message goes
/// once the next piece would not fit, once `linger` has passed since its first piece, or once the output
/// ends.
fn batched(
    pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
    max_bytes: usize,
    linger: Duration,
) -> impl futures_util::Stream<Item = Vec<u8>> {
    futures_util::stream::unfold((pieces, None), move |(mut pieces, carried)| async move {
        let mut batch = match carried {
            Some(piece) => piece,
            None => pieces.recv().await?,
        };
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max_bytes {
            match tokio::time::timeout_at(deadline, pieces.recv()).await {
                Ok(Some(more)) if batch.len() + more.len() > max_bytes => return Some((batch, (pieces, Some(more)))),
                Ok(Some(more)) => batch.extend_from_slice(&more),
                Ok(None) | Err(_) => break,
            }
        }
        Some((batch, (pieces, None)))
    })
}

/// The upload of one attempt's log by executor `executor_id`: a message naming the attempt and the
/// executor, then its output from `pieces` in [`batched`] messages.
fn log_requests(
    executor_id: &str,
    key: &v1::AttemptKey,
    pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl futures_util::Stream<Item = v1::PushTaskLogsRequest> + Send + 'static {
    let first = v1::PushTaskLogsRequest {
        key: Some(key.clone()),
        data: Vec::new(),
        executor_id: executor_id.to_string(),
    };
    futures_util::stream::iter([first]).chain(batched(pieces, LOG_BATCH_BYTES, LOG_LINGER).map(|data| {
        v1::PushTaskLogsRequest {
            data,
            ..Default::default()
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gofer_proto::v1::dispatch_service_client::DispatchServiceClient;
    use gofer_proto::v1::dispatch_service_server::{DispatchService, DispatchServiceServer};

    /// A log store that takes a while over each message, as one busy with other work does.
    struct SlowStore;

    #[tonic::async_trait]
    impl DispatchService for SlowStore {
        type DispatchStream = futures_util::stream::Empty<Result<v1::DispatchResponse, tonic::Status>>;

        async fn dispatch(
            &self,
            _request: tonic::Request<tonic::Streaming<v1::DispatchRequest>>,
        ) -> Result<tonic::Response<Self::DispatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn push_task_logs(
            &self,
            request: tonic::Request<tonic::Streaming<v1::PushTaskLogsRequest>>,
        ) -> Result<tonic::Response<v1::PushTaskLogsResponse>, tonic::Status> {
            let mut inbound = request.into_inner();
            let mut stored = Vec::new();
            while let Some(message) = inbound.message().await? {
                tokio::time::sleep(Duration::from_millis(2)).await;
                stored.extend_from_slice(&message.data);
            }
            let stored_bytes = u64::try_from(stored.len()).unwrap_or(u64::MAX);
            Ok(tonic::Response::new(v1::PushTaskLogsResponse { stored_bytes }))
        }
    }

    #[tokio::test]
    async fn a_container_printing_line_by_line_to_a_slow_store_keeps_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatchServiceServer::new(SlowStore))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = DispatchServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let lines = 30_000;
        // Lines come one at a time, as a container's do, each on its own turn of the runtime.
        let printer = tokio::spawn(async move {
            for n in 1..=lines {
                if tx.send(format!("{n}\n").into_bytes()).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let key = v1::AttemptKey::default();
        let stored = tokio::time::timeout(
            Duration::from_secs(60),
            client.push_task_logs(log_requests("e", &key, rx)),
        )
        .await
        .expect("the upload ends")
        .expect("the store kept the connection and took the log");
        let expected: usize = (1..=lines).map(|n| format!("{n}\n").len()).sum();
        assert_eq!(stored.into_inner().stored_bytes, expected as u64);
        printer.await.unwrap();
        server.abort();
    }

    async fn collect(pieces: Vec<Vec<u8>>, max_bytes: usize, linger: Duration) -> Vec<Vec<u8>> {
        let (tx, rx) = tokio::sync::mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            tx.send(piece).await.unwrap();
        }
        drop(tx);
        batched(rx, max_bytes, linger).collect().await
    }

    #[tokio::test]
    async fn output_written_line_by_line_goes_in_few_messages_in_order_and_none_over_the_cap() {
        let lines: Vec<Vec<u8>> = (1..=20_000).map(|n| format!("{n}\n").into_bytes()).collect();
        let whole = lines.concat();
        let messages = collect(lines, 4096, Duration::from_secs(10)).await;
        assert_eq!(messages.concat(), whole);
        assert!(messages.iter().all(|m| m.len() <= 4096));
        // Every message but the last is filled to within one line of the cap.
        let (last, full) = messages.split_last().unwrap();
        assert!(
            full.iter().all(|m| m.len() > 4096 - 7),
            "{:?}",
            messages.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(!last.is_empty());
    }

    #[tokio::test]
    async fn a_piece_larger_than_the_cap_goes_whole_and_alone() {
        let big = vec![b'x'; 10_000];
        let messages = collect(
            vec![b"a".to_vec(), big.clone(), b"b".to_vec()],
            4096,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(messages, vec![b"a".to_vec(), big, b"b".to_vec()]);
    }

    #[tokio::test]
    async fn a_quiet_moment_sends_what_is_waiting_without_the_output_ending() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut messages = Box::pin(batched(rx, 4096, Duration::from_millis(20)));
        tx.send(b"one\n".to_vec()).await.unwrap();
        tx.send(b"two\n".to_vec()).await.unwrap();
        // The channel stays open: the message goes when the linger runs out.
        let first = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        assert_eq!(first.unwrap(), Some(b"one\ntwo\n".to_vec()));
        tx.send(b"three\n".to_vec()).await.unwrap();
        drop(tx);
        assert_eq!(messages.next().await, Some(b"three\n".to_vec()));
        assert_eq!(messages.next().await, None);
    }
}

/// Handles a Stop for an attempt this executor never started: removes any container left for it from
/// before a restart and reports it stopped.
pub(crate) async fn stop_unstarted(executor: &Executor, attempt: &AttemptId) {
    let cluster = executor.cluster.lock().expect("cluster lock").clone();
    if let Some(docker) = executor.docker()
        && let Ok(Some(existing)) = containers::find(docker, &cluster, attempt).await
        && let Err(err) = docker.remove(&existing.id).await
    {
        tracing::warn!(%err, "could not remove a cancelled attempt's container");
    }
    executor.report(finished(
        &executor.clock,
        &v1::AttemptKey::from(attempt),
        v1::AttemptOutcome::Stopped,
        None,
        "stopped".into(),
    ));
}

/// The benchmark backend's attempt: reported started and exited 0 at once, with no container and no log;
/// it waits for the final report's acknowledgement as a real attempt does.
async fn run_benchmark_noop(executor: &Executor, attempt: &AttemptId) {
    let key = v1::AttemptKey::from(attempt);
    executor.report(Kind::Started(v1::AttemptStarted {
        key: Some(key.clone()),
        started_unix_millis: executor.clock.now_millis(),
    }));
    report_final(
        executor,
        attempt,
        finished(
            &executor.clock,
            &key,
            v1::AttemptOutcome::Exited,
            Some(0),
            String::new(),
        ),
    )
    .await;
}

/// Sends an attempt's final report and waits until the scheduler confirms it committed; `false` if this
/// executor stopped waiting (it shut down).
async fn report_final(executor: &Executor, attempt: &AttemptId, kind: Kind) -> bool {
    let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
    executor.acks.lock().expect("acks lock").insert(attempt.clone(), ack_tx);
    executor.report(kind);
    ack_rx.await.is_ok()
}

/// Why the attempt's container is being stopped, as the Stop or welcome that stopped it said.
fn stopping(executor: &Executor, attempt: &AttemptId) -> Option<Stopping> {
    executor
        .active
        .lock()
        .expect("active lock")
        .get(attempt)
        .and_then(|a| a.stopping)
}

/// How an attempt's container stopped running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It exited on its own (or was killed by the kernel).
    Itself,
    /// It was stopped because the run was cancelled or the attempt fenced off.
    Stopped,
    /// It was stopped because it ran past its timeout.
    TimedOut,
}
