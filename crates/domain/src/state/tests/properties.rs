//! Random command sequences against the invariants: ids only grow, a run ends exactly when all its tasks
//! have, refusals change nothing, every change of a run or a task is told by an event of the command that
//! made it, the planner's assignments are all accepted and planning again plans nothing new, equal logs
//! give equal states, and a snapshot round-trip changes nothing.
//!
//! The steps cover retries with backoff, cancels, executor leases and their loss, fenced assignments,
//! reports from executors other than an attempt's assignee (always refused), and fires on subscriptions
//! with every overlap policy.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::events::EventKind;
use crate::executors::ExecutorInfo;
use crate::plan;
use crate::triggers::Fire;

/// A DAG whose root is retried, with a dependent listed before its parent, and a parallelism cap.
const PIPELINE: &str = r#"{"id": "p", "parallelism": 2, "tasks": [
    {"id": "early", "image": "i", "depends_on": {"a": "success"}},
    {"id": "a", "image": "i", "retries": 2, "backoff": "1s"},
    {"id": "ok", "image": "i", "depends_on": {"a": "success"}},
    {"id": "onfail", "image": "i", "retries": 1, "depends_on": {"a": "failure"}},
    {"id": "after_ok", "image": "i", "depends_on": {"ok": "success"}},
    {"id": "always", "image": "i", "depends_on": {"a": "any"}}]}"#;

const EXECUTORS: [&str; 2] = ["e", "f"];
const SUBSCRIPTIONS: [(&str, &str); 4] = [
    ("allow", "allow"),
    ("skip", "skip"),
    ("buffer", "buffer_one"),
    ("cancel", "cancel_other"),
];

#[derive(Debug, Clone)]
enum Step {
    Start,
    AssignPlanned { to: usize },
    Finish { pick: usize, code: i64, named: bool },
    Impersonate { pick: usize, code: i64 },
    Stop { pick: usize },
    Cancel { pick: usize },
    Bogus { pick: usize },
    Lease { who: usize, ttl: u64 },
    FencedAssign { who: usize, epoch: u64 },
    Renew { who: usize },
    Lose { who: usize },
    Fire { fires: Vec<(usize, u8)> },
    SkipFires { sub: usize, count: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Start),
        3 => any::<usize>().prop_map(|to| Step::AssignPlanned { to }),
        4 => (any::<usize>(), 0i64..3, any::<bool>()).prop_map(|(pick, code, named)| Step::Finish { pick, code, named }),
        1 => (any::<usize>(), 0i64..3).prop_map(|(pick, code)| Step::Impersonate { pick, code }),
        1 => any::<usize>().prop_map(|pick| Step::Stop { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Bogus { pick }),
        1 => (any::<usize>(), 1u64..4).prop_map(|(who, ttl)| Step::Lease { who, ttl }),
        2 => (any::<usize>(), 0u64..4).prop_map(|(who, epoch)| Step::FencedAssign { who, epoch }),
        2 => any::<usize>().prop_map(|who| Step::Renew { who }),
        1 => any::<usize>().prop_map(|who| Step::Lose { who }),
        2 => prop::collection::vec((any::<usize>(), 0u8..6), 1..4).prop_map(|fires| Step::Fire { fires }),
        1 => (any::<usize>(), 0u64..3).prop_map(|(sub, count)| Step::SkipFires { sub, count }),
    ]
}

/// An initialized cluster with the pipeline, the built-in `interval` extension and one subscription per
/// overlap policy.
fn setup() -> State {
    let mut state = init();
    register(&mut state, PIPELINE);
    crate::testing::register_interval(&mut state, &["every", "overlap"], 2);
    let mut commands = Vec::new();
    for (label, overlap) in SUBSCRIPTIONS {
        commands.push(Command::CreateSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: label.into(),
            extension: "interval".into(),
            settings: [("every", "1m"), ("overlap", overlap)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            at: 2,
        });
    }
    for command in commands {
        state.apply(&command).unwrap();
    }
    state
}

