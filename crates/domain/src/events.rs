//! The event stream: run and task state changes and trigger decisions, numbered as apply makes them.
//!
//! Events live in the replicated [`State`], so every node holds the same events under the same ids, and a
//! client can resume from the last id it saw on any node: ids count up by one with no gaps, and a client
//! that asks to resume after an event that has been pruned is told so instead of skipping silently.
//!
//! Apply produces them without the transition code knowing: before a command, [`State::apply`] notes the
//! state of each run the command can touch (and each pipeline's next run id); after it, the differences
//! become events. Fires and skipped fires are read off the command and what it applied. Events are kept
//! for the cluster's retention (set by [`crate::Command::SetEventRetention`], 24 h unless set), and at most
//! [`MAX_EVENTS`] of them, pruned by the times the commands carry.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::{Applied, Command, RunState, TaskState};
use crate::triggers::FireOutcome;
use crate::{Error, State};

/// How long events are kept unless the cluster says otherwise.
pub const DEFAULT_EVENT_RETENTION_MS: u64 = 24 * 3_600_000;
/// The shortest and longest retention a cluster may set.
pub const MIN_EVENT_RETENTION_MS: u64 = 1_000;
pub const MAX_EVENT_RETENTION_MS: u64 = 365 * 24 * 3_600_000;
/// The most events kept, whatever the retention: the oldest go first, so memory and snapshots stay bounded.
pub const MAX_EVENTS: usize = 100_000;

/// One event: its id (1, 2, 3, … with no gaps), the time of the command that made it, and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub at: i64,
    pub what: EventKind,
}

/// What an event says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A run was made (PENDING) or moved to another state.
    Run {
        namespace: String,
        pipeline: String,
        run: u64,
        state: RunState,
        reason: String,
    },
    /// A task execution moved to another state, or an attempt of it ended and another follows.
    Task {
        namespace: String,
        pipeline: String,
        run: u64,
        task: String,
        attempt: u32,
        state: TaskState,
        reason: String,
    },
    /// What a trigger's fire did: started a run, waits for the previous one, was skipped, or repeated a
    /// key seen before (and changed nothing).
    Fire {
        namespace: String,
        pipeline: String,
        subscription: String,
        extension: String,
        idempotency_key: String,
        scheduled_at: i64,
        decision: FireDecision,
        /// The run the fire started (or, for a repeated key, the one it started then); 0 for none.
        run: u64,
        reason: String,
    },
    /// Scheduled instants a trigger missed and skipped without firing.
    FiresSkipped {
        namespace: String,
        pipeline: String,
        subscription: String,
        count: u64,
        last_scheduled_at: i64,
        reason: String,
    },
}

impl EventKind {
    /// The (namespace, pipeline) the event is about.
    pub fn pipeline(&self) -> (&str, &str) {
        match self {
            EventKind::Run {
                namespace, pipeline, ..
            }
            | EventKind::Task {
                namespace, pipeline, ..
            }
            | EventKind::Fire {
                namespace, pipeline, ..
            }
            | EventKind::FiresSkipped {
                namespace, pipeline, ..
            } => (namespace, pipeline),
        }
    }
}

/// The decision a fire met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FireDecision {
    Started,
    Buffered,
    Skipped,
    Duplicate,
}

impl FireDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            FireDecision::Started => "STARTED",
            FireDecision::Buffered => "BUFFERED",
            FireDecision::Skipped => "SKIPPED",
            FireDecision::Duplicate => "DUPLICATE",
        }
    }
}

/// How many events one shared chunk of the log holds.
const CHUNK: usize = 1024;

/// The events kept, and how long they are kept.
///
/// Events sit in chunks of [`CHUNK`]: full ones are immutable and shared between clones, so cloning the
/// state (for a snapshot, under the lock applies wait on) copies a pointer per chunk rather than every
/// event. In a snapshot it is the flat list `{next_id, retention_ms, events}`.
#[derive(Debug, Clone)]
pub struct EventLog {
    /// The id the next event gets.
    next_id: u64,
    /// How long events are kept, by the times commands carry; 0 for [`DEFAULT_EVENT_RETENTION_MS`].
    retention_ms: u64,
    /// Full chunks, oldest first; the first `skip` events of the first one are pruned.
    sealed: VecDeque<Arc<Vec<Event>>>,
    skip: usize,
    /// The newest events, fewer than a chunk.
    tail: Vec<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            next_id: 1,
            retention_ms: 0,
            sealed: VecDeque::new(),
            skip: 0,
            tail: Vec::new(),
        }
    }
}

