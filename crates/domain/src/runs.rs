//! Run and task transitions: starting and cancelling runs, assigning attempts, their reports, executor
//! loss, retries, skipping what can no longer run, and ending runs.
//!
//! Every change goes through a [`PipelineMut`] or a [`RunMut`], which carry the command's
//! [`Journal`]: the code that changes a run's or a task execution's state tells it there in the same
//! step, so no transition can forget its event. Everything here is deterministic, with the time taken
//! from the command.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::{Applied, AttemptOutcome};
use crate::events::Journal;
use crate::inputs::{MAX_REASON_CHARS, ParameterNames, check_parameters};
use crate::model::{
    Assignment, AttemptRecord, AttemptRef, AttemptState, PipelineRecord, Readiness, Run, RunState, TaskExecution,
    TaskState,
};
use crate::state::State;
use crate::triggers::Trigger;
use crate::{Error, PipelineConfig, validate_request_id};

/// How long a cancelled run's containers get between SIGTERM and SIGKILL unless the cancel says.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 10_000;
/// The longest grace a cancel may give.
const MAX_CANCEL_GRACE_MS: u64 = 3_600_000;

/// A run about to be made, with everything it starts with.
pub(crate) struct NewRun {
    pub(crate) version: u64,
    pub(crate) trigger: Option<Trigger>,
    /// The client's request id, or empty.
    pub(crate) request_id: String,
    pub(crate) parameters: BTreeMap<String, String>,
    /// The run it retries, or 0.
    pub(crate) retry_of: u64,
    pub(crate) at: i64,
}

/// A pipeline that one command changes, with the journal its changes are told in.
pub(crate) struct PipelineMut<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) id: &'a str,
    pub(crate) record: &'a mut PipelineRecord,
    pub(crate) journal: &'a mut Journal,
}

/// A run that one command changes, with the config of the version it runs and the journal.
pub(crate) struct RunMut<'a> {
    namespace: &'a str,
    pipeline: &'a str,
    run: &'a mut Run,
    config: &'a PipelineConfig,
    journal: &'a mut Journal,
}

