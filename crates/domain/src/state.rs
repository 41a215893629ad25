//! The replicated state machine: namespaces, pipelines and their versions, runs and task executions,
//! and the one function that changes them, [`State::apply`].
//!
//! Apply is deterministic: it reads no clock and draws no random number; the proposer puts times and the
//! cluster id inside the [`Command`]. A refused command changes nothing and returns an [`Error`], which is
//! itself the deterministic result of that log entry. The DAG rules live here too: when a task execution
//! ends, apply skips the dependents whose condition can no longer be met and ends the run when every task
//! execution has ended, so a run's fate never depends on which scheduler looked at it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::events::EventLog;
use crate::executors::{ExecutorInfo, Executors};
use crate::lease::{Lease, Leases, Role};
use crate::triggers::{ExtensionRecord, Fire, FireOutcome, Registration, Subscription, Trigger};
use crate::{Condition, Error, PipelineConfig, validate_id, validate_request_id};

/// The namespace that exists from the start.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A run's place in PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    /// The state's name as users see it: `SUCCEEDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "PENDING",
            RunState::Running => "RUNNING",
            RunState::Succeeded => "SUCCEEDED",
            RunState::Failed => "FAILED",
            RunState::Cancelled => "CANCELLED",
        }
    }

    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

/// A task execution's place in PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED, or SKIPPED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl TaskState {
    /// Whether the task execution has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }

    /// The state's name as users see it: `SUCCEEDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Failed => "FAILED",
            TaskState::Cancelled => "CANCELLED",
            TaskState::Skipped => "SKIPPED",
        }
    }

    /// Whether a parent in this state meets `condition`. Only meaningful for terminal states.
    fn meets(self, condition: Condition) -> bool {
        match condition {
            Condition::Any => self.is_terminal(),
            Condition::Success => self == TaskState::Succeeded,
            Condition::Failure => self == TaskState::Failed,
        }
    }
}

/// Names one task execution: namespace, pipeline, run and task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub namespace: String,
    pub pipeline: String,
    pub run: u64,
    pub task: String,
}

/// Which executor an attempt was given to, committed before the executor is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub executor: String,
    /// Set once the executor reported the attempt's container running.
    pub started: bool,
    /// The scheduler that assigned it and the epoch of its lease; empty and 0 before leases existed.
    #[serde(default)]
    pub scheduler: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub assigned_at: i64,
    /// When the executor reported the container running; 0 before.
    #[serde(default)]
    pub started_at: i64,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptState {
    Succeeded,
    Failed,
    /// Its executor stopped heartbeating and its lease ran out: nobody knows how it ended.
    Lost,
    Cancelled,
}

impl AttemptState {
    /// The state's name as users see it: `LOST`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Succeeded => "SUCCEEDED",
            AttemptState::Failed => "FAILED",
            AttemptState::Lost => "LOST",
            AttemptState::Cancelled => "CANCELLED",
        }
    }
}

/// One ended attempt of a task execution, kept so that every retry has its reason on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub executor: String,
    pub scheduler: String,
    pub scheduler_epoch: u64,
    pub assigned_at: i64,
    /// 0 if it never reported running.
    pub started_at: i64,
    pub ended_at: i64,
    pub state: AttemptState,
    pub exit_code: Option<i64>,
    pub reason: String,
    /// Whether another attempt followed because of this one.
    pub retried: bool,
    /// What its executor reported after the attempt had been declared LOST (for example that it killed
    /// the container when it came back); empty if nothing.
    #[serde(default)]
    pub late_report: String,
}

/// One task inside one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskExecution {
    pub task: String,
    pub state: TaskState,
    pub reason: String,
    /// The current attempt, counting from 1; 0 before the first assignment.
    pub attempt: u32,
    pub assignment: Option<Assignment>,
    pub exit_code: Option<i64>,
    pub started_at: i64,
    pub ended_at: i64,
    /// The state node whose scheduler dispatched the current attempt, and so keeps its logs; 0 if none.
    #[serde(default)]
    pub log_node: u64,
    /// Who ran the current attempt, and which scheduler assigned it in which lease epoch; kept after it
    /// ends.
    #[serde(default)]
    pub executor: String,
    #[serde(default)]
    pub scheduler: String,
    #[serde(default)]
    pub scheduler_epoch: u64,
    /// A retry waits until this instant (Unix milliseconds) before it is assigned; 0 for no wait.
    #[serde(default)]
    pub not_before: i64,
    /// Every ended attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
}

/// One execution of a pipeline version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub version: u64,
    pub state: RunState,
    pub reason: String,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub started_at: i64,
    pub ended_at: i64,
    /// One per task, in the pipeline version's task order.
    pub tasks: Vec<TaskExecution>,
    /// What fired the run; `None` for a run started by hand.
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// The client's request id it was started with, if any.
    #[serde(default)]
    pub request_id: String,
    /// The parameters it was started with: every task gets them as env (its own env wins).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The run this one retries (same version and parameters), or 0.
    #[serde(default)]
    pub retry_of: u64,
    /// Once cancelled: how long its running containers get between SIGTERM and SIGKILL.
    #[serde(default)]
    pub cancel_grace_ms: u64,
}

