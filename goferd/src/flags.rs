//! What the flags of `goferd dev` and `goferd server` (and the server's config file) share: reading an
//! event retention, a task log cap and the cluster's task defaults and ceilings ([`TaskLimitArgs`]),
//! checked against the bounds the cluster accepts. It reads no environment and opens no file.

use gofer_domain::limits::{Cpus, LimitChange, TaskLimitChanges, TaskLimits};

/// Reads an event retention such as `2h` or `7d` (days are allowed here) into milliseconds, checked
/// against the bounds the cluster accepts.
pub(crate) fn parse_retention(text: &str) -> Result<u64, BadValue> {
    use gofer_domain::events::{MAX_EVENT_RETENTION_MS, MIN_EVENT_RETENTION_MS};
    let field = "event_retention";
    let millis = match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days.saturating_mul(86_400_000),
        _ => {
            let millis = gofer_domain::schedule::parse_duration(field, text)?;
            u64::try_from(millis).map_err(|_| BadValue::Negative { field })?
        }
    };
    if !(MIN_EVENT_RETENTION_MS..=MAX_EVENT_RETENTION_MS).contains(&millis) {
        return Err(BadValue::out_of_bounds(field, text, "1s", "365d"));
    }
    Ok(millis)
}

/// Reads one `--executor-label KEY=VALUE`, checked as the cluster checks an executor's labels.
pub(crate) fn parse_label(text: &str) -> Result<(String, String), BadValue> {
    let field = "executor_labels";
    let (key, value) = text.split_once('=').ok_or_else(|| BadValue::NotALabel {
        field,
        text: text.to_string(),
    })?;
    let label = std::collections::BTreeMap::from([(key.trim().to_string(), value.to_string())]);
    gofer_domain::executors::check_labels(field, &label)?;
    Ok(label.into_iter().next().expect("one label"))
}

/// Reads a task log cap such as `10MiB` into bytes: at least 4 KiB, at most 1 GiB.
pub(crate) fn parse_log_cap(text: &str) -> Result<u64, BadValue> {
    let field = "task_log_cap";
    let bytes = gofer_domain::limits::parse_size(field, text)?;
    if !(4 << 10..=1 << 30).contains(&bytes) {
        return Err(BadValue::out_of_bounds(field, text, "4KiB", "1GiB"));
    }
    Ok(bytes)
}

/// The cluster's defaults and ceilings for a task's cpu, memory and timeout, as `goferd dev` and
/// `goferd server` take them. A process sets those it was given once the cluster is initialized, in the
/// replicated state, so every node applies the same; `none` clears one, and one not given keeps the
/// cluster's value.
#[derive(clap::Args, Default)]
pub(crate) struct TaskLimitArgs {
    /// The CPU limit of a task that sets no `cpu`, in CPUs such as 0.5; `none` clears it [default: the
    /// cluster's setting, none unless set before]
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| cpu_limit("task_default_cpu", s))]
    task_default_cpu: Option<LimitChange<Cpus>>,
    /// The most `cpu` a task may ask for, such as 4: a pipeline asking for more is refused, and a task
    /// without `cpu` or a default gets this; `none` clears it [default: the cluster's setting]
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| cpu_limit("task_max_cpu", s))]
    task_max_cpu: Option<LimitChange<Cpus>>,
    /// The memory limit of a task that sets no `memory`, such as 512MiB; `none` clears it [default: the
    /// cluster's setting]
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| memory_limit("task_default_memory", s))]
    task_default_memory: Option<LimitChange<u64>>,
    /// The most `memory` a task may ask for, such as 4GiB (refused above it; the limit of a task without
    /// one or a default); `none` clears it [default: the cluster's setting]
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| memory_limit("task_max_memory", s))]
    task_max_memory: Option<LimitChange<u64>>,
    /// The timeout of a task that sets no `timeout`, such as 1h; `none` clears it [default: the
    /// cluster's setting]
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| timeout_limit("task_default_timeout", s))]
    task_default_timeout: Option<LimitChange<i64>>,
    /// The longest `timeout` a task may ask for, such as 6h (refused above it; the timeout of a task
    /// without one or a default); `none` clears it [default: the cluster's setting]
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| timeout_limit("task_max_timeout", s))]
    task_max_timeout: Option<LimitChange<i64>>,
}

