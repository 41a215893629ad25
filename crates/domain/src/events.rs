//! The event stream: run and task state changes and trigger decisions, numbered as apply makes them.
//!
//! Events live in the replicated [`crate::State`], so every node holds the same events under the same ids, and a
//! client can resume from the last id it saw on any node: ids count up by one with no gaps, and a client
//! that asks to resume after an event that has been pruned is told so instead of skipping silently.
//!
//! The transitions write them: every change of a run's or a task execution's state, and every decision on
//! a fire, is written into the command's [`Journal`] by the code that makes it, and
//! [`crate::State::apply`] numbers them once the command is applied. Events are kept
//! for the cluster's retention (set by [`crate::Command::SetEventRetention`], 24 h unless set), and at most
//! [`MAX_EVENTS`] of them, pruned by the times the commands carry.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::model::{Run, RunState, TaskExecution, TaskState};
use crate::triggers::{Fire, FireOutcome};

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
    /// An object was evicted: its pipeline or run (`run` 0 for the pipeline's) kept more than the limit.
    ObjectEvicted {
        namespace: String,
        pipeline: String,
        run: u64,
        key: String,
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
            }
            | EventKind::ObjectEvicted {
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

/// The events one command makes, written by the transitions as they happen: whatever changes a run or a
/// task execution (`runs.rs`) or decides a fire (`triggers.rs`) writes here in the same step, so no change
/// can go untold. [`crate::State::apply`] passes one to every command and numbers what it holds only if
/// the command is applied; a refused command tells nothing.
///
/// Within one command, what it tells about runs it made itself (starting with their PENDING) follows
/// everything else it tells, so a fire's decision comes before the run it started.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    told: Vec<EventKind>,
    /// `(namespace, pipeline, run)` of each run this command made.
    made: Vec<(String, String, u64)>,
    about_made: Vec<EventKind>,
    /// `(namespace, pipeline, run)` of each run this command pruned: its blobs go with it.
    pruned: Vec<(String, String, u64)>,
}

impl Journal {
    /// Run `run` was made, PENDING.
    pub(crate) fn run_made(&mut self, namespace: &str, pipeline: &str, run: &Run) {
        self.made.push((namespace.to_string(), pipeline.to_string(), run.id));
        self.about_made
            .push(run_event(namespace, pipeline, run.id, RunState::Pending, &origin(run)));
    }

    /// Run `run` was pruned: what it owns outside the runs map goes too.
    pub(crate) fn run_pruned(&mut self, namespace: &str, pipeline: &str, run: u64) {
        self.pruned.push((namespace.to_string(), pipeline.to_string(), run));
    }

    /// The runs this command pruned.
    pub(crate) fn take_pruned(&mut self) -> Vec<(String, String, u64)> {
        std::mem::take(&mut self.pruned)
    }

    /// Run `run` moved to the state it is in now.
    pub(crate) fn run_changed(&mut self, namespace: &str, pipeline: &str, run: &Run) {
        let event = run_event(namespace, pipeline, run.id, run.state, &run.reason);
        self.tell(namespace, pipeline, run.id, event);
    }

    /// Task execution `task` of run `run` moved to the state it is in now, or an attempt of it ended and
    /// another follows.
    pub(crate) fn task_changed(&mut self, namespace: &str, pipeline: &str, run: u64, task: &TaskExecution) {
        let event = EventKind::Task {
            namespace: namespace.to_string(),
            pipeline: pipeline.to_string(),
            run,
            task: task.task.clone(),
            attempt: task.attempt,
            state: task.state,
            reason: task.reason.clone(),
        };
        self.tell(namespace, pipeline, run, event);
    }

    /// What `fire` did: `seen` when its key had been seen before and it changed nothing.
    pub(crate) fn fired(&mut self, fire: &Fire, outcome: &FireOutcome, seen: bool) {
        let (decision, run, reason) = match outcome {
            _ if seen => (
                FireDecision::Duplicate,
                fire_run(outcome),
                "key seen before".to_string(),
            ),
            FireOutcome::Started(run) => (FireDecision::Started, *run, String::new()),
            FireOutcome::Buffered => (FireDecision::Buffered, 0, String::new()),
            FireOutcome::Skipped(reason) => (FireDecision::Skipped, 0, reason.clone()),
        };
        self.told.push(EventKind::Fire {
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

    /// A trigger skipped `count` scheduled instants, the newest `last_scheduled_at`, without firing.
    pub(crate) fn fires_skipped(
        &mut self,
        (namespace, pipeline, subscription): (&str, &str, &str),
        count: u64,
        last_scheduled_at: i64,
        reason: &str,
    ) {
        self.told.push(EventKind::FiresSkipped {
            namespace: namespace.to_string(),
            pipeline: pipeline.to_string(),
            subscription: subscription.to_string(),
            count,
            last_scheduled_at,
            reason: reason.to_string(),
        });
    }

    /// An object of `run` (0: of the pipeline) was evicted, for `reason`.
    pub(crate) fn object_evicted(&mut self, (namespace, pipeline, run): (&str, &str, u64), key: &str, reason: &str) {
        self.told.push(EventKind::ObjectEvicted {
            namespace: namespace.to_string(),
            pipeline: pipeline.to_string(),
            run,
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Where the journal stands, to go back to with [`Journal::rewind`].
    pub(crate) fn mark(&self) -> (usize, usize, usize, usize) {
        (
            self.told.len(),
            self.made.len(),
            self.about_made.len(),
            self.pruned.len(),
        )
    }

    /// Forgets what was written since `mark`: one refused part of a command (a fire of a batch of fires)
    /// tells nothing, as a refused command does.
    pub(crate) fn rewind(&mut self, (told, made, about_made, pruned): (usize, usize, usize, usize)) {
        self.pruned.truncate(pruned);
        self.told.truncate(told);
        self.made.truncate(made);
        self.about_made.truncate(about_made);
    }

    /// Whether nothing was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.told.is_empty() && self.about_made.is_empty()
    }

    fn tell(&mut self, namespace: &str, pipeline: &str, run: u64, event: EventKind) {
        let made_here = self
            .made
            .iter()
            .any(|(n, p, r)| *r == run && n == namespace && p == pipeline);
        if made_here {
            self.about_made.push(event);
        } else {
            self.told.push(event);
        }
    }

    fn into_events(self) -> impl Iterator<Item = EventKind> {
        self.told.into_iter().chain(self.about_made)
    }
}

impl EventLog {
    /// Numbers and keeps what a command applied at `at` told.
    pub(crate) fn record(&mut self, at: i64, journal: Journal) {
        for what in journal.into_events() {
            self.push(at, what);
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
fn origin(run: &Run) -> String {
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