/// A pipeline: its versions (index 0 is version 1) and its runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub created_at: i64,
    pub updated_at: i64,
    pub versions: Vec<PipelineConfig>,
    pub runs: BTreeMap<u64, Run>,
    /// The id the next run gets; ids are never reused.
    pub next_run_id: u64,
    /// The pipeline's links to extensions, by label.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, Subscription>,
    /// The idempotency keys of deleted subscriptions, by label, restored if the label is used again.
    #[serde(default)]
    pub retired_keys: BTreeMap<String, VecDeque<(String, FireOutcome)>>,
    /// The run each client request id started, kept as long as the pipeline keeps its runs.
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
}

impl PipelineRecord {
    /// Starts a run of the newest version and returns its id.
    pub(crate) fn start_run(&mut self, at: i64, trigger: Option<Trigger>) -> u64 {
        let version = self.versions.len() as u64;
        self.start_run_of(version, at, trigger)
    }

    /// Prunes the oldest ended runs beyond what the newest version keeps, with their request ids; runs
    /// that have not ended are never pruned. Returns how many went.
    fn prune_runs(&mut self) -> usize {
        let keep = self.latest().runs_kept();
        let excess = self.runs.len().saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        let pruned: Vec<u64> = self
            .runs
            .values()
            .filter(|r| r.state.is_terminal())
            .map(|r| r.id)
            .take(excess)
            .collect();
        for id in &pruned {
            self.runs.remove(id);
        }
        let gone: std::collections::BTreeSet<u64> = pruned.iter().copied().collect();
        self.requests.retain(|_, run| !gone.contains(run));
        pruned.len()
    }

    /// Starts a run of `version` (which exists) and returns its id, pruning old runs beyond the limit.
    fn start_run_of(&mut self, version: u64, at: i64, trigger: Option<Trigger>) -> u64 {
        let id = self.next_run_id;
        let tasks = self
            .version(version)
            .expect("the version exists")
            .tasks
            .iter()
            .map(|t| TaskExecution {
                task: t.id.clone(),
                state: TaskState::Pending,
                reason: String::new(),
                attempt: 0,
                assignment: None,
                exit_code: None,
                started_at: 0,
                ended_at: 0,
                log_node: 0,
                executor: String::new(),
                scheduler: String::new(),
                scheduler_epoch: 0,
                not_before: 0,
                attempts: Vec::new(),
            })
            .collect();
        let run = Run {
            id,
            version,
            state: RunState::Pending,
            reason: String::new(),
            cancel_requested: false,
            created_at: at,
            started_at: 0,
            ended_at: 0,
            tasks,
            trigger,
            request_id: String::new(),
            parameters: BTreeMap::new(),
            retry_of: 0,
            cancel_grace_ms: 0,
        };
        self.runs.insert(id, run);
        self.next_run_id += 1;
        self.prune_runs();
        id
    }

    /// Cancels a run: its unassigned tasks end CANCELLED now, assigned ones when their executor reports.
    /// Cancelling a cancelled run is a no-op; a run that ended otherwise cannot be cancelled.
    pub(crate) fn cancel_run(&mut self, id: u64, reason: &str, at: i64) -> Result<(), Error> {
        let run = self
            .runs
            .get_mut(&id)
            .ok_or_else(|| Error::NotFound(format!("run {id} of this pipeline")))?;
        if run.state.is_terminal() {
            if run.state == RunState::Cancelled {
                return Ok(());
            }
            return Err(Error::FailedPrecondition(format!(
                "run {} already ended {}",
                run.id,
                run.state.as_str()
            )));
        }
        if run.cancel_requested {
            return Ok(());
        }
        run.cancel_requested = true;
        run.reason = reason.to_string();
        for task in &mut run.tasks {
            if task.state == TaskState::Pending && task.assignment.is_none() {
                end_task(task, TaskState::Cancelled, reason.to_string(), at);
            }
        }
        let config = self
            .versions
            .get(run.version as usize - 1)
            .expect("a run's version exists");
        settle(run, config, at);
        Ok(())
    }

    /// The newest version's config.
    pub fn latest(&self) -> &PipelineConfig {
        self.versions.last().expect("a pipeline record always has a version")
    }

    /// The config of `version`, counting from 1.
    pub fn version(&self, version: u64) -> Option<&PipelineConfig> {
        usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| self.versions.get(i))
    }
}

/// A namespace and its pipelines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub created_at: i64,
    pub pipelines: BTreeMap<String, PipelineRecord>,
}

/// How an attempt ended, as its executor reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The container ran and exited with this code.
    Exited(i64),
    /// The attempt could not run or was lost; the reason says why.
    Error(String),
    /// The container was stopped because the run was cancelled.
    Stopped,
    /// Its executor was declared lost; the reason says which and why.
    Lost(String),
}

