//! The replicated state's records: namespaces, pipelines with their versions, runs, task executions and
//! their attempts, and the identities that name them.
//!
//! Plain data with the reads that need nothing else; how they change is in `runs.rs` and `triggers.rs`,
//! and only through [`crate::State::apply`]. Every type here is part of the snapshot format: add
//! defaulted fields, never change or remove one.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::triggers::{FireOutcome, Subscription, Trigger};
use crate::{Condition, Error, PipelineConfig, validate_id};

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
    pub(crate) fn meets(self, condition: Condition) -> bool {
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

/// Names one attempt of one task execution: the one identity executors, schedulers, container labels and
/// maps use for it. Its text form is `namespace/pipeline/run/task/attempt`, which ids cannot be confused
/// in because no id contains `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptId {
    pub task: AttemptRef,
    /// Counting from 1.
    pub attempt: u32,
}

impl AttemptId {
    pub fn new(task: AttemptRef, attempt: u32) -> AttemptId {
        AttemptId { task, attempt }
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let AttemptRef {
            namespace,
            pipeline,
            run,
            task,
        } = &self.task;
        write!(f, "{namespace}/{pipeline}/{run}/{task}/{}", self.attempt)
    }
}

impl FromStr for AttemptId {
    type Err = Error;

    /// Reads the [`Display`](fmt::Display) form back, checking each id.
    fn from_str(text: &str) -> Result<AttemptId, Error> {
        let malformed = || {
            Error::invalid(
                "attempt",
                format!("{text:?} is not namespace/pipeline/run/task/attempt"),
            )
        };
        let parts: Vec<&str> = text.split('/').collect();
        let [namespace, pipeline, run, task, attempt] = parts[..] else {
            return Err(malformed());
        };
        for (field, id) in [
            ("attempt.namespace", namespace),
            ("attempt.pipeline", pipeline),
            ("attempt.task", task),
        ] {
            validate_id(field, id)?;
        }
        let number = |field: &str, digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::invalid(field, format!("{digits:?} is not a number")));
            }
            digits.parse::<u64>().map_err(|_| malformed())
        };
        let run = number("attempt.run", run)?;
        let attempt = u32::try_from(number("attempt.attempt", attempt)?).map_err(|_| malformed())?;
        Ok(AttemptId {
            task: AttemptRef {
                namespace: namespace.to_string(),
                pipeline: pipeline.to_string(),
                run,
                task: task.to_string(),
            },
            attempt,
        })
    }
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

impl TaskExecution {
    /// Task `task` of a run that has just been made: PENDING, never attempted.
    pub(crate) fn pending(task: &str) -> TaskExecution {
        TaskExecution {
            task: task.to_string(),
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
        }
    }
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
    /// A pipeline registered at `at`, before its first version is pushed.
    pub(crate) fn new(at: i64) -> PipelineRecord {
        PipelineRecord {
            created_at: at,
            updated_at: at,
            versions: Vec::new(),
            runs: BTreeMap::new(),
            next_run_id: 1,
            subscriptions: BTreeMap::new(),
            retired_keys: BTreeMap::new(),
            requests: BTreeMap::new(),
        }
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

impl NamespaceRecord {
    pub(crate) fn new(at: i64) -> NamespaceRecord {
        NamespaceRecord {
            created_at: at,
            pipelines: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests;
