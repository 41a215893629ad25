//! The scheduler loop: on every state change or executor (re)connection, keep the connected executors'
//! leases renewed, declare lost the executors whose lease ran out, assign what the plan says is ready and
//! send each connected executor the Starts and Stops it has not yet had on its stream.
//!
//! Every time it stamps or compares comes from its injected [`Clock`]: executor leases are wall-clock
//! times in the log, so the grace after taking over and the renewal cadence are counted on that clock too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gofer_clock::Clock;
use gofer_domain::executors::{ExecutorInfo, Need};
use gofer_domain::{AttemptId, AttemptRef, Command, State, plan};
use gofer_proto::v1::{self, dispatch_response::Kind};
use gofer_state::{LeaseHolder, StateHandle};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// How long an executor lease lasts: an executor not heard from for this long is declared lost, and a
/// scheduler that just took over waits this long before declaring any executor lost.
pub const EXECUTOR_LEASE: Duration = Duration::from_secs(5);
/// How often the connected executors' leases are renewed (one log entry for all of them).
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A heartbeating executor not heard from for this long is not renewed (and gets no new attempts).
const HEARD_WITHIN: Duration = Duration::from_secs(3);

/// What was sent on one executor stream.
pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Result<v1::DispatchResponse, Status>>,
    pub(crate) info: ExecutorInfo,
    /// Whether the executor sends heartbeats; one that does not is renewed while its stream is open.
    heartbeats: bool,
    /// When anything last arrived on the stream, in the scheduler's clock's Unix milliseconds.
    pub(crate) heard: Arc<AtomicI64>,
    started: HashSet<AttemptId>,
    stopped: HashSet<AttemptId>,
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
pub(crate) struct Scheduler {
    pub(crate) state: StateHandle,
    /// The scheduler lease: this scheduler acts only while it holds it, and fences what it commits.
    pub(crate) lease: LeaseHolder,
    pub(crate) executors: Arc<Mutex<HashMap<String, Connection>>>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) clock: Clock,
    /// Runs the executors' streams and the report committer.
    pub(crate) tracker: TaskTracker,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
    /// The lease epoch this scheduler acts in and since when (Unix milliseconds), so that it waits one
    /// executor lease after taking over before it declares an executor lost: the executors need that long
    /// to find it.
    acting_since: Arc<Mutex<Option<(u64, i64)>>>,
    /// When it last renewed the executors' leases (Unix milliseconds).
    last_renewal: Arc<Mutex<Option<i64>>>,
    /// Opens the secrets a Start carries (`secrets.rs`).
    keyring: Arc<gofer_secrets::Keyring>,
    /// Where the API that admits run task tokens is reached, as tasks with `inject_api_token` are told.
    pub(crate) api_host: Arc<str>,
}

impl Scheduler {
    /// A scheduler over `state` that acts while it holds `lease`, on `clock`, spawning on `tracker`, with
    /// no executor connected yet.
    pub(crate) fn new(
        state: StateHandle,
        lease: LeaseHolder,
        clock: Clock,
        keyring: Arc<gofer_secrets::Keyring>,
        tracker: TaskTracker,
    ) -> Self {
        Scheduler {
            state,
            lease,
            executors: Arc::default(),
            wake: Arc::new(Notify::new()),
            clock,
            tracker,
            next_connection: Arc::default(),
            acting_since: Arc::default(),
            last_renewal: Arc::default(),
            keyring,
            api_host: Arc::from(""),
        }
    }