/// A change to the state, as it travels through the replicated log.
///
/// This is a persisted format: add variants and defaulted fields, never change or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// The first command of a cluster: names it and makes the `default` namespace. Later ones are refused.
    Init {
        cluster_id: String,
        at: i64,
    },
    CreateNamespace {
        namespace: String,
        at: i64,
    },
    /// Stores `config` as the pipeline's next version (creating the pipeline at version 1).
    RegisterPipeline {
        namespace: String,
        config: PipelineConfig,
        at: i64,
    },
    /// Starts a run of the pipeline's newest version. With a `request_id` the pipeline has seen before, it
    /// starts nothing and answers with that request's run, so a client may retry it safely.
    StartRun {
        namespace: String,
        pipeline: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        request_id: String,
        /// Given to every task as env, under these names (the task's own env wins).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        parameters: BTreeMap<String, String>,
        /// Runs the version and parameters of this earlier run instead of the newest version and
        /// `parameters`; 0 for none.
        #[serde(default, skip_serializing_if = "is_zero")]
        retry_of: u64,
        at: i64,
    },
    CancelRun {
        namespace: String,
        pipeline: String,
        run: u64,
        reason: String,
        /// How long running containers get between SIGTERM and SIGKILL; 0 for [`DEFAULT_CANCEL_GRACE_MS`].
        #[serde(default, skip_serializing_if = "is_zero")]
        grace_millis: u64,
        at: i64,
    },
    /// Gives the next attempt of a PENDING task execution to an executor.
    AssignAttempt {
        target: AttemptRef,
        attempt: u32,
        executor: String,
        /// The state node whose scheduler assigns it (it receives the attempt's logs).
        #[serde(default)]
        node: u64,
        /// The assigning scheduler and its lease epoch; a fenced assignment must carry the fence's.
        #[serde(default)]
        scheduler: String,
        #[serde(default)]
        epoch: u64,
        at: i64,
    },
    /// The executor started the attempt's container.
    AttemptStarted {
        target: AttemptRef,
        attempt: u32,
        at: i64,
    },
    /// The attempt ended and its logs are stored.
    AttemptFinished {
        target: AttemptRef,
        attempt: u32,
        outcome: AttemptOutcome,
        /// The state node its logs were stored on, when not the one named at assignment; 0 if that one.
        #[serde(default)]
        log_node: u64,
        at: i64,
    },
    /// Installs an extension that the extension host runs as a container.
    InstallExtension {
        name: String,
        image: String,
        settings: BTreeMap<String, String>,
        at: i64,
    },
    UninstallExtension {
        name: String,
        at: i64,
    },
    /// An extension registered (a built-in one is installed by its first registration).
    RegisterExtension {
        name: String,
        builtin: bool,
        registration: Registration,
        at: i64,
    },
    CreateSubscription {
        namespace: String,
        pipeline: String,
        label: String,
        extension: String,
        settings: BTreeMap<String, String>,
        at: i64,
    },
    DeleteSubscription {
        namespace: String,
        pipeline: String,
        label: String,
        at: i64,
    },
    /// Fires, applied in order; each has its own outcome. Batched so that many fires at one instant cost
    /// one log entry.
    Fire {
        fires: Vec<Fire>,
        at: i64,
    },
    /// Scheduled instants a trigger skipped without firing (missed beyond its catch-up window).
    SkipFires {
        namespace: String,
        pipeline: String,
        label: String,
        count: u64,
        last_scheduled_at: i64,
        reason: String,
        at: i64,
    },
    /// Takes or renews the lease on `role` for `holder` (see [`crate::lease`]).
    AcquireLease {
        role: Role,
        holder: String,
        ttl_millis: u64,
        /// Where the holder can be reached, recorded on the lease; empty to say nothing.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        address: String,
        at: i64,
    },
    /// Ends `holder`'s lease early, so a standby takes over without waiting for it to expire.
    ReleaseLease {
        role: Role,
        holder: String,
        epoch: u64,
        at: i64,
    },
    /// Registers or renews the executor lease of each of `executors` until `at + ttl_millis` (see
    /// [`crate::executors`]).
    RenewExecutors {
        executors: Vec<ExecutorInfo>,
        ttl_millis: u64,
        at: i64,
    },
    /// Declares an executor whose lease ran out lost: each attempt assigned to it ends LOST, and its
    /// task's retry policy decides whether another attempt follows.
    ExecutorLost {
        executor: String,
        at: i64,
    },
    /// Records what an executor reported about an attempt after it had been declared LOST.
    AttemptReportedLate {
        target: AttemptRef,
        attempt: u32,
        report: String,
        at: i64,
    },
    /// Commands applied one after the other in one log entry, each with its own result: one refused
    /// command does not refuse the others. The scheduler batches its assignments and executor reports so.
    Batch {
        commands: Vec<Command>,
    },
    /// Sets how long the event stream keeps events (see [`crate::events`]).
    SetEventRetention {
        retention_millis: u64,
        at: i64,
    },
    /// A command issued by the holder of `role` in `epoch`: refused, changing nothing, once the epoch has
    /// moved on.
    Fenced {
        role: Role,
        holder: String,
        epoch: u64,
        command: Box<Command>,
    },
}

/// What an applied command produced, beyond the change itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    /// The version a RegisterPipeline made.
    Version(u64),
    /// The id of the run a StartRun made.
    Run(u64),
    /// The id of the run an earlier StartRun with the same request id made; nothing was started.
    ExistingRun(u64),
    /// What each fire of a Fire command did, in order: its outcome, and whether its key was seen before.
    Fired(Vec<Result<(FireOutcome, bool), Error>>),
    /// The lease an AcquireLease granted or renewed.
    Lease(Lease),
    /// What each command of a Batch did, in order.
    Batch(Vec<Result<Applied, Error>>),
}

