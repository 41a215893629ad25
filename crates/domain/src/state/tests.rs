//! State machine transitions: ids, the DAG's conditions and skips, cancel, refusals that change nothing.

use super::*;
use crate::lease::Role;
use crate::{AttemptOutcome, AttemptRef, AttemptState, RunState, TaskExecution, TaskState};

fn config(json: &str) -> PipelineConfig {
    PipelineConfig::from_json(json).unwrap()
}

fn init() -> State {
    let mut state = State::default();
    state
        .apply(&Command::Init {
            cluster_id: "c1".into(),
            at: 1,
        })
        .unwrap();
    state
}

fn target(task: &str, run: u64) -> AttemptRef {
    AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run,
        task: task.into(),
    }
}

fn register(state: &mut State, json: &str) -> u64 {
    match state.apply(&Command::RegisterPipeline {
        namespace: "default".into(),
        config: config(json),
        at: 2,
    }) {
        Ok(Applied::Version(v)) => v,
        other => panic!("{other:?}"),
    }
}

fn start(state: &mut State) -> u64 {
    match state.apply(&Command::StartRun {
        namespace: "default".into(),
        pipeline: "p".into(),
        request_id: String::new(),
        parameters: Default::default(),
        retry_of: 0,
        at: 3,
    }) {
        Ok(Applied::Run(id)) => id,
        other => panic!("{other:?}"),
    }
}

/// Assigns, starts and finishes the next attempt of `task` with `outcome`.
fn run_task(state: &mut State, run: u64, task: &str, outcome: AttemptOutcome) {
    let attempt = state.run("default", "p", run).unwrap().0.task(task).unwrap().attempt + 1;
    state
        .apply(&Command::AssignAttempt {
            target: target(task, run),
            attempt,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 4,
        })
        .unwrap();
    state
        .apply(&Command::AttemptStarted {
            target: target(task, run),
            attempt,
            executor: "e".into(),
            at: 5,
        })
        .unwrap();
    state
        .apply(&Command::AttemptFinished {
            target: target(task, run),
            attempt,
            executor: "e".into(),
            outcome,
            log_node: 0,
            at: 6,
        })
        .unwrap();
}

fn task_state(state: &State, run: u64, task: &str) -> TaskState {
    state.run("default", "p", run).unwrap().0.task(task).unwrap().state
}

fn run_state(state: &State, run: u64) -> RunState {
    state.run("default", "p", run).unwrap().0.state
}

const CHAIN: &str = r#"{"id": "p", "tasks": [
    {"id": "a", "image": "i"},
    {"id": "ok", "image": "i", "depends_on": {"a": "success"}},
    {"id": "onfail", "image": "i", "depends_on": {"a": "failure"}},
    {"id": "after_ok", "image": "i", "depends_on": {"ok": "success"}},
    {"id": "always", "image": "i", "depends_on": {"a": "any"}}]}"#;

#[test]
fn init_makes_the_default_namespace_once() {
    let mut state = init();
    assert!(state.namespaces.contains_key("default"));
    assert_eq!(state.cluster_id, "c1");
    let before = state.clone();
    assert!(
        state
            .apply(&Command::Init {
                cluster_id: "c2".into(),
                at: 9
            })
            .is_err()
    );
    assert_eq!(state, before);
}

#[test]
fn versions_and_run_ids_count_up() {
    let mut state = init();
    assert_eq!(
        register(&mut state, r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#),
        1
    );
    assert_eq!(start(&mut state), 1);
    assert_eq!(
        register(
            &mut state,
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}, {"id": "b", "image": "i"}]}"#
        ),
        2
    );
    assert_eq!(start(&mut state), 2);
    let (run, config) = state.run("default", "p", 2).unwrap();
    assert_eq!(run.version, 2);
    assert_eq!(run.tasks.len(), 2);
    assert_eq!(config.tasks.len(), 2);
    assert_eq!(state.run("default", "p", 1).unwrap().0.tasks.len(), 1);
}

