//! Who may do what on a state node's raft port, by the roles its client certificate records
//! ([`gofer_tls::Roles`]): raft's own traffic only between state nodes; a process without the state role
//! may follow the log and propose only the commands its roles issue; an executor may do nothing here.
//! A pure policy, checked by [`crate::RaftServer`] before a call is read and by `Propose` on its command.

use gofer_domain::Command;
use gofer_domain::lease::Role as LeaseRole;
use gofer_tls::{Role, Roles};

/// A call on the raft port, by its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaftCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Propose,
    ReadIndex,
    ChangeMembership,
    ReadTaskLog,
    Follow,
    ClusterStatus,
    StoreTaskLog,
    WriteBlob,
    ReadBlob,
}

impl RaftCall {
    /// The call a method name (`AppendEntries`) stands for.
    pub(crate) fn of(method: &str) -> Option<RaftCall> {
        Some(match method {
            "AppendEntries" => RaftCall::AppendEntries,
            "Vote" => RaftCall::Vote,
            "InstallSnapshot" => RaftCall::InstallSnapshot,
            "Propose" => RaftCall::Propose,
            "ReadIndex" => RaftCall::ReadIndex,
            "ChangeMembership" => RaftCall::ChangeMembership,
            "ReadTaskLog" => RaftCall::ReadTaskLog,
            "Follow" => RaftCall::Follow,
            "ClusterStatus" => RaftCall::ClusterStatus,
            "StoreTaskLog" => RaftCall::StoreTaskLog,
            "WriteBlob" => RaftCall::WriteBlob,
            "ReadBlob" => RaftCall::ReadBlob,
            _ => return None,
        })
    }

    /// The roles any one of which admits the call.
    fn admits(self) -> &'static [Role] {
        use Role::*;
        match self {
            RaftCall::AppendEntries | RaftCall::Vote | RaftCall::InstallSnapshot => &[State],
            // Commands are checked one by one, by `may_propose`.
            RaftCall::Propose => &[State, Api, Scheduler, ExtensionHost],
            // Adding and removing nodes is an admin's API call, made by whichever api serves it.
            RaftCall::ChangeMembership => &[State, Api],
            RaftCall::ReadIndex | RaftCall::Follow | RaftCall::ClusterStatus => &[State, Api, Scheduler, ExtensionHost],
            // The api serves task logs kept on other nodes; the scheduler sends them where they are kept.
            RaftCall::ReadTaskLog => &[State, Api],
            RaftCall::StoreTaskLog => &[State, Scheduler],
            // State nodes copy blobs between them; an api writes and reads objects.
            RaftCall::WriteBlob | RaftCall::ReadBlob => &[State, Api],
        }
    }
}

/// Why the raft port refused a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0}")]
    Roleless(String),
    #[error("the certificate {name:?} (roles {roles}) may not call {call:?} on the raft port")]
    Call { name: String, roles: Roles, call: RaftCall },
    #[error("the certificate {name:?} (roles {roles}) may not propose {command}")]
    Command {
        name: String,
        roles: Roles,
        command: String,
    },
}

/// Whether `peer` may make `call` at all.
pub(crate) fn may_call(peer: &gofer_tls::listen::Peer, call: RaftCall) -> Result<(), Refused> {
    if peer.roleless() {
        return Err(Refused::Roleless(peer.roleless_message()));
    }
    if call.admits().iter().any(|role| peer.has(*role)) {
        return Ok(());
    }
    Err(Refused::Call {
        name: peer.name.clone(),
        roles: peer.roles,
        call,
    })
}

/// Whether a caller with `roles` may propose `command`: a state node anything (it forwards its own
/// processes' writes); otherwise only what its roles issue.
pub(crate) fn may_propose(name: &str, roles: Roles, command: &Command) -> Result<(), Refused> {
    if roles.contains(Role::State) || issued_by(roles, command) {
        return Ok(());
    }
    Err(Refused::Command {
        name: name.to_string(),
        roles,
        command: kind(command),
    })
}

/// The command's kind as the log spells it (`create_namespace`), for messages.
fn kind(command: &Command) -> String {
    match serde_json::to_value(command) {
        Ok(serde_json::Value::Object(fields)) => match fields.get("type") {
            Some(serde_json::Value::String(kind)) => kind.clone(),
            _ => "a command".to_string(),
        },
        _ => "a command".to_string(),
    }
}

/// Whether one of `roles` issues `command`. Every variant is named, so a new command needs a decision.
fn issued_by(roles: Roles, command: &Command) -> bool {
    let api = roles.contains(Role::Api);
    match command {
        Command::CreateNamespace { .. }
        | Command::RegisterPipeline { .. }
        | Command::StartRun { .. }
        | Command::CancelRun { .. }
        | Command::InstallExtension { .. }
        | Command::UninstallExtension { .. }
        | Command::CreateSubscription { .. }
        | Command::DeleteSubscription { .. }
        | Command::CreateToken { .. }
        | Command::DisableToken { .. }
        | Command::DeleteToken { .. }
        | Command::SetEventRetention { .. }
        | Command::SetTaskLimits { .. }
        | Command::PutSecret { .. }
        | Command::DeleteSecret { .. }
        | Command::ResealSecrets { .. }
        | Command::PutObject { .. }
        | Command::DeleteObject { .. }
        | Command::SetObjectLimits { .. } => api,
        Command::AcquireLease { role, .. } | Command::ReleaseLease { role, .. } => holds(roles, *role),
        Command::Fenced { role, command, .. } => holds(roles, *role) && fenced_by(*role, command),
        Command::RegisterExtension { .. } | Command::Fire { .. } | Command::SkipFires { .. } => {
            roles.contains(Role::ExtensionHost)
        }
        Command::Batch { commands } => commands.iter().all(|c| issued_by(roles, c)),
        // The cluster's first command, and the scheduler's, which it issues only under its lease.
        Command::Init { .. }
        | Command::AssignAttempt { .. }
        | Command::AttemptStarted { .. }
        | Command::AttemptFinished { .. }
        | Command::RenewExecutors { .. }
        | Command::ExecutorLost { .. }
        | Command::AttemptReportedLate { .. }
        | Command::PutBlob { .. }
        | Command::BlobCopies { .. } => false,
    }
}

fn holds(roles: Roles, lease: LeaseRole) -> bool {
    match lease {
        LeaseRole::Scheduler => roles.contains(Role::Scheduler),
        LeaseRole::ExtensionHost => roles.contains(Role::ExtensionHost),
    }
}

/// Whether the holder of `lease` issues `command` under its fence.
fn fenced_by(lease: LeaseRole, command: &Command) -> bool {
    match (lease, command) {
        (_, Command::Batch { commands }) => commands.iter().all(|c| fenced_by(lease, c)),
        (
            LeaseRole::Scheduler,
            Command::AssignAttempt { .. }
            | Command::AttemptStarted { .. }
            | Command::AttemptFinished { .. }
            | Command::RenewExecutors { .. }
            | Command::ExecutorLost { .. }
            | Command::AttemptReportedLate { .. },
        ) => true,
        (
            LeaseRole::ExtensionHost,
            Command::Fire { .. } | Command::SkipFires { .. } | Command::RegisterExtension { .. },
        ) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