/// The task limits of `goferd server`'s config file, as text, as the flags take them.
#[derive(Default)]
pub(crate) struct TaskLimitTexts<'a> {
    pub default_cpu: Option<&'a str>,
    pub max_cpu: Option<&'a str>,
    pub default_memory: Option<&'a str>,
    pub max_memory: Option<&'a str>,
    pub default_timeout: Option<&'a str>,
    pub max_timeout: Option<&'a str>,
}

impl TaskLimitArgs {
    /// The changes the flags ask for, with the config file's value for each one they leave out; a
    /// default above its ceiling among them is refused.
    pub(crate) fn changes(self, file: TaskLimitTexts<'_>) -> Result<TaskLimitChanges, BadValue> {
        fn or_file<T>(
            flag: Option<LimitChange<T>>,
            text: Option<&str>,
            parse: impl FnOnce(&str) -> Result<LimitChange<T>, BadValue>,
        ) -> Result<Option<LimitChange<T>>, BadValue> {
            match (flag, text) {
                (Some(change), _) => Ok(Some(change)),
                (None, Some(text)) => parse(text).map(Some),
                (None, None) => Ok(None),
            }
        }
        let changes = TaskLimitChanges {
            default_cpu: or_file(self.task_default_cpu, file.default_cpu, |t| {
                cpu_limit("task_default_cpu", t)
            })?,
            max_cpu: or_file(self.task_max_cpu, file.max_cpu, |t| cpu_limit("task_max_cpu", t))?,
            default_memory_bytes: or_file(self.task_default_memory, file.default_memory, |t| {
                memory_limit("task_default_memory", t)
            })?,
            max_memory_bytes: or_file(self.task_max_memory, file.max_memory, |t| {
                memory_limit("task_max_memory", t)
            })?,
            default_timeout_ms: or_file(self.task_default_timeout, file.default_timeout, |t| {
                timeout_limit("task_default_timeout", t)
            })?,
            max_timeout_ms: or_file(self.task_max_timeout, file.max_timeout, |t| {
                timeout_limit("task_max_timeout", t)
            })?,
        };
        changes.applied_to(TaskLimits::default()).check()?;
        Ok(changes)
    }
}

/// The cluster's object limits, as `goferd dev` and `goferd server` take them; like the task limits,
/// set in the replicated state once the cluster is initialized, and one not given keeps the cluster's.
#[derive(clap::Args, Default)]
pub(crate) struct ObjectLimitArgs {
    /// The largest object `goferctl object put` may store, such as 64MiB (at most 1GiB) [default: the
    /// cluster's setting, 16MiB unless set before]
    #[arg(long, value_name = "SIZE", value_parser = parse_object_size)]
    object_max_size: Option<u64>,
    /// How many objects a pipeline (and each run) keeps: past it, the oldest is evicted [default: the
    /// cluster's setting, 50 unless set before]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    object_max_count: Option<u32>,
}

impl ObjectLimitArgs {
    /// The limits the flags set, with the config file's `object_max_size` and `object_max_count` for
    /// those they leave out; 0 stands for not given.
    pub(crate) fn limits(
        self,
        file_size: Option<&str>,
        file_count: Option<u32>,
    ) -> Result<gofer_domain::blobs::ObjectLimits, BadValue> {
        let max_bytes = match (self.object_max_size, file_size) {
            (Some(bytes), _) => bytes,
            (None, Some(text)) => parse_object_size(text)?,
            (None, None) => 0,
        };
        let max_count = match self.object_max_count.or(file_count) {
            Some(count) if !(1..=100_000).contains(&count) => {
                return Err(BadValue::out_of_bounds(
                    "object_max_count",
                    &count.to_string(),
                    "1",
                    "100000",
                ));
            }
            count => count.unwrap_or(0),
        };
        Ok(gofer_domain::blobs::ObjectLimits { max_bytes, max_count })
    }
}