/// The live attempts, with their executor.
fn live(state: &State) -> Vec<(AttemptRef, u32, String)> {
    state
        .active_runs()
        .flat_map(|(ns, p, _, run)| {
            run.tasks.iter().filter_map(move |t| {
                let assignment = t.assignment.as_ref()?;
                let target = AttemptRef {
                    namespace: ns.into(),
                    pipeline: p.into(),
                    run: run.id,
                    task: t.task.clone(),
                };
                Some((target, t.attempt, assignment.executor.clone()))
            })
        })
        .collect()
}

/// The LOST attempts without a late report, with the executor they had been assigned to.
fn lost(state: &State) -> Vec<(AttemptRef, u32, String)> {
    let Ok(pipeline) = state.pipeline("default", "p") else {
        return Vec::new();
    };
    pipeline
        .runs
        .values()
        .flat_map(|run| {
            run.tasks.iter().flat_map(move |t| {
                t.attempts
                    .iter()
                    .filter(|a| a.state == AttemptState::Lost && a.late_report.is_empty())
                    .map(move |a| (target(&t.task, run.id), a.attempt, a.executor.clone()))
            })
        })
        .collect()
}

/// The executor of the two that is not `executor`.
fn other_than(executor: &str) -> String {
    EXECUTORS.into_iter().find(|e| *e != executor).unwrap_or("e").into()
}

fn assign(target: AttemptRef, attempt: u32, executor: &str, scheduler: &str, epoch: u64, at: i64) -> Command {
    Command::AssignAttempt {
        target,
        attempt,
        executor: executor.into(),
        node: 1,
        scheduler: scheduler.into(),
        epoch,
        at,
    }
}

/// Turns a step into commands for the current state (so most of them are valid).
fn commands(state: &State, step: &Step, at: i64) -> Vec<Command> {
    let live = live(state);
    let runs: Vec<u64> = state
        .pipeline("default", "p")
        .map(|p| p.runs.keys().copied().collect())
        .unwrap_or_default();
    match step {
        Step::Start => vec![Command::StartRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            request_id: String::new(),
            parameters: Default::default(),
            retry_of: 0,
            at,
        }],
        Step::AssignPlanned { to } => plan(state, at)
            .into_iter()
            .map(|(target, attempt)| assign(target, attempt, EXECUTORS[to % 2], "", 0, at))
            .collect(),
        Step::Finish { pick, code, named } if !live.is_empty() => {
            // Named by its assignee, or unnamed as reports were before they named their executor.
            let (target, attempt, assignee) = live[pick % live.len()].clone();
            let executor = if *named { assignee } else { String::new() };
            reports(target, attempt, &executor, *code, at)
        }
        Step::Impersonate { pick, code } => {
            let mut forged = Vec::new();
            if !live.is_empty() {
                let (target, attempt, assignee) = live[pick % live.len()].clone();
                forged = reports(target, attempt, &other_than(&assignee), *code, at);
            }
            let lost = lost(state);
            if !lost.is_empty() {
                let (target, attempt, assignee) = lost[pick % lost.len()].clone();
                forged.push(Command::AttemptReportedLate {
                    target,
                    attempt,
                    executor: other_than(&assignee),
                    report: "forged".into(),
                    at,
                });
            }
            forged
        }
        Step::Stop { pick } if !live.is_empty() => {
            let (target, attempt, _) = live[pick % live.len()].clone();
            vec![Command::AttemptFinished {
                target,
                attempt,
                executor: String::new(),
                outcome: AttemptOutcome::Stopped,
                log_node: 0,
                at,
            }]
        }
        Step::Cancel { pick } if !runs.is_empty() => vec![Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: runs[pick % runs.len()],
            reason: "r".into(),
            grace_millis: 0,
            at,
        }],
        Step::Bogus { pick } => vec![Command::AttemptFinished {
            target: target("a", *pick as u64 % 5 + 1),
            attempt: 7,
            executor: String::new(),
            outcome: AttemptOutcome::Exited(0),
            log_node: 0,
            at,
        }],
        Step::Lease { who, ttl } => vec![Command::AcquireLease {
            role: Role::Scheduler,
            holder: format!("s{}", who % 2),
            ttl_millis: *ttl,
            address: String::new(),
            connected: Vec::new(),
            at,
        }],
        Step::FencedAssign { who, epoch } => plan(state, at)
            .into_iter()
            .map(|(target, attempt)| {
                let holder = format!("s{}", who % 2);
                Command::Fenced {
                    role: Role::Scheduler,
                    holder: holder.clone(),
                    epoch: *epoch,
                    command: Box::new(assign(target, attempt, EXECUTORS[who % 2], &holder, *epoch, at)),
                }
            })
            .collect(),
        Step::Renew { who } => vec![Command::RenewExecutors {
            executors: vec![ExecutorInfo {
                id: EXECUTORS[who % 2].into(),
                ..Default::default()
            }],
            ttl_millis: 1_000,
            at,
        }],
        Step::Lose { who } => vec![Command::ExecutorLost {
            executor: EXECUTORS[who % 2].into(),
            at,
        }],
        Step::Fire { fires } => vec![Command::Fire {
            fires: fires
                .iter()
                .map(|(sub, key)| Fire {
                    namespace: "default".into(),
                    pipeline: "p".into(),
                    subscription: SUBSCRIPTIONS[sub % SUBSCRIPTIONS.len()].0.into(),
                    extension: "interval".into(),
                    idempotency_key: format!("k{key}"),
                    scheduled_at: at,
                    delivery: String::new(),
                    parameters: BTreeMap::new(),
                })
                .collect(),
            at,
        }],
        Step::SkipFires { sub, count } => vec![Command::SkipFires {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: SUBSCRIPTIONS[sub % SUBSCRIPTIONS.len()].0.into(),
            count: *count,
            last_scheduled_at: at,
            reason: "missed".into(),
            at,
        }],
        _ => vec![],
    }
}

