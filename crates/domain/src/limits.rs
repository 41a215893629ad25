//! A task's guardrails as the pipeline format spells them: `timeout` (a duration), `cpu` (a number of
//! CPUs, such as `0.5`), `memory` (a size, such as `256MiB`), and how each is checked; and the cluster's
//! [`TaskLimits`], the defaults and ceilings an operator sets for them.
//!
//! The limits live in the replicated state (set by [`crate::Command::SetTaskLimits`]), so that every api
//! node refuses the same pipelines and every scheduler starts attempts with the same defaults. A ceiling
//! is checked when a pipeline is registered, inside apply; defaults (and the ceilings, for versions
//! registered before a ceiling was lowered) are applied when an attempt starts.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::schedule::parse_duration;

/// The longest `timeout` a task may set.
pub const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3_600_000;
/// The least `memory` a task may set: below it Docker refuses to create the container.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The most `cpu` a task may set.
pub const MAX_CPUS: f64 = 256.0;

/// A CPU limit in thousandths of a CPU, written in the pipeline format as a number of CPUs (`0.5`).
/// Any number reads; [`Cpus::check`] says whether it is a limit a task may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub i64);

impl Cpus {
    /// The limit in the units Docker's `NanoCpus` takes.
    pub fn nano_cpus(self) -> i64 {
        self.0.saturating_mul(1_000_000)
    }

    /// From a number of CPUs, as the wire carries it.
    pub fn from_cpus(cpus: f64) -> Cpus {
        Cpus(if cpus.is_finite() {
            (cpus * 1000.0).round() as i64
        } else {
            -1
        })
    }

    /// Checks that it is above 0 (at least a thousandth) and at most [`MAX_CPUS`].
    pub fn check(self, field: &str) -> Result<(), Error> {
        if self.0 < 1 || self.0 > (MAX_CPUS * 1000.0) as i64 {
            return Err(Error::invalid(
                field,
                format!(
                    "must be a number of CPUs from 0.001 to {MAX_CPUS}, got {}",
                    self.0 as f64 / 1000.0
                ),
            ));
        }
        Ok(())
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0 as f64 / 1000.0)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Cpus::from_cpus(f64::deserialize(deserializer)?))
    }
}

/// The cluster's defaults and ceilings for a task's `cpu`, `memory` and `timeout`; each unset unless the
/// operator set it. A task without a value gets the default, else the ceiling, else no limit, and never
/// more than the ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpu: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_ms: Option<i64>,
}

impl TaskLimits {
    /// Whether no default or ceiling is set (the state then leaves them out of its snapshot).
    pub fn is_unset(&self) -> bool {
        *self == TaskLimits::default()
    }

    /// Checks each value against what a task itself may set, and that no default is above its ceiling.
    /// Errors name the setting as the operator spells it, such as `task_max_memory`.
    pub fn check(&self) -> Result<(), Error> {
        for (field, cpu) in [("task_default_cpu", self.default_cpu), ("task_max_cpu", self.max_cpu)] {
            cpu.map_or(Ok(()), |cpu| cpu.check(field))?;
        }
        for (field, bytes) in [
            ("task_default_memory", self.default_memory_bytes),
            ("task_max_memory", self.max_memory_bytes),
        ] {
            if bytes.is_some_and(|b| b < MIN_MEMORY_BYTES) {
                return Err(Error::invalid(field, "must be at least 6MiB (Docker refuses less)"));
            }
        }
        for (field, ms) in [
            ("task_default_timeout", self.default_timeout_ms),
            ("task_max_timeout", self.max_timeout_ms),
        ] {
            if ms.is_some_and(|ms| ms <= 0 || ms > MAX_TIMEOUT_MS) {
                return Err(Error::invalid(field, "must be above 0s and at most 7d"));
            }
        }
        for (name, default, max) in self.named() {
            if let (Some((default, default_text)), Some((max, max_text))) = (default, max)
                && default > max
            {
                return Err(Error::invalid(
                    format!("task_default_{name}"),
                    format!("{default_text} is above the ceiling task_max_{name} = {max_text}"),
                ));
            }
        }
        Ok(())
    }