#[test]
fn a_request_id_starts_one_run_however_often_it_is_sent() {
    let mut state = init();
    register(&mut state, r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#);
    let start_with = |state: &mut State, request_id: &str| {
        state.apply(&Command::StartRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            request_id: request_id.into(),
            parameters: Default::default(),
            retry_of: 0,
            at: 5,
        })
    };
    assert_eq!(start_with(&mut state, "req-1"), Ok(Applied::Run(1)));
    assert_eq!(start_with(&mut state, "req-1"), Ok(Applied::ExistingRun(1)));
    assert_eq!(start_with(&mut state, "req-2"), Ok(Applied::Run(2)));
    assert_eq!(start_with(&mut state, ""), Ok(Applied::Run(3)));
    assert_eq!(
        start_with(&mut state, ""),
        Ok(Applied::Run(4)),
        "no request id: every call starts a run"
    );
    assert_eq!(start_with(&mut state, "req-1"), Ok(Applied::ExistingRun(1)));
    assert_eq!(state.run("default", "p", 1).unwrap().0.request_id, "req-1");
    assert_eq!(state.run("default", "p", 3).unwrap().0.request_id, "");
    assert_eq!(state.pipeline("default", "p").unwrap().runs.len(), 4);

    let before = state.clone();
    for bad in ["has space", "tab\there", &"x".repeat(129), "ünïcode"] {
        match start_with(&mut state, bad) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "request_id"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(state, before, "a refused start changes nothing");
}

#[test]
fn success_path_skips_failure_handlers_and_succeeds() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    assert_eq!(run_state(&state, run), RunState::Pending);
    run_task(&mut state, run, "a", AttemptOutcome::Exited(0));
    assert_eq!(run_state(&state, run), RunState::Running);
    assert_eq!(task_state(&state, run, "onfail"), TaskState::Skipped);
    run_task(&mut state, run, "ok", AttemptOutcome::Exited(0));
    run_task(&mut state, run, "after_ok", AttemptOutcome::Exited(0));
    assert_eq!(run_state(&state, run), RunState::Running);
    run_task(&mut state, run, "always", AttemptOutcome::Exited(0));
    assert_eq!(run_state(&state, run), RunState::Succeeded);
    let (r, _) = state.run("default", "p", run).unwrap();
    assert_eq!(r.task("a").unwrap().exit_code, Some(0));
    assert!(r.ended_at > 0);
}

#[test]
fn failure_runs_failure_handlers_skips_the_rest_transitively_and_fails() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    run_task(&mut state, run, "a", AttemptOutcome::Exited(3));
    assert_eq!(task_state(&state, run, "a"), TaskState::Failed);
    assert_eq!(task_state(&state, run, "ok"), TaskState::Skipped);
    assert_eq!(task_state(&state, run, "after_ok"), TaskState::Skipped);
    assert_eq!(task_state(&state, run, "onfail"), TaskState::Pending);
    run_task(&mut state, run, "onfail", AttemptOutcome::Exited(0));
    run_task(&mut state, run, "always", AttemptOutcome::Exited(0));
    assert_eq!(run_state(&state, run), RunState::Failed);
    let (r, _) = state.run("default", "p", run).unwrap();
    assert_eq!(r.task("a").unwrap().exit_code, Some(3));
    assert!(r.reason.contains("\"a\""), "{}", r.reason);
}

#[test]
fn a_task_cannot_be_assigned_before_its_parents_end() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    let before = state.clone();
    let refused = state.apply(&Command::AssignAttempt {
        target: target("ok", run),
        attempt: 1,
        executor: "e".into(),
        node: 1,
        scheduler: String::new(),
        epoch: 0,
        at: 4,
    });
    assert!(matches!(refused, Err(Error::FailedPrecondition(_))), "{refused:?}");
    assert_eq!(state, before);
}

#[test]
fn an_attempt_is_assigned_once_and_stale_reports_are_refused() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    state
        .apply(&Command::AssignAttempt {
            target: target("a", run),
            attempt: 1,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 4,
        })
        .unwrap();
    let before = state.clone();
    assert!(
        state
            .apply(&Command::AssignAttempt {
                target: target("a", run),
                attempt: 1,
                executor: "f".into(),
                node: 1,
                scheduler: String::new(),
                epoch: 0,
                at: 4
            })
            .is_err()
    );
    assert!(
        state
            .apply(&Command::AttemptStarted {
                target: target("a", run),
                attempt: 2,
                executor: String::new(),
                at: 5
            })
            .is_err()
    );
    assert_eq!(state, before);
    state
        .apply(&Command::AttemptFinished {
            target: target("a", run),
            attempt: 1,
            executor: String::new(),
            outcome: AttemptOutcome::Exited(0),
            log_node: 0,
            at: 6,
        })
        .unwrap();
    let before = state.clone();
    assert!(
        state
            .apply(&Command::AttemptFinished {
                target: target("a", run),
                attempt: 1,
                executor: String::new(),
                outcome: AttemptOutcome::Exited(1),
                log_node: 0,
                at: 7
            })
            .is_err()
    );
    assert_eq!(state, before);
}

