//! Leases on the roles exactly one process plays at a time (the scheduler, the trigger timers), and the
//! fence on the commands they issue.
//!
//! A lease is taken and renewed through the replicated log. Every change of holder bumps the role's
//! epoch, and a holder's commands travel wrapped in [`crate::Command::Fenced`] with the epoch it holds:
//! apply refuses them once the epoch has moved on. So a process that believes it still holds a lease
//! it lost (a pause, a partition, a skewed clock) changes nothing, and no two holders act in one epoch.
//! Expiry is judged by the proposer's clock (`at` inside the command), which keeps apply deterministic;
//! clock skew can only make a standby take over early, and the fence makes that harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest lease a holder may ask for, in milliseconds.
pub const MAX_LEASE_MILLIS: u64 = 60_000;

/// A role that one process at a time plays for the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Assigns attempts to executors and commits their reports.
    Scheduler,
    /// Runs the interval and cron timers and the extension containers.
    ExtensionHost,
}

impl Role {
    /// The role's name as users see it: `scheduler`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::ExtensionHost => "extension-host",
        }
    }
}

/// Who holds a role, in which epoch, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    /// Counts from 1; every change of holder adds one.
    pub epoch: u64,
    pub granted_at: i64,
    /// Unix milliseconds by the holder's clock; after it any process may take the role.
    pub expires_at: i64,
    /// Fenced commands this holder had applied in this epoch.
    #[serde(default)]
    pub commands: u64,
    /// Where the holder can be reached (a scheduler's dispatch address), so that others can point there;
    /// empty if it did not say.
    #[serde(default)]
    pub address: String,
    /// What the holder served when it last renewed (the extension host: the extensions connected to it),
    /// so that any node can tell; it goes with the lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected: Vec<String>,
}

/// The most names a lease reports connected, and the longest name.
pub const MAX_CONNECTED: usize = 1024;
pub const MAX_CONNECTED_NAME_BYTES: usize = 128;

/// Every role's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    pub roles: BTreeMap<Role, Lease>,
}

impl Leases {
    /// Grants `role` to `holder` (or renews it) for `ttl_millis` from `at`, and returns its epoch.
    /// Refused while another holder's lease has not expired at `at`.
    pub(crate) fn acquire(&mut self, role: Role, holder: &str, ttl_millis: u64, at: i64) -> Result<Lease, Error> {
        if holder.is_empty() {
            return Err(Error::invalid("holder", "must not be empty"));
        }
        if ttl_millis == 0 || ttl_millis > MAX_LEASE_MILLIS {
            return Err(Error::invalid(
                "ttl_millis",
                format!("must be between 1 and {MAX_LEASE_MILLIS}"),
            ));
        }
        let expires_at = at.saturating_add(ttl_millis as i64);
        match self.roles.get_mut(&role) {
            Some(lease) if lease.holder == holder => {
                lease.expires_at = lease.expires_at.max(expires_at);
                Ok(lease.clone())
            }
            Some(lease) if at < lease.expires_at => Err(Error::FailedPrecondition(format!(
                "the {} lease is held by {} (epoch {}) until {}",
                role.as_str(),
                lease.holder,
                lease.epoch,
                lease.expires_at
            ))),
            current => {
                let epoch = current.map_or(0, |l| l.epoch) + 1;
                let lease = Lease {
                    holder: holder.to_string(),
                    epoch,
                    granted_at: at,
                    expires_at,
                    commands: 0,
                    address: String::new(),
                    connected: Vec::new(),
                };
                self.roles.insert(role, lease.clone());
                Ok(lease)
            }
        }
    }

    /// Records where the current holder of `role` can be reached, if `holder` is it.
    pub(crate) fn advertise(&mut self, role: Role, holder: &str, address: &str) {
        if let Some(lease) = self.roles.get_mut(&role)
            && lease.holder == holder
            && !address.is_empty()
        {
            lease.address = address.chars().take(256).collect();
        }
    }

