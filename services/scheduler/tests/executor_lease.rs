//! Executor leases end to end in one process: a real state node, the scheduler loop and its dispatch
//! service on loopback, and executors played by the test over raw dispatch streams, so that the test
//! decides when one falls silent, comes back or reports, and whose attempt it reports on or uploads a log
//! for. Time is a manual clock the test moves a second at a time, waiting after each step for the
//! scheduler to have acted at the new time.

use std::time::Duration;

use gofer_clock::{Clock, ManualClock};
use gofer_domain::{AttemptState, Command, PipelineConfig, RunState, TaskState};
use gofer_proto::v1::{self, dispatch_request, dispatch_response};
use gofer_state::{LogStore, StateHandle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod common;
use common::{Client, initialized_state, manual_clock, renewed_at, serve_dispatch, stop, wait_for};

/// One executor played by the test: what it sends, and what it has received.
struct FakeExecutor {
    outbound: mpsc::UnboundedSender<v1::DispatchRequest>,
    inbound: tonic::Streaming<v1::DispatchResponse>,
    beating: CancellationToken,
    clock: Clock,
}

impl FakeExecutor {
    /// Says hello as `id` and heartbeats every 200 ms, and whenever `clock` moves, until
    /// [`FakeExecutor::fall_silent`]; returns it with its welcome.
    async fn connect(client: &mut Client, id: &str, clock: &Clock) -> (FakeExecutor, v1::Welcome) {
        let (outbound, rx) = mpsc::unbounded_channel();
        let hello = v1::ExecutorHello {
            executor_id: id.into(),
            capacity: 0,
            heartbeats: true,
            ..Default::default()
        };
        outbound
            .send(v1::DispatchRequest {
                kind: Some(dispatch_request::Kind::Hello(hello)),
            })
            .unwrap();
        let mut inbound = client
            .dispatch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let welcome = match inbound.message().await.unwrap().and_then(|m| m.kind) {
            Some(dispatch_response::Kind::Welcome(welcome)) => welcome,
            other => panic!("expected a welcome, got {other:?}"),
        };
        let beating = CancellationToken::new();
        let (beats, stop) = (outbound.clone(), beating.clone());
        // A live executor beats within a second of its time, so a clock the test moves a second at a
        // time makes it beat too.
        let mut clock_moved = clock.changes();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let beat = dispatch_request::Kind::Heartbeat(v1::Heartbeat {});
                if beats.send(v1::DispatchRequest { kind: Some(beat) }).is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = clock_moved.changed() => {}
                }
            }
        });
        let executor = FakeExecutor {
            outbound,
            inbound,
            beating,
            clock: clock.clone(),
        };
        (executor, welcome)
    }

    /// Stops heartbeating but keeps the stream open, as a cut-off or paused executor would.
    fn fall_silent(&self) {
        self.beating.cancel();
    }

    /// The next message it receives that `pick` takes, within 20 s.
    async fn next<T>(&mut self, what: &str, pick: impl Fn(dispatch_response::Kind) -> Option<T>) -> T {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.inbound.message())
                .await
                .unwrap_or_else(|_| panic!("{what} within 20 s"))
                .expect("the stream is healthy")
                .expect("the stream is open");
            if let Some(picked) = message.kind.and_then(&pick) {
                return picked;
            }
        }
    }

    /// The next Start it receives.
    async fn next_start(&mut self) -> v1::StartAttempt {
        self.next("a Start", |kind| match kind {
            dispatch_response::Kind::Start(start) => Some(start),
            _ => None,
        })
        .await
    }

    /// The next FinishedAck it receives.
    async fn next_ack(&mut self) -> v1::AttemptKey {
        self.next("an ack", |kind| match kind {
            dispatch_response::Kind::FinishedAck(ack) => ack.key,
            _ => None,
        })
        .await
    }

    fn report(&self, kind: dispatch_request::Kind) {
        self.outbound.send(v1::DispatchRequest { kind: Some(kind) }).unwrap();
    }

    fn finish(&self, key: &v1::AttemptKey, outcome: v1::AttemptOutcome, exit_code: Option<i64>) {
        self.report(dispatch_request::Kind::Finished(v1::AttemptFinished {
            key: Some(key.clone()),
            outcome: outcome as i32,
            exit_code,
            reason: "stopped".into(),
            ended_unix_millis: self.clock.now_millis(),
        }));
    }
}

/// The state and the scheduler's dispatch service a test plays executors against, and the hand on the
/// scheduler's clock.
struct Cluster {
    state: StateHandle,
    client: Client,
    clock: Clock,
    hand: ManualClock,
}