#[test]
fn cancel_ends_pending_tasks_at_once_and_running_ones_when_stopped() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    state
        .apply(&Command::AssignAttempt {
            target: target("a", run),
            attempt: 1,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 4,
        })
        .unwrap();
    state
        .apply(&Command::AttemptStarted {
            target: target("a", run),
            attempt: 1,
            executor: String::new(),
            at: 5,
        })
        .unwrap();
    state
        .apply(&Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run,
            reason: "cancelled by user".into(),
            grace_millis: 0,
            at: 6,
        })
        .unwrap();
    assert_eq!(task_state(&state, run, "ok"), TaskState::Cancelled);
    assert_eq!(task_state(&state, run, "a"), TaskState::Running);
    assert_eq!(run_state(&state, run), RunState::Running);
    state
        .apply(&Command::AttemptFinished {
            target: target("a", run),
            attempt: 1,
            executor: String::new(),
            outcome: AttemptOutcome::Stopped,
            log_node: 0,
            at: 7,
        })
        .unwrap();
    assert_eq!(task_state(&state, run, "a"), TaskState::Cancelled);
    assert_eq!(run_state(&state, run), RunState::Cancelled);
    // Cancelling again is a no-op; a run that ended otherwise cannot be cancelled.
    state
        .apply(&Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run,
            reason: "again".into(),
            grace_millis: 0,
            at: 8,
        })
        .unwrap();
    let second = start(&mut state);
    for task in ["a", "ok", "after_ok", "always"] {
        run_task(&mut state, second, task, AttemptOutcome::Exited(0));
    }
    assert_eq!(run_state(&state, second), RunState::Succeeded);
    let refused = state.apply(&Command::CancelRun {
        namespace: "default".into(),
        pipeline: "p".into(),
        run: second,
        reason: "late".into(),
        grace_millis: 0,
        at: 9,
    });
    assert!(matches!(refused, Err(Error::FailedPrecondition(_))));
}

#[test]
fn cancelling_a_pending_run_ends_it_at_once() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    state
        .apply(&Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run,
            reason: "r".into(),
            grace_millis: 0,
            at: 6,
        })
        .unwrap();
    assert_eq!(run_state(&state, run), RunState::Cancelled);
    assert!(
        state
            .run("default", "p", run)
            .unwrap()
            .0
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Cancelled)
    );
}

#[test]
fn unknown_things_are_not_found_and_change_nothing() {
    let mut state = init();
    let before = state.clone();
    for command in [
        Command::RegisterPipeline {
            namespace: "nope".into(),
            config: config(CHAIN),
            at: 1,
        },
        Command::StartRun {
            namespace: "default".into(),
            pipeline: "nope".into(),
            request_id: String::new(),
            parameters: Default::default(),
            retry_of: 0,
            at: 1,
        },
        Command::CancelRun {
            namespace: "default".into(),
            pipeline: "nope".into(),
            run: 1,
            reason: String::new(),
            grace_millis: 0,
            at: 1,
        },
    ] {
        assert!(matches!(state.apply(&command), Err(Error::NotFound(_))), "{command:?}");
    }
    assert_eq!(state, before);
    assert!(matches!(
        state.apply(&Command::CreateNamespace {
            namespace: "default".into(),
            at: 1
        }),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        state.apply(&Command::CreateNamespace {
            namespace: "Bad Name".into(),
            at: 1
        }),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(state, before);
}

#[test]
fn state_survives_a_serde_round_trip() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    run_task(
        &mut state,
        run,
        "a",
        AttemptOutcome::Error("image \"i\" not found locally".into()),
    );
    let json = serde_json::to_string(&state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
}

mod properties;

#[test]
fn a_finished_attempt_records_where_its_logs_went_and_who_assigned_it() {
    let mut state = init();
    register(&mut state, CHAIN);
    let run = start(&mut state);
    let assign = |scheduler: &str, epoch| Command::AssignAttempt {
        target: target("a", run),
        attempt: 1,
        executor: "e".into(),
        node: 1,
        scheduler: scheduler.into(),
        epoch,
        at: 4,
    };
    state.leases.acquire(Role::Scheduler, "s/1", 1000, 0).unwrap();
    // A fenced assignment must name its fence's holder and epoch.
    let mismatched = Command::Fenced {
        role: Role::Scheduler,
        holder: "s/1".into(),
        epoch: 1,
        command: Box::new(assign("s/2", 1)),
    };
    assert!(matches!(state.apply(&mismatched), Err(Error::InvalidArgument { .. })));
    let fenced = Command::Fenced {
        role: Role::Scheduler,
        holder: "s/1".into(),
        epoch: 1,
        command: Box::new(assign("s/1", 1)),
    };
    state.apply(&fenced).unwrap();
    assert_eq!(state.leases.roles[&Role::Scheduler].commands, 1);
    state
        .apply(&Command::AttemptFinished {
            target: target("a", run),
            attempt: 1,
            executor: String::new(),
            outcome: AttemptOutcome::Exited(0),
            log_node: 3,
            at: 6,
        })
        .unwrap();
    let task = state.run("default", "p", run).unwrap().0.task("a").unwrap().clone();
    assert_eq!((task.log_node, task.executor.as_str()), (3, "e"));
    assert_eq!((task.scheduler.as_str(), task.scheduler_epoch), ("s/1", 1));
}

fn assign_to(state: &mut State, run: u64, task: &str, attempt: u32, executor: &str, at: i64) -> Result<Applied, Error> {
    state.apply(&Command::AssignAttempt {
        target: target(task, run),
        attempt,
        executor: executor.into(),
        node: 1,
        scheduler: String::new(),
        epoch: 0,
        at,
    })
}

fn finish(
    state: &mut State,
    run: u64,
    task: &str,
    attempt: u32,
    outcome: AttemptOutcome,
    at: i64,
) -> Result<Applied, Error> {
    state.apply(&Command::AttemptFinished {
        target: target(task, run),
        attempt,
        executor: String::new(),
        outcome,
        log_node: 0,
        at,
    })
}

fn task_of(state: &State, run: u64, task: &str) -> TaskExecution {
    state.run("default", "p", run).unwrap().0.task(task).unwrap().clone()
}

#[test]
fn a_failed_attempt_is_retried_after_a_doubling_backoff_and_every_attempt_is_on_record() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "retries": 2, "backoff": "2s"}]}"#,
    );
    let run = start(&mut state);
    assign_to(&mut state, run, "a", 1, "e", 10).unwrap();
    finish(&mut state, run, "a", 1, AttemptOutcome::Exited(3), 1_000).unwrap();
    let task = task_of(&state, run, "a");
    assert_eq!(
        (task.state, task.not_before, task.attempt),
        (TaskState::Pending, 3_000, 1)
    );
    assert!(task.reason.contains("exited with code 3"), "{}", task.reason);
    assert_eq!(
        (
            task.attempts[0].state,
            task.attempts[0].retried,
            task.attempts[0].exit_code
        ),
        (AttemptState::Failed, true, Some(3))
    );
    assert_eq!(run_state(&state, run), RunState::Running);
    // Not planned, and not assignable, before its backoff has passed.
    assert!(crate::plan(&state, 2_999).is_empty());
    assert_eq!(crate::plan(&state, 3_000), vec![(target("a", run), 2)]);
    let before = state.clone();
    assert!(assign_to(&mut state, run, "a", 2, "e", 2_999).is_err());
    assert_eq!(state, before);
    assign_to(&mut state, run, "a", 2, "e", 3_000).unwrap();
    finish(
        &mut state,
        run,
        "a",
        2,
        AttemptOutcome::Error("no such image".into()),
        3_500,
    )
    .unwrap();
    assert_eq!(
        task_of(&state, run, "a").not_before,
        3_500 + 4_000,
        "the backoff doubles"
    );
    assign_to(&mut state, run, "a", 3, "e", 7_500).unwrap();
    finish(&mut state, run, "a", 3, AttemptOutcome::Exited(0), 8_000).unwrap();
    let task = task_of(&state, run, "a");
    assert_eq!(
        (task.state, task.attempt, task.attempts.len()),
        (TaskState::Succeeded, 3, 3)
    );
    assert!(!task.attempts[2].retried);
    assert_eq!(run_state(&state, run), RunState::Succeeded);

    // Out of retries: the third failure ends the task.
    let run = start(&mut state);
    for attempt in 1..=3 {
        let at = 100_000 * i64::from(attempt);
        assign_to(&mut state, run, "a", attempt, "e", at).unwrap();
        finish(&mut state, run, "a", attempt, AttemptOutcome::Exited(1), at + 1).unwrap();
    }
    let task = task_of(&state, run, "a");
    assert_eq!((task.state, task.attempts.len()), (TaskState::Failed, 3));
    assert_eq!(run_state(&state, run), RunState::Failed);
}