/// Whether a PENDING task execution may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every parent ended and met its condition.
    Ready,
    /// Some parent has not ended yet.
    Waiting,
    /// A parent ended without meeting its condition; the reason says which.
    Unreachable(String),
}

/// Everything the replicated log holds, applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Set by the first command, `Init`; empty before.
    pub cluster_id: String,
    pub namespaces: BTreeMap<String, NamespaceRecord>,
    /// Installed extensions, by name.
    #[serde(default)]
    pub extensions: BTreeMap<String, ExtensionRecord>,
    /// Who plays the one-at-a-time roles.
    #[serde(default)]
    pub leases: Leases,
    /// The executors and their leases.
    #[serde(default)]
    pub executors: Executors,
    /// The event stream: run and task state changes and trigger decisions (see [`crate::events`]).
    #[serde(default)]
    pub events: EventLog,
}

impl Command {
    /// The time the command carries; none for a batch or a fence, whose commands carry their own.
    pub fn at(&self) -> Option<i64> {
        match self {
            Command::Init { at, .. }
            | Command::CreateNamespace { at, .. }
            | Command::RegisterPipeline { at, .. }
            | Command::StartRun { at, .. }
            | Command::CancelRun { at, .. }
            | Command::AssignAttempt { at, .. }
            | Command::AttemptStarted { at, .. }
            | Command::AttemptFinished { at, .. }
            | Command::InstallExtension { at, .. }
            | Command::UninstallExtension { at, .. }
            | Command::RegisterExtension { at, .. }
            | Command::CreateSubscription { at, .. }
            | Command::DeleteSubscription { at, .. }
            | Command::Fire { at, .. }
            | Command::SkipFires { at, .. }
            | Command::AcquireLease { at, .. }
            | Command::ReleaseLease { at, .. }
            | Command::RenewExecutors { at, .. }
            | Command::ExecutorLost { at, .. }
            | Command::AttemptReportedLate { at, .. }
            | Command::SetEventRetention { at, .. } => Some(*at),
            Command::Batch { .. } | Command::Fenced { .. } => None,
        }
    }
}