/// Reads an object size limit such as `16MiB`: at least 1 KiB, at most 1 GiB.
fn parse_object_size(text: &str) -> Result<u64, BadValue> {
    let field = "object_max_size";
    let bytes = gofer_domain::limits::parse_size(field, text)?;
    if !(1 << 10..=gofer_domain::blobs::MAX_BLOB_BYTES).contains(&bytes) {
        return Err(BadValue::out_of_bounds(field, text, "1KiB", "1GiB"));
    }
    Ok(bytes)
}

/// Where blobs (task logs, objects) live: on the state nodes' disks, or with `--blob-store s3://…` in an S3
/// bucket, with the endpoint, region and credentials from the flags or the usual `AWS_*` variables.
#[derive(clap::Args, Default)]
pub(crate) struct BlobStoreArgs {
    /// Keep blobs (task logs, objects) in S3 instead of on the state nodes: s3://BUCKET[/PREFIX]; give
    /// every process of the cluster the same [default: the state nodes' data dirs]
    #[arg(long, value_name = "URL")]
    blob_store: Option<String>,
    /// An S3-compatible server instead of AWS, such as http://127.0.0.1:9000 [default: AWS_ENDPOINT_URL]
    #[arg(long, value_name = "URL")]
    blob_store_endpoint: Option<String>,
    /// The bucket's region [default: AWS_REGION]
    #[arg(long, value_name = "REGION")]
    blob_store_region: Option<String>,
}