#[test]
fn a_task_without_retries_is_not_retried_and_a_cancelled_run_retries_nothing() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "retries": 1}]}"#,
    );
    let run = start(&mut state);
    assign_to(&mut state, run, "a", 1, "e", 10).unwrap();
    state
        .apply(&Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run,
            reason: "by hand".into(),
            grace_millis: 0,
            at: 11,
        })
        .unwrap();
    finish(&mut state, run, "a", 1, AttemptOutcome::Exited(1), 12).unwrap();
    assert_eq!(task_state(&state, run, "a"), TaskState::Failed);
    assert_eq!(run_state(&state, run), RunState::Cancelled);
}

fn lose(state: &mut State, executor: &str, at: i64) -> Result<Applied, Error> {
    state.apply(&Command::ExecutorLost {
        executor: executor.into(),
        at,
    })
}

fn renew(state: &mut State, executors: &[&str], at: i64) {
    let executors = executors
        .iter()
        .map(|id| crate::executors::ExecutorInfo {
            id: id.to_string(),
            ..Default::default()
        })
        .collect();
    state
        .apply(&Command::RenewExecutors {
            executors,
            ttl_millis: 5_000,
            at,
        })
        .unwrap();
}

#[test]
fn an_executor_whose_lease_ran_out_loses_its_attempts_and_a_lost_attempt_is_retried_once() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}, {"id": "b", "image": "i"}]}"#,
    );
    let run = start(&mut state);
    renew(&mut state, &["e1", "e2"], 0);
    assign_to(&mut state, run, "a", 1, "e1", 10).unwrap();
    assign_to(&mut state, run, "b", 1, "e2", 10).unwrap();
    state
        .apply(&Command::AttemptStarted {
            target: target("a", run),
            attempt: 1,
            executor: String::new(),
            at: 20,
        })
        .unwrap();
    renew(&mut state, &["e2"], 4_000);

    // Not before its lease ran out, whatever the proposer thinks.
    let before = state.clone();
    let early = lose(&mut state, "e1", 4_999);
    assert!(matches!(early, Err(Error::FailedPrecondition(_))), "{early:?}");
    assert_eq!(state, before);

    lose(&mut state, "e1", 5_000).unwrap();
    let a = task_of(&state, run, "a");
    assert_eq!((a.state, a.assignment.is_none()), (TaskState::Pending, true));
    assert_eq!(a.attempts[0].state, AttemptState::Lost);
    assert_eq!((a.attempts[0].executor.as_str(), a.attempts[0].started_at), ("e1", 20));
    assert!(a.attempts[0].reason.contains("e1"), "{}", a.attempts[0].reason);
    assert_eq!(
        task_of(&state, run, "b").state,
        TaskState::Pending,
        "e2's attempt is untouched"
    );
    assert!(task_of(&state, run, "b").assignment.is_some());

    // The lost executor's late report of attempt 1 is stale; its kill report is recorded once.
    assert!(finish(&mut state, run, "a", 1, AttemptOutcome::Exited(0), 5_001).is_err());
    let late = Command::AttemptReportedLate {
        target: target("a", run),
        attempt: 1,
        executor: String::new(),
        report: "container killed on return".into(),
        at: 5_002,
    };
    state.apply(&late).unwrap();
    assert_eq!(
        task_of(&state, run, "a").attempts[0].late_report,
        "container killed on return"
    );
    assert!(state.apply(&late).is_err(), "recorded once");

    // A lost executor gets nothing until it renews; attempt 2 goes elsewhere.
    assert!(assign_to(&mut state, run, "a", 2, "e1", 6_100).is_err());
    assign_to(&mut state, run, "a", 2, "e2", 6_100).unwrap();
    // LOST again: retried once by default, so this time the task fails, saying why.
    renew(&mut state, &["e1"], 7_000);
    lose(&mut state, "e2", 9_000).unwrap();
    let a = task_of(&state, run, "a");
    assert_eq!((a.state, a.attempts.len()), (TaskState::Failed, 2));
    assert!(a.reason.starts_with("lost:"), "{}", a.reason);
    let b = task_of(&state, run, "b");
    assert_eq!((b.state, b.attempts[0].state), (TaskState::Pending, AttemptState::Lost));
    assign_to(&mut state, run, "b", 2, "e1", 10_000).unwrap();
    finish(&mut state, run, "b", 2, AttemptOutcome::Exited(0), 10_001).unwrap();
    assert_eq!(run_state(&state, run), RunState::Failed);
}

