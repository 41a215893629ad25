//! The event stream: what apply records, how ids count, resuming, pruning and retention.

use std::collections::BTreeMap;

use super::*;
use crate::triggers::Fire;
use crate::{Applied, AttemptOutcome, AttemptRef, Command, State};

fn state() -> State {
    crate::testing::with_pipeline(
        r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "retries": 1, "backoff": "1s"}, {"id": "b", "image": "i", "depends_on": {"a": "success"}}]}"#,
    )
}

fn start(state: &mut State, at: i64) -> u64 {
    match state
        .apply(&Command::StartRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            request_id: String::new(),
            parameters: BTreeMap::new(),
            retry_of: 0,
            at,
        })
        .unwrap()
    {
        Applied::Run(id) => id,
        other => panic!("{other:?}"),
    }
}

fn target(run: u64, task: &str) -> AttemptRef {
    AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run,
        task: task.into(),
    }
}

fn attempt(state: &mut State, run: u64, task: &str, number: u32, outcome: AttemptOutcome, at: i64) {
    for command in [
        Command::AssignAttempt {
            target: target(run, task),
            attempt: number,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at,
        },
        Command::AttemptStarted {
            target: target(run, task),
            attempt: number,
            executor: String::new(),
            at,
        },
        Command::AttemptFinished {
            target: target(run, task),
            attempt: number,
            executor: String::new(),
            outcome,
            log_node: 0,
            at,
        },
    ] {
        state.apply(&command).unwrap();
    }
}

/// Each event as one line: `id what`.
fn lines(state: &State, after: u64) -> Vec<String> {
    state
        .events
        .after(after, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| {
            let what = match &e.what {
                EventKind::Run { run, state, .. } => format!("run {run} {}", state.as_str()),
                EventKind::Task {
                    run,
                    task,
                    attempt,
                    state,
                    ..
                } => format!("task {run}/{task}#{attempt} {}", state.as_str()),
                EventKind::Fire { decision, run, .. } => format!("fire {} {run}", decision.as_str()),
                EventKind::FiresSkipped { count, .. } => format!("skipped {count}"),
                EventKind::ObjectEvicted { run, key, .. } => format!("evicted {run}/{key}"),
            };
            format!("{} {what}", e.id)
        })
        .collect()
}

#[test]
fn a_run_tells_each_state_change_of_itself_and_its_tasks_in_order() {
    let mut state = state();
    let run = start(&mut state, 10);
    attempt(&mut state, run, "a", 1, AttemptOutcome::Exited(1), 11);
    attempt(&mut state, run, "a", 2, AttemptOutcome::Exited(0), 2_000);
    attempt(&mut state, run, "b", 1, AttemptOutcome::Exited(0), 2_001);
    assert_eq!(
        lines(&state, 0),
        [
            "1 run 1 PENDING",
            "2 run 1 RUNNING",
            "3 task 1/a#1 RUNNING",
            "4 task 1/a#1 PENDING",
            "5 task 1/a#2 RUNNING",
            "6 task 1/a#2 SUCCEEDED",
            "7 task 1/b#1 RUNNING",
            "8 task 1/b#1 SUCCEEDED",
            "9 run 1 SUCCEEDED",
        ]
    );
    let retried = &state.events.after(3, 1).unwrap()[0];
    let EventKind::Task { reason, .. } = &retried.what else {
        panic!("{retried:?}")
    };
    assert!(reason.contains("attempt 2 follows"), "{reason}");
    assert_eq!(retried.at, 11);
}

#[test]
fn a_failure_tells_the_skipped_dependents_and_a_cancel_the_cancelled_tasks() {
    let mut state = state();
    let failed = start(&mut state, 10);
    attempt(&mut state, failed, "a", 1, AttemptOutcome::Exited(2), 11);
    attempt(&mut state, failed, "a", 2, AttemptOutcome::Exited(2), 2_000);
    let told = lines(&state, 0);
    assert_eq!(
        &told[told.len() - 3..],
        ["6 task 1/a#2 FAILED", "7 task 1/b#0 SKIPPED", "8 run 1 FAILED"]
    );
    let cancelled = start(&mut state, 2_001);
    let newest = state.events.newest();
    state
        .apply(&Command::CancelRun {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: cancelled,
            reason: "cancelled by user".into(),
            grace_millis: 0,
            at: 2_002,
        })
        .unwrap();
    assert_eq!(
        lines(&state, newest),
        [
            "10 task 2/a#0 CANCELLED",
            "11 task 2/b#0 CANCELLED",
            "12 run 2 CANCELLED"
        ]
    );
}