/// What the config file says of the blob store.
#[derive(Default)]
pub(crate) struct BlobStoreTexts {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl BlobStoreArgs {
    /// The S3 tier the flags (or else the config file) name, if any; checked before anything starts.
    pub(crate) fn shared_store(
        self,
        file: BlobStoreTexts,
    ) -> Result<Option<gofer_state::SharedStoreConfig>, gofer_state::BlobError> {
        let Some(url) = self.blob_store.or(file.url) else {
            return Ok(None);
        };
        let config = gofer_state::SharedStoreConfig {
            url,
            endpoint: self.blob_store_endpoint.or(file.endpoint),
            region: self.blob_store_region.or(file.region),
            access_key_id: file.access_key_id,
            secret_access_key: file.secret_access_key,
        };
        gofer_state::SharedStore::open(&config)?;
        Ok(Some(config))
    }
}

/// `none`, or what `parse` reads.
fn limit<T>(text: &str, parse: impl FnOnce(&str) -> Result<T, BadValue>) -> Result<LimitChange<T>, BadValue> {
    if text.trim() == "none" {
        Ok(LimitChange::Clear)
    } else {
        parse(text).map(LimitChange::Set)
    }
}

/// Reads a CPU default or ceiling, such as `0.5` or `4`, or `none`.
fn cpu_limit(field: &'static str, text: &str) -> Result<LimitChange<Cpus>, BadValue> {
    limit(text, |text| {
        let cpus: f64 = text.trim().parse().map_err(|_| BadValue::NotCpus {
            field,
            text: text.to_string(),
        })?;
        let cpus = Cpus::from_cpus(cpus);
        cpus.check(field)?;
        Ok(cpus)
    })
}

/// Reads a memory default or ceiling, such as `512MiB`, or `none`.
fn memory_limit(field: &'static str, text: &str) -> Result<LimitChange<u64>, BadValue> {
    limit(text, |text| Ok(gofer_domain::limits::parse_memory(field, text)?))
}

/// Reads a timeout default or ceiling, such as `1h`, or `none`.
fn timeout_limit(field: &'static str, text: &str) -> Result<LimitChange<i64>, BadValue> {
    limit(text, |text| Ok(gofer_domain::limits::parse_timeout(field, text)?))
}

/// Why a flag's value was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum BadValue {
    /// Not a duration or a size at all.
    #[error(transparent)]
    Malformed(#[from] gofer_domain::Error),
    #[error("{field}: must not be negative")]
    Negative { field: &'static str },
    #[error("{field}: {text:?} is not KEY=VALUE")]
    NotALabel { field: &'static str, text: String },
    #[error("{field}: {text:?} is not a number of CPUs such as 0.5, or none")]
    NotCpus { field: &'static str, text: String },
    #[error("{field}: {text:?} is not between {low} and {high}")]
    OutOfBounds {
        field: &'static str,
        text: String,
        low: &'static str,
        high: &'static str,
    },
}

impl BadValue {
    fn out_of_bounds(field: &'static str, text: &str, low: &'static str, high: &'static str) -> BadValue {
        BadValue::OutOfBounds {
            field,
            text: text.to_string(),
            low,
            high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_cap_reads_sizes_within_the_bounds() {
        assert_eq!(parse_log_cap("10MiB"), Ok(10 << 20));
        assert_eq!(parse_log_cap("4096"), Ok(4096));
        for bad in ["4095", "2GiB", "10 furlongs", "-1MiB"] {
            let error = parse_log_cap(bad).unwrap_err().to_string();
            assert!(error.starts_with("task_log_cap: "), "{bad}: {error}");
        }
    }

    #[test]
    fn a_retention_reads_durations_and_days_within_the_bounds() {
        assert_eq!(parse_retention("90s"), Ok(90_000));
        assert_eq!(parse_retention("1h30m"), Ok(5_400_000));
        assert_eq!(parse_retention("7d"), Ok(7 * 86_400_000));
        for bad in ["0s", "500ms", "366d", "-5s", "soon", ""] {
            let error = parse_retention(bad).unwrap_err().to_string();
            assert!(error.starts_with("event_retention: "), "{bad}: {error}");
        }
    }

    fn parse_limits(args: &[&str]) -> Result<TaskLimitChanges, String> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            limits: TaskLimitArgs,
        }
        let flags =
            Flags::try_parse_from(std::iter::once("goferd").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        flags
            .limits
            .changes(TaskLimitTexts::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn task_limits_read_values_none_and_leave_out_what_was_not_given() {
        let changes = parse_limits(&[
            "--task-default-cpu",
            "0.5",
            "--task-max-memory",
            "4GiB",
            "--task-default-memory",
            "none",
            "--task-max-timeout",
            "7d",
        ])
        .unwrap();
        assert_eq!(
            changes,
            TaskLimitChanges {
                default_cpu: Some(LimitChange::Set(Cpus(500))),
                max_memory_bytes: Some(LimitChange::Set(4 << 30)),
                default_memory_bytes: Some(LimitChange::Clear),
                max_timeout_ms: Some(LimitChange::Set(7 * 86_400_000)),
                ..Default::default()
            }
        );
        assert!(parse_limits(&[]).unwrap().is_empty());
        for (args, field) in [
            (["--task-max-cpu", "lots"], "task_max_cpu"),
            (["--task-max-cpu", "0"], "task_max_cpu"),
            (["--task-default-memory", "1MiB"], "task_default_memory"),
            (["--task-max-timeout", "8d"], "task_max_timeout"),
            (["--task-default-timeout", "soon"], "task_default_timeout"),
        ] {
            let error = parse_limits(&args).unwrap_err();
            assert!(error.contains(field), "{args:?}: {error}");
        }
        let error = parse_limits(&["--task-default-memory", "8GiB", "--task-max-memory", "4GiB"]).unwrap_err();
        assert!(
            error.starts_with("task_default_memory: ") && error.contains("task_max_memory"),
            "{error}"
        );
    }

    #[test]
    fn the_config_files_task_limits_fill_in_what_the_flags_leave_out() {
        let file = TaskLimitTexts {
            max_cpu: Some("2"),
            max_memory: Some("1GiB"),
            ..Default::default()
        };
        let flags = TaskLimitArgs {
            task_max_cpu: Some(LimitChange::Set(Cpus(4000))),
            ..Default::default()
        };
        let changes = flags.changes(file).unwrap();
        assert_eq!(changes.max_cpu, Some(LimitChange::Set(Cpus(4000))));
        assert_eq!(changes.max_memory_bytes, Some(LimitChange::Set(1 << 30)));
        let bad = TaskLimitTexts {
            max_memory: Some("lots"),
            ..Default::default()
        };
        let error = TaskLimitArgs::default().changes(bad).unwrap_err().to_string();
        assert!(error.starts_with("task_max_memory: "), "{error}");
    }
}
