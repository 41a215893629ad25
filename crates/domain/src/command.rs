//! The persisted format: [`Command`], what the replicated log carries, and [`Applied`], what applying one
//! produced.
//!
//! Old logs and snapshots are replayed, so this format only grows: add variants and defaulted fields,
//! never change or remove one. `command/tests.rs` replays a golden log written by an earlier Gofer and
//! fails if an old entry stops decoding or replays differently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::TokenRole;
use crate::executors::ExecutorInfo;
use crate::lease::{Lease, Role};
use crate::secrets::{Reseal, Sealed, SecretScope};
use crate::triggers::{Fire, FireOutcome, Registration};
use crate::{AttemptRef, Error, PipelineConfig};

/// The most commands one Batch may hold.
pub const MAX_BATCH: usize = 4096;

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
        /// How long running containers get between SIGTERM and SIGKILL; 0 for [`crate::runs::DEFAULT_CANCEL_GRACE_MS`].
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
        /// The executor that reported it, as its dispatch stream identified it; refused unless the attempt
        /// is assigned to it. Empty in entries written before reports named their executor.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        executor: String,
        at: i64,
    },
    /// The attempt ended and its logs are stored.
    AttemptFinished {
        target: AttemptRef,
        attempt: u32,
        /// The executor that reported it, as for `AttemptStarted`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        executor: String,
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
        /// What the holder serves now, recorded on the lease as it renews (the extension host: the
        /// extensions connected to it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        connected: Vec<String>,
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
        /// The executor that reported it, as for `AttemptStarted`; refused unless the LOST attempt had
        /// been assigned to it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        executor: String,
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
    /// Makes an API token (see [`crate::access`]): only the hex SHA-256 of its secret travels.
    CreateToken {
        name: String,
        role: TokenRole,
        /// Namespaces or patterns it acts in; an admin's is `*` whatever it says.
        namespaces: Vec<String>,
        hash: String,
        /// When it stops working, or 0 for never.
        #[serde(default, skip_serializing_if = "is_zero_i64")]
        expires_at: i64,
        at: i64,
    },
    /// Stops a token working everywhere; it stays listed as disabled.
    DisableToken {
        name: String,
        at: i64,
    },
    /// Forgets a token.
    DeleteToken {
        name: String,
        at: i64,
    },
    /// Sets the cluster's defaults and ceilings for a task's `cpu`, `memory` and `timeout` (see
    /// [`crate::limits::TaskLimits`]), all at once: a limit it leaves unset is unset.
    SetTaskLimits {
        limits: crate::limits::TaskLimits,
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
    /// Stores a secret's value, sealed by the api that took it (see [`crate::secrets`]): only ciphertext
    /// travels. Replaces the value the key had in that scope.
    PutSecret {
        scope: SecretScope,
        key: String,
        value: Sealed,
        /// The value's length in bytes.
        size: u64,
        /// A global secret's allow-list of namespace patterns; empty for a pipeline secret.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        namespaces: Vec<String>,
        at: i64,
    },
    /// Forgets a secret.
    DeleteSecret {
        scope: SecretScope,
        key: String,
        at: i64,
    },
    /// Replaces sealed values by the same values sealed under the current key (a key rotation); each is
    /// replaced only if the value it was made from is still the one stored.
    ResealSecrets {
        reseals: Vec<Reseal>,
        at: i64,
    },
    /// A blob kept outside the log (see [`crate::blobs`]): `holders`, a majority of the state nodes,
    /// fsynced it, and `key` names it from now on. A key under a run's prefix needs the run.
    PutBlob {
        key: String,
        digest: String,
        size: u64,
        holders: Vec<u64>,
        at: i64,
    },
    /// Names by `key` an object of a pipeline (`run` 0) or of one run: a blob a majority of the state
    /// nodes fsynced (`holders`). Past the cluster's object count the oldest object of the same pipeline
    /// or run is evicted, and told as an event.
    PutObject {
        namespace: String,
        pipeline: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        run: u64,
        key: String,
        digest: String,
        size: u64,
        holders: Vec<u64>,
        at: i64,
    },
    /// Forgets an object; its bytes go from every node once no key names them.
    DeleteObject {
        namespace: String,
        pipeline: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        run: u64,
        key: String,
        at: i64,
    },
    /// Sets how large an object may be and how many a pipeline or run keeps (see
    /// [`crate::blobs::ObjectLimits`]), all at once.
    SetObjectLimits {
        limits: crate::blobs::ObjectLimits,
        at: i64,
    },
    /// State node `node` copied the blobs `held` and lost those `lost` (found missing or corrupt).
    BlobCopies {
        node: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lost: Vec<String>,
        at: i64,
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
    /// The keys of the objects a PutObject evicted to stay within the count.
    Evicted(Vec<String>),
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
            | Command::SetEventRetention { at, .. }
            | Command::CreateToken { at, .. }
            | Command::DisableToken { at, .. }
            | Command::DeleteToken { at, .. }
            | Command::SetTaskLimits { at, .. }
            | Command::PutSecret { at, .. }
            | Command::DeleteSecret { at, .. }
            | Command::ResealSecrets { at, .. }
            | Command::PutBlob { at, .. }
            | Command::PutObject { at, .. }
            | Command::DeleteObject { at, .. }
            | Command::SetObjectLimits { at, .. }
            | Command::BlobCopies { at, .. } => Some(*at),
            Command::Batch { .. } | Command::Fenced { .. } => None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests;
