//! [`LeaseHolder`]: takes and keeps a role's lease through the replicated log (see
//! [`gofer_domain::lease`]), and fences every command the role issues with the epoch it holds.
//!
//! The holder renews every third of the lease; a standby reads the lease from the state and asks for it
//! only once it has expired, so a quiet cluster writes about three entries a second per role. The holder
//! counts its lease from *before* the renewal it sent, by the monotonic clock, so it stops acting before
//! any standby can take over; if its clock or a pause fools it anyway, the fence refuses what it sends.
//! The times it proposes (and compares a standby's lease expiry with) come from its injected [`Clock`].

use std::time::Duration;

use gofer_clock::Clock;
use gofer_domain::lease::Role;
use gofer_domain::{Applied, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Error, StateHandle};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_millis(1500);

/// How often a lease that keeps failing to be taken or renewed is logged.
const TELL_EVERY: Duration = Duration::from_secs(5);

/// A process's claim on one role. Clones share it.
#[derive(Clone)]
pub struct LeaseHolder {
    state: StateHandle,
    role: Role,
    holder: String,
    epoch: watch::Receiver<Option<u64>>,
}

impl LeaseHolder {
    /// Starts contending for `role` as `holder` (unique among the processes that may play it), from a
    /// task on `tracker`, until `shutdown`; then a held lease is released so a standby takes over at once.
    pub fn spawn(
        state: StateHandle,
        role: Role,
        holder: String,
        clock: Clock,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> LeaseHolder {
        Self::spawn_advertising(state, role, holder, String::new(), clock, tracker, shutdown)
    }

    /// As [`LeaseHolder::spawn`], recording `address` (where this process can be reached for the role) on
    /// the lease whenever it holds it, so that other processes can point there.
    pub fn spawn_advertising(
        state: StateHandle,
        role: Role,
        holder: String,
        address: String,
        clock: Clock,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> LeaseHolder {
        Self::spawn_reporting(state, role, holder, address, None, clock, tracker, shutdown)
    }

    /// [`LeaseHolder::spawn_advertising`], also reporting on the lease what `connected` holds each time
    /// it renews, and renewing at once when that changes (the extension host: the extensions connected
    /// to it, so that every node can tell).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_reporting(
        state: StateHandle,
        role: Role,
        holder: String,
        address: String,
        connected: Option<watch::Receiver<Vec<String>>>,
        clock: Clock,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> LeaseHolder {
        let (tx, epoch) = watch::channel(None);
        let claim = Claim {
            role,
            holder: holder.clone(),
            address,
            connected,
        };
        tracker.spawn(keep(state.clone(), claim, clock, tx, shutdown));
        LeaseHolder {
            state,
            role,
            holder,
            epoch,
        }
    }

    /// The epoch this process holds the role in, if it holds it now.
    pub fn epoch(&self) -> Option<u64> {
        *self.epoch.borrow()
    }

    /// A receiver that changes whenever this process gains or loses the role.
    pub fn watch(&self) -> watch::Receiver<Option<u64>> {
        self.epoch.clone()
    }

    /// Who this process is, as the lease names it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Commits `command` fenced by the epoch held now; refused if this process does not hold the role.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let epoch = self.epoch().ok_or_else(|| {
            Error::Rejected(gofer_domain::Error::fenced(format_args!(
                "{} does not hold the {} lease",
                self.holder,
                self.role.as_str()
            )))
        })?;
        self.state
            .propose(Command::Fenced {
                role: self.role,
                holder: self.holder.clone(),
                epoch,
                command: Box::new(command),
            })
            .await
    }
}

/// What a holder contends for: the role, its own name, and the address it records on the lease.
struct Claim {
    role: Role,
    holder: String,
    address: String,
    connected: Option<watch::Receiver<Vec<String>>>,
}

