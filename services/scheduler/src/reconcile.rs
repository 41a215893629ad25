//! The scheduler loop: on every state change or executor (re)connection, assign what the plan says is
//! ready and send each connected executor the Starts and Stops it has not yet had on its stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gofer_domain::{AttemptRef, Command, State, plan};
use gofer_proto::now_millis;
use gofer_proto::v1::{self, dispatch_response::Kind};
use gofer_state::{LeaseHolder, StateHandle};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What was sent on one executor stream.
pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Result<v1::DispatchResponse, Status>>,
    started: HashSet<(AttemptRef, u32)>,
    stopped: HashSet<(AttemptRef, u32)>,
    /// Cancelled when the connection is dropped, to end the stream's handler.
    closed: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// The scheduler of one node. Clone it freely; all clones share the executors' connections.
#[derive(Clone)]
pub struct Scheduler {
    pub(crate) state: StateHandle,
    /// The scheduler lease: this scheduler acts only while it holds it, and fences what it commits.
    pub(crate) lease: LeaseHolder,
    pub(crate) executors: Arc<Mutex<HashMap<String, Connection>>>,
    pub(crate) wake: Arc<Notify>,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
}

impl Scheduler {
    /// A scheduler over `state` that acts while it holds `lease`, with no executor connected yet.
    pub fn new(state: StateHandle, lease: LeaseHolder) -> Self {
        Scheduler {
            state,
            lease,
            executors: Arc::default(),
            wake: Arc::new(Notify::new()),
            next_connection: Arc::default(),
        }
    }

    /// Runs the loop until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.state.subscribe();
        let mut lease = self.lease.watch();
        loop {
            self.reconcile().await;
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Dropping the executors' senders ends their streams, so the server can drain.
                    self.executors.lock().expect("executors lock").clear();
                    return;
                }
                changed = changes.changed() => if changed.is_err() { return },
                changed = lease.changed() => {
                    if changed.is_err() { return }
                    if lease.borrow_and_update().is_none() {
                        // Standing by: the executors go and find the scheduler that holds the lease.
                        self.executors.lock().expect("executors lock").clear();
                    }
                }
                () = self.wake.notified() => {}
                // A safety net, not a synchroniser: an assignment that failed to commit is retried even
                // when nothing else changes.
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Registers a new executor stream, replacing an older stream of the same executor. Returns its id and
    /// a token cancelled when the scheduler drops it.
    pub(crate) fn connect(
        &self,
        executor: &str,
        tx: mpsc::UnboundedSender<Result<v1::DispatchResponse, Status>>,
    ) -> (u64, CancellationToken) {
        let id = self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let closed = CancellationToken::new();
        let connection = Connection {
            id,
            tx,
            started: HashSet::new(),
            stopped: HashSet::new(),
            closed: closed.clone(),
        };
        self.executors
            .lock()
            .expect("executors lock")
            .insert(executor.to_string(), connection);
        self.wake.notify_one();
        (id, closed)
    }

    /// Forgets an executor stream, unless a newer one replaced it already.
    pub(crate) fn disconnect(&self, executor: &str, id: u64) {
        let mut executors = self.executors.lock().expect("executors lock");
        if executors.get(executor).is_some_and(|c| c.id == id) {
            executors.remove(executor);
        }
    }

    async fn reconcile(&self) {
        // One scheduler acts per cluster: the lease holder, and the fence refuses it once it is not.
        let Some(epoch) = self.lease.epoch() else { return };
        let planned = self.state.read(plan);
        for (target, attempt) in planned {
            let Some(executor) = self.pick_executor() else { break };
            let command = Command::AssignAttempt {
                target: target.clone(),
                attempt,
                executor: executor.clone(),
                node: self.state.log_keeper(),
                scheduler: self.lease.holder().to_string(),
                epoch,
                at: now_millis(),
            };
            match self.lease.propose(command).await {
                Ok(_) => tracing::debug!(run = target.run, task = %target.task, %executor, "attempt assigned"),
                Err(gofer_state::Error::Rejected(err)) => tracing::debug!(%err, "assignment refused"),
                Err(err) => {
                    tracing::warn!(%err, "could not commit an assignment; will retry on the next change");
                    return;
                }
            }
        }
        self.send_pending();
    }