impl Cluster {
    /// Moves the clock one second forward and waits until the scheduler renewed `executor`'s lease at the
    /// new time (it was alive then); returns the new time.
    async fn tick(&self, executor: &str) -> i64 {
        let now = self.hand.advance(Duration::from_secs(1));
        let what = format!("{executor}'s lease to be renewed at {now}");
        wait_for(&what, || renewed_at(&self.state, executor), |at| *at >= now).await;
        now
    }
}

/// A state node with a one-task pipeline, and a scheduler (loop and dispatch service) holding the lease,
/// on a manual clock.
async fn cluster(dir: &std::path::Path, tracker: &TaskTracker, shutdown: &CancellationToken) -> Cluster {
    let pipeline = r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#;
    cluster_of(pipeline, dir, tracker, shutdown).await
}

/// As [`cluster`], with `pipeline` (whose id must be `p`) and its task logs under `dir/logs`.
async fn cluster_of(
    pipeline: &str,
    dir: &std::path::Path,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Cluster {
    let (clock, hand) = manual_clock();
    let state = initialized_state(dir).await;
    let config = PipelineConfig::from_json(pipeline).unwrap();
    state
        .propose(Command::RegisterPipeline {
            namespace: "default".into(),
            config,
            at: 1,
        })
        .await
        .unwrap();
    let config = gofer_scheduler::Config {
        holder: "s".into(),
        address: String::new(),
    };
    let deps = gofer_scheduler::Deps {
        state: state.clone(),
        logs: Some(LogStore::new(dir.join("logs"))),
        clock: clock.clone(),
        keyring: std::sync::Arc::new(gofer_secrets::Keyring::new(
            gofer_secrets::Key::from_bytes(&[1; 32]),
            vec![],
        )),
    };
    let handler = gofer_scheduler::run(config, deps, tracker, shutdown).await;
    let lease = handler.lease().clone();
    let client = serve_dispatch(handler, shutdown).await;
    wait_for("the scheduler to take its lease", || lease.epoch(), Option::is_some).await;
    Cluster {
        state,
        client,
        clock,
        hand,
    }
}

fn task_a(state: &StateHandle, run: u64) -> gofer_domain::TaskExecution {
    task_of(state, run, "a")
}

fn task_of(state: &StateHandle, run: u64, task: &str) -> gofer_domain::TaskExecution {
    state.read(|s| s.run("default", "p", run).unwrap().0.task(task).unwrap().clone())
}

#[tokio::test]
async fn a_silent_executor_loses_its_attempt_which_runs_again_elsewhere_and_is_stopped_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let mut cluster = cluster(dir.path(), &tracker, &shutdown).await;
    let state = cluster.state.clone();

    let (mut e1, _) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    let run = start_run(&state, &cluster.clock).await;
    let first = e1.next_start().await;
    let first_key = first.key.clone().unwrap();
    assert_eq!(first_key.attempt, 1);
    e1.report(dispatch_request::Kind::Started(v1::AttemptStarted {
        key: Some(first_key.clone()),
        started_unix_millis: cluster.clock.now_millis(),
    }));

    // e1 falls silent with its stream still open; e2 is there and heartbeating. The clock moves a second
    // at a time until attempt 1 is declared lost and attempt 2 is assigned to e2.
    let (mut e2, _) = FakeExecutor::connect(&mut cluster.client, "e2", &cluster.clock).await;
    e1.fall_silent();
    let silent_at = cluster.clock.now_millis();
    let mut now = silent_at;
    while task_a(&state, run).executor != "e2" {
        assert!(
            now - silent_at < 60_000,
            "attempt 1 was never declared lost: {:?}",
            task_a(&state, run)
        );
        now = cluster.tick("e2").await;
    }
    let second = e2.next_start().await;
    let lost_after = Duration::from_millis((now - silent_at) as u64);
    let second_key = second.key.clone().unwrap();
    assert_eq!((second_key.attempt, second_key.run_id), (2, run));
    assert!(
        lost_after >= Duration::from_secs(2),
        "attempt 1 was declared lost only once e1's lease ran out, not at once ({lost_after:?})"
    );
    let task = task_a(&state, run);
    assert_eq!(task.attempts.len(), 1);
    let lost = &task.attempts[0];
    assert_eq!(
        (lost.state, lost.executor.as_str(), lost.retried),
        (AttemptState::Lost, "e1", true)
    );
    assert!(lost.reason.contains("e1"), "{}", lost.reason);
    assert_eq!(task.executor, "e2");

    // e1 comes back: attempt 1 is not live, so it stops it and reports that, which is recorded on the
    // LOST attempt; its stale report changes nothing else.
    drop(e1);
    let (e1_again, welcome) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    assert!(welcome.live_attempts.is_empty(), "{:?}", welcome.live_attempts);
    e1_again.finish(&first_key, v1::AttemptOutcome::Stopped, None);
    let late_report = || task_a(&state, run).attempts[0].late_report.clone();
    wait_for("the late report", late_report, |report| !report.is_empty()).await;
    assert!(task_a(&state, run).attempts[0].late_report.contains("stopped"));
    assert_eq!(task_a(&state, run).state, TaskState::Pending, "attempt 2 is still out");

    e2.finish(&second_key, v1::AttemptOutcome::Exited, Some(0));
    let run_state = || state.read(|s| s.run("default", "p", run).unwrap().0.state);
    wait_for("the run to succeed", run_state, |s| *s == RunState::Succeeded).await;
    let task = task_a(&state, run);
    assert_eq!((task.attempt, task.attempts.len()), (2, 2));
    assert!(
        state.read(|s| s.executors.may_assign("e1")),
        "e1 renewed its lease on return"
    );
    stop(&tracker, &shutdown).await;
}