async fn keep(
    state: StateHandle,
    Claim {
        role,
        holder,
        address,
        mut connected,
    }: Claim,
    clock: Clock,
    tx: watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let ttl_millis = LEASE_TTL.as_millis() as u64;
    let renew_every = LEASE_TTL / 3;
    let mut valid_until = Instant::now();
    let mut last_told: Option<Instant> = None;
    let mut clock_moved = clock.changes();
    loop {
        let now = clock.now_millis();
        let current = state.read(|s| s.leases.roles.get(&role).cloned());
        // Copied out first: a guard borrowed in the `if let` would live through the block, and
        // `send_replace` would wait for it forever.
        let held = *tx.borrow();
        if let Some(held) = held
            && current.as_ref().is_some_and(|l| l.holder != holder || l.epoch != held)
        {
            tracing::warn!(role = role.as_str(), %holder, epoch = held, "another process took the lease; standing by");
            tx.send_replace(None);
        }
        let free_at = match &current {
            Some(lease) if lease.holder != holder && tx.borrow().is_none() => Some(lease.expires_at),
            _ => None,
        };
        if free_at.is_none_or(|at| at <= now) {
            let sent = Instant::now();
            let command = Command::AcquireLease {
                role,
                holder: holder.clone(),
                ttl_millis,
                address: address.clone(),
                connected: connected
                    .as_mut()
                    .map(|c| c.borrow_and_update().clone())
                    .unwrap_or_default(),
                at: now,
            };
            // The lease counts from `sent`, so a slow answer only shortens it; one that takes longer than
            // a lease is given up.
            match tokio::time::timeout(LEASE_TTL * 4, state.propose(command)).await {
                Ok(Ok(Applied::Lease(lease))) if lease.holder == holder && sent + LEASE_TTL > Instant::now() => {
                    valid_until = sent + LEASE_TTL;
                    if *tx.borrow() != Some(lease.epoch) {
                        tracing::info!(role = role.as_str(), %holder, epoch = lease.epoch, "holding the lease");
                        tx.send_replace(Some(lease.epoch));
                    }
                }
                Ok(Err(Error::Rejected(_))) => {}
                // Said at most every few seconds: a standby that cannot take a lease nobody holds (or a
                // holder that cannot renew it) is what an operator needs to see.
                Ok(other) if last_told.is_none_or(|t| t.elapsed() >= TELL_EVERY) => {
                    last_told = Some(Instant::now());
                    tracing::warn!(role = role.as_str(), %holder, ?other, "the lease was not taken or renewed");
                }
                Err(_) if last_told.is_none_or(|t| t.elapsed() >= TELL_EVERY) => {
                    last_told = Some(Instant::now());
                    tracing::warn!(role = role.as_str(), %holder, "taking or renewing the lease timed out");
                }
                Ok(_) | Err(_) => {}
            }
        }
        if Instant::now() >= valid_until && tx.borrow().is_some() {
            tracing::warn!(role = role.as_str(), %holder, "the lease lapsed; standing by");
            tx.send_replace(None);
        }
        let next = match (tx.borrow().is_some(), free_at) {
            (true, _) => renew_every,
            // A standby wakes when the holder's lease would expire, and at least every third of a lease.
            (false, Some(at)) => Duration::from_millis((at - now).clamp(10, renew_every.as_millis() as i64) as u64),
            (false, None) => renew_every,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(next) => {}
            // The lease's expiry is a wall-clock time: when the clock jumps, look again at once.
            () = clock_moved.changed() => {}
            // What it reports changed: tell at once.
            () = reported_changed(connected.as_mut()) => {}
        }
    }
    if let Some(epoch) = tx.send_replace(None) {
        let release = Command::ReleaseLease {
            role,
            holder: holder.clone(),
            epoch,
            at: clock.now_millis(),
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), state.propose(release)).await {
            tracing::info!(role = role.as_str(), %holder, epoch, "released the lease");
        }
    }
}

#[cfg(test)]
mod tests;

/// Completes when what the holder reports changes; never, if it reports nothing (or its sender is gone).
async fn reported_changed(connected: Option<&mut watch::Receiver<Vec<String>>>) {
    if let Some(connected) = connected
        && connected.changed().await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}