impl State {
    /// Pipeline `id` of `namespace`, to change within one command.
    pub(crate) fn pipeline_mut<'a>(
        &'a mut self,
        namespace: &'a str,
        id: &'a str,
        journal: &'a mut Journal,
    ) -> Result<PipelineMut<'a>, Error> {
        let record = self.record_mut(namespace, id)?;
        Ok(PipelineMut {
            namespace,
            id,
            record,
            journal,
        })
    }

    /// The run of `target`, to change within one command, and its task's index in it.
    fn task_mut<'a>(
        &'a mut self,
        target: &'a AttemptRef,
        journal: &'a mut Journal,
    ) -> Result<(RunMut<'a>, usize), Error> {
        let run = self
            .pipeline_mut(&target.namespace, &target.pipeline, journal)?
            .into_run(target.run)?;
        let index = run
            .config
            .task_index(&target.task)
            .ok_or_else(|| Error::NotFound(format!("task {:?} in run {}", target.task, target.run)))?;
        Ok((run, index))
    }

    /// `StartRun`: a run of the newest version (or of the version and parameters of the run it retries),
    /// unless the request id started one already.
    pub(crate) fn start_run(
        &mut self,
        (namespace, pipeline): (&str, &str),
        request_id: &str,
        parameters: &BTreeMap<String, String>,
        retry_of: u64,
        at: i64,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        if !request_id.is_empty() {
            validate_request_id("request_id", request_id)?;
        }
        check_parameters(parameters, ParameterNames::Env)?;
        let mut changing = self.pipeline_mut(namespace, pipeline, journal)?;
        if let Some(run) = changing.record.requests.get(request_id) {
            return Ok(Applied::ExistingRun(*run));
        }
        let (version, parameters) = if retry_of == 0 {
            (changing.record.versions.len() as u64, parameters.clone())
        } else {
            if !parameters.is_empty() {
                return Err(Error::invalid(
                    "parameters",
                    "a retry runs with the parameters of the run it retries",
                ));
            }
            let earlier = changing
                .record
                .runs
                .get(&retry_of)
                .ok_or_else(|| Error::run_not_found(pipeline, retry_of))?;
            (earlier.version, earlier.parameters.clone())
        };
        let id = changing.start_run(NewRun {
            version,
            trigger: None,
            request_id: request_id.to_string(),
            parameters,
            retry_of,
            at,
        });
        Ok(Applied::Run(id))
    }

    /// `CancelRun`, then whatever fire its end lets start.
    pub(crate) fn cancel_run(
        &mut self,
        (namespace, pipeline): (&str, &str),
        run: u64,
        reason: &str,
        grace_millis: u64,
        at: i64,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        if grace_millis > MAX_CANCEL_GRACE_MS {
            return Err(Error::invalid("grace", "must be at most 1h"));
        }
        let grace = if grace_millis == 0 {
            DEFAULT_CANCEL_GRACE_MS
        } else {
            grace_millis
        };
        let mut changing = self.pipeline_mut(namespace, pipeline, journal)?;
        changing.cancel_run(run, reason, Some(grace), at)?;
        changing.start_buffered(at);
        Ok(Applied::Done)
    }

    /// `AssignAttempt`: the next attempt of a PENDING, ready, unassigned task, whose backoff has passed, to
    /// an executor not declared lost.
    pub(crate) fn assign_attempt(
        &mut self,
        target: &AttemptRef,
        attempt: u32,
        node: u64,
        assignment: Assignment,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        let may_assign = self.executors.may_assign(&assignment.executor);
        let (mut changing, index) = self.task_mut(target, journal)?;
        let run = &changing.run;
        if run.state.is_terminal() || run.cancel_requested {
            return Err(Error::FailedPrecondition(format!("run {} is ending", run.id)));
        }
        if run.readiness(changing.config, index) != Readiness::Ready {
            return Err(Error::FailedPrecondition(format!(
                "task {:?} is not ready",
                target.task
            )));
        }
        let task = &run.tasks[index];
        if task.state != TaskState::Pending || task.assignment.is_some() || attempt != task.attempt + 1 {
            return Err(Error::FailedPrecondition(format!(
                "task {:?} is not waiting for attempt {attempt}",
                target.task
            )));
        }
        if assignment.assigned_at < task.not_before {
            return Err(Error::FailedPrecondition(format!(
                "task {:?} waits until {} before attempt {attempt}",
                target.task, task.not_before
            )));
        }
        if !may_assign {
            return Err(Error::FailedPrecondition(format!(
                "executor {:?} was declared lost and has not renewed its lease",
                assignment.executor
            )));
        }
        changing.assign(index, attempt, node, assignment);
        Ok(Applied::Done)
    }

    /// `AttemptStarted`: the executor started the live attempt's container.
    pub(crate) fn attempt_started(
        &mut self,
        (target, attempt): (&AttemptRef, u32),
        reporter: &str,
        at: i64,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        let (mut changing, index) = self.task_mut(target, journal)?;
        let task = &mut changing.run.tasks[index];
        let Some(assignment) = task.assignment.as_mut().filter(|_| task.attempt == attempt) else {
            return Err(stale_attempt(target, attempt));
        };
        check_reporter((target, attempt), reporter, &assignment.executor)?;
        if !assignment.started {
            assignment.started = true;
            assignment.started_at = at;
            task.state = TaskState::Running;
            if task.started_at == 0 {
                task.started_at = at;
            }
            changing.task_changed(index);
        }
        Ok(Applied::Done)
    }

    /// `AttemptFinished`: the live attempt ended as its executor reports; then the run settles and whatever
    /// fire its end lets start starts.
    pub(crate) fn attempt_finished(
        &mut self,
        (target, attempt): (&AttemptRef, u32),
        reporter: &str,
        outcome: &AttemptOutcome,
        log_node: u64,
        at: i64,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        let mut changing = self.pipeline_mut(&target.namespace, &target.pipeline, journal)?;
        let mut run = changing.run_mut(target.run)?;
        let index = run.task_index(target)?;
        let task = &mut run.run.tasks[index];
        let assignee = match &task.assignment {
            Some(assignment) if task.attempt == attempt && !task.state.is_terminal() => &assignment.executor,
            _ => return Err(stale_attempt(target, attempt)),
        };
        check_reporter((target, attempt), reporter, assignee)?;
        if matches!(outcome, AttemptOutcome::Lost(_)) {
            return Err(Error::invalid("outcome", "only the scheduler declares an attempt lost"));
        }
        if log_node != 0 {
            task.log_node = log_node;
        }
        run.finish_attempt(index, outcome, at);
        run.settle(at);
        changing.start_buffered(at);
        Ok(Applied::Done)
    }

    /// `AttemptReportedLate`: keeps what an executor reported about an attempt declared LOST before.
    pub(crate) fn attempt_reported_late(
        &mut self,
        (target, attempt): (&AttemptRef, u32),
        reporter: &str,
        report: &str,
        journal: &mut Journal,
    ) -> Result<Applied, Error> {
        let (changing, index) = self.task_mut(target, journal)?;
        let record = changing.run.tasks[index]
            .attempts
            .iter_mut()
            .find(|a| a.attempt == attempt && a.state == AttemptState::Lost && a.late_report.is_empty())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "attempt {attempt} of task {:?} in run {} is not a LOST attempt without a report",
                    target.task, target.run
                ))
            })?;
        check_reporter((target, attempt), reporter, &record.executor)?;
        record.late_report = report.chars().take(1024).collect();
        Ok(Applied::Done)
    }

    /// Checks that `executor` may store the log of attempt `attempt` of `target`: the attempt is live
    /// (assigned and not finished) and assigned to it. A finished attempt's log is never written again,
    /// while a live one's may be sent again from its first byte.
    pub fn check_log_upload(&self, target: &AttemptRef, attempt: u32, executor: &str) -> Result<(), Error> {
        let (run, _) = self.run(&target.namespace, &target.pipeline, target.run)?;
        let task = run
            .task(&target.task)
            .filter(|task| attempt >= 1 && attempt <= task.attempt)
            .ok_or_else(|| Error::NotFound(format!("attempt {attempt} of task {:?}", target.task)))?;
        let assignee = match &task.assignment {
            Some(assignment) if task.attempt == attempt => &assignment.executor,
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "attempt {attempt} of task {:?} in run {} is not live: its log is no longer stored",
                    target.task, target.run
                )));
            }
        };
        if executor != assignee {
            return Err(not_the_assignee((target, attempt), executor, assignee));
        }
        Ok(())
    }

    /// `ExecutorLost`: the executor's lease ran out, so every attempt assigned to it ends LOST.
    pub(crate) fn executor_lost(&mut self, executor: &str, at: i64, journal: &mut Journal) -> Result<Applied, Error> {
        self.executors.lose(executor, at)?;
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
        let lost = AttemptOutcome::Lost(format!(
            "lost: executor {executor:?} stopped heartbeating and its lease ran out"
        ));
        for target in &targets {
            // Each target was found among the active runs just now.
            let Ok(mut changing) = self.pipeline_mut(&target.namespace, &target.pipeline, journal) else {
                continue;
            };
            let Ok(mut run) = changing.run_mut(target.run) else {
                continue;
            };
            let Ok(index) = run.task_index(target) else {
                continue;
            };
            run.finish_attempt(index, &lost, at);
            run.settle(at);
            changing.start_buffered(at);
        }
        Ok(Applied::Done)
    }
}

