//! The replicated state machine: [`State`], everything the log holds once applied, and
//! [`State::apply`], the one function that changes it.
//!
//! Apply is deterministic: it reads no clock and draws no random number; the proposer puts times and the
//! cluster id inside the [`Command`]. A refused command changes nothing and returns an [`Error`], which is
//! itself the deterministic result of that log entry. Apply only dispatches: run and task transitions are
//! in `runs.rs`, extensions, subscriptions and fires in `subscriptions.rs`, leases and executors in their
//! own modules. Each command gets a [`Journal`] that those transitions tell their changes in, and its
//! events are numbered only once the command is applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::{TokenRecord, Tokens};
use crate::blobs::{Blobs, ObjectLimits};
use crate::command::{Applied, Command, MAX_BATCH};
use crate::events::{EventLog, Journal};
use crate::executors::Executors;
use crate::lease::Leases;
use crate::limits::TaskLimits;
use crate::model::{Assignment, DEFAULT_NAMESPACE, NamespaceRecord, PipelineRecord, Run};
use crate::secrets::Secrets;
use crate::triggers::ExtensionRecord;
use crate::{Error, PipelineConfig, validate_id};

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
    /// The API tokens (see [`crate::access`]); left out of a snapshot while there are none.
    #[serde(default, skip_serializing_if = "Tokens::is_empty")]
    pub tokens: Tokens,
    /// The cluster's defaults and ceilings for a task's cpu, memory and timeout; left out of a snapshot
    /// while none is set.
    #[serde(default, skip_serializing_if = "TaskLimits::is_unset")]
    pub task_limits: TaskLimits,
    /// The cluster's secrets, sealed (see [`crate::secrets`]); left out of a snapshot while there are none.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// The blobs kept outside the log (see [`crate::blobs`]); left out of a snapshot while there are none.
    #[serde(default, skip_serializing_if = "Blobs::is_empty")]
    pub blobs: Blobs,
    /// How large an object may be and how many a pipeline or run keeps; left out while unset.
    #[serde(default, skip_serializing_if = "ObjectLimits::is_unset")]
    pub object_limits: ObjectLimits,
    /// Counts the applied commands that may have changed the subscriptions, so that a reader that tracks
    /// them (the extension host's timers) looks again only then, not at every write. Not persisted, and
    /// equal in every comparison (see [`Generation`]).
    #[serde(skip)]
    pub subscriptions_changed: Generation,
}

/// A count kept beside the state for its readers, not part of what the state is: it is not persisted, a
/// decoded state starts it at 0, and any two compare equal, so two states are equal by their contents.
/// Whoever replaces a whole state (a snapshot installed, a mirror reset) carries it on, moved past the old
/// one ([`Generation::after`]), so a reader never mistakes a replaced state for one it saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generation(pub u64);

impl Generation {
    /// A generation past `self` and `other`.
    pub fn after(self, other: Generation) -> Generation {
        Generation(self.0.max(other.0) + 1)
    }
}

impl PartialEq for Generation {
    fn eq(&self, _: &Generation) -> bool {
        true
    }
}

impl Eq for Generation {}