    /// Checks what a holder reports connected.
    pub(crate) fn check_connected(connected: &[String]) -> Result<(), Error> {
        if connected.len() > MAX_CONNECTED {
            return Err(Error::invalid(
                "connected",
                format!("must name at most {MAX_CONNECTED}, got {}", connected.len()),
            ));
        }
        if let Some(name) = connected
            .iter()
            .find(|n| n.is_empty() || n.len() > MAX_CONNECTED_NAME_BYTES)
        {
            return Err(Error::invalid(
                "connected",
                format!(
                    "each name must be 1 to {MAX_CONNECTED_NAME_BYTES} bytes, got {} bytes",
                    name.len()
                ),
            ));
        }
        Ok(())
    }

    /// Records what `holder`, which holds `role`, serves now.
    pub(crate) fn report(&mut self, role: Role, holder: &str, connected: &[String]) {
        if let Some(lease) = self.roles.get_mut(&role)
            && lease.holder == holder
        {
            lease.connected = connected.to_vec();
        }
    }

    /// Ends `holder`'s lease of `role` in `epoch` now, so that a standby need not wait for it to expire.
    /// Releasing a lease one no longer holds changes nothing.
    pub(crate) fn release(&mut self, role: Role, holder: &str, epoch: u64, at: i64) {
        if let Some(lease) = self.roles.get_mut(&role)
            && lease.holder == holder
            && lease.epoch == epoch
        {
            lease.expires_at = lease.expires_at.min(at);
        }
    }

    /// Checks that `holder` holds `role` in `epoch`, the fence on every command it issues.
    pub(crate) fn check(&self, role: Role, holder: &str, epoch: u64) -> Result<(), Error> {
        match self.roles.get(&role) {
            Some(lease) if lease.holder == holder && lease.epoch == epoch => Ok(()),
            Some(lease) => Err(Error::fenced(format_args!(
                "{holder} acted as {} in epoch {epoch}, but epoch {} belongs to {}",
                role.as_str(),
                lease.epoch,
                lease.holder
            ))),
            None => Err(Error::fenced(format_args!("nobody holds the {} lease", role.as_str()))),
        }
    }

    /// Counts one applied fenced command of `role`'s current holder.
    pub(crate) fn count(&mut self, role: Role) {
        if let Some(lease) = self.roles.get_mut(&role) {
            lease.commands += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_refused_to_others_until_it_expires_and_each_new_holder_gets_the_next_epoch() {
        let mut leases = Leases::default();
        assert_eq!(leases.acquire(Role::Scheduler, "a", 1000, 0).unwrap().epoch, 1);
        // Renewing keeps the epoch and pushes the expiry.
        let renewed = leases.acquire(Role::Scheduler, "a", 1000, 500).unwrap();
        assert_eq!((renewed.epoch, renewed.expires_at), (1, 1500));
        assert!(leases.acquire(Role::Scheduler, "b", 1000, 1499).is_err());
        assert_eq!(leases.acquire(Role::Scheduler, "b", 1000, 1500).unwrap().epoch, 2);
        // The old holder is fenced; the new one is not.
        assert!(leases.check(Role::Scheduler, "a", 1).unwrap_err().is_fenced());
        assert!(leases.check(Role::Scheduler, "b", 2).is_ok());
        // Roles are independent.
        assert!(leases.check(Role::ExtensionHost, "b", 2).is_err());
        assert_eq!(leases.acquire(Role::ExtensionHost, "a", 1000, 0).unwrap().epoch, 1);
    }

    #[test]
    fn a_release_lets_a_standby_take_over_at_once_but_only_the_holder_can_release() {
        let mut leases = Leases::default();
        leases.acquire(Role::Scheduler, "a", 10_000, 0).unwrap();
        leases.release(Role::Scheduler, "b", 1, 10);
        assert!(leases.acquire(Role::Scheduler, "b", 1000, 20).is_err());
        leases.release(Role::Scheduler, "a", 1, 30);
        assert_eq!(leases.acquire(Role::Scheduler, "b", 1000, 30).unwrap().epoch, 2);
    }

    #[test]
    fn bad_holders_and_durations_are_refused_naming_the_field() {
        let mut leases = Leases::default();
        let err = leases.acquire(Role::Scheduler, "", 1000, 0).unwrap_err();
        assert!(err.to_string().contains("holder"), "{err}");
        let err = leases.acquire(Role::Scheduler, "a", 0, 0).unwrap_err();
        assert!(err.to_string().contains("ttl_millis"), "{err}");
        assert!(leases.roles.is_empty());
    }
}