/// An executor's reports that an attempt started, then exited with `code`.
fn reports(target: AttemptRef, attempt: u32, executor: &str, code: i64, at: i64) -> Vec<Command> {
    vec![
        Command::AttemptStarted {
            target: target.clone(),
            attempt,
            executor: executor.into(),
            at,
        },
        Command::AttemptFinished {
            target,
            attempt,
            executor: executor.into(),
            outcome: AttemptOutcome::Exited(code),
            log_node: 0,
            at,
        },
    ]
}

/// Checks that the events `command` recorded (from `before` to `after`) tell every change it made to a
/// run or a task execution, ending in its state, and nothing it did not change; and one event per fire
/// and skipped-fires record it applied.
fn check_told(before: &State, after: &State, command: &Command, applied: &Applied) -> Result<(), TestCaseError> {
    let told = after.events.after(before.events.newest(), usize::MAX).unwrap();
    let mut runs_told = BTreeMap::new();
    let mut tasks_told = BTreeMap::new();
    let mut fires_told = 0;
    let mut skips_told = 0;
    for event in &told {
        match &event.what {
            EventKind::Run { run, state, .. } => {
                runs_told.insert(*run, *state);
            }
            EventKind::Task {
                run,
                task,
                attempt,
                state,
                ..
            } => {
                tasks_told.insert((*run, task.clone()), (*state, *attempt));
            }
            EventKind::Fire { .. } => fires_told += 1,
            EventKind::FiresSkipped { .. } => skips_told += 1,
            // The property test makes no objects.
            EventKind::ObjectEvicted { .. } => prop_assert!(false, "an eviction told: {event:?}"),
        }
    }
    let old_runs = &before.pipeline("default", "p").unwrap().runs;
    let mut runs_changed = BTreeMap::new();
    let mut tasks_changed = BTreeMap::new();
    for run in after.pipeline("default", "p").unwrap().runs.values() {
        let old = old_runs.get(&run.id);
        if old.is_none_or(|old| old.state != run.state) {
            runs_changed.insert(run.id, run.state);
        }
        for (index, task) in run.tasks.iter().enumerate() {
            let was = old.map_or_else(|| TaskExecution::pending(&task.task), |old| old.tasks[index].clone());
            if was.state != task.state || was.attempts.len() != task.attempts.len() {
                tasks_changed.insert((run.id, task.task.clone()), (task.state, task.attempt));
            }
        }
    }
    prop_assert_eq!(runs_told, runs_changed, "run events of {:?}", command);
    prop_assert_eq!(tasks_told, tasks_changed, "task events of {:?}", command);
    let fires_applied = match applied {
        Applied::Fired(results) => results.iter().filter(|r| r.is_ok()).count(),
        _ => 0,
    };
    prop_assert_eq!(fires_told, fires_applied, "fire events of {:?}", command);
    let skips_applied = usize::from(matches!(command, Command::SkipFires { .. }));
    prop_assert_eq!(skips_told, skips_applied, "skipped-fire events of {:?}", command);
    // A fence carries no time of its own: its command's events carry that command's.
    let at = match command {
        Command::Fenced { command, .. } => command.at(),
        _ => command.at(),
    };
    for (i, event) in told.iter().enumerate() {
        prop_assert_eq!(
            event.id,
            before.events.newest() + 1 + i as u64,
            "event ids count up by one"
        );
        if at.is_some() {
            prop_assert_eq!(Some(event.at), at, "an event carries its command's time");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_invariants(steps in prop::collection::vec(step(), 1..80)) {
        let mut state = setup();
        let mut log = Vec::new();
        let mut last_run = 0;
        let mut granted = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            // 400 ms apart: executor leases (1 s) run out and retry backoffs (1 s, 2 s) pass.
            let at = 10 + 400 * i as i64;
            let mut all_applied = true;
            for command in commands(&state, step, at) {
                let before = state.clone();
                let result = state.apply(&command);
                match &result {
                    Ok(_) if matches!(step, Step::Impersonate { .. }) => {
                        prop_assert!(false, "a report from another executor than the assignee counted: {:?}", command);
                    }
                    Ok(Applied::Run(id)) => {
                        prop_assert!(*id > last_run, "run ids only grow");
                        last_run = *id;
                    }
                    Ok(Applied::Lease(lease)) => {
                        let holder = granted.entry(lease.epoch).or_insert_with(|| lease.holder.clone());
                        prop_assert_eq!(&*holder, &lease.holder, "one holder per epoch");
                    }
                    Ok(_) if matches!(command, Command::Fenced { .. }) => {
                        let Command::Fenced { holder, epoch, .. } = &command else { unreachable!() };
                        prop_assert_eq!(granted.get(epoch), Some(holder), "a fenced command acts in its holder's epoch");
                    }
                    Ok(_) => {}
                    Err(_) => {
                        all_applied = false;
                        prop_assert_eq!(&state, &before, "a refused command changes nothing");
                    }
                }
                if let Ok(applied) = &result {
                    check_told(&before, &state, &command, applied)?;
                }
                log.push(command);
            }
            if let Step::AssignPlanned { to } = step {
                // The planner proposes only what apply accepts, to an executor that may take work...
                if state.executors.may_assign(EXECUTORS[to % 2]) {
                    prop_assert!(all_applied, "every planned assignment is accepted");
                }
                // ...and once its plan is assigned, planning again on that state plans nothing new.
                if all_applied {
                    prop_assert_eq!(plan(&state, at), vec![], "planning after the plan was assigned");
                }
            }
            for run in state.pipeline("default", "p").unwrap().runs.values() {
                let all_ended = run.tasks.iter().all(|t| t.state.is_terminal());
                prop_assert_eq!(run.state.is_terminal(), all_ended, "run {} ends exactly when its tasks have", run.id);
                let assigned = run.tasks.iter().filter(|t| t.assignment.is_some()).count();
                prop_assert!(!run.state.is_terminal() || assigned == 0, "an ended run holds no assignment");
            }
        }
        // Equal logs give equal states.
        let mut replayed = setup();
        for command in &log {
            let _ = replayed.apply(command);
        }
        prop_assert_eq!(&replayed, &state);
        // A snapshot round-trip changes nothing.
        let snapshot: State = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        prop_assert_eq!(snapshot, state);
    }
}