/// A report from `executor` about attempt 1 of `task`: started, or finished with `outcome`.
fn report_of(run: u64, task: &str, executor: &str, outcome: Option<AttemptOutcome>, at: i64) -> Command {
    let (target, attempt, executor) = (target(task, run), 1, executor.to_string());
    match outcome {
        None => Command::AttemptStarted {
            target,
            attempt,
            executor,
            at,
        },
        Some(outcome) => Command::AttemptFinished {
            target,
            attempt,
            executor,
            outcome,
            log_node: 0,
            at,
        },
    }
}

/// Applies `command`, which must be refused as not from the attempt's assignee, naming `executor` and the
/// attempt, and change nothing.
fn assert_refused_from(state: &mut State, command: &Command, executor: &str) {
    let before = state.clone();
    match state.apply(command) {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains(&format!("executor {executor:?}")), "{message}");
            assert!(message.contains("attempt 1 of task"), "{message}");
        }
        other => panic!("{command:?} was not refused: {other:?}"),
    }
    assert_eq!(*state, before, "{command:?} changed nothing");
}

#[test]
fn a_report_or_a_log_counts_only_from_the_executor_the_attempt_is_assigned_to() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "tasks": [{"id": "test", "image": "i"},
            {"id": "deploy", "image": "i", "depends_on": {"test": "success"}}]}"#,
    );
    let run = start(&mut state);
    renew(&mut state, &["e1", "e2"], 0);
    assign_to(&mut state, run, "test", 1, "e1", 10).unwrap();

    // e2 can neither start nor finish e1's attempt, nor store its log.
    assert_refused_from(&mut state, &report_of(run, "test", "e2", None, 11), "e2");
    assert_refused_from(
        &mut state,
        &report_of(run, "test", "e2", Some(AttemptOutcome::Exited(0)), 11),
        "e2",
    );
    let upload = state.check_log_upload(&target("test", run), 1, "e2");
    assert!(matches!(upload, Err(Error::FailedPrecondition(_))), "{upload:?}");
    state.check_log_upload(&target("test", run), 1, "e1").unwrap();

    // e1's reports count; a report without an executor (written before reports named one) still does.
    state.apply(&report_of(run, "test", "e1", None, 12)).unwrap();
    assert_eq!(task_state(&state, run, "test"), TaskState::Running);
    state
        .apply(&report_of(run, "test", "", Some(AttemptOutcome::Exited(0)), 13))
        .unwrap();
    assert_eq!(task_state(&state, run, "test"), TaskState::Succeeded);
    // A finished attempt's log is not stored again, even by its assignee.
    let upload = state.check_log_upload(&target("test", run), 1, "e1");
    assert!(matches!(upload, Err(Error::FailedPrecondition(_))), "{upload:?}");

    // A LOST attempt's late report counts only from the executor it had been assigned to.
    assign_to(&mut state, run, "deploy", 1, "e1", 20).unwrap();
    lose(&mut state, "e1", 5_000).unwrap();
    let late = |executor: &str| Command::AttemptReportedLate {
        target: target("deploy", run),
        attempt: 1,
        executor: executor.into(),
        report: "stopped on return".into(),
        at: 5_001,
    };
    assert_refused_from(&mut state, &late("e2"), "e2");
    state.apply(&late("e1")).unwrap();
    assert_eq!(
        task_of(&state, run, "deploy").attempts[0].late_report,
        "stopped on return"
    );
}

