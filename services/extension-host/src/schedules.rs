//! The built-in `interval` and `cron` triggers: one timer loop over every such subscription.
//!
//! Each scheduled instant fires with the key `<extension>:<namespace>/<pipeline>/<label>:<instant>`, so a
//! retried, replayed or restarted fire never makes a second run. When a subscription first comes into
//! view (at start, or when it is created) the loop catches up from the last instant the log recorded:
//! missed instants inside `catchup_window` fire once each, older ones are recorded as skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gofer_domain::Command;
use gofer_domain::schedule::{ScheduleSettings, catch_up, jitter_ms};
use gofer_domain::triggers::{Fire, FireOutcome};
use gofer_state::StateHandle;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::ExtensionHost;
use crate::fires::FireQueue;

/// A subscription's identity: namespace, pipeline, label.
type SubKey = (String, String, String);

struct Tracked {
    extension: String,
    created_at: i64,
    settings: ScheduleSettings,
    /// The next scheduled instant to fire, if the schedule has one.
    next: Option<i64>,
}

impl Tracked {
    fn fire_at(&self, key: &SubKey) -> Option<i64> {
        let instant = self.next?;
        Some(instant + jitter_ms(&subscription_id(key), instant, self.settings.jitter_ms))
    }
}

fn subscription_id((ns, pipeline, label): &SubKey) -> String {
    format!("{ns}/{pipeline}/{label}")
}

/// Runs the interval and cron triggers of `host` until its shutdown.
pub(crate) async fn run(host: &ExtensionHost) {
    let (state, lease, fires, clock) = (&host.state, &host.lease, &host.fires, &host.clock);
    let (tracker, shutdown) = (&host.tracker, &host.shutdown);
    let mut changes = state.subscribe();
    let mut clock_moved = clock.changes();
    let mut tracked: BTreeMap<SubKey, Tracked> = BTreeMap::new();
    // Fires whose commit failed come back here to be tried again with the same key.
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Fire>();
    // The subscriptions' generation last synced: the loop wakes at every applied write, but reads the
    // subscriptions again only when one may have changed, and scans its timers only when one is due (or
    // the set or the clock changed), so a write costs it nothing at 100,000 subscriptions.
    let mut seen: Option<u64> = None;
    let mut scan = true;
    let mut wake: Option<i64> = None;
    loop {
        // Only the lease holder's timers fire; a standby takes over from the log when the lease lapses.
        // Fires carry idempotency keys, so a short overlap while the lease moves makes no second run.
        let holding = lease.epoch().is_some();
        if holding {
            let generation = state.read(|s| s.subscriptions_changed.0);
            if seen != Some(generation) {
                sync(state, fires, tracker, &mut tracked, &retry_tx, clock.now_millis());
                seen = Some(generation);
                scan = true;
            }
        } else if seen.is_some() || !tracked.is_empty() {
            tracked.clear();
            seen = None;
            scan = true;
        }
        let now = clock.now_millis();
        if scan || wake.is_some_and(|at| at <= now) {
            let mut due = Vec::new();
            for (key, t) in tracked.iter_mut() {
                while let (Some(instant), Some(fire_at)) = (t.next, t.fire_at(key)) {
                    if fire_at > now {
                        break;
                    }
                    due.push(fire_for(key, &t.extension, instant));
                    t.next = t.settings.schedule.next_after(instant);
                }
            }
            for fire in due {
                send(fires, tracker, fire, &retry_tx);
            }
            wake = tracked.iter().filter_map(|(k, t)| t.fire_at(k)).min();
            scan = false;
        }
        let sleep = match wake {
            // A standby looks again every half second: it may hold the lease next.
            _ if tracked.is_empty() && !holding => Duration::from_millis(500),
            Some(at) => Duration::from_millis((at - clock.now_millis()).clamp(0, 60_000) as u64),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            Some(fire) = retry_rx.recv() => {
                // Back off briefly so that a log that cannot take writes is not hammered.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                send(fires, tracker, fire, &retry_tx);
            }
            () = tokio::time::sleep(sleep) => {}
            // Fires are due at wall-clock instants: when the clock jumps, look again at once.
            () = clock_moved.changed() => scan = true,
        }
    }
}

fn fire_for((ns, pipeline, label): &SubKey, extension: &str, instant: i64) -> Fire {
    Fire {
        namespace: ns.clone(),
        pipeline: pipeline.clone(),
        subscription: label.clone(),
        extension: extension.to_string(),
        idempotency_key: format!("{extension}:{ns}/{pipeline}/{label}:{instant}"),
        scheduled_at: instant,
        delivery: String::new(),
        parameters: BTreeMap::new(),
    }
}

