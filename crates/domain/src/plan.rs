//! The scheduler's pure planner: which task executions may be given to an executor now.
//!
//! `plan` only reads the state; the scheduler turns its answer into `AssignAttempt` commands, which apply
//! checks again, so a plan made on a stale state can never assign a task twice.

use crate::{AttemptRef, Readiness, RunState, State, TaskState};

/// Every PENDING, unassigned task execution whose parents met their conditions and whose retry backoff
/// (if any) has passed by `now`, with the attempt number to assign, oldest run first. A pipeline's `parallelism` caps how many of its runs are RUNNING: a
/// PENDING run only gets its first assignment while the cap has room.
pub fn plan(state: &State, now: i64) -> Vec<(AttemptRef, u32)> {
    let mut out = Vec::new();
    for (namespace, ns) in &state.namespaces {
        for (pipeline, record) in &ns.pipelines {
            let mut running = record.runs.values().filter(|r| r.state == RunState::Running).count();
            for run in record
                .runs
                .values()
                .filter(|r| !r.state.is_terminal() && !r.cancel_requested)
            {
                let config = record.version(run.version).expect("a run's version exists");
                let limit = config.parallelism as usize;
                if run.state == RunState::Pending && limit > 0 && running >= limit {
                    continue;
                }
                let mut took_slot = false;
                for (index, task) in run.tasks.iter().enumerate() {
                    if task.state != TaskState::Pending || task.assignment.is_some() || task.not_before > now {
                        continue;
                    }
                    if run.readiness(config, index) == Readiness::Ready {
                        out.push((
                            AttemptRef {
                                namespace: namespace.clone(),
                                pipeline: pipeline.clone(),
                                run: run.id,
                                task: task.task.clone(),
                            },
                            task.attempt + 1,
                        ));
                        took_slot = true;
                    }
                }
                if run.state == RunState::Pending && took_slot {
                    running += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Applied, AttemptOutcome, Command};

    fn state_with(json: &str, runs: usize) -> State {
        let mut state = crate::testing::with_pipeline(json);
        for _ in 0..runs {
            let applied = state.apply(&Command::StartRun {
                namespace: "default".into(),
                pipeline: "p".into(),
                request_id: String::new(),
                parameters: Default::default(),
                retry_of: 0,
                at: 2,
            });
            assert!(matches!(applied, Ok(Applied::Run(_))));
        }
        state
    }

    fn assign_all(state: &mut State) -> Vec<(AttemptRef, u32)> {
        let planned = plan(state, i64::MAX);
        for (target, attempt) in &planned {
            state
                .apply(&Command::AssignAttempt {
                    target: target.clone(),
                    attempt: *attempt,
                    executor: "e".into(),
                    node: 1,
                    scheduler: String::new(),
                    epoch: 0,
                    at: 3,
                })
                .unwrap();
        }
        planned
    }

    #[test]
    fn only_roots_are_ready_first_and_children_follow() {
        let mut state = state_with(
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}, {"id": "b", "image": "i", "depends_on": {"a": "success"}}]}"#,
            1,
        );
        let first = assign_all(&mut state);
        assert_eq!(first.iter().map(|(t, _)| t.task.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(
            plan(&state, i64::MAX).is_empty(),
            "an assigned task is not planned again"
        );
        let (target, attempt) = first[0].clone();
        state
            .apply(&Command::AttemptFinished {
                target,
                attempt,
                executor: String::new(),
                outcome: AttemptOutcome::Exited(0),
                log_node: 0,
                at: 4,
            })
            .unwrap();
        let second = plan(&state, i64::MAX);
        assert_eq!(
            second.iter().map(|(t, a)| (t.task.as_str(), *a)).collect::<Vec<_>>(),
            [("b", 1)]
        );
    }

    #[test]
    fn parallelism_caps_running_runs() {
        let mut state = state_with(
            r#"{"id": "p", "parallelism": 2, "tasks": [{"id": "a", "image": "i"}]}"#,
            3,
        );
        let planned = assign_all(&mut state);
        assert_eq!(planned.iter().map(|(t, _)| t.run).collect::<Vec<_>>(), [1, 2]);
        assert!(plan(&state, i64::MAX).is_empty());
        let (target, attempt) = planned[0].clone();
        state
            .apply(&Command::AttemptFinished {
                target,
                attempt,
                executor: String::new(),
                outcome: AttemptOutcome::Exited(0),
                log_node: 0,
                at: 4,
            })
            .unwrap();
        assert_eq!(
            plan(&state, i64::MAX).iter().map(|(t, _)| t.run).collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn planning_is_idempotent() {
        let state = state_with(
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i"}, {"id": "b", "image": "i"}]}"#,
            2,
        );
        assert_eq!(plan(&state, i64::MAX), plan(&state, i64::MAX));
        assert_eq!(plan(&state, i64::MAX).len(), 4);
    }
}