impl State {
    /// Applies one command, recording what it changed as events. A refused command leaves the state
    /// exactly as it was and records nothing.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Error> {
        let before = self.before(command);
        let applied = self.apply_command(command)?;
        self.record_events(before, command, &applied);
        Ok(applied)
    }

    fn apply_command(&mut self, command: &Command) -> Result<Applied, Error> {
        match command {
            Command::Init { cluster_id, at } => {
                if !self.cluster_id.is_empty() {
                    return Err(Error::FailedPrecondition("cluster is already initialized".into()));
                }
                self.cluster_id = cluster_id.clone();
                self.namespaces.insert(
                    DEFAULT_NAMESPACE.to_string(),
                    NamespaceRecord {
                        created_at: *at,
                        pipelines: BTreeMap::new(),
                    },
                );
                Ok(Applied::Done)
            }
            Command::CreateNamespace { namespace, at } => {
                validate_id("id", namespace)?;
                if self.namespaces.contains_key(namespace) {
                    return Err(Error::AlreadyExists(format!("namespace {namespace:?}")));
                }
                self.namespaces.insert(
                    namespace.clone(),
                    NamespaceRecord {
                        created_at: *at,
                        pipelines: BTreeMap::new(),
                    },
                );
                Ok(Applied::Done)
            }
            Command::RegisterPipeline { namespace, config, at } => {
                config.validate()?;
                let ns = self.namespace_mut(namespace)?;
                let record = ns.pipelines.entry(config.id.clone()).or_insert_with(|| PipelineRecord {
                    created_at: *at,
                    updated_at: *at,
                    versions: Vec::new(),
                    runs: BTreeMap::new(),
                    next_run_id: 1,
                    subscriptions: BTreeMap::new(),
                    retired_keys: BTreeMap::new(),
                    requests: BTreeMap::new(),
                });
                record.versions.push(config.clone());
                record.updated_at = *at;
                Ok(Applied::Version(record.versions.len() as u64))
            }
            Command::StartRun {
                namespace,
                pipeline,
                request_id,
                parameters,
                retry_of,
                at,
            } => {
                if !request_id.is_empty() {
                    validate_request_id("request_id", request_id)?;
                }
                validate_parameters(parameters)?;
                let record = self.pipeline_mut(namespace, pipeline)?;
                if let Some(run) = record.requests.get(request_id) {
                    return Ok(Applied::ExistingRun(*run));
                }
                let (version, parameters) = if *retry_of == 0 {
                    (record.versions.len() as u64, parameters.clone())
                } else {
                    if !parameters.is_empty() {
                        return Err(Error::invalid(
                            "parameters",
                            "a retry runs with the parameters of the run it retries",
                        ));
                    }
                    let earlier = record
                        .runs
                        .get(retry_of)
                        .ok_or_else(|| not_found_run(pipeline, *retry_of))?;
                    (earlier.version, earlier.parameters.clone())
                };
                let id = record.start_run_of(version, *at, None);
                if !request_id.is_empty() {
                    record.requests.insert(request_id.clone(), id);
                }
                if let Some(run) = record.runs.get_mut(&id) {
                    run.request_id = request_id.clone();
                    run.parameters = parameters;
                    run.retry_of = *retry_of;
                }
                Ok(Applied::Run(id))
            }
            Command::CancelRun {
                namespace,
                pipeline,
                run,
                reason,
                grace_millis,
                at,
            } => {
                if *grace_millis > MAX_CANCEL_GRACE_MS {
                    return Err(Error::invalid("grace", "must be at most 1h"));
                }
                let record = self.pipeline_mut(namespace, pipeline)?;
                record.cancel_run(*run, reason, *at)?;
                if let Some(run) = record.runs.get_mut(run)
                    && run.cancel_grace_ms == 0
                {
                    run.cancel_grace_ms = if *grace_millis == 0 {
                        DEFAULT_CANCEL_GRACE_MS
                    } else {
                        *grace_millis
                    };
                }
                record.start_buffered(*at);
                Ok(Applied::Done)
            }
            Command::AssignAttempt {
                target,
                attempt,
                executor,
                node,
                scheduler,
                epoch,
                at,
            } => {
                let (run, config) = self.run_mut(target)?;
                if run.state.is_terminal() || run.cancel_requested {
                    return Err(Error::FailedPrecondition(format!("run {} is ending", run.id)));
                }
                let index = config.task_index(&target.task).expect("run tasks follow the config");
                if run.readiness(config, index) != Readiness::Ready {
                    return Err(Error::FailedPrecondition(format!(
                        "task {:?} is not ready",
                        target.task
                    )));
                }
                let task = &run.tasks[index];
                if task.state != TaskState::Pending || task.assignment.is_some() || *attempt != task.attempt + 1 {
                    return Err(Error::FailedPrecondition(format!(
                        "task {:?} is not waiting for attempt {attempt}",
                        target.task
                    )));
                }
                if *at < task.not_before {
                    return Err(Error::FailedPrecondition(format!(
                        "task {:?} waits until {} before attempt {attempt}",
                        target.task, task.not_before
                    )));
                }
                if !self.executors.may_assign(executor) {
                    return Err(Error::FailedPrecondition(format!(
                        "executor {executor:?} was declared lost and has not renewed its lease"
                    )));
                }
                let (run, _) = self.run_mut(target)?;
                let task = &mut run.tasks[index];
                task.attempt = *attempt;
                task.log_node = *node;
                task.executor = executor.clone();
                task.scheduler = scheduler.clone();
                task.scheduler_epoch = *epoch;
                task.assignment = Some(Assignment {
                    executor: executor.clone(),
                    started: false,
                    scheduler: scheduler.clone(),
                    epoch: *epoch,
                    assigned_at: *at,
                    started_at: 0,
                });
                if run.state == RunState::Pending {
                    run.state = RunState::Running;
                    run.started_at = *at;
                }
                Ok(Applied::Done)
            }
            Command::AttemptStarted { target, attempt, at } => {
                let (run, config) = self.run_mut(target)?;
                let index = config.task_index(&target.task).expect("run tasks follow the config");
                let task = &mut run.tasks[index];
                let Some(assignment) = task.assignment.as_mut().filter(|_| task.attempt == *attempt) else {
                    return Err(stale_attempt(target, *attempt));
                };
                if !assignment.started {
                    assignment.started = true;
                    assignment.started_at = *at;
                    task.state = TaskState::Running;
                    if task.started_at == 0 {
                        task.started_at = *at;
                    }
                }
                Ok(Applied::Done)
            }
            Command::AttemptFinished {
                target,
                attempt,
                outcome,
                log_node,
                at,
            } => {
                let (run, config) = self.run_mut(target)?;
                let index = config.task_index(&target.task).expect("run tasks follow the config");
                let task = &mut run.tasks[index];
                if task.assignment.is_none() || task.attempt != *attempt || task.state.is_terminal() {
                    return Err(stale_attempt(target, *attempt));
                }
                if matches!(outcome, AttemptOutcome::Lost(_)) {
                    return Err(Error::invalid("outcome", "only the scheduler declares an attempt lost"));
                }
                if *log_node != 0 {
                    task.log_node = *log_node;
                }
                finish_attempt(run, config, index, outcome, *at);
                settle(run, config, *at);
                self.pipeline_mut(&target.namespace, &target.pipeline)?
                    .start_buffered(*at);
                Ok(Applied::Done)
            }
            Command::RenewExecutors {
                executors,
                ttl_millis,
                at,
            } => self
                .executors
                .renew(executors, *ttl_millis, *at)
                .map(|()| Applied::Done),
            Command::ExecutorLost { executor, at } => {
                self.executors.lose(executor, *at)?;
                self.lose_attempts_of(executor, *at);
                Ok(Applied::Done)
            }
            Command::AttemptReportedLate {
                target,
                attempt,
                report,
                ..
            } => {
                let (run, config) = self.run_mut(target)?;
                let index = config.task_index(&target.task).expect("run tasks follow the config");
                let record = run.tasks[index]
                    .attempts
                    .iter_mut()
                    .find(|a| a.attempt == *attempt && a.state == AttemptState::Lost && a.late_report.is_empty())
                    .ok_or_else(|| {
                        Error::FailedPrecondition(format!(
                            "attempt {attempt} of task {:?} in run {} is not a LOST attempt without a report",
                            target.task, target.run
                        ))
                    })?;
                record.late_report = report.chars().take(1024).collect();
                Ok(Applied::Done)
            }
            Command::InstallExtension {
                name,
                image,
                settings,
                at,
            } => self
                .install_extension(name, image, settings, *at)
                .map(|()| Applied::Done),
            Command::UninstallExtension { name, .. } => self.uninstall_extension(name).map(|()| Applied::Done),
            Command::RegisterExtension {
                name,
                builtin,
                registration,
                at,
            } => self
                .register_extension(name, *builtin, registration, *at)
                .map(|()| Applied::Done),
            Command::CreateSubscription {
                namespace,
                pipeline,
                label,
                extension,
                settings,
                at,
            } => self
                .create_subscription(namespace, pipeline, label, extension, settings, *at)
                .map(|()| Applied::Done),
            Command::DeleteSubscription {
                namespace,
                pipeline,
                label,
                ..
            } => self
                .delete_subscription(namespace, pipeline, label)
                .map(|()| Applied::Done),
            Command::Fire { fires, at } => {
                // Each fire stands alone: one refused fire does not refuse the others in its batch.
                Ok(Applied::Fired(fires.iter().map(|fire| self.fire(fire, *at)).collect()))
            }
            Command::SkipFires {
                namespace,
                pipeline,
                label,
                count,
                last_scheduled_at,
                reason,
                at,
            } => self
                .skip_fires((namespace, pipeline, label), *count, *last_scheduled_at, reason, *at)
                .map(|()| Applied::Done),
            Command::Batch { commands } => {
                if commands.len() > MAX_BATCH {
                    return Err(Error::invalid(
                        "commands",
                        format!("a batch holds at most {MAX_BATCH} commands, got {}", commands.len()),
                    ));
                }
                if commands
                    .iter()
                    .any(|c| matches!(c, Command::Batch { .. } | Command::Fenced { .. }))
                {
                    return Err(Error::invalid(
                        "commands",
                        "a batch cannot hold a batch or a fenced command",
                    ));
                }
                Ok(Applied::Batch(commands.iter().map(|c| self.apply(c)).collect()))
            }
            Command::AcquireLease {
                role,
                holder,
                ttl_millis,
                address,
                at,
            } => {
                let mut lease = self.leases.acquire(*role, holder, *ttl_millis, *at)?;
                self.leases.advertise(*role, holder, address);
                lease.address = self
                    .leases
                    .roles
                    .get(role)
                    .map(|l| l.address.clone())
                    .unwrap_or_default();
                Ok(Applied::Lease(lease))
            }
            Command::ReleaseLease {
                role,
                holder,
                epoch,
                at,
            } => {
                self.leases.release(*role, holder, *epoch, *at);
                Ok(Applied::Done)
            }
            Command::SetEventRetention { retention_millis, at } => self
                .events
                .set_retention(*retention_millis, *at)
                .map(|()| Applied::Done),
            Command::Fenced {
                role,
                holder,
                epoch,
                command,
            } => {
                self.leases.check(*role, holder, *epoch)?;
                check_fenceable(command, holder, *epoch)?;
                let applied = self.apply(command)?;
                self.leases.count(*role);
                Ok(applied)
            }
        }
    }

    /// Ends every attempt assigned to `executor` as LOST.
    fn lose_attempts_of(&mut self, executor: &str, at: i64) {
        let targets: Vec<AttemptRef> = self
            .active_runs()
            .flat_map(|(namespace, pipeline, _, run)| {
                run.tasks
                    .iter()
                    .filter(|t| t.assignment.as_ref().is_some_and(|a| a.executor == executor))
                    .map(move |t| AttemptRef {
                        namespace: namespace.to_string(),
                        pipeline: pipeline.to_string(),
                        run: run.id,
                        task: t.task.clone(),
                    })
            })
            .collect();
        let reason = format!("lost: executor {executor:?} stopped heartbeating and its lease ran out");
        for target in targets {
            let Ok((run, config)) = self.run_mut(&target) else {
                continue;
            };
            let index = config.task_index(&target.task).expect("run tasks follow the config");
            finish_attempt(run, config, index, &AttemptOutcome::Lost(reason.clone()), at);
            settle(run, config, at);
            if let Ok(record) = self.pipeline_mut(&target.namespace, &target.pipeline) {
                record.start_buffered(at);
            }
        }
    }

    /// Checks that attempt `attempt` of `target` has been assigned, so that its log may be stored.
    pub fn check_attempt_exists(&self, target: &AttemptRef, attempt: u32) -> Result<(), Error> {
        let (run, _) = self.run(&target.namespace, &target.pipeline, target.run)?;
        match run.task(&target.task) {
            Some(task) if attempt >= 1 && attempt <= task.attempt => Ok(()),
            _ => Err(Error::NotFound(format!("attempt {attempt} of task {:?}", target.task))),
        }
    }

    /// The namespace called `id`.
    pub fn namespace(&self, id: &str) -> Result<&NamespaceRecord, Error> {
        self.namespaces
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("namespace {id:?}")))
    }

    /// The pipeline `id` of `namespace`.
    pub fn pipeline(&self, namespace: &str, id: &str) -> Result<&PipelineRecord, Error> {
        self.namespace(namespace)?
            .pipelines
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("pipeline {id:?} in namespace {namespace:?}")))
    }

    /// Run `run` of a pipeline, with the config of the version it runs.
    pub fn run(&self, namespace: &str, pipeline: &str, run: u64) -> Result<(&Run, &PipelineConfig), Error> {
        let record = self.pipeline(namespace, pipeline)?;
        let found = record.runs.get(&run).ok_or_else(|| not_found_run(pipeline, run))?;
        Ok((found, record.version(found.version).expect("a run's version exists")))
    }

    /// Every run that has not ended, oldest first within each pipeline.
    pub fn active_runs(&self) -> impl Iterator<Item = (&str, &str, &PipelineRecord, &Run)> {
        self.namespaces.iter().flat_map(|(ns, record)| {
            record.pipelines.iter().flat_map(move |(pipeline, p)| {
                p.runs
                    .values()
                    .filter(|r| !r.state.is_terminal())
                    .map(move |r| (ns.as_str(), pipeline.as_str(), p, r))
            })
        })
    }

    fn namespace_mut(&mut self, id: &str) -> Result<&mut NamespaceRecord, Error> {
        self.namespaces
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("namespace {id:?}")))
    }

    pub(crate) fn pipeline_mut(&mut self, namespace: &str, id: &str) -> Result<&mut PipelineRecord, Error> {
        self.namespace_mut(namespace)?
            .pipelines
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("pipeline {id:?} in namespace {namespace:?}")))
    }

    fn run_mut(&mut self, target: &AttemptRef) -> Result<(&mut Run, &PipelineConfig), Error> {
        let record = self.pipeline_mut(&target.namespace, &target.pipeline)?;
        let run = record
            .runs
            .get_mut(&target.run)
            .ok_or_else(|| not_found_run(&target.pipeline, target.run))?;
        let config = record
            .versions
            .get(run.version as usize - 1)
            .expect("a run's version exists");
        if config.task_index(&target.task).is_none() {
            return Err(Error::NotFound(format!("task {:?} in run {}", target.task, target.run)));
        }
        Ok((run, config))
    }
}