/// Queues a fire and logs what it did, from a task on `tracker`; a fire the log could not take is retried.
fn send(fires: &FireQueue, tracker: &TaskTracker, fire: Fire, retry: &mpsc::UnboundedSender<Fire>) {
    // Queued here, in the caller's order, so that caught-up instants are committed oldest first.
    let committed = fires.enqueue(fire.clone());
    let retry = retry.clone();
    tracker.spawn(async move {
        let key = fire.idempotency_key.clone();
        match committed.await {
            Ok(Ok((FireOutcome::Started(run), duplicate))) => {
                tracing::debug!(%key, run, duplicate, "scheduled fire started a run")
            }
            Ok(Ok((FireOutcome::Buffered, _))) => tracing::info!(%key, "scheduled fire buffered"),
            Ok(Ok((FireOutcome::Skipped(reason), _))) => tracing::info!(%key, %reason, "scheduled fire skipped"),
            // The subscription went away meanwhile: nothing to retry.
            Ok(Err(err)) => tracing::debug!(%key, %err, "scheduled fire refused"),
            Err(err) => {
                tracing::warn!(%key, %err, "could not commit a scheduled fire; retrying");
                let _ = retry.send(fire);
            }
        }
    });
}

/// What the loop needs of one subscription: key, extension, created, last scheduled instant, settings.
type SubscriptionView = (SubKey, String, i64, i64, BTreeMap<String, String>);

/// Brings `tracked` in line with the subscriptions in the log, catching up on the new ones.
fn sync(
    state: &StateHandle,
    fires: &FireQueue,
    tracker: &TaskTracker,
    tracked: &mut BTreeMap<SubKey, Tracked>,
    retry: &mpsc::UnboundedSender<Fire>,
    now: i64,
) {
    let current: Vec<SubscriptionView> = state.read(|s| {
        s.subscriptions()
            .filter(|(_, _, _, sub)| sub.extension == "interval" || sub.extension == "cron")
            .map(|(ns, p, label, sub)| {
                let key = (ns.to_string(), p.to_string(), label.to_string());
                (
                    key,
                    sub.extension.clone(),
                    sub.created_at,
                    sub.last_scheduled_at,
                    sub.settings.clone(),
                )
            })
            .collect()
    });
    let live: BTreeSet<&SubKey> = current.iter().map(|(k, ..)| k).collect();
    tracked.retain(|k, _| live.contains(k));
    for (key, extension, created_at, last_scheduled_at, settings) in &current {
        if tracked.get(key).is_some_and(|t| t.created_at == *created_at) {
            continue;
        }
        let parsed = match extension.as_str() {
            "interval" => ScheduleSettings::interval(settings, *created_at),
            _ => ScheduleSettings::cron(settings),
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                // Settings were checked when the subscription was made; this only happens if the rules
                // grew stricter since. Say so once and leave the subscription alone.
                tracing::error!(subscription = %subscription_id(key), %err, "cannot schedule subscription");
                continue;
            }
        };
        let caught = catch_up(&parsed.schedule, *last_scheduled_at, now, parsed.catchup_window_ms);
        if caught.skipped > 0 {
            let window = parsed.catchup_window_ms / 1000;
            tracing::info!(subscription = %subscription_id(key), skipped = caught.skipped, "missed fires are older than the catch-up window");
            let command = Command::SkipFires {
                namespace: key.0.clone(),
                pipeline: key.1.clone(),
                label: key.2.clone(),
                count: caught.skipped,
                last_scheduled_at: caught.last_skipped.unwrap_or(*last_scheduled_at),
                reason: format!("missed while no trigger ran, older than the catch-up window ({window}s)"),
                at: now,
            };
            let state = state.clone();
            tracker.spawn(async move {
                if let Err(err) = state.propose(command).await {
                    tracing::warn!(%err, "could not record skipped fires");
                }
            });
        }
        for instant in &caught.fire {
            send(fires, tracker, fire_for(key, extension, *instant), retry);
        }
        let from = caught.fire.last().copied().unwrap_or(*last_scheduled_at).max(now);
        let next = parsed.schedule.next_after(from);
        tracked.insert(
            key.clone(),
            Tracked {
                extension: extension.clone(),
                created_at: *created_at,
                settings: parsed,
                next,
            },
        );
    }
}