#[test]
fn a_refused_command_records_nothing() {
    let mut state = state();
    let run = start(&mut state, 10);
    let before = state.clone();
    let refused = state.apply(&Command::AttemptStarted {
        target: target(run, "a"),
        attempt: 1,
        executor: String::new(),
        at: 11,
    });
    assert!(refused.is_err());
    assert_eq!(state, before);
}

#[test]
fn resuming_lists_what_follows_the_last_id_seen_and_says_when_that_is_gone() {
    let mut state = state();
    for at in 0..5 {
        start(&mut state, 10 + at);
    }
    assert_eq!(lines(&state, 0).len(), 5);
    assert_eq!(lines(&state, 3), ["4 run 4 PENDING", "5 run 5 PENDING"]);
    assert!(lines(&state, 5).is_empty(), "nothing follows the newest yet");
    assert_eq!(state.events.after(6, 10), Err(EventGap::Ahead { after: 6, newest: 5 }));
    let error = EventGap::Ahead { after: 6, newest: 5 }.into_error("from");
    assert_eq!(error.kind(), crate::ErrorKind::InvalidArgument);
    assert!(error.to_string().starts_with("from: "), "{error}");
    // A retention of one second keeps what the newest command's second holds.
    state
        .apply(&Command::SetEventRetention {
            retention_millis: 1_000,
            at: 1_012,
        })
        .unwrap();
    assert_eq!(
        lines(&state, 0),
        ["3 run 3 PENDING", "4 run 4 PENDING", "5 run 5 PENDING"]
    );
    assert_eq!(
        lines(&state, 2),
        lines(&state, 0),
        "resuming right before the oldest kept loses nothing"
    );
    let gone = state.events.after(1, 10).unwrap_err();
    assert_eq!(gone, EventGap::Pruned { after: 1, oldest: 3 });
    let error = gone.into_error("from");
    assert_eq!(error.kind(), crate::ErrorKind::OutOfRange);
    assert!(error.to_string().contains("oldest kept is 3"), "{error}");
    // Ids go on counting after a prune.
    start(&mut state, 1_013);
    assert_eq!(lines(&state, 5), ["6 run 6 PENDING"]);
}

#[test]
fn retention_is_checked_naming_the_field_and_changes_nothing_when_refused() {
    let mut state = state();
    for bad in [0, 999, MAX_EVENT_RETENTION_MS + 1] {
        let before = state.clone();
        let error = state
            .apply(&Command::SetEventRetention {
                retention_millis: bad,
                at: 5,
            })
            .unwrap_err();
        assert!(error.to_string().starts_with("event_retention: "), "{error}");
        assert_eq!(state, before);
    }
    assert_eq!(state.events.retention_ms(), DEFAULT_EVENT_RETENTION_MS);
}

#[test]
fn at_most_max_events_are_kept() {
    let mut log = EventLog::default();
    for i in 0..MAX_EVENTS + 10 {
        log.push(
            1,
            EventKind::FiresSkipped {
                namespace: "default".into(),
                pipeline: "p".into(),
                subscription: "s".into(),
                count: i as u64,
                last_scheduled_at: 0,
                reason: String::new(),
            },
        );
    }
    assert_eq!(log.len(), MAX_EVENTS);
    assert_eq!(log.iter().next().map(|e| e.id), Some(11));
    assert_eq!(log.newest(), MAX_EVENTS as u64 + 10);
}