    /// Refuses a pipeline whose task asks for more than a ceiling, naming the field and the ceiling. The
    /// config has passed [`crate::PipelineConfig::validate`].
    pub fn check_pipeline(&self, config: &crate::PipelineConfig) -> Result<(), Error> {
        for (i, task) in config.tasks.iter().enumerate() {
            let asked = [
                task.cpu.map(|cpus| (i128::from(cpus.0), format_cpus(cpus))),
                task.memory_bytes()
                    .map(|bytes| (i128::from(bytes), task.memory.trim().to_string())),
                task.timeout_ms()
                    .map(|ms| (i128::from(ms), task.timeout.trim().to_string())),
            ];
            for (asked, (name, _, max)) in asked.into_iter().zip(self.named()) {
                if let (Some((asked, asked_text)), Some((max, max_text))) = (asked, max)
                    && asked > max
                {
                    return Err(Error::invalid(
                        format!("tasks[{i}].{name}"),
                        format!("{asked_text} is above the cluster's ceiling task_max_{name} = {max_text}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each limit's name (`cpu`, `memory`, `timeout`, in that order) with its default and its ceiling,
    /// each as a number to compare and as text to show.
    fn named(&self) -> [(&'static str, Shown, Shown); 3] {
        let cpus = |cpus: Cpus| (i128::from(cpus.0), format_cpus(cpus));
        let size = |bytes: u64| (i128::from(bytes), format_size(bytes));
        let duration = |ms: i64| (i128::from(ms), format_duration(ms));
        [
            ("cpu", self.default_cpu.map(cpus), self.max_cpu.map(cpus)),
            (
                "memory",
                self.default_memory_bytes.map(size),
                self.max_memory_bytes.map(size),
            ),
            (
                "timeout",
                self.default_timeout_ms.map(duration),
                self.max_timeout_ms.map(duration),
            ),
        ]
    }

    /// The CPU limit an attempt of `task` runs with.
    pub fn cpu_for(&self, task: &crate::TaskConfig) -> Option<Cpus> {
        bounded(task.cpu, self.default_cpu, self.max_cpu, |c| c.0)
    }

    /// The memory limit, in bytes, an attempt of `task` runs with.
    pub fn memory_bytes_for(&self, task: &crate::TaskConfig) -> Option<u64> {
        bounded(
            task.memory_bytes(),
            self.default_memory_bytes,
            self.max_memory_bytes,
            |b| b,
        )
    }

    /// The timeout, in milliseconds, an attempt of `task` runs with.
    pub fn timeout_ms_for(&self, task: &crate::TaskConfig) -> Option<i64> {
        bounded(task.timeout_ms(), self.default_timeout_ms, self.max_timeout_ms, |ms| ms)
    }
}

/// A limit, if set, as a number to compare and as text to show.
type Shown = Option<(i128, String)>;

/// The task's own value, else the default, else the ceiling; never above the ceiling.
fn bounded<T: Copy, K: Ord>(own: Option<T>, default: Option<T>, max: Option<T>, key: impl Fn(T) -> K) -> Option<T> {
    let value = own.or(default).or(max)?;
    Some(match max {
        Some(max) if key(value) > key(max) => max,
        _ => value,
    })
}

/// What an operator asks of one of the cluster's task limits: to clear it, or to set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitChange<T> {
    Clear,
    Set(T),
}

/// The changes to the cluster's [`TaskLimits`] a process was told; a limit it was told nothing of keeps
/// the cluster's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskLimitChanges {
    pub default_cpu: Option<LimitChange<Cpus>>,
    pub max_cpu: Option<LimitChange<Cpus>>,
    pub default_memory_bytes: Option<LimitChange<u64>>,
    pub max_memory_bytes: Option<LimitChange<u64>>,
    pub default_timeout_ms: Option<LimitChange<i64>>,
    pub max_timeout_ms: Option<LimitChange<i64>>,
}

impl TaskLimitChanges {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == TaskLimitChanges::default()
    }

    /// `limits` with these changes made.
    pub fn applied_to(&self, limits: TaskLimits) -> TaskLimits {
        fn change<T>(value: Option<T>, change: Option<LimitChange<T>>) -> Option<T> {
            match change {
                None => value,
                Some(LimitChange::Clear) => None,
                Some(LimitChange::Set(new)) => Some(new),
            }
        }
        TaskLimits {
            default_cpu: change(limits.default_cpu, self.default_cpu),
            max_cpu: change(limits.max_cpu, self.max_cpu),
            default_memory_bytes: change(limits.default_memory_bytes, self.default_memory_bytes),
            max_memory_bytes: change(limits.max_memory_bytes, self.max_memory_bytes),
            default_timeout_ms: change(limits.default_timeout_ms, self.default_timeout_ms),
            max_timeout_ms: change(limits.max_timeout_ms, self.max_timeout_ms),
        }
    }
}

/// `0.5` CPUs as `0.5`.
fn format_cpus(cpus: Cpus) -> String {
    (cpus.0 as f64 / 1000.0).to_string()
}

/// A size in the largest binary unit that divides it: `4294967296` as `4GiB`, `1000` as `1000B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// `90000` milliseconds as `1m30s`.
pub fn format_duration(millis: i64) -> String {
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, ms) = (rest / 1_000, rest % 1_000);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (ms, "ms")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    if text.is_empty() { "0s".to_string() } else { text }
}

/// Parses a task's `timeout` into milliseconds: a duration above zero and at most 7 days.
pub fn parse_timeout(field: &str, text: &str) -> Result<i64, Error> {
    let ms = parse_duration(field, text)?;
    if ms <= 0 || ms > MAX_TIMEOUT_MS {
        return Err(Error::invalid(field, "must be above 0s and at most 7d"));
    }
    Ok(ms)
}

/// Parses a task's `memory` (see [`parse_size`]) into bytes, at least [`MIN_MEMORY_BYTES`].
pub fn parse_memory(field: &str, text: &str) -> Result<u64, Error> {
    let bytes = parse_size(field, text)?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at least 6MiB (Docker refuses less), got {}", text.trim()),
        ));
    }
    Ok(bytes)
}

/// Parses a size such as `256MiB`, `1GiB`, `512MB`, `64KiB` or `67108864` (bytes) into bytes.
pub fn parse_size(field: &str, text: &str) -> Result<u64, Error> {
    let bad = || Error::invalid(field, format!("{text:?} is not a size such as 256MiB, 1GiB or 512MB"));
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return Err(bad());
    }
    let value: u64 = text[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match &text[digits..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    value.checked_mul(unit).ok_or_else(bad)
}

/// Checks a task's `workdir`: an absolute path of at most 1024 bytes, without NUL.
pub fn check_workdir(field: &str, path: &str) -> Result<(), Error> {
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(Error::invalid(
            field,
            "must be an absolute path such as /work, at most 1024 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_cpus_parse_and_bad_ones_name_the_field() {
        assert_eq!(parse_memory("m", "256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_memory("m", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("m", "512MB").unwrap(), 512_000_000);
        assert_eq!(parse_memory("m", "8388608").unwrap(), 8 << 20);
        for bad in [
            "",
            "lots",
            "5MiB",
            "1.5GiB",
            "-1MiB",
            "12 parsecs",
            "99999999999999999999TiB",
        ] {
            match parse_memory("tasks[0].memory", bad) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[0].memory", "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(parse_timeout("t", "5m").unwrap(), 300_000);
        assert!(parse_timeout("t", "0s").is_err());
        assert!(parse_timeout("t", "-5s").is_err());
        assert!(parse_timeout("t", "8d").is_err());
        let cpus: Cpus = serde_json::from_str("0.5").unwrap();
        assert_eq!((cpus, cpus.nano_cpus()), (Cpus(500), 500_000_000));
        assert_eq!(serde_json::to_string(&cpus).unwrap(), "0.5");
        for bad in ["0", "-1", "1000", "0.0001"] {
            let cpus: Cpus = serde_json::from_str(bad).unwrap();
            match cpus.check("tasks[0].cpu") {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[0].cpu"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_workdir("w", "/work").is_ok());
        assert!(check_workdir("w", "relative").is_err());
    }

    fn task(json: &str) -> crate::TaskConfig {
        let pipeline = format!(r#"{{"id": "p", "tasks": [{{"id": "a", "image": "i"{json}}}]}}"#);
        crate::PipelineConfig::from_json(&pipeline).unwrap().tasks.remove(0)
    }

    #[test]
    fn a_task_gets_its_own_value_else_the_default_else_the_ceiling_and_never_more_than_the_ceiling() {
        let none = TaskLimits::default();
        let plain = task("");
        assert_eq!(
            (
                none.cpu_for(&plain),
                none.memory_bytes_for(&plain),
                none.timeout_ms_for(&plain)
            ),
            (None, None, None)
        );
        let limits = TaskLimits {
            default_cpu: Some(Cpus(500)),
            max_cpu: Some(Cpus(2000)),
            default_memory_bytes: Some(256 << 20),
            max_memory_bytes: Some(1 << 30),
            default_timeout_ms: None,
            max_timeout_ms: Some(3_600_000),
        };
        assert_eq!(limits.cpu_for(&plain), Some(Cpus(500)));
        assert_eq!(limits.memory_bytes_for(&plain), Some(256 << 20));
        // No default timeout: the ceiling, so that no attempt runs past it.
        assert_eq!(limits.timeout_ms_for(&plain), Some(3_600_000));
        let own = task(r#", "cpu": 1, "memory": "512MiB", "timeout": "5m""#);
        assert_eq!(limits.cpu_for(&own), Some(Cpus(1000)));
        assert_eq!(limits.memory_bytes_for(&own), Some(512 << 20));
        assert_eq!(limits.timeout_ms_for(&own), Some(300_000));
        // A version registered before the ceilings were lowered runs within them.
        let greedy = task(r#", "cpu": 8, "memory": "4GiB", "timeout": "2h""#);
        assert_eq!(limits.cpu_for(&greedy), Some(Cpus(2000)));
        assert_eq!(limits.memory_bytes_for(&greedy), Some(1 << 30));
        assert_eq!(limits.timeout_ms_for(&greedy), Some(3_600_000));
    }

    #[test]
    fn changes_set_clear_or_keep_each_limit() {
        let current = TaskLimits {
            max_cpu: Some(Cpus(2000)),
            max_memory_bytes: Some(1 << 30),
            default_timeout_ms: Some(60_000),
            ..Default::default()
        };
        let changes = TaskLimitChanges {
            max_cpu: Some(LimitChange::Clear),
            default_memory_bytes: Some(LimitChange::Set(128 << 20)),
            ..Default::default()
        };
        assert!(!changes.is_empty() && TaskLimitChanges::default().is_empty());
        assert_eq!(
            changes.applied_to(current),
            TaskLimits {
                max_cpu: None,
                default_memory_bytes: Some(128 << 20),
                ..current
            }
        );
    }

    #[test]
    fn sizes_and_durations_format_as_they_are_written() {
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_duration(90_000), "1m30s");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(7 * 86_400_000), "168h");
    }
}