impl PartialEq for EventLog {
    fn eq(&self, other: &Self) -> bool {
        self.next_id == other.next_id
            && self.retention_ms == other.retention_ms
            && self.len() == other.len()
            && self.iter().eq(other.iter())
    }
}

impl Eq for EventLog {}

/// An event log as snapshots hold it.
#[derive(Serialize, Deserialize)]
struct FlatEventLog<E> {
    next_id: u64,
    retention_ms: u64,
    events: E,
}

/// Serializes the events kept as one sequence, without collecting them.
struct Flat<'a>(&'a EventLog);

impl Serialize for Flat<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl Serialize for EventLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        FlatEventLog {
            next_id: self.next_id,
            retention_ms: self.retention_ms,
            events: Flat(self),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flat = FlatEventLog::<Vec<Event>>::deserialize(deserializer)?;
        let mut log = EventLog {
            next_id: flat.next_id,
            retention_ms: flat.retention_ms,
            ..EventLog::default()
        };
        for event in flat.events {
            log.append(event);
        }
        Ok(log)
    }
}

/// Why events after an id cannot be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventGap {
    /// Events after `after` were pruned: the oldest kept is `oldest`.
    Pruned { after: u64, oldest: u64 },
    /// No event `after` has been made yet: the newest is `newest`.
    Ahead { after: u64, newest: u64 },
}

impl EventGap {
    /// The error a client asking for events after this id gets, naming `field`.
    pub fn into_error(self, field: &str) -> Error {
        match self {
            EventGap::Pruned { after, oldest } => Error::OutOfRange(format!(
                "{field}: the events after {after} were pruned; the oldest kept is {oldest}"
            )),
            EventGap::Ahead { after, newest } => {
                Error::invalid(field, format!("there is no event {after} yet; the newest is {newest}"))
            }
        }
    }
}

impl EventLog {
    /// The retention in force.
    pub fn retention_ms(&self) -> u64 {
        if self.retention_ms == 0 {
            DEFAULT_EVENT_RETENTION_MS
        } else {
            self.retention_ms
        }
    }

    /// The id of the newest event made, or 0 before the first.
    pub fn newest(&self) -> u64 {
        self.next_id - 1
    }

    /// How many events are kept.
    pub fn len(&self) -> usize {
        self.sealed.len() * CHUNK - self.skip + self.tail.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.iter_from(0)
    }

    /// The events kept from the `position`-th oldest on.
    fn iter_from(&self, position: usize) -> impl Iterator<Item = &Event> {
        let global = self.skip + position;
        let first_chunk = global / CHUNK;
        let sealed = self
            .sealed
            .iter()
            .skip(first_chunk)
            .enumerate()
            .flat_map(move |(i, chunk)| chunk.iter().skip(if i == 0 { global % CHUNK } else { 0 }));
        let in_tail = global.saturating_sub(self.sealed.len() * CHUNK);
        sealed.chain(self.tail.iter().skip(in_tail))
    }

    /// Up to `limit` events with ids above `after`, oldest first. `after` 0 lists from the oldest kept;
    /// any other `after` must be an event that was made, and the one after it must still be kept, so a
    /// client resuming from the last id it saw never skips an event without being told.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventGap> {
        let oldest = self.next_id - self.len() as u64;
        if after > self.newest() {
            return Err(EventGap::Ahead {
                after,
                newest: self.newest(),
            });
        }
        if after != 0 && after + 1 < oldest {
            return Err(EventGap::Pruned { after, oldest });
        }
        let position = (after + 1).saturating_sub(oldest) as usize;
        Ok(self.iter_from(position).take(limit).cloned().collect())
    }

    fn push(&mut self, at: i64, what: EventKind) {
        self.append(Event {
            id: self.next_id,
            at,
            what,
        });
        self.next_id += 1;
        self.prune(at);
    }

    fn append(&mut self, event: Event) {
        self.tail.push(event);
        if self.tail.len() == CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            self.sealed.push_back(Arc::new(full));
        }
    }

    fn oldest(&self) -> Option<&Event> {
        self.iter().next()
    }

    fn pop_oldest(&mut self) {
        if self.sealed.is_empty() {
            if !self.tail.is_empty() {
                self.tail.remove(0);
            }
            return;
        }
        self.skip += 1;
        if self.skip == CHUNK {
            self.sealed.pop_front();
            self.skip = 0;
        }
    }

    /// Drops the events older than the retention at `now`, and the oldest beyond [`MAX_EVENTS`].
    fn prune(&mut self, now: i64) {
        let horizon = now.saturating_sub(i64::try_from(self.retention_ms()).unwrap_or(i64::MAX));
        while self.len() > MAX_EVENTS || self.oldest().is_some_and(|e| e.at < horizon) {
            self.pop_oldest();
        }
    }

    /// Sets the retention, pruning at once what it no longer keeps.
    pub(crate) fn set_retention(&mut self, retention_ms: u64, at: i64) -> Result<(), Error> {
        if !(MIN_EVENT_RETENTION_MS..=MAX_EVENT_RETENTION_MS).contains(&retention_ms) {
            return Err(Error::invalid("event_retention", "must be between 1s and 365 days"));
        }
        self.retention_ms = retention_ms;
        self.prune(at);
        Ok(())
    }
}