#[tokio::test]
async fn a_heartbeating_executor_keeps_its_attempt_past_many_lease_periods() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let mut cluster = cluster(dir.path(), &tracker, &shutdown).await;
    let state = cluster.state.clone();
    let (mut e1, _) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    start_run(&state, &cluster.clock).await;
    let start = e1.next_start().await;
    // Two executor leases pass on the clock, a second at a time, and e1's is renewed at every step.
    for _ in 0..gofer_scheduler::EXECUTOR_LEASE.as_secs() * 2 {
        cluster.tick("e1").await;
    }
    let task = task_a(&state, 1);
    assert!(task.attempts.is_empty(), "{:?}", task.attempts);
    assert_eq!((task.attempt, task.executor.as_str()), (1, "e1"));
    let renewed = renewed_at(&state, "e1");
    assert!(
        cluster.clock.now_millis() - renewed < 3_000,
        "the lease is being renewed"
    );
    e1.finish(start.key.as_ref().unwrap(), v1::AttemptOutcome::Exited, Some(0));
    stop(&tracker, &shutdown).await;
}

async fn start_run(state: &StateHandle, clock: &Clock) -> u64 {
    let applied = state
        .propose(Command::StartRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            request_id: String::new(),
            parameters: Default::default(),
            retry_of: 0,
            at: clock.now_millis(),
        })
        .await
        .unwrap();
    match applied {
        gofer_domain::Applied::Run(run) => run,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_start_lost_with_its_stream_is_sent_again_on_the_next_for_the_same_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let mut cluster = cluster(dir.path(), &tracker, &shutdown).await;
    let state = cluster.state.clone();
    let (e1, _) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    let run = start_run(&state, &cluster.clock).await;
    // The assignment is committed; the stream that carried (or would carry) its Start breaks.
    wait_for("the assignment", || task_a(&state, run).assignment, |a| a.is_some()).await;
    drop(e1);
    let (mut again, welcome) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    assert_eq!(
        welcome.live_attempts.len(),
        1,
        "the attempt is live: the executor adopts, not starts anew"
    );
    let start = again.next_start().await;
    assert_eq!(
        start.key.as_ref().map(|k| (k.run_id, k.attempt)),
        Some((run, 1)),
        "the same attempt"
    );
    again.finish(start.key.as_ref().unwrap(), v1::AttemptOutcome::Exited, Some(0));
    again.next_ack().await;
    let task = task_a(&state, run);
    assert_eq!(
        (task.state, task.attempt, task.attempts.len()),
        (TaskState::Succeeded, 1, 1)
    );
    stop(&tracker, &shutdown).await;
}

#[tokio::test]
async fn a_final_report_whose_ack_was_lost_is_acknowledged_again_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let mut cluster = cluster(dir.path(), &tracker, &shutdown).await;
    let state = cluster.state.clone();
    let (mut e1, _) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    let run = start_run(&state, &cluster.clock).await;
    let start = e1.next_start().await;
    let key = start.key.clone().unwrap();
    e1.finish(&key, v1::AttemptOutcome::Exited, Some(0));
    let task_state = || task_a(&state, run).state;
    wait_for("the report to be committed", task_state, |s| *s == TaskState::Succeeded).await;
    // The ack is lost with the stream; the executor, still holding the report, sends it again.
    drop(e1);
    let (mut again, welcome) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    assert!(welcome.live_attempts.is_empty(), "the attempt ended: nothing to adopt");
    again.finish(&key, v1::AttemptOutcome::Exited, Some(0));
    assert_eq!(
        again.next_ack().await,
        key,
        "acknowledged again, so the executor removes its container"
    );
    let task = task_a(&state, run);
    assert_eq!(
        (task.state, task.attempt, task.attempts.len()),
        (TaskState::Succeeded, 1, 1)
    );
    assert_eq!(
        state.read(|s| s.run("default", "p", run).unwrap().0.state),
        RunState::Succeeded
    );
    stop(&tracker, &shutdown).await;
}