impl<'a> PipelineMut<'a> {
    /// Run `id`, to change.
    pub(crate) fn run_mut(&mut self, id: u64) -> Result<RunMut<'_>, Error> {
        RunMut::of(self.namespace, self.id, self.record, id, self.journal)
    }

    /// Run `id`, to change, for the rest of the command's borrow.
    fn into_run(self, id: u64) -> Result<RunMut<'a>, Error> {
        RunMut::of(self.namespace, self.id, self.record, id, self.journal)
    }

    /// Makes a run and returns its id, pruning old runs beyond what the newest version keeps.
    pub(crate) fn start_run(&mut self, new: NewRun) -> u64 {
        let record = &mut *self.record;
        let id = record.next_run_id;
        let tasks = record
            .version(new.version)
            .expect("a run is made only of a version that exists")
            .tasks
            .iter()
            .map(|t| TaskExecution::pending(&t.id))
            .collect();
        let run = Run {
            id,
            version: new.version,
            state: RunState::Pending,
            reason: String::new(),
            cancel_requested: false,
            created_at: new.at,
            started_at: 0,
            ended_at: 0,
            tasks,
            trigger: new.trigger,
            request_id: new.request_id,
            parameters: new.parameters,
            retry_of: new.retry_of,
            cancel_grace_ms: 0,
        };
        self.journal.run_made(self.namespace, self.id, &run);
        let record = &mut *self.record;
        let request_id = run.request_id.clone();
        record.runs.insert(id, run);
        record.next_run_id += 1;
        for pruned in prune_runs(record) {
            self.journal.run_pruned(self.namespace, self.id, pruned);
        }
        if !request_id.is_empty() {
            record.requests.insert(request_id, id);
        }
        id
    }

    /// Cancels a run: its unassigned tasks end CANCELLED now, assigned ones when their executor reports.
    /// Cancelling a cancelled run is a no-op; a run that ended otherwise cannot be cancelled. A cancel by a
    /// client gives its `grace`, kept unless an earlier cancel gave one.
    pub(crate) fn cancel_run(&mut self, id: u64, reason: &str, grace: Option<u64>, at: i64) -> Result<(), Error> {
        let mut run = self.run_mut(id)?;
        run.cancel(reason, at)?;
        if let Some(grace) = grace
            && run.run.cancel_grace_ms == 0
        {
            run.run.cancel_grace_ms = grace;
        }
        Ok(())
    }
}