/// A run as it stood before a command: its state and, per task, its state and ended attempts.
struct RunBefore {
    namespace: String,
    pipeline: String,
    run: u64,
    state: RunState,
    tasks: Vec<(TaskState, usize)>,
}

/// What [`State::apply`] notes before a command, to find what it changed.
#[derive(Default)]
pub(crate) struct Before {
    runs: Vec<RunBefore>,
    /// (namespace, pipeline, next run id) of each pipeline the command may start runs in.
    pipelines: Vec<(String, String, u64)>,
}

impl State {
    /// Notes what `command` may change: the runs it may touch and the pipelines it may start runs in.
    /// Batches and fences note nothing: each command inside is noted as it is applied.
    pub(crate) fn before(&self, command: &Command) -> Before {
        let mut before = Before::default();
        match command {
            Command::StartRun {
                namespace, pipeline: p, ..
            } => before.note_pipeline(self, namespace, p),
            Command::CancelRun {
                namespace,
                pipeline: p,
                run,
                ..
            } => {
                before.note_run(self, namespace, p, *run);
                before.note_pipeline(self, namespace, p);
            }
            Command::AssignAttempt { target, .. } | Command::AttemptStarted { target, .. } => {
                before.note_run(self, &target.namespace, &target.pipeline, target.run);
            }
            // An ended attempt may end its run and so start a buffered fire's run.
            Command::AttemptFinished { target, .. } => {
                before.note_run(self, &target.namespace, &target.pipeline, target.run);
                before.note_pipeline(self, &target.namespace, &target.pipeline);
            }
            Command::ExecutorLost { executor, .. } => {
                let runs: Vec<(String, String, u64)> = self
                    .active_runs()
                    .filter(|(_, _, _, run)| {
                        run.tasks
                            .iter()
                            .any(|t| t.assignment.as_ref().is_some_and(|a| &a.executor == executor))
                    })
                    .map(|(n, p, _, run)| (n.to_string(), p.to_string(), run.id))
                    .collect();
                for (namespace, p, run) in runs {
                    before.note_run(self, &namespace, &p, run);
                    before.note_pipeline(self, &namespace, &p);
                }
            }
            Command::Fire { fires, .. } => {
                for fire in fires {
                    // An overlap policy may cancel the subscription's previous run.
                    if let Some(last) = self
                        .pipeline(&fire.namespace, &fire.pipeline)
                        .ok()
                        .and_then(|r| r.subscriptions.get(&fire.subscription))
                        .and_then(|s| s.last_run)
                    {
                        before.note_run(self, &fire.namespace, &fire.pipeline, last);
                    }
                    before.note_pipeline(self, &fire.namespace, &fire.pipeline);
                }
            }
            _ => {}
        }
        before
    }