    /// The connected executor with the fewest live attempts.
    fn pick_executor(&self) -> Option<String> {
        let executors = self.executors.lock().expect("executors lock");
        if executors.is_empty() {
            return None;
        }
        let load = self.state.read(|s| {
            let mut load: HashMap<String, usize> = HashMap::new();
            for (_, _, _, run) in s.active_runs() {
                for task in &run.tasks {
                    if let Some(a) = &task.assignment {
                        *load.entry(a.executor.clone()).or_default() += 1;
                    }
                }
            }
            load
        });
        executors
            .keys()
            .min_by_key(|e| (load.get(*e).copied().unwrap_or(0), (*e).clone()))
            .cloned()
    }

    /// Sends every connected executor the Starts and Stops for its live attempts that its current stream
    /// has not carried yet.
    fn send_pending(&self) {
        let live = self.state.read(live_attempts);
        let mut executors = self.executors.lock().expect("executors lock");
        for attempt in live {
            let Some(connection) = executors.get_mut(&attempt.executor) else {
                continue;
            };
            let key = (attempt.target.clone(), attempt.attempt);
            let message = if attempt.cancel_requested {
                if !connection.stopped.insert(key) {
                    continue;
                }
                Kind::Stop(v1::StopAttempt {
                    key: Some(gofer_proto::attempt_key(&attempt.target, attempt.attempt)),
                })
            } else {
                if !connection.started.insert(key) {
                    continue;
                }
                Kind::Start(attempt.start)
            };
            // A closed stream is cleaned up by its handler; the attempt is re-sent on the next stream.
            let _ = connection.tx.send(Ok(v1::DispatchResponse { kind: Some(message) }));
        }
    }
}

/// One assigned attempt that has not finished.
pub(crate) struct LiveAttempt {
    pub(crate) executor: String,
    pub(crate) target: AttemptRef,
    pub(crate) attempt: u32,
    pub(crate) cancel_requested: bool,
    pub(crate) start: v1::StartAttempt,
}

/// A task's env: its own, plus the run's trigger parameters as `GOFER_PARAM_<NAME>` (upper case, with every
/// character that is not a letter or digit as `_`).
fn task_env(
    own: &std::collections::BTreeMap<String, String>,
    trigger: Option<&gofer_domain::triggers::Trigger>,
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = own.clone().into_iter().collect();
    for (name, value) in trigger.map(|t| &t.parameters).into_iter().flatten() {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.entry(format!("GOFER_PARAM_{name}"))
            .or_insert_with(|| value.clone());
    }
    env
}

/// Every assigned, unfinished attempt, with the Start message that runs it.
pub(crate) fn live_attempts(state: &State) -> Vec<LiveAttempt> {
    let mut out = Vec::new();
    for (namespace, pipeline, record, run) in state.active_runs() {
        let config = record.version(run.version).expect("a run's version exists");
        for (index, task) in run.tasks.iter().enumerate() {
            let Some(assignment) = &task.assignment else { continue };
            let target = AttemptRef {
                namespace: namespace.to_string(),
                pipeline: pipeline.to_string(),
                run: run.id,
                task: task.task.clone(),
            };
            let spec = &config.tasks[index];
            out.push(LiveAttempt {
                executor: assignment.executor.clone(),
                start: v1::StartAttempt {
                    key: Some(gofer_proto::attempt_key(&target, task.attempt)),
                    image: spec.image.clone(),
                    command: spec.command.clone(),
                    env: task_env(&spec.env, run.trigger.as_ref()),
                    already_started: assignment.started,
                },
                target,
                attempt: task.attempt,
                cancel_requested: run.cancel_requested,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gofer_domain::triggers::Trigger;

    use super::task_env;

    #[test]
    fn trigger_parameters_become_gofer_param_variables_without_overriding_the_task() {
        let own = BTreeMap::from([
            ("K".to_string(), "V".to_string()),
            ("GOFER_PARAM_REF".to_string(), "mine".to_string()),
        ]);
        let trigger = Trigger {
            extension: "webhook".into(),
            subscription: "gh".into(),
            idempotency_key: "k".into(),
            scheduled_at: 0,
            delivery: "d".into(),
            parameters: BTreeMap::from([
                ("repository.full_name".to_string(), "o/r".to_string()),
                ("ref".to_string(), "main".to_string()),
            ]),
        };
        let env = task_env(&own, Some(&trigger));
        assert_eq!(env["K"], "V");
        assert_eq!(env["GOFER_PARAM_REPOSITORY_FULL_NAME"], "o/r");
        assert_eq!(env["GOFER_PARAM_REF"], "mine", "the task's own env wins");
        assert_eq!(task_env(&own, None).len(), 2);
    }
}
