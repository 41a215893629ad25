//! Executor leases: which executors the cluster counts as alive, committed in the log.
//!
//! The scheduler that holds the scheduler lease renews the lease of every executor that keeps
//! heartbeating on its dispatch stream ([`crate::Command::RenewExecutors`], one log entry for all of them).
//! Once an executor's lease has run out, that scheduler declares it lost ([`crate::Command::ExecutorLost`]):
//! apply ends each attempt assigned to it as LOST, and the task's retry policy decides what happens next.
//! Apply refuses to declare an executor lost before its lease ran out by the proposer's clock, and refuses
//! assignments to a lost executor until it renews, so both rules hold whatever the scheduler believed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, validate_id};

/// The shortest and longest executor lease, in milliseconds.
pub const MIN_EXECUTOR_LEASE_MILLIS: u64 = 1_000;
pub const MAX_EXECUTOR_LEASE_MILLIS: u64 = 600_000;
/// At most this many labels per executor.
pub const MAX_LABELS: usize = 32;

/// What an executor says about itself when it connects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    pub id: String,
    /// How many attempts it runs at once; 0 means no limit.
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its size: the CPUs (in thousandths) and memory of the host it runs tasks on, which the `cpu` and
    /// `memory` of the attempts it runs at once may add up to; 0 for no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub millicpus: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What one attempt takes of an executor's size: its task's `cpu` (in thousandths) and `memory`, as the
/// cluster's defaults and ceilings make them; 0 for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    pub millicpus: u64,
    pub memory_bytes: u64,
}

impl Need {
    /// What an attempt of `task` takes under `limits`.
    pub fn of(task: &crate::TaskConfig, limits: &crate::limits::TaskLimits) -> Need {
        Need {
            millicpus: limits.cpu_for(task).map_or(0, |c| u64::try_from(c.0).unwrap_or(0)),
            memory_bytes: limits.memory_bytes_for(task).unwrap_or(0),
        }
    }

    /// Whether `self` fits beside `used` in a size of `millicpus` and `memory_bytes` (0: no limit).
    pub fn fits(self, used: Need, millicpus: u64, memory_bytes: u64) -> bool {
        let within = |need: u64, used: u64, size: u64| size == 0 || used.saturating_add(need) <= size;
        within(self.millicpus, used.millicpus, millicpus) && within(self.memory_bytes, used.memory_bytes, memory_bytes)
    }

    /// `self` and `other` together.
    pub fn plus(self, other: Need) -> Need {
        Need {
            millicpus: self.millicpus.saturating_add(other.millicpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

impl ExecutorInfo {
    fn validate(&self, field: &str) -> Result<(), Error> {
        validate_id(&format!("{field}.id"), &self.id)?;
        check_labels(&format!("{field}.labels"), &self.labels)
    }

    /// Whether it carries every one of `required` with the same value.
    pub fn has_labels(&self, required: &BTreeMap<String, String>) -> bool {
        required.iter().all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

/// Checks labels (an executor's, or those a task requires) as `field`: at most [`MAX_LABELS`], each key
/// an id and each value at most 128 characters without control characters.
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(field, format!("at most {MAX_LABELS} labels")));
    }
    for (key, value) in labels {
        validate_id(field, key)?;
        if value.len() > 128 || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                format!("{field}.{key}"),
                "values are at most 128 characters, without control characters",
            ));
        }
    }
    Ok(())
}

/// Says why no executor can take a task that requires `required` and `need`: `no executor with zone=a`
/// (every label, comma-separated), then what it needs of an executor's size (`cpu>=4`, `memory>=512MiB`).
pub fn no_executor_with(required: &BTreeMap<String, String>, need: Need) -> String {
    let mut wanted: Vec<String> = required.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if need.millicpus > 0 {
        wanted.push(format!("cpu>={}", need.millicpus as f64 / 1000.0));
    }
    if need.memory_bytes > 0 {
        wanted.push(format!("memory>={}MiB", need.memory_bytes.div_ceil(1 << 20)));
    }
    format!("no executor with {}", wanted.join(","))
}

/// How long an executor declared lost is remembered (and refused attempts) before it is forgotten.
pub const FORGET_LOST_AFTER_MS: i64 = 7 * 24 * 3_600_000;