    /// Runs the loop until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.state.subscribe();
        let mut lease = self.lease.watch();
        let mut clock_moved = self.clock.changes();
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
                        // Taking the lease back, even in the same epoch, starts a new grace period:
                        // the executors need a whole lease to find this scheduler again.
                        *self.acting_since.lock().expect("acting_since lock") = None;
                    }
                }
                () = self.wake.notified() => {}
                // Leases run out by the clock: when it jumps, look again at once.
                () = clock_moved.changed() => {}
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
        info: ExecutorInfo,
        heartbeats: bool,
        tx: mpsc::UnboundedSender<Result<v1::DispatchResponse, Status>>,
    ) -> (u64, CancellationToken, Arc<AtomicI64>) {
        let id = self.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let closed = CancellationToken::new();
        let heard = Arc::new(AtomicI64::new(self.clock.now_millis()));
        let executor = info.id.clone();
        let connection = Connection {
            id,
            tx,
            info,
            heartbeats,
            heard: heard.clone(),
            started: HashSet::new(),
            stopped: HashSet::new(),
            closed: closed.clone(),
        };
        self.executors
            .lock()
            .expect("executors lock")
            .insert(executor, connection);
        self.wake.notify_one();
        (id, closed, heard)
    }

    /// Forgets an executor stream, unless a newer one replaced it already.
    pub(crate) fn disconnect(&self, executor: &str, id: u64) {
        let mut executors = self.executors.lock().expect("executors lock");
        if executors.get(executor).is_some_and(|c| c.id == id) {
            executors.remove(executor);
        }
    }

    /// When this scheduler started acting in `epoch`, in Unix milliseconds.
    fn acting_since(&self, epoch: u64, now: i64) -> i64 {
        let mut since = self.acting_since.lock().expect("acting_since lock");
        match *since {
            Some((e, at)) if e == epoch => at,
            _ => {
                *since = Some((epoch, now));
                now
            }
        }
    }

    /// The connected executors heard from recently enough to count as alive, by id.
    fn alive(&self, now: i64) -> HashMap<String, ExecutorInfo> {
        let mut executors = self.executors.lock().expect("executors lock");
        // A heartbeating executor silent for a whole lease is gone: its stream is dropped, so that it
        // reconnects (and is welcomed afresh) if it is still there.
        executors
            .retain(|_, c| !c.heartbeats || now - c.heard.load(Ordering::Relaxed) < EXECUTOR_LEASE.as_millis() as i64);
        executors
            .iter()
            .filter(|(_, c)| !c.heartbeats || now - c.heard.load(Ordering::Relaxed) < HEARD_WITHIN.as_millis() as i64)
            .map(|(id, c)| (id.clone(), c.info.clone()))
            .collect()
    }

    /// Renews the leases of the executors alive, at most once per [`RENEW_EVERY`], in one command.
    async fn renew_executors(&self, alive: &HashMap<String, ExecutorInfo>, now: i64) {
        // A clock that went back since the last renewal renews at once rather than wait for it to return.
        let renewed_lately = |at: &i64| (*at..at + RENEW_EVERY.as_millis() as i64).contains(&now);
        if alive.is_empty()
            || self
                .last_renewal
                .lock()
                .expect("last_renewal lock")
                .is_some_and(|at| renewed_lately(&at))
        {
            return;
        }
        let command = Command::RenewExecutors {
            executors: alive.values().cloned().collect(),
            ttl_millis: EXECUTOR_LEASE.as_millis() as u64,
            at: now,
        };
        match self.lease.propose(command).await {
            Ok(_) => *self.last_renewal.lock().expect("last_renewal lock") = Some(now),
            Err(err) => tracing::warn!(%err, "could not renew the executors' leases"),
        }
    }

    /// Declares lost every executor whose lease ran out and that is not connected and alive here, once
    /// this scheduler has acted for a whole executor lease.
    async fn expire_executors(&self, since: i64, alive: &HashMap<String, ExecutorInfo>, now: i64) {
        if now - since < EXECUTOR_LEASE.as_millis() as i64 {
            return;
        }
        let expired: Vec<String> = self.state.read(|s| {
            s.executors
                .expired(now)
                .filter(|id| !alive.contains_key(*id))
                .map(str::to_string)
                .collect()
        });
        for executor in expired {
            let command = Command::ExecutorLost {
                executor: executor.clone(),
                at: now,
            };
            match self.lease.propose(command).await {
                Ok(_) => {
                    tracing::warn!(%executor, "executor lost: its lease ran out; its attempts are LOST");
                    // Should its stream still be open, it ends: the executor reconnects, and the welcome,
                    // which no longer lists its LOST attempts, makes it stop them.
                    self.executors.lock().expect("executors lock").remove(&executor);
                }
                Err(err) => tracing::debug!(%err, %executor, "could not declare an executor lost"),
            }
        }
    }

    async fn reconcile(&self) {
        // One scheduler acts per cluster: the lease holder, and the fence refuses it once it is not.
        let Some(epoch) = self.lease.epoch() else { return };
        let now = self.clock.now_millis();
        let since = self.acting_since(epoch, now);
        let alive = self.alive(now);
        self.renew_executors(&alive, now).await;
        self.expire_executors(since, &alive, now).await;
        let now = self.clock.now_millis();
        // Each ready attempt with the labels its task requires of an executor and what it takes of one.
        let planned = self.state.read(|s| {
            plan(s, now)
                .into_iter()
                .map(|(target, attempt)| {
                    let (labels, need) = s
                        .run(&target.namespace, &target.pipeline, target.run)
                        .ok()
                        .and_then(|(_, config)| config.tasks.iter().find(|t| t.id == target.task))
                        .map(|t| (t.executor_labels.clone(), Need::of(t, &s.task_limits)))
                        .unwrap_or_default();
                    (target, attempt, labels, need)
                })
                .collect::<Vec<_>>()
        });
        if !planned.is_empty() {
            let mut load = self.load(&alive);
            let mut commands = Vec::new();
            for (target, attempt, labels, need) in planned {
                if commands.len() == MAX_ASSIGNMENTS_PER_ENTRY {
                    break;
                }
                let Some(executor) = pick_executor(&mut load, &alive, &labels, need) else {
                    // No room anywhere for a task that asks for nothing: nothing else fits either. A
                    // task with labels, cpu or memory that fits nowhere: a smaller or other one may.
                    if labels.is_empty() && need == Need::default() {
                        break;
                    }
                    continue;
                };
                commands.push(Command::AssignAttempt {
                    target,
                    attempt,
                    executor,
                    node: self.state.log_keeper(),
                    scheduler: self.lease.holder().to_string(),
                    epoch,
                    at: now,
                });
            }
            // Every assignment of this pass in one log entry; apply checks each on its own.
            let count = commands.len();
            if count > 0 {
                match self.lease.propose(Command::Batch { commands }).await {
                    Ok(_) => tracing::debug!(count, "attempts assigned"),
                    Err(gofer_state::Error::Rejected(err)) => tracing::debug!(%err, "assignments refused"),
                    Err(err) => {
                        tracing::warn!(%err, "could not commit assignments; will retry on the next change");
                        return;
                    }
                }
            }
        }
        self.send_pending();
    }

    /// The live attempts of each alive executor that the log lets us give attempts to, and what they take
    /// of its size.
    fn load(&self, alive: &HashMap<String, ExecutorInfo>) -> HashMap<String, (usize, Need)> {
        self.state.read(|s| {
            let mut load: HashMap<String, (usize, Need)> = alive
                .keys()
                .filter(|e| s.executors.may_assign(e))
                .map(|e| (e.clone(), (0, Need::default())))
                .collect();
            for (_, _, record, run) in s.active_runs() {
                let config = record.version(run.version).expect("a run's version exists");
                for (task, spec) in run.tasks.iter().zip(&config.tasks) {
                    if let Some(a) = &task.assignment
                        && let Some((count, used)) = load.get_mut(&a.executor)
                    {
                        *count += 1;
                        *used = used.plus(Need::of(spec, &s.task_limits));
                    }
                }
            }
            load
        })
    }

    /// Sends every connected executor the Starts and Stops for its live attempts that its current stream
    /// has not carried yet.
    fn send_pending(&self) {
        let mut executors = self.executors.lock().expect("executors lock");
        // Only the attempts a connected executor has not had on its stream are built into messages.
        let live = self.state.read(|s| {
            let mut live = live_attempts_where(s, |executor, id, cancel| {
                executors.get(executor).is_some_and(|c| {
                    if cancel {
                        !c.stopped.contains(id)
                    } else {
                        !c.started.contains(id)
                    }
                })
            });
            // Secrets are opened only for the Starts about to be sent, never for a Stop.
            for attempt in live.iter_mut().filter(|a| !a.cancel_requested) {
                crate::secrets::resolve(s, &self.keyring, &self.api_host, &attempt.id, &mut attempt.start);
            }
            live
        });
        for attempt in live {
            let Some(connection) = executors.get_mut(&attempt.executor) else {
                continue;
            };
            let message = if attempt.cancel_requested {
                if !connection.stopped.insert(attempt.id.clone()) {
                    continue;
                }
                Kind::Stop(v1::StopAttempt {
                    key: Some(v1::AttemptKey::from(&attempt.id)),
                    grace_millis: i64::try_from(attempt.cancel_grace_ms).unwrap_or(i64::MAX),
                })
            } else {
                if !connection.started.insert(attempt.id) {
                    continue;
                }
                Kind::Start(attempt.start)
            };
            // A closed stream is cleaned up by its handler; the attempt is re-sent on the next stream.
            let _ = connection.tx.send(Ok(v1::DispatchResponse { kind: Some(message) }));
        }
    }
}