impl Run {
    /// Whether task `index` of this run may start, given its parents' states.
    pub fn readiness(&self, config: &PipelineConfig, index: usize) -> Readiness {
        let mut waiting = false;
        for (parent, condition) in &config.tasks[index].depends_on {
            let parent_index = config.task_index(parent).expect("validated parents exist");
            let state = self.tasks[parent_index].state;
            if !state.is_terminal() {
                waiting = true;
            } else if !state.meets(*condition) {
                return Readiness::Unreachable(format!(
                    "parent {parent:?} ended {}, needed {}",
                    state.as_str(),
                    condition.as_str()
                ));
            }
        }
        if waiting { Readiness::Waiting } else { Readiness::Ready }
    }

    /// The task execution for task `id`.
    pub fn task(&self, id: &str) -> Option<&TaskExecution> {
        self.tasks.iter().find(|t| t.task == id)
    }
}

/// Ends the live attempt of task `index` with `outcome`, records it, and either ends the task or, when its
/// retry policy allows another attempt, puts it back to PENDING behind its backoff. A failed attempt is
/// retried while the task has retries left; a LOST one at least once; none once the run is cancelled.
fn finish_attempt(run: &mut Run, config: &PipelineConfig, index: usize, outcome: &AttemptOutcome, at: i64) {
    let cancelled = run.cancel_requested;
    let cancel_reason = run.reason.clone();
    let spec = &config.tasks[index];
    let task = &mut run.tasks[index];
    let assignment = task.assignment.take();
    if task.started_at == 0 {
        task.started_at = at;
    }
    let (state, attempt_state, reason, exit_code) = match outcome {
        AttemptOutcome::Exited(0) => (TaskState::Succeeded, AttemptState::Succeeded, String::new(), Some(0)),
        AttemptOutcome::Exited(code) => (
            TaskState::Failed,
            AttemptState::Failed,
            format!("exited with code {code}"),
            Some(*code),
        ),
        AttemptOutcome::Error(reason) => (TaskState::Failed, AttemptState::Failed, reason.clone(), None),
        AttemptOutcome::Lost(reason) if cancelled => (
            TaskState::Cancelled,
            AttemptState::Lost,
            format!("{cancel_reason} ({reason})"),
            None,
        ),
        AttemptOutcome::Lost(reason) => (TaskState::Failed, AttemptState::Lost, reason.clone(), None),
        AttemptOutcome::Stopped => {
            let reason = if cancelled {
                cancel_reason
            } else {
                "stopped".to_string()
            };
            (TaskState::Cancelled, AttemptState::Cancelled, reason, None)
        }
    };
    // Reasons come from executors: kept to a bound, as everything in the log is.
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    let allowed_retries = if attempt_state == AttemptState::Lost {
        spec.retries.max(1)
    } else {
        spec.retries
    };
    let retry = !cancelled && state == TaskState::Failed && task.attempt <= allowed_retries;
    let assignment = assignment.unwrap_or_else(|| Assignment {
        executor: task.executor.clone(),
        started: false,
        scheduler: task.scheduler.clone(),
        epoch: task.scheduler_epoch,
        assigned_at: 0,
        started_at: 0,
    });
    task.attempts.push(AttemptRecord {
        attempt: task.attempt,
        executor: assignment.executor,
        scheduler: assignment.scheduler,
        scheduler_epoch: assignment.epoch,
        assigned_at: assignment.assigned_at,
        started_at: assignment.started_at,
        ended_at: at,
        state: attempt_state,
        exit_code,
        reason: reason.clone(),
        retried: retry,
        late_report: String::new(),
    });
    task.exit_code = exit_code;
    if retry {
        let delay = spec.retry_delay_ms(task.attempt + 1);
        task.state = TaskState::Pending;
        task.reason = format!(
            "attempt {} ended {}: {reason}; attempt {} follows",
            task.attempt,
            attempt_state.as_str(),
            task.attempt + 1
        );
        task.not_before = at.saturating_add(delay);
    } else {
        end_task(task, state, reason, at);
    }
}