/// One executor as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    pub registered_at: i64,
    pub renewed_at: i64,
    /// Unix milliseconds by the renewing scheduler's clock.
    pub expires_at: i64,
    /// When it was declared lost; 0 while it is alive.
    pub lost_at: i64,
    /// Its size, as [`ExecutorInfo`] says; 0 for no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub millicpus: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
}

/// Every executor that registered, by id, but those lost more than [`FORGET_LOST_AFTER_MS`] ago.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executors {
    pub executors: BTreeMap<String, ExecutorRecord>,
}

impl Executors {
    /// Registers or renews each executor's lease until `at + ttl_millis`; a lost executor is alive again.
    pub(crate) fn renew(&mut self, executors: &[ExecutorInfo], ttl_millis: u64, at: i64) -> Result<(), Error> {
        if !(MIN_EXECUTOR_LEASE_MILLIS..=MAX_EXECUTOR_LEASE_MILLIS).contains(&ttl_millis) {
            return Err(Error::invalid(
                "ttl_millis",
                format!("must be between {MIN_EXECUTOR_LEASE_MILLIS} and {MAX_EXECUTOR_LEASE_MILLIS}"),
            ));
        }
        for (i, info) in executors.iter().enumerate() {
            info.validate(&format!("executors[{i}]"))?;
        }
        for info in executors {
            let record = self.executors.entry(info.id.clone()).or_insert_with(|| ExecutorRecord {
                capacity: 0,
                labels: BTreeMap::new(),
                registered_at: at,
                renewed_at: at,
                expires_at: at,
                lost_at: 0,
                millicpus: 0,
                memory_bytes: 0,
            });
            record.capacity = info.capacity;
            record.millicpus = info.millicpus;
            record.memory_bytes = info.memory_bytes;
            record.labels = info.labels.clone();
            record.renewed_at = at;
            record.expires_at = record.expires_at.max(at.saturating_add(ttl_millis as i64));
            record.lost_at = 0;
        }
        // Executors lost long ago are forgotten, so names that come and go do not pile up.
        self.executors
            .retain(|_, r| r.lost_at == 0 || at.saturating_sub(r.lost_at) < FORGET_LOST_AFTER_MS);
        Ok(())
    }

    /// Marks `executor` lost at `at`, which must be past its lease.
    pub(crate) fn lose(&mut self, executor: &str, at: i64) -> Result<(), Error> {
        let record = self
            .executors
            .get_mut(executor)
            .ok_or_else(|| Error::NotFound(format!("executor {executor:?}")))?;
        if record.lost_at != 0 {
            return Err(Error::FailedPrecondition(format!(
                "executor {executor:?} is already lost"
            )));
        }
        if at < record.expires_at {
            return Err(Error::FailedPrecondition(format!(
                "executor {executor:?} holds its lease until {}",
                record.expires_at
            )));
        }
        record.lost_at = at;
        Ok(())
    }

    /// Whether attempts may be given to `executor`: it is unknown (an executor from before leases) or
    /// has not been declared lost since it last renewed.
    pub fn may_assign(&self, executor: &str) -> bool {
        self.executors.get(executor).is_none_or(|r| r.lost_at == 0)
    }

    /// Why a task that requires the labels `required` and takes `need` can be given to no executor at
    /// `now`: none alive by the log (not lost, lease not run out) carries them and is that large, however
    /// idle. `None` when one is (the task merely waits its turn).
    pub fn none_with(&self, required: &BTreeMap<String, String>, need: Need, now: i64) -> Option<String> {
        if required.is_empty() && need == Need::default() {
            return None;
        }
        let fits = self.executors.values().any(|r| {
            r.lost_at == 0
                && r.expires_at > now
                && required.iter().all(|(k, v)| r.labels.get(k) == Some(v))
                && need.fits(Need::default(), r.millicpus, r.memory_bytes)
        });
        (!fits).then(|| no_executor_with(required, need))
    }