/// Uploads `data` as the whole log of attempt `key`, as executor `executor`; returns the bytes stored.
async fn push_log(
    client: &mut Client,
    executor: &str,
    key: &v1::AttemptKey,
    data: &[u8],
) -> Result<u64, tonic::Status> {
    let upload = v1::PushTaskLogsRequest {
        key: Some(key.clone()),
        data: data.to_vec(),
        executor_id: executor.into(),
    };
    let stored = client.push_task_logs(tokio_stream::iter([upload])).await?;
    Ok(stored.into_inner().stored_bytes)
}

/// Asserts that `upload` was refused, in a message naming attempt `key`.
fn assert_log_refused(upload: Result<u64, tonic::Status>, key: &v1::AttemptKey) {
    let status = upload.expect_err("the upload is refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
        ),
        "{status:?}"
    );
    let attempt = format!(
        "attempt {} of task {:?} in run {}",
        key.attempt, key.task_id, key.run_id
    );
    assert!(status.message().contains(&attempt), "{status:?}");
}

#[tokio::test]
async fn only_the_assignee_reports_an_attempt_or_stores_its_log_and_only_while_it_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let pipeline = r#"{"id": "p", "tasks": [{"id": "test", "image": "i"},
        {"id": "deploy", "image": "i", "depends_on": {"test": "success"}}]}"#;
    let mut cluster = cluster_of(pipeline, dir.path(), &tracker, &shutdown).await;
    let state = cluster.state.clone();
    let logs = LogStore::new(dir.path().join("logs"));

    // `test` goes to e1, the only executor yet; e2 connects after.
    let (mut e1, _) = FakeExecutor::connect(&mut cluster.client, "e1", &cluster.clock).await;
    let run = start_run(&state, &cluster.clock).await;
    let key = e1.next_start().await.key.unwrap();
    assert_eq!((key.task_id.as_str(), key.attempt), ("test", 1));
    let (mut e2, _) = FakeExecutor::connect(&mut cluster.client, "e2", &cluster.clock).await;
    e1.report(dispatch_request::Kind::Started(v1::AttemptStarted {
        key: Some(key.clone()),
        started_unix_millis: cluster.clock.now_millis(),
    }));
    let test = || task_of(&state, run, "test");
    wait_for("test to run", test, |t| t.state == TaskState::Running).await;

    // e2 reports e1's attempt exited 0: refused (acknowledged, as a stale report is, so e2 drops it),
    // and `test` still runs on e1 while `deploy` waits.
    e2.finish(&key, v1::AttemptOutcome::Exited, Some(0));
    assert_eq!(e2.next_ack().await, key);
    let (test, deploy) = (test(), task_of(&state, run, "deploy"));
    assert_eq!((test.state, test.executor.as_str()), (TaskState::Running, "e1"));
    assert!(test.attempts.is_empty(), "{:?}", test.attempts);
    assert_eq!((deploy.state, deploy.attempt), (TaskState::Pending, 0));
    assert!(deploy.assignment.is_none());
    assert_eq!(
        state.read(|s| s.run("default", "p", run).unwrap().0.state),
        RunState::Running
    );

    // e2 cannot store e1's log; e1 can, and can send it again from its first byte while the attempt runs.
    let log = logs.path(&gofer_domain::AttemptId::from(&key).task, 1).unwrap();
    assert_log_refused(push_log(&mut cluster.client, "e2", &key, b"forged\n").await, &key);
    assert!(
        logs.read_at(&log, 0, 1024).await.unwrap().is_empty(),
        "nothing was stored"
    );
    assert_eq!(push_log(&mut cluster.client, "e1", &key, b"partial").await.unwrap(), 7);
    assert_eq!(
        push_log(&mut cluster.client, "e1", &key, b"whole log\n").await.unwrap(),
        10
    );
    assert_eq!(logs.read_at(&log, 0, 1024).await.unwrap(), b"whole log\n");

    // e1's own report counts: `test` succeeds and `deploy` is assigned.
    e1.finish(&key, v1::AttemptOutcome::Exited, Some(0));
    assert_eq!(e1.next_ack().await, key);
    assert_eq!(task_of(&state, run, "test").state, TaskState::Succeeded);
    let deploy = || task_of(&state, run, "deploy");
    wait_for("deploy to be assigned", deploy, |d| d.assignment.is_some()).await;

    // The finished attempt's log is never written again, by another executor or by its own.
    for executor in ["e2", "e1"] {
        assert_log_refused(
            push_log(&mut cluster.client, executor, &key, b"rewritten\n").await,
            &key,
        );
    }
    assert_eq!(logs.read_at(&log, 0, 1024).await.unwrap(), b"whole log\n");
    stop(&tracker, &shutdown).await;
}

impl Drop for FakeExecutor {
    fn drop(&mut self) {
        // Its heartbeats stop too, so that its stream ends as a gone executor's does.
        self.beating.cancel();
    }
}