#[test]
fn fires_tell_their_decision_and_the_run_they_started() {
    let mut state = state();
    crate::testing::register_interval(&mut state, &["every", "overlap"], 1);
    state
        .apply(&Command::CreateSubscription {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "tick".into(),
            extension: "interval".into(),
            settings: [
                ("every".to_string(), "1m".to_string()),
                ("overlap".to_string(), "skip".to_string()),
            ]
            .into(),
            at: 2,
        })
        .unwrap();
    let fire = |key: &str| Fire {
        namespace: "default".into(),
        pipeline: "p".into(),
        subscription: "tick".into(),
        extension: "interval".into(),
        idempotency_key: key.into(),
        scheduled_at: 60_000,
        delivery: String::new(),
        parameters: BTreeMap::new(),
    };
    state
        .apply(&Command::Fire {
            fires: vec![fire("k1"), fire("k1"), fire("k2")],
            at: 60_001,
        })
        .unwrap();
    state
        .apply(&Command::SkipFires {
            namespace: "default".into(),
            pipeline: "p".into(),
            label: "tick".into(),
            count: 3,
            last_scheduled_at: 240_000,
            reason: "beyond the catch-up window".into(),
            at: 240_001,
        })
        .unwrap();
    assert_eq!(
        lines(&state, 0),
        [
            "1 fire STARTED 1",
            "2 fire DUPLICATE 1",
            "3 fire SKIPPED 0",
            "4 run 1 PENDING",
            "5 skipped 3",
        ]
    );
    let EventKind::Run { reason, .. } = &state.events.after(3, 1).unwrap()[0].what else {
        panic!()
    };
    assert!(reason.contains("\"tick\""), "{reason}");
}

#[test]
fn losing_an_executor_tells_its_attempts_ended_and_retried() {
    let mut state = state();
    let run = start(&mut state, 10);
    state
        .apply(&Command::RenewExecutors {
            executors: vec![crate::executors::ExecutorInfo {
                id: "e".into(),
                ..Default::default()
            }],
            ttl_millis: 1_000,
            at: 10,
        })
        .unwrap();
    state
        .apply(&Command::AssignAttempt {
            target: target(run, "a"),
            attempt: 1,
            executor: "e".into(),
            node: 1,
            scheduler: String::new(),
            epoch: 0,
            at: 11,
        })
        .unwrap();
    let newest = state.events.newest();
    state
        .apply(&Command::ExecutorLost {
            executor: "e".into(),
            at: 2_000,
        })
        .unwrap();
    assert_eq!(lines(&state, newest), [format!("{} task 1/a#1 PENDING", newest + 1)]);
}

mod chunks {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    fn kind(n: u64) -> EventKind {
        EventKind::FiresSkipped {
            namespace: "default".into(),
            pipeline: "p".into(),
            subscription: "s".into(),
            count: n,
            last_scheduled_at: 0,
            reason: String::new(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The chunked log lists, resumes, prunes, compares and round-trips exactly as a plain list of
        /// the same events would, across chunk boundaries.
        #[test]
        fn the_chunked_log_behaves_as_a_plain_list(
            steps in prop::collection::vec((0i64..40, 1u64..3_000), 1..3_500),
            probes in prop::collection::vec(any::<u64>(), 1..20),
        ) {
            let mut log = EventLog::default();
            let mut model: VecDeque<Event> = VecDeque::new();
            let mut now = 0;
            for (i, (advance, retention)) in steps.iter().enumerate() {
                now += advance;
                if i % 500 == 499 {
                    log.set_retention(1_000 + retention, now).unwrap();
                }
                log.push(now, kind(i as u64));
                model.push_back(Event { id: i as u64 + 1, at: now, what: kind(i as u64) });
                let horizon = now - log.retention_ms() as i64;
                while model.len() > MAX_EVENTS || model.front().is_some_and(|e| e.at < horizon) {
                    model.pop_front();
                }
            }
            prop_assert_eq!(log.len(), model.len());
            prop_assert!(log.iter().eq(model.iter()));
            let oldest = model.front().map_or(log.next_id, |e| e.id);
            for probe in probes {
                let after = probe % (log.newest() + 2);
                let expected: Result<Vec<Event>, EventGap> = if after > log.newest() {
                    Err(EventGap::Ahead { after, newest: log.newest() })
                } else if after != 0 && after + 1 < oldest {
                    Err(EventGap::Pruned { after, oldest })
                } else {
                    Ok(model.iter().filter(|e| e.id > after).take(100).cloned().collect())
                };
                prop_assert_eq!(log.after(after, 100), expected);
            }
            let json = serde_json::to_string(&log).unwrap();
            let back: EventLog = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &log);
            prop_assert!(back.iter().eq(model.iter()));
            let cloned = log.clone();
            log.push(now, kind(u64::MAX));
            prop_assert_eq!(cloned.len(), model.len(), "a clone does not see later events");
        }
    }
}