/// The most assignments committed in one log entry.
const MAX_ASSIGNMENTS_PER_ENTRY: usize = 1024;

/// The executor with the fewest live attempts among those in `load` (alive and assignable) that carries
/// every label in `required` and has room for one more attempt taking `need` (its capacity, and its size
/// against what its live attempts take); counts the attempt against it.
fn pick_executor(
    load: &mut HashMap<String, (usize, Need)>,
    alive: &HashMap<String, ExecutorInfo>,
    required: &std::collections::BTreeMap<String, String>,
    need: Need,
) -> Option<String> {
    let (id, (count, used)) = load
        .iter_mut()
        .filter(|(id, (count, used))| {
            alive.get(*id).is_some_and(|info| {
                (info.capacity == 0 || *count < info.capacity as usize)
                    && info.has_labels(required)
                    && need.fits(*used, info.millicpus, info.memory_bytes)
            })
        })
        .min_by_key(|(id, (count, _))| (*count, (*id).clone()))?;
    *count += 1;
    *used = used.plus(need);
    Some(id.clone())
}

/// One assigned attempt that has not finished.
pub(crate) struct LiveAttempt {
    pub(crate) executor: String,
    pub(crate) id: AttemptId,
    pub(crate) cancel_requested: bool,
    pub(crate) cancel_grace_ms: u64,
    pub(crate) start: v1::StartAttempt,
}