impl<'a> RunMut<'a> {
    fn of(
        namespace: &'a str,
        pipeline: &'a str,
        record: &'a mut PipelineRecord,
        id: u64,
        journal: &'a mut Journal,
    ) -> Result<RunMut<'a>, Error> {
        let PipelineRecord { runs, versions, .. } = record;
        let versions: &'a [PipelineConfig] = versions;
        let run = runs.get_mut(&id).ok_or_else(|| Error::run_not_found(pipeline, id))?;
        let config = usize::try_from(run.version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| versions.get(i))
            .expect("a run's version exists: versions are never removed");
        Ok(RunMut {
            namespace,
            pipeline,
            run,
            config,
            journal,
        })
    }

    /// The index of `target`'s task in this run.
    fn task_index(&self, target: &AttemptRef) -> Result<usize, Error> {
        self.config
            .task_index(&target.task)
            .ok_or_else(|| Error::NotFound(format!("task {:?} in run {}", target.task, target.run)))
    }

    fn task_changed(&mut self, index: usize) {
        self.journal
            .task_changed(self.namespace, self.pipeline, self.run.id, &self.run.tasks[index]);
    }

    fn run_changed(&mut self) {
        self.journal.run_changed(self.namespace, self.pipeline, self.run);
    }

    /// Gives the next attempt of task `index` to an executor (apply checked that it may), starting the run
    /// if it had not started.
    fn assign(&mut self, index: usize, attempt: u32, node: u64, assignment: Assignment) {
        let at = assignment.assigned_at;
        let task = &mut self.run.tasks[index];
        task.attempt = attempt;
        task.log_node = node;
        task.executor = assignment.executor.clone();
        task.scheduler = assignment.scheduler.clone();
        task.scheduler_epoch = assignment.epoch;
        task.assignment = Some(assignment);
        if self.run.state == RunState::Pending {
            self.run.state = RunState::Running;
            self.run.started_at = at;
            self.run_changed();
        }
    }

    /// Ends the live attempt of task `index` with `outcome`, records it, and either ends the task or, when
    /// its retry policy allows another attempt, puts it back to PENDING behind its backoff. A failed
    /// attempt is retried while the task has retries left; a LOST one at least once; none once the run is
    /// cancelled.
    fn finish_attempt(&mut self, index: usize, outcome: &AttemptOutcome, at: i64) {
        let cancelled = self.run.cancel_requested;
        let cancel_reason = self.run.reason.clone();
        let spec = &self.config.tasks[index];
        let task = &mut self.run.tasks[index];
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
            self.task_changed(index);
        } else {
            self.end_task(index, state, reason, at);
        }
    }

    /// Ends task `index` in `state`, a final one.
    fn end_task(&mut self, index: usize, state: TaskState, reason: String, at: i64) {
        debug_assert!(state.is_terminal());
        let task = &mut self.run.tasks[index];
        task.state = state;
        task.reason = reason;
        task.ended_at = at;
        self.task_changed(index);
    }

    /// Marks the run cancelled: its unassigned tasks end CANCELLED at once, then it settles.
    fn cancel(&mut self, reason: &str, at: i64) -> Result<(), Error> {
        if self.run.state.is_terminal() {
            if self.run.state == RunState::Cancelled {
                return Ok(());
            }
            return Err(Error::FailedPrecondition(format!(
                "run {} already ended {}",
                self.run.id,
                self.run.state.as_str()
            )));
        }
        if self.run.cancel_requested {
            return Ok(());
        }
        self.run.cancel_requested = true;
        self.run.reason = reason.to_string();
        for index in 0..self.run.tasks.len() {
            let task = &self.run.tasks[index];
            if task.state == TaskState::Pending && task.assignment.is_none() {
                self.end_task(index, TaskState::Cancelled, reason.to_string(), at);
            }
        }
        self.settle(at);
        Ok(())
    }

    /// Skips every unassigned task whose condition can no longer be met, until nothing changes, and ends
    /// the run once every task execution has ended.
    fn settle(&mut self, at: i64) {
        loop {
            let mut changed = false;
            for index in 0..self.run.tasks.len() {
                let task = &self.run.tasks[index];
                if task.state != TaskState::Pending || task.assignment.is_some() {
                    continue;
                }
                if let Readiness::Unreachable(reason) = self.run.readiness(self.config, index) {
                    self.end_task(index, TaskState::Skipped, reason, at);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let run = &mut *self.run;
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
        self.run_changed();
    }
}

/// Prunes the oldest ended runs beyond what the newest version keeps, with their request ids; runs that
/// have not ended are never pruned.
fn prune_runs(record: &mut PipelineRecord) -> BTreeSet<u64> {
    let keep = record.latest().runs_kept();
    let excess = record.runs.len().saturating_sub(keep);
    if excess == 0 {
        return BTreeSet::new();
    }
    let pruned: BTreeSet<u64> = record
        .runs
        .values()
        .filter(|r| r.state.is_terminal())
        .map(|r| r.id)
        .take(excess)
        .collect();
    record.runs.retain(|id, _| !pruned.contains(id));
    record.requests.retain(|_, run| !pruned.contains(run));
    pruned
}

/// Refuses a report about an attempt from an executor other than the one it was assigned to. An empty
/// `reporter` is a report committed before reports named their executor: it is accepted, so that old
/// logs replay as they did.
fn check_reporter((target, attempt): (&AttemptRef, u32), reporter: &str, assignee: &str) -> Result<(), Error> {
    if reporter.is_empty() || reporter == assignee {
        return Ok(());
    }
    Err(not_the_assignee((target, attempt), reporter, assignee))
}

/// The refusal of what `executor` says or sends about an attempt assigned to `assignee`.
fn not_the_assignee((target, attempt): (&AttemptRef, u32), executor: &str, assignee: &str) -> Error {
    Error::FailedPrecondition(format!(
        "executor {executor:?} is not the assignee of attempt {attempt} of task {:?} in run {}: it was assigned to executor {assignee:?}",
        target.task, target.run
    ))
}

fn stale_attempt(target: &AttemptRef, attempt: u32) -> Error {
    Error::FailedPrecondition(format!(
        "attempt {attempt} of task {:?} in run {} is not live",
        target.task, target.run
    ))
}