impl State {
    /// Applies one command and numbers the events its transitions told. A refused command leaves the
    /// state exactly as it was and records nothing.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Error> {
        let mut journal = Journal::default();
        let applied = self.apply_with(command, &mut journal)?;
        // A pruned run's blobs go with it.
        for (namespace, pipeline, run) in journal.take_pruned() {
            self.blobs
                .remove_prefix(&crate::blobs::run_prefix(&namespace, &pipeline, run));
        }
        match command.at() {
            Some(at) => self.events.record(at, journal),
            // A batch or a fence applies each command inside through `apply`, which records its events.
            None => debug_assert!(journal.is_empty(), "{command:?} told events of its own"),
        }
        Ok(applied)
    }

    fn apply_with(&mut self, command: &Command, journal: &mut Journal) -> Result<Applied, Error> {
        // The writes that come often never touch the subscriptions; every other command may (a batch or a
        // fence applies its commands through `apply`, each counted on its own).
        let hot = matches!(
            command,
            Command::StartRun { .. }
                | Command::CancelRun { .. }
                | Command::AssignAttempt { .. }
                | Command::AttemptStarted { .. }
                | Command::AttemptFinished { .. }
                | Command::Fire { .. }
                | Command::SkipFires { .. }
                | Command::AcquireLease { .. }
                | Command::ReleaseLease { .. }
                | Command::RenewExecutors { .. }
                | Command::ExecutorLost { .. }
                | Command::AttemptReportedLate { .. }
                | Command::Batch { .. }
                | Command::Fenced { .. }
                | Command::CreateNamespace { .. }
                | Command::PutBlob { .. }
                | Command::BlobCopies { .. }
                | Command::PutObject { .. }
                | Command::DeleteObject { .. }
        );
        if !hot {
            self.subscriptions_changed.0 += 1;
        }
        match command {
            Command::Init { cluster_id, at } => self.init(cluster_id, *at),
            Command::CreateNamespace { namespace, at } => self.create_namespace(namespace, *at),
            Command::RegisterPipeline { namespace, config, at } => self.register_pipeline(namespace, config, *at),
            Command::StartRun {
                namespace,
                pipeline,
                request_id,
                parameters,
                retry_of,
                at,
            } => self.start_run((namespace, pipeline), request_id, parameters, *retry_of, *at, journal),
            Command::CancelRun {
                namespace,
                pipeline,
                run,
                reason,
                grace_millis,
                at,
            } => self.cancel_run((namespace, pipeline), *run, reason, *grace_millis, *at, journal),
            Command::AssignAttempt {
                target,
                attempt,
                executor,
                node,
                scheduler,
                epoch,
                at,
            } => {
                let assignment = Assignment {
                    executor: executor.clone(),
                    started: false,
                    scheduler: scheduler.clone(),
                    epoch: *epoch,
                    assigned_at: *at,
                    started_at: 0,
                };
                self.assign_attempt(target, *attempt, *node, assignment, journal)
            }
            Command::AttemptStarted {
                target,
                attempt,
                executor,
                at,
            } => self.attempt_started((target, *attempt), executor, *at, journal),
            Command::AttemptFinished {
                target,
                attempt,
                executor,
                outcome,
                log_node,
                at,
            } => self.attempt_finished((target, *attempt), executor, outcome, *log_node, *at, journal),
            Command::RenewExecutors {
                executors,
                ttl_millis,
                at,
            } => self
                .executors
                .renew(executors, *ttl_millis, *at)
                .map(|()| Applied::Done),
            Command::ExecutorLost { executor, at } => self.executor_lost(executor, *at, journal),
            Command::AttemptReportedLate {
                target,
                attempt,
                executor,
                report,
                ..
            } => self.attempt_reported_late((target, *attempt), executor, report, journal),
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
                // Each fire stands alone: one refused fire does not refuse the others in its batch, and
                // tells nothing.
                let outcomes = fires
                    .iter()
                    .map(|fire| {
                        let mark = journal.mark();
                        let outcome = self.fire(fire, *at, journal);
                        if outcome.is_err() {
                            journal.rewind(mark);
                        }
                        outcome
                    })
                    .collect();
                Ok(Applied::Fired(outcomes))
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
                .skip_fires(
                    (namespace, pipeline, label),
                    *count,
                    *last_scheduled_at,
                    reason,
                    *at,
                    journal,
                )
                .map(|()| Applied::Done),
            Command::Batch { commands } => self.batch(commands),
            Command::AcquireLease {
                role,
                holder,
                ttl_millis,
                address,
                connected,
                at,
            } => {
                crate::lease::Leases::check_connected(connected)?;
                let granted = self.leases.acquire(*role, holder, *ttl_millis, *at)?;
                self.leases.advertise(*role, holder, address);
                self.leases.report(*role, holder, connected);
                Ok(Applied::Lease(self.leases.roles.get(role).cloned().unwrap_or(granted)))
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
            Command::CreateToken {
                name,
                role,
                namespaces,
                hash,
                expires_at,
                at,
            } => {
                let record = TokenRecord {
                    role: *role,
                    namespaces: namespaces.clone(),
                    hash: hash.clone(),
                    created_at: *at,
                    expires_at: *expires_at,
                    disabled_at: 0,
                };
                self.tokens.create(name, record).map(|()| Applied::Done)
            }
            Command::DisableToken { name, at } => self.tokens.disable(name, *at).map(|()| Applied::Done),
            Command::DeleteToken { name, .. } => self.tokens.delete(name).map(|()| Applied::Done),
            Command::SetEventRetention { retention_millis, at } => self
                .events
                .set_retention(*retention_millis, *at)
                .map(|()| Applied::Done),
            Command::SetTaskLimits { limits, .. } => {
                limits.check()?;
                self.task_limits = *limits;
                Ok(Applied::Done)
            }
            Command::PutSecret {
                scope,
                key,
                value,
                size,
                namespaces,
                at,
            } => self
                .put_secret(scope, key, value, *size, namespaces, *at)
                .map(|()| Applied::Done),
            Command::DeleteSecret { scope, key, .. } => self.secrets.delete(scope, key).map(|()| Applied::Done),
            Command::ResealSecrets { reseals, .. } => self.reseal_secrets(reseals),
            Command::PutBlob {
                key,
                digest,
                size,
                holders,
                at,
            } => self.put_blob(key, digest, *size, holders, *at).map(|()| Applied::Done),
            Command::PutObject {
                namespace,
                pipeline,
                run,
                key,
                digest,
                size,
                holders,
                at,
            } => self
                .put_object((namespace, pipeline, *run), key, (digest, *size, holders), *at, journal)
                .map(Applied::Evicted),
            Command::DeleteObject {
                namespace,
                pipeline,
                run,
                key,
                ..
            } => self
                .delete_object((namespace, pipeline, *run), key)
                .map(|()| Applied::Done),
            Command::SetObjectLimits { limits, .. } => {
                limits.check()?;
                self.object_limits = *limits;
                Ok(Applied::Done)
            }
            Command::BlobCopies { node, held, lost, .. } => {
                self.blobs.set_copies(*node, held, lost).map(|()| Applied::Done)
            }
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

    /// `PutBlob`: a key under a run's prefix needs the run, or nothing would ever forget it.
    fn put_blob(&mut self, key: &str, digest: &str, size: u64, holders: &[u64], at: i64) -> Result<(), Error> {
        if let Some(rest) = key.strip_prefix("runs/") {
            let mut parts = rest.splitn(4, '/');
            let (Some(namespace), Some(pipeline), Some(run), Some(_)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::invalid("key", "a run's key is runs/NAMESPACE/PIPELINE/RUN/NAME"));
            };
            let run = run
                .parse::<u64>()
                .map_err(|_| Error::invalid("key", "a run's key names the run by its number"))?;
            self.run(namespace, pipeline, run)?;
        }
        self.blobs.put(key, digest, size, holders, at)
    }

    fn init(&mut self, cluster_id: &str, at: i64) -> Result<Applied, Error> {
        if !self.cluster_id.is_empty() {
            return Err(Error::FailedPrecondition("cluster is already initialized".into()));
        }
        self.cluster_id = cluster_id.to_string();
        self.namespaces
            .insert(DEFAULT_NAMESPACE.to_string(), NamespaceRecord::new(at));
        Ok(Applied::Done)
    }

    fn create_namespace(&mut self, namespace: &str, at: i64) -> Result<Applied, Error> {
        validate_id("id", namespace)?;
        if self.namespaces.contains_key(namespace) {
            return Err(Error::AlreadyExists(format!("namespace {namespace:?}")));
        }
        self.namespaces.insert(namespace.to_string(), NamespaceRecord::new(at));
        Ok(Applied::Done)
    }

    /// Stores `config` as the pipeline's next version, making the pipeline at version 1, unless a task asks
    /// for more than one of the cluster's ceilings.
    fn register_pipeline(&mut self, namespace: &str, config: &PipelineConfig, at: i64) -> Result<Applied, Error> {
        config.validate()?;
        self.task_limits.check_pipeline(config)?;
        let record = self
            .namespace_mut(namespace)?
            .pipelines
            .entry(config.id.clone())
            .or_insert_with(|| PipelineRecord::new(at));
        record.versions.push(config.clone());
        record.updated_at = at;
        Ok(Applied::Version(record.versions.len() as u64))
    }

    /// Applies each command in turn, each with its own result.
    fn batch(&mut self, commands: &[Command]) -> Result<Applied, Error> {
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
        let found = record
            .runs
            .get(&run)
            .ok_or_else(|| Error::run_not_found(pipeline, run))?;
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

    /// Pipeline `id` of `namespace`, to change something other than its runs (see `State::pipeline_mut`).
    pub(crate) fn record_mut(&mut self, namespace: &str, id: &str) -> Result<&mut PipelineRecord, Error> {
        self.namespace_mut(namespace)?
            .pipelines
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("pipeline {id:?} in namespace {namespace:?}")))
    }
}

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

#[cfg(test)]
mod tests;