    /// Executors alive by the log whose lease ran out before `now`.
    pub fn expired(&self, now: i64) -> impl Iterator<Item = &str> {
        self.executors
            .iter()
            .filter(move |(_, r)| r.lost_at == 0 && r.expires_at <= now)
            .map(|(id, _)| id.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_task_waits_saying_which_labels_no_live_executor_carries() {
        let mut executors = Executors::default();
        let zone_a = ExecutorInfo {
            id: "e1".into(),
            capacity: 0,
            labels: BTreeMap::from([("zone".into(), "a".into()), ("disk".into(), "ssd".into())]),
            ..Default::default()
        };
        executors.renew(&[zone_a], 5_000, 1_000).unwrap();
        let wants = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(executors.none_with(&wants(&[]), Need::default(), 2_000), None);
        assert_eq!(
            executors.none_with(&wants(&[("zone", "a"), ("disk", "ssd")]), Need::default(), 2_000),
            None
        );
        assert_eq!(
            executors
                .none_with(&wants(&[("zone", "a"), ("gpu", "1")]), Need::default(), 2_000)
                .as_deref(),
            Some("no executor with gpu=1,zone=a")
        );
        // Its lease ran out: it carries nothing any more.
        assert_eq!(
            executors
                .none_with(&wants(&[("zone", "a")]), Need::default(), 6_000)
                .as_deref(),
            Some("no executor with zone=a")
        );
        // A sized executor: a task larger than it waits saying what it needs; one that fits does not.
        let sized = ExecutorInfo {
            id: "e2".into(),
            millicpus: 2_000,
            memory_bytes: 1 << 30,
            ..Default::default()
        };
        executors.renew(&[sized], 5_000, 6_000).unwrap();
        let need = |millicpus, memory_bytes| Need {
            millicpus,
            memory_bytes,
        };
        assert_eq!(executors.none_with(&wants(&[]), need(2_000, 1 << 30), 7_000), None);
        assert_eq!(
            executors.none_with(&wants(&[]), need(4_000, 0), 7_000).as_deref(),
            Some("no executor with cpu>=4")
        );
        assert_eq!(
            executors
                .none_with(&wants(&[]), need(500, (2 << 30) + 1), 7_000)
                .as_deref(),
            Some("no executor with cpu>=0.5,memory>=2049MiB")
        );
    }

    use super::*;

    fn info(id: &str) -> ExecutorInfo {
        ExecutorInfo {
            id: id.into(),
            capacity: 4,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_runs_out_and_only_then_may_the_executor_be_lost() {
        let mut executors = Executors::default();
        executors.renew(&[info("e1"), info("e2")], 5_000, 1_000).unwrap();
        assert_eq!(executors.expired(5_999).count(), 0);
        assert!(executors.lose("e1", 5_999).is_err(), "still leased");
        executors.renew(&[info("e2")], 5_000, 4_000).unwrap();
        assert_eq!(executors.expired(6_000).collect::<Vec<_>>(), ["e1"]);
        executors.lose("e1", 6_000).unwrap();
        assert!(!executors.may_assign("e1"));
        assert!(executors.may_assign("e2") && executors.may_assign("never-seen"));
        assert!(executors.lose("e1", 7_000).is_err(), "lost once");
        assert_eq!(
            executors.expired(8_000).count(),
            0,
            "a lost executor is not expired again"
        );
        executors.renew(&[info("e1")], 5_000, 9_000).unwrap();
        assert!(executors.may_assign("e1"), "it came back");
        assert_eq!(executors.executors["e1"].registered_at, 1_000);
        assert!(executors.lose("missing", 9_000).is_err());
    }

    #[test]
    fn an_executor_lost_for_a_week_is_forgotten_and_a_live_one_never() {
        let mut executors = Executors::default();
        executors.renew(&[info("gone"), info("idle")], 5_000, 0).unwrap();
        executors.lose("gone", 5_000).unwrap();
        executors
            .renew(&[info("idle")], 5_000, 5_000 + FORGET_LOST_AFTER_MS - 1)
            .unwrap();
        assert!(executors.executors.contains_key("gone"), "remembered for a week");
        executors
            .renew(&[info("idle")], 5_000, 5_000 + FORGET_LOST_AFTER_MS)
            .unwrap();
        assert_eq!(executors.executors.keys().collect::<Vec<_>>(), ["idle"]);
    }

    #[test]
    fn bad_renewals_name_the_field_and_change_nothing() {
        let mut executors = Executors::default();
        let before = executors.clone();
        for (bad, ttl, field) in [
            (info("Bad Id"), 5_000, "executors[0].id"),
            (info("e"), 10, "ttl_millis"),
            (
                ExecutorInfo {
                    labels: BTreeMap::from([("k".to_string(), "\u{7}".to_string())]),
                    ..info("e")
                },
                5_000,
                "executors[0].labels.k",
            ),
        ] {
            match executors.renew(&[bad], ttl, 1) {
                Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(executors, before);
    }
}