    /// Records as events what `command`, applied with `applied`, changed since `before`.
    pub(crate) fn record_events(&mut self, before: Before, command: &Command, applied: &Applied) {
        let Some(at) = command.at() else { return };
        let mut made = Vec::new();
        for noted in &before.runs {
            let Ok((run, _)) = self.run(&noted.namespace, &noted.pipeline, noted.run) else {
                continue;
            };
            for (task, &(state, ended)) in run.tasks.iter().zip(&noted.tasks) {
                if task.state != state || task.attempts.len() != ended {
                    made.push(EventKind::Task {
                        namespace: noted.namespace.clone(),
                        pipeline: noted.pipeline.clone(),
                        run: run.id,
                        task: task.task.clone(),
                        attempt: task.attempt,
                        state: task.state,
                        reason: task.reason.clone(),
                    });
                }
            }
            if run.state != noted.state {
                made.push(run_event(
                    &noted.namespace,
                    &noted.pipeline,
                    run.id,
                    run.state,
                    &run.reason,
                ));
            }
        }
        if let (Command::Fire { fires, .. }, Applied::Fired(results)) = (command, applied) {
            for (fire, result) in fires.iter().zip(results) {
                let Ok((outcome, seen)) = result else { continue };
                let (decision, run, reason) = match outcome {
                    _ if *seen => (
                        FireDecision::Duplicate,
                        fire_run(outcome),
                        "key seen before".to_string(),
                    ),
                    FireOutcome::Started(run) => (FireDecision::Started, *run, String::new()),
                    FireOutcome::Buffered => (FireDecision::Buffered, 0, String::new()),
                    FireOutcome::Skipped(reason) => (FireDecision::Skipped, 0, reason.clone()),
                };
                made.push(EventKind::Fire {
                    namespace: fire.namespace.clone(),
                    pipeline: fire.pipeline.clone(),
                    subscription: fire.subscription.clone(),
                    extension: fire.extension.clone(),
                    idempotency_key: fire.idempotency_key.clone(),
                    scheduled_at: fire.scheduled_at,
                    decision,
                    run,
                    reason,
                });
            }
        }
        if let Command::SkipFires {
            namespace,
            pipeline,
            label,
            count,
            last_scheduled_at,
            reason,
            ..
        } = command
        {
            made.push(EventKind::FiresSkipped {
                namespace: namespace.clone(),
                pipeline: pipeline.clone(),
                subscription: label.clone(),
                count: *count,
                last_scheduled_at: *last_scheduled_at,
                reason: reason.clone(),
            });
        }
        for (namespace, pipeline, first) in &before.pipelines {
            let Ok(record) = self.pipeline(namespace, pipeline) else {
                continue;
            };
            for run in record.runs.range(*first..) {
                let run = run.1;
                made.push(run_event(namespace, pipeline, run.id, RunState::Pending, &origin(run)));
                if run.state != RunState::Pending {
                    made.push(run_event(namespace, pipeline, run.id, run.state, &run.reason));
                }
            }
        }
        for what in made {
            self.events.push(at, what);
        }
    }
}

impl Before {
    fn note_pipeline(&mut self, state: &State, namespace: &str, pipeline: &str) {
        if let Ok(record) = state.pipeline(namespace, pipeline)
            && !self.pipelines.iter().any(|(n, p, _)| n == namespace && p == pipeline)
        {
            self.pipelines
                .push((namespace.to_string(), pipeline.to_string(), record.next_run_id));
        }
    }

    fn note_run(&mut self, state: &State, namespace: &str, pipeline: &str, run: u64) {
        if self
            .runs
            .iter()
            .any(|r| r.run == run && r.namespace == namespace && r.pipeline == pipeline)
        {
            return;
        }
        if let Ok((found, _)) = state.run(namespace, pipeline, run) {
            self.runs.push(RunBefore {
                namespace: namespace.to_string(),
                pipeline: pipeline.to_string(),
                run,
                state: found.state,
                tasks: found.tasks.iter().map(|t| (t.state, t.attempts.len())).collect(),
            });
        }
    }
}

fn run_event(namespace: &str, pipeline: &str, run: u64, state: RunState, reason: &str) -> EventKind {
    EventKind::Run {
        namespace: namespace.to_string(),
        pipeline: pipeline.to_string(),
        run,
        state,
        reason: reason.to_string(),
    }
}

fn fire_run(outcome: &FireOutcome) -> u64 {
    match outcome {
        FireOutcome::Started(run) => *run,
        _ => 0,
    }
}

/// Why a run was made, for its PENDING event.
fn origin(run: &crate::Run) -> String {
    if let Some(trigger) = &run.trigger {
        format!(
            "fired by subscription {:?} ({})",
            trigger.subscription, trigger.extension
        )
    } else if run.retry_of != 0 {
        format!("retry of run {}", run.retry_of)
    } else {
        "started".to_string()
    }
}

#[cfg(test)]
mod tests;