#[test]
fn retries_and_backoff_are_checked_naming_the_field() {
    for (json, field) in [
        (
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "retries": 11}]}"#,
            "tasks[0].retries",
        ),
        (
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "backoff": "-1s"}]}"#,
            "tasks[0].backoff",
        ),
        (
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "backoff": "2h"}]}"#,
            "tasks[0].backoff",
        ),
        (
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "backoff": "soon"}]}"#,
            "tasks[0].backoff",
        ),
    ] {
        match PipelineConfig::from_json(json) {
            Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn a_batch_applies_each_command_with_its_own_result_and_a_fenced_batch_checks_every_assignment() {
    let mut state = init();
    register(&mut state, r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#);
    let run = start(&mut state);
    state
        .apply(&Command::AcquireLease {
            role: Role::Scheduler,
            holder: "s".into(),
            ttl_millis: 1_000,
            address: String::new(),
            connected: Vec::new(),
            at: 1,
        })
        .unwrap();
    let assign = |attempt: u32, scheduler: &str| Command::AssignAttempt {
        target: target("a", run),
        attempt,
        executor: "e".into(),
        node: 1,
        scheduler: scheduler.into(),
        epoch: 1,
        at: 2,
    };
    let fenced = |commands: Vec<Command>| Command::Fenced {
        role: Role::Scheduler,
        holder: "s".into(),
        epoch: 1,
        command: Box::new(Command::Batch { commands }),
    };
    // One assignment names another scheduler: the whole fenced batch is refused.
    let before = state.clone();
    assert!(matches!(
        state.apply(&fenced(vec![assign(1, "s"), assign(1, "other")])),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(state, before);
    // The second assignment of the same attempt is refused on its own; the first stands.
    match state.apply(&fenced(vec![assign(1, "s"), assign(1, "s")])) {
        Ok(Applied::Batch(results)) => {
            assert_eq!(results[0], Ok(Applied::Done));
            assert!(matches!(results[1], Err(Error::FailedPrecondition(_))), "{results:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(task_of(&state, run, "a").attempt, 1);
    let nested = Command::Batch {
        commands: vec![Command::Batch { commands: vec![] }],
    };
    assert!(state.apply(&nested).is_err());
}

#[test]
fn a_pipeline_keeps_its_newest_runs_and_prunes_the_oldest_ended_ones() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "keep_runs": 3, "tasks": [{"id": "a", "image": "i"}]}"#,
    );
    let start_with = |state: &mut State, request_id: &str| match state.apply(&Command::StartRun {
        namespace: "default".into(),
        pipeline: "p".into(),
        request_id: request_id.into(),
        parameters: Default::default(),
        retry_of: 0,
        at: 5,
    }) {
        Ok(Applied::Run(id)) => id,
        other => panic!("{other:?}"),
    };
    for n in 1..=4 {
        start_with(&mut state, &format!("req-{n}"));
    }
    let ids = |state: &State| {
        state
            .pipeline("default", "p")
            .unwrap()
            .runs
            .keys()
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&state), [1, 2, 3, 4], "runs that have not ended are never pruned");
    run_task(&mut state, 1, "a", AttemptOutcome::Exited(0));
    run_task(&mut state, 2, "a", AttemptOutcome::Exited(1));
    start_with(&mut state, "req-5");
    assert_eq!(ids(&state), [3, 4, 5], "the two oldest ended runs went");
    let requests = &state.pipeline("default", "p").unwrap().requests;
    assert!(
        !requests.contains_key("req-1") && requests.contains_key("req-3"),
        "{requests:?}"
    );
    assert_eq!(start_with(&mut state, "req-6"), 6, "ids keep counting");
    assert!(
        PipelineConfig::from_json(r#"{"id": "p", "keep_runs": 100001, "tasks": [{"id": "a", "image": "i"}]}"#).is_err()
    );
}

fn set_limits(state: &mut State, limits: crate::limits::TaskLimits) -> Result<Applied, Error> {
    state.apply(&Command::SetTaskLimits { limits, at: 5 })
}

#[test]
fn a_pipeline_over_a_ceiling_is_refused_naming_the_field_and_the_ceiling_and_nothing_is_stored() {
    use crate::limits::{Cpus, TaskLimits};
    let mut state = init();
    set_limits(
        &mut state,
        TaskLimits {
            max_cpu: Some(Cpus(2000)),
            max_memory_bytes: Some(1 << 30),
            max_timeout_ms: Some(3_600_000),
            ..Default::default()
        },
    )
    .unwrap();
    for (task, field, ceiling) in [
        (r#""cpu": 2.5"#, "tasks[0].cpu", "task_max_cpu = 2"),
        (r#""memory": "2GiB""#, "tasks[0].memory", "task_max_memory = 1GiB"),
        (r#""timeout": "2h""#, "tasks[0].timeout", "task_max_timeout = 1h"),
    ] {
        let json = format!(r#"{{"id": "p", "tasks": [{{"id": "a", "image": "i", {task}}}]}}"#);
        let before = state.clone();
        match state.apply(&Command::RegisterPipeline {
            namespace: "default".into(),
            config: config(&json),
            at: 6,
        }) {
            Err(Error::InvalidArgument { field: named, reason }) => {
                assert_eq!(named, field);
                assert!(reason.contains(ceiling), "{reason}");
            }
            other => panic!("{task}: {other:?}"),
        }
        assert_eq!(state, before);
    }
    // At the ceiling is allowed.
    register(
        &mut state,
        r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "cpu": 2, "memory": "1GiB", "timeout": "1h"}]}"#,
    );
}

#[test]
fn task_limits_are_checked_and_a_refused_setting_changes_nothing() {
    use crate::limits::{Cpus, TaskLimits};
    let mut state = init();
    for (limits, field) in [
        (
            TaskLimits {
                default_memory_bytes: Some(2 << 30),
                max_memory_bytes: Some(1 << 30),
                ..Default::default()
            },
            "task_default_memory",
        ),
        (
            TaskLimits {
                default_cpu: Some(Cpus(4000)),
                max_cpu: Some(Cpus(2000)),
                ..Default::default()
            },
            "task_default_cpu",
        ),
        (
            TaskLimits {
                default_timeout_ms: Some(7_200_000),
                max_timeout_ms: Some(3_600_000),
                ..Default::default()
            },
            "task_default_timeout",
        ),
        (
            TaskLimits {
                max_cpu: Some(Cpus(0)),
                ..Default::default()
            },
            "task_max_cpu",
        ),
        (
            TaskLimits {
                max_memory_bytes: Some(1 << 20),
                ..Default::default()
            },
            "task_max_memory",
        ),
        (
            TaskLimits {
                max_timeout_ms: Some(8 * 86_400_000),
                ..Default::default()
            },
            "task_max_timeout",
        ),
    ] {
        let before = state.clone();
        match set_limits(&mut state, limits) {
            Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
        assert_eq!(state, before);
    }
    // Set, the limits travel in a snapshot; unset again, the snapshot has no trace of them.
    let limits = TaskLimits {
        default_memory_bytes: Some(256 << 20),
        max_memory_bytes: Some(1 << 30),
        ..Default::default()
    };
    set_limits(&mut state, limits).unwrap();
    let snapshot: State = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(snapshot.task_limits, limits);
    set_limits(&mut state, TaskLimits::default()).unwrap();
    assert!(!serde_json::to_string(&state).unwrap().contains("task_limits"));
}

#[test]
fn a_pruned_runs_blobs_go_with_it_and_a_blob_needs_its_run() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "keep_runs": 1, "tasks": [{"id": "a", "image": "i"}]}"#,
    );
    let put = |key: String, byte: u8| Command::PutBlob {
        key,
        digest: format!("{byte:02x}").repeat(32),
        size: 3,
        holders: vec![1, 2],
        at: 6,
    };
    let run = start(&mut state);
    let log = crate::blobs::task_log_key(&target("a", run), 1);
    state.apply(&put(log.clone(), 1)).unwrap();
    assert!(state.blobs.get(&log).is_some());
    // A key under a run that does not exist is refused, naming the field, and changes nothing.
    let before = state.clone();
    let err = state
        .apply(&put(crate::blobs::task_log_key(&target("a", 9), 1), 2))
        .unwrap_err();
    assert!(err.to_string().contains("run 9"), "{err}");
    assert_eq!(state, before);
    let err = state.apply(&put("runs/default/p".into(), 2)).unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    // The run ends; the next one prunes it (keep_runs 1), and its log's blob with it.
    run_task(&mut state, run, "a", AttemptOutcome::Exited(0));
    start(&mut state);
    assert!(state.blobs.is_empty(), "{:?}", state.blobs);
}

fn put_object(run: u64, key: &str, byte: u8, at: i64) -> Command {
    Command::PutObject {
        namespace: "default".into(),
        pipeline: "p".into(),
        run,
        key: key.into(),
        digest: format!("{byte:02x}").repeat(32),
        size: 4,
        holders: vec![1, 2],
        at,
    }
}

#[test]
fn objects_are_checked_kept_within_the_count_and_the_oldest_is_evicted_with_an_event() {
    let mut state = init();
    register(&mut state, r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}]}"#);
    state
        .apply(&Command::SetObjectLimits {
            limits: crate::blobs::ObjectLimits {
                max_bytes: 10,
                max_count: 2,
            },
            at: 3,
        })
        .unwrap();
    // Bad keys, sizes and owners are refused by name and change nothing.
    let before = state.clone();
    for (command, field) in [
        (put_object(0, "no spaces", 1, 5), "key"),
        (put_object(0, &"k".repeat(129), 1, 5), "key"),
        (put_object(0, "", 1, 5), "key"),
        (put_object(7, "k", 1, 5), "run 7"),
    ] {
        let err = state.apply(&command).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    let mut big = put_object(0, "big", 1, 5);
    if let Command::PutObject { size, .. } = &mut big {
        *size = 11;
    }
    assert!(state.apply(&big).unwrap_err().to_string().contains("size"));
    assert_eq!(state, before);
    let events_before = state.events.newest();
    assert_eq!(
        state.apply(&put_object(0, "a/one.tar", 1, 5)).unwrap(),
        Applied::Evicted(vec![])
    );
    assert_eq!(
        state.apply(&put_object(0, "b", 2, 6)).unwrap(),
        Applied::Evicted(vec![])
    );
    // Putting a key again replaces it and evicts nothing; a third key evicts the oldest.
    assert_eq!(
        state.apply(&put_object(0, "b", 3, 7)).unwrap(),
        Applied::Evicted(vec![])
    );
    assert_eq!(
        state.apply(&put_object(0, "c", 4, 8)).unwrap(),
        Applied::Evicted(vec!["a/one.tar".into()])
    );
    let told = state.events.after(events_before, usize::MAX).unwrap();
    assert!(
        told.iter().any(
            |e| matches!(&e.what, crate::events::EventKind::ObjectEvicted { key, run: 0, .. } if key == "a/one.tar")
        ),
        "{told:?}"
    );
    let prefix = crate::blobs::object_prefix("default", "p", 0);
    let keys: Vec<&str> = state
        .blobs
        .under(&prefix, "")
        .map(|(k, _)| &k[prefix.len()..])
        .collect();
    assert_eq!(keys, ["b", "c"]);
    // The replaced and evicted blobs are forgotten: no key names them.
    assert_eq!(state.blobs.copies.len(), 2);
    state
        .apply(&Command::DeleteObject {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: 0,
            key: "b".into(),
            at: 9,
        })
        .unwrap();
    let err = state
        .apply(&Command::DeleteObject {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: 0,
            key: "b".into(),
            at: 9,
        })
        .unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::NotFound, "{err}");
}

#[test]
fn a_runs_objects_go_when_the_run_is_pruned_and_the_pipelines_stay() {
    let mut state = init();
    register(
        &mut state,
        r#"{"id": "p", "keep_runs": 1, "tasks": [{"id": "a", "image": "i"}]}"#,
    );
    start(&mut state);
    state.apply(&put_object(1, "cache", 1, 6)).unwrap();
    state.apply(&put_object(0, "cache", 2, 6)).unwrap();
    run_task(&mut state, 1, "a", AttemptOutcome::Exited(0));
    start(&mut state);
    let keys: Vec<&String> = state.blobs.keys.keys().collect();
    assert_eq!(keys, ["pipelines/default/p/objects/cache"]);
}

#[test]
fn the_lease_holder_reports_what_is_connected_to_it_and_no_one_else_can() {
    let mut state = init();
    let acquire = |holder: &str, connected: Vec<String>, at: i64| Command::AcquireLease {
        role: Role::ExtensionHost,
        holder: holder.into(),
        ttl_millis: 1_000,
        address: "http://hooks.example:7080".into(),
        connected,
        at,
    };
    let Ok(Applied::Lease(lease)) = state.apply(&acquire("h", vec!["ticker".into()], 1)) else {
        panic!("the lease was not granted");
    };
    assert_eq!(lease.connected, vec!["ticker".to_string()]);
    assert_eq!(lease.address, "http://hooks.example:7080");
    // A standby's report is refused with its claim, and changes nothing.
    assert!(state.apply(&acquire("other", vec!["ghost".into()], 2)).is_err());
    assert_eq!(
        state.leases.roles[&Role::ExtensionHost].connected,
        vec!["ticker".to_string()]
    );
    // The holder's next renewal says what is connected now.
    state.apply(&acquire("h", Vec::new(), 3)).unwrap();
    assert!(state.leases.roles[&Role::ExtensionHost].connected.is_empty());
    // Too many names, or a name too long, is refused, naming the field, and changes nothing.
    let before = state.clone();
    for connected in [
        vec!["e".to_string(); crate::lease::MAX_CONNECTED + 1],
        vec!["x".repeat(crate::lease::MAX_CONNECTED_NAME_BYTES + 1)],
        vec![String::new()],
    ] {
        match state.apply(&acquire("h", connected, 4)) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "connected"),
            other => panic!("{other:?}"),
        }
        assert_eq!(state, before);
    }
}