/// A task's env: its own, plus the run's parameters under their names and its trigger's parameters as
/// `GOFER_PARAM_<NAME>` (upper case, with every character that is not a letter or digit as `_`); the
/// task's own env wins.
fn task_env(
    own: &std::collections::BTreeMap<String, String>,
    parameters: &std::collections::BTreeMap<String, String>,
    trigger: Option<&gofer_domain::triggers::Trigger>,
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = own.clone().into_iter().collect();
    for (name, value) in parameters {
        env.entry(name.clone()).or_insert_with(|| value.clone());
    }
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
    live_attempts_where(state, |_, _, _| true)
}

/// The assigned, unfinished attempts that `want` (executor, attempt, cancel requested) picks.
fn live_attempts_where(state: &State, mut want: impl FnMut(&str, &AttemptId, bool) -> bool) -> Vec<LiveAttempt> {
    let mut out = Vec::new();
    let limits = &state.task_limits;
    for (namespace, pipeline, record, run) in state.active_runs() {
        let config = record.version(run.version).expect("a run's version exists");
        for (index, task) in run.tasks.iter().enumerate() {
            let Some(assignment) = &task.assignment else { continue };
            let id = AttemptId::new(
                AttemptRef {
                    namespace: namespace.to_string(),
                    pipeline: pipeline.to_string(),
                    run: run.id,
                    task: task.task.clone(),
                },
                task.attempt,
            );
            if !want(&assignment.executor, &id, run.cancel_requested) {
                continue;
            }
            let spec = &config.tasks[index];
            out.push(LiveAttempt {
                executor: assignment.executor.clone(),
                start: v1::StartAttempt {
                    key: Some(v1::AttemptKey::from(&id)),
                    image: spec.image.clone(),
                    command: spec.command.clone(),
                    env: task_env(&spec.env, &run.parameters, run.trigger.as_ref()),
                    already_started: assignment.started,
                    // The cluster's defaults and ceilings apply here, where every Start is made, so a
                    // re-sent Start carries what the first did while the limits are unchanged.
                    timeout_millis: limits.timeout_ms_for(spec).unwrap_or(0),
                    nano_cpus: limits.cpu_for(spec).map_or(0, |c| c.nano_cpus()),
                    memory_bytes: limits
                        .memory_bytes_for(spec)
                        .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                    workdir: spec.workdir.clone(),
                    pipeline_version: run.version,
                    user: spec.user.clone(),
                    // Filled in only as the Start is sent (`secrets.rs`).
                    ..Default::default()
                },
                id,
                cancel_requested: run.cancel_requested,
                cancel_grace_ms: run.cancel_grace_ms,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gofer_domain::triggers::Trigger;

    use std::collections::HashMap;

    use gofer_domain::executors::{ExecutorInfo, Need};

    use super::{pick_executor, task_env};

    #[test]
    fn attempts_go_to_the_least_loaded_executor_with_room_and_the_labels_required() {
        let info = |id: &str, capacity: u32, zone: &str| {
            let labels = BTreeMap::from([("zone".to_string(), zone.to_string())]);
            let info = ExecutorInfo {
                id: id.into(),
                capacity,
                labels,
                ..Default::default()
            };
            (id.to_string(), info)
        };
        let alive: HashMap<_, _> = [info("a1", 2, "a"), info("a2", 0, "a"), info("b1", 1, "b")].into();
        let mut load: HashMap<String, (usize, Need)> = [("a1", 0), ("a2", 3), ("b1", 0)]
            .map(|(id, n)| (id.to_string(), (n, Need::default())))
            .into();
        let zone = |z: &str| BTreeMap::from([("zone".to_string(), z.to_string())]);
        let none = Need::default();
        // Least loaded first, ties by name; a full executor is passed over.
        assert_eq!(
            pick_executor(&mut load, &alive, &zone("a"), none).as_deref(),
            Some("a1")
        );
        assert_eq!(
            pick_executor(&mut load, &alive, &zone("a"), none).as_deref(),
            Some("a1")
        );
        assert_eq!(
            pick_executor(&mut load, &alive, &zone("a"), none).as_deref(),
            Some("a2"),
            "a1 is full"
        );
        assert_eq!(
            pick_executor(&mut load, &alive, &zone("b"), none).as_deref(),
            Some("b1")
        );
        assert_eq!(pick_executor(&mut load, &alive, &zone("b"), none), None, "b1 is full");
        assert_eq!(
            pick_executor(&mut load, &alive, &zone("c"), none),
            None,
            "no executor carries zone=c"
        );
        assert_eq!(
            pick_executor(&mut load, &alive, &BTreeMap::new(), none).as_deref(),
            Some("a2")
        );
    }

    #[test]
    fn the_cpu_and_memory_of_the_attempts_an_executor_runs_add_up_to_its_size_at_most() {
        let sized = |id: &str, millicpus: u64, memory_bytes: u64| {
            let info = ExecutorInfo {
                id: id.into(),
                millicpus,
                memory_bytes,
                ..Default::default()
            };
            (id.to_string(), info)
        };
        // Two CPUs and 1 GiB; and one whose size is unknown, which counts none.
        let alive: HashMap<_, _> = [sized("small", 2_000, 1 << 30), sized("unsized", 0, 0)].into();
        let mut load: HashMap<String, (usize, Need)> = [("small", 0), ("unsized", 5)]
            .map(|(id, n)| (id.to_string(), (n, Need::default())))
            .into();
        let need = |millicpus, memory_bytes| Need {
            millicpus,
            memory_bytes,
        };
        let any = BTreeMap::new();
        assert_eq!(
            pick_executor(&mut load, &alive, &any, need(1_500, 0)).as_deref(),
            Some("small")
        );
        // Half a CPU left on `small`: one more CPU goes to the unsized executor, half a CPU still fits.
        assert_eq!(
            pick_executor(&mut load, &alive, &any, need(1_000, 0)).as_deref(),
            Some("unsized")
        );
        load.get_mut("unsized").expect("unsized").0 = 9;
        assert_eq!(
            pick_executor(&mut load, &alive, &any, need(500, 1 << 29)).as_deref(),
            Some("small")
        );
        assert_eq!(load["small"].1, need(2_000, 1 << 29));
        load.remove("unsized");
        assert_eq!(pick_executor(&mut load, &alive, &any, need(1, 0)), None, "no CPU left");
    }

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
        let parameters = BTreeMap::from([
            ("K".to_string(), "from the run".to_string()),
            ("DEPLOY".to_string(), "blue".to_string()),
        ]);
        let env = task_env(&own, &parameters, Some(&trigger));
        assert_eq!(env["K"], "V", "the task's own env wins over a run parameter");
        assert_eq!(env["DEPLOY"], "blue");
        assert_eq!(env["GOFER_PARAM_REPOSITORY_FULL_NAME"], "o/r");
        assert_eq!(env["GOFER_PARAM_REF"], "mine", "the task's own env wins");
        assert_eq!(task_env(&own, &BTreeMap::new(), None).len(), 2);
    }

    #[test]
    fn a_start_carries_the_user_and_the_clusters_defaults_and_ceilings() {
        use gofer_domain::limits::{Cpus, TaskLimits};
        use gofer_domain::{AttemptRef, Command, PipelineConfig, State};
        let mut state = State::default();
        let json = r#"{"id": "p", "tasks": [
            {"id": "a", "image": "i", "user": "1000:1000"},
            {"id": "b", "image": "i", "memory": "64MiB", "timeout": "5m"}]}"#;
        let commands = [
            Command::Init {
                cluster_id: "c".into(),
                at: 1,
            },
            Command::RegisterPipeline {
                namespace: "default".into(),
                config: PipelineConfig::from_json(json).unwrap(),
                at: 2,
            },
            Command::StartRun {
                namespace: "default".into(),
                pipeline: "p".into(),
                request_id: String::new(),
                parameters: BTreeMap::new(),
                retry_of: 0,
                at: 3,
            },
            // Set after registration: the defaults reach attempts of versions registered before.
            Command::SetTaskLimits {
                limits: TaskLimits {
                    default_cpu: Some(Cpus(500)),
                    default_memory_bytes: Some(256 << 20),
                    max_timeout_ms: Some(60_000),
                    ..Default::default()
                },
                at: 4,
            },
        ];
        for command in &commands {
            state.apply(command).unwrap();
        }
        for task in ["a", "b"] {
            let target = AttemptRef {
                namespace: "default".into(),
                pipeline: "p".into(),
                run: 1,
                task: task.into(),
            };
            state
                .apply(&Command::AssignAttempt {
                    target,
                    attempt: 1,
                    executor: "e1".into(),
                    node: 1,
                    scheduler: String::new(),
                    epoch: 0,
                    at: 5,
                })
                .unwrap();
        }
        let starts: BTreeMap<String, _> = super::live_attempts(&state)
            .into_iter()
            .map(|live| (live.id.task.task.clone(), live.start))
            .collect();
        let (a, b) = (&starts["a"], &starts["b"]);
        assert_eq!(a.user, "1000:1000");
        assert_eq!(
            (a.nano_cpus, a.memory_bytes, a.timeout_millis),
            (500_000_000, 256 << 20, 60_000)
        );
        assert_eq!(b.user, "");
        // Its own memory; its own timeout cut to the ceiling.
        assert_eq!(
            (b.nano_cpus, b.memory_bytes, b.timeout_millis),
            (500_000_000, 64 << 20, 60_000)
        );
    }
}