fn end_task(task: &mut TaskExecution, state: TaskState, reason: String, at: i64) {
    debug_assert!(state.is_terminal());
    task.state = state;
    task.reason = reason;
    task.ended_at = at;
}

/// Skips every unassigned task whose condition can no longer be met, until nothing changes, and ends the
/// run once every task execution has ended.
fn settle(run: &mut Run, config: &PipelineConfig, at: i64) {
    loop {
        let mut changed = false;
        for index in 0..run.tasks.len() {
            if run.tasks[index].state != TaskState::Pending || run.tasks[index].assignment.is_some() {
                continue;
            }
            if let Readiness::Unreachable(reason) = run.readiness(config, index) {
                end_task(&mut run.tasks[index], TaskState::Skipped, reason, at);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if run.state.is_terminal() || !run.tasks.iter().all(|t| t.state.is_terminal()) {
        return;
    }
    run.ended_at = at;
    if run.started_at == 0 {
        run.started_at = at;
    }
    if run.cancel_requested {
        run.state = RunState::Cancelled;
    } else if let Some(failed) = run
        .tasks
        .iter()
        .find(|t| matches!(t.state, TaskState::Failed | TaskState::Cancelled))
    {
        run.state = RunState::Failed;
        run.reason = format!("task {:?} ended {}", failed.task, failed.state.as_str());
    } else {
        run.state = RunState::Succeeded;
    }
}

/// How long a cancelled run's containers get between SIGTERM and SIGKILL unless the cancel says.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 10_000;
/// The longest grace a cancel may give.
const MAX_CANCEL_GRACE_MS: u64 = 3_600_000;

/// The most parameters a run takes, and their most bytes in all.
pub const MAX_PARAMETERS: usize = 64;
const MAX_PARAMETER_BYTES: usize = 64 * 1024;

/// Checks a run's parameters: env names (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters) and values
/// without NUL, at most [`MAX_PARAMETERS`] of them and 64 KiB in all. Errors name `parameters.NAME`.
fn validate_parameters(parameters: &BTreeMap<String, String>) -> Result<(), Error> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(Error::invalid(
            "parameters",
            format!("at most {MAX_PARAMETERS} parameters"),
        ));
    }
    let mut bytes = 0;
    for (name, value) in parameters {
        let field = format!("parameters.{name}");
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 128;
        if !valid {
            return Err(Error::invalid(
                field,
                "names are env names: letters, digits and '_', not starting with a digit",
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid(field, "values must not contain NUL"));
        }
        bytes += name.len() + value.len();
    }
    if bytes > MAX_PARAMETER_BYTES {
        return Err(Error::invalid("parameters", "at most 64 KiB in all"));
    }
    Ok(())
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The longest reason an attempt keeps, in characters.
const MAX_REASON_CHARS: usize = 4096;

/// The most commands one Batch may hold.
pub const MAX_BATCH: usize = 4096;

/// Checks that `command` may travel inside a fence of `holder` in `epoch`: no lease command or nested fence,
/// and every assignment (alone or in a batch) names that holder and epoch.
fn check_fenceable(command: &Command, holder: &str, epoch: u64) -> Result<(), Error> {
    match command {
        Command::Fenced { .. } | Command::AcquireLease { .. } | Command::ReleaseLease { .. } => {
            Err(Error::invalid("command", "a lease command cannot be fenced"))
        }
        Command::AssignAttempt {
            scheduler: by,
            epoch: in_epoch,
            ..
        } if by != holder || *in_epoch != epoch => Err(Error::invalid(
            "command.scheduler",
            "a fenced assignment must name the fence's holder and epoch",
        )),
        Command::Batch { commands } => commands.iter().try_for_each(|c| check_fenceable(c, holder, epoch)),
        _ => Ok(()),
    }
}

fn not_found_run(pipeline: &str, run: u64) -> Error {
    Error::NotFound(format!("run {run} of pipeline {pipeline:?}"))
}

fn stale_attempt(target: &AttemptRef, attempt: u32) -> Error {
    Error::FailedPrecondition(format!(
        "attempt {attempt} of task {:?} in run {} is not live",
        target.task, target.run
    ))
}

#[cfg(test)]
mod tests;
