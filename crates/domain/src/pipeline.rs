//! A pipeline's config: its JSON form, and the DAG rules every registered version must pass.
//!
//! `docs/pipeline-format.md` documents this format for users; keep the two in step.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Error, validate_id};

/// A pipeline has at most this many tasks.
pub const MAX_TASKS: usize = 200;
const MAX_NAME_LEN: usize = 128;
const MAX_DESCRIPTION_LEN: usize = 4096;
const MAX_IMAGE_LEN: usize = 512;
const MAX_COMMAND_BYTES: usize = 64 * 1024;
const MAX_ENV_BYTES: usize = 64 * 1024;

/// What a task needs of a parent before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The parent ended, whatever its state.
    Any,
    /// The parent succeeded.
    Success,
    /// The parent failed.
    Failure,
}

impl Condition {
    /// The condition's name as the JSON form spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Any => "any",
            Condition::Success => "success",
            Condition::Failure => "failure",
        }
    }
}

/// One task of a pipeline: a container image, its command and env, and its parents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub id: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Condition>,
    /// Further attempts after one that failed (exited other than 0, or could not run); at most
    /// [`MAX_RETRIES`]. An attempt LOST with its executor is retried at least once whatever this says.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The wait before the first retry, such as `5s`; doubled for each retry after it, up to
    /// [`MAX_BACKOFF_MS`]. Empty means [`DEFAULT_BACKOFF_MS`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backoff: String,
    /// How long an attempt may run, such as `5m`; past it the container is stopped and the attempt
    /// FAILED with reason "timed out". Empty for no limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    /// The container's CPU limit, in CPUs (`0.5`); none if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::limits::Cpus>,
    /// The container's memory limit, such as `256MiB`; none if empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    /// The container's working directory, an absolute path; the image's if empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workdir: String,
    /// The user the command runs as, as Docker spells it: `name`, `uid`, `name:group` or `uid:gid`; the
    /// image's if empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Gives the task `GOFER_API_TOKEN`, a token that may read its own run and start runs of its own
    /// pipeline until the run ends, and `GOFER_HOST`, the API address that issued it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inject_api_token: bool,
    /// Labels an executor must carry (every one, with the same value) to run the task, such as
    /// `{"zone": "a"}`; any executor if empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub executor_labels: BTreeMap<String, String>,
}

/// The fields a task may never set, each with why: they would give a task power over the Docker host,
/// which Gofer never does. Without this list they would be refused as unknown fields; with it the
/// refusal says why.
const REFUSED_TASK_FIELDS: [(&str, &str); 11] = [
    ("privileged", "tasks never run privileged"),
    ("volumes", "tasks never get host mounts"),
    ("mounts", "tasks never get host mounts"),
    ("binds", "tasks never get host mounts"),
    ("devices", "tasks never get host devices"),
    (
        "network",
        "tasks never choose their network: they run on Docker's default bridge, never on the host network",
    ),
    (
        "network_mode",
        "tasks never choose their network: they run on Docker's default bridge, never on the host network",
    ),
    ("cap_add", "tasks never get capabilities beyond Gofer's fixed set"),
    (
        "security_opt",
        "tasks always run with no-new-privileges and cannot change their security options",
    ),
    ("pid", "tasks never share the host's processes"),
    ("ipc", "tasks never share the host's IPC namespace"),
];

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A task retries at most this many times.
pub const MAX_RETRIES: u32 = 10;
/// The first retry waits this long unless the task sets `backoff`.
pub const DEFAULT_BACKOFF_MS: i64 = 1_000;
/// No retry waits longer than this.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

/// One registered version of a pipeline: a DAG of tasks and the pipeline's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How many runs of the pipeline may be RUNNING at once; 0 means no limit.
    #[serde(default)]
    pub parallelism: u32,
    /// How many runs (and their logs) the pipeline keeps; older ended ones are pruned, oldest first. 0
    /// means [`DEFAULT_KEEP_RUNS`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_runs: u32,
    pub tasks: Vec<TaskConfig>,
}

/// Runs a pipeline keeps unless it says otherwise.
pub const DEFAULT_KEEP_RUNS: u32 = 100;
/// The most runs a pipeline may keep.
pub const MAX_KEEP_RUNS: u32 = 100_000;

impl PipelineConfig {
    /// How many runs the pipeline keeps.
    pub fn runs_kept(&self) -> usize {
        (if self.keep_runs == 0 {
            DEFAULT_KEEP_RUNS
        } else {
            self.keep_runs
        }) as usize
    }
}

impl PipelineConfig {
    /// Parses the JSON form and validates it. Errors name the field, such as `tasks[1].depends_on.a`.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let config = Self::parse_json(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the JSON form without checking the DAG rules; clients use it and leave the rules to the
    /// server, which checks them again whatever the client did.
    pub fn parse_json(json: &str) -> Result<Self, Error> {
        check_refused_fields(json)?;
        let mut de = serde_json::Deserializer::from_str(json);
        let config: PipelineConfig = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let field = if path == "." || path == "?" || path.starts_with('[') {
                "pipeline".to_string()
            } else {
                path
            };
            let reason = inner
                .to_string()
                .replace("struct PipelineConfig with 5 elements", "a pipeline object");
            Error::invalid(field, format!("malformed JSON: {reason}"))
        })?;
        de.end()
            .map_err(|err| Error::invalid("pipeline", format!("malformed JSON: {err}")))?;
        Ok(config)
    }

    /// The JSON form, as `from_json` reads it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a pipeline config always serializes")
    }

    /// Checks every rule a registered pipeline must pass; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), Error> {
        validate_id("id", &self.id)?;
        check_len("name", &self.name, MAX_NAME_LEN)?;
        check_len("description", &self.description, MAX_DESCRIPTION_LEN)?;
        if self.keep_runs > MAX_KEEP_RUNS {
            return Err(Error::invalid(
                "keep_runs",
                format!("must be at most {MAX_KEEP_RUNS}, got {}", self.keep_runs),
            ));
        }
        if self.tasks.is_empty() {
            return Err(Error::invalid("tasks", "a pipeline needs at least one task"));
        }
        if self.tasks.len() > MAX_TASKS {
            return Err(Error::invalid(
                "tasks",
                format!("a pipeline has at most {MAX_TASKS} tasks, got {}", self.tasks.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            validate_id(&format!("tasks[{i}].id"), &task.id)?;
            if !seen.insert(task.id.as_str()) {
                return Err(Error::invalid(
                    format!("tasks[{i}].id"),
                    format!("duplicate task id {:?}", task.id),
                ));
            }
        }
        for (i, task) in self.tasks.iter().enumerate() {
            task.validate(i, &seen)?;
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(Error::invalid(
                "tasks",
                format!("depends_on forms a cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }

    /// The index of the task called `id`.
    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.id == id)
    }

    /// A dependency cycle as a path of task ids that starts and ends on the same task, if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let index: BTreeMap<&str, usize> = self.tasks.iter().enumerate().map(|(i, t)| (t.id.as_str(), i)).collect();
        let mut marks = vec![Mark::New; self.tasks.len()];
        // Iterative depth-first search so that a 200-task chain cannot overflow the stack.
        for start in 0..self.tasks.len() {
            if marks[start] != Mark::New {
                continue;
            }
            let mut path: Vec<usize> = vec![start];
            let mut next_parent: Vec<usize> = vec![0];
            marks[start] = Mark::OnPath;
            while let Some(&node) = path.last() {
                let parents: Vec<usize> = self.tasks[node]
                    .depends_on
                    .keys()
                    .filter_map(|p| index.get(p.as_str()).copied())
                    .collect();
                let cursor = next_parent.last_mut().expect("path and cursor grow together");
                if *cursor < parents.len() {
                    let parent = parents[*cursor];
                    *cursor += 1;
                    match marks[parent] {
                        Mark::New => {
                            marks[parent] = Mark::OnPath;
                            path.push(parent);
                            next_parent.push(0);
                        }
                        Mark::OnPath => {
                            let from = path.iter().position(|&n| n == parent).expect("on the path");
                            let mut cycle: Vec<String> =
                                path[from..].iter().map(|&n| self.tasks[n].id.clone()).collect();
                            cycle.push(self.tasks[parent].id.clone());
                            return Some(cycle);
                        }
                        Mark::Done => {}
                    }
                } else {
                    marks[node] = Mark::Done;
                    path.pop();
                    next_parent.pop();
                }
            }
        }
        None
    }
}

impl TaskConfig {
    /// How long to wait before attempt `next` (2 or later): the backoff doubled for each retry before it.
    pub fn retry_delay_ms(&self, next: u32) -> i64 {
        let base = if self.backoff.is_empty() {
            DEFAULT_BACKOFF_MS
        } else {
            crate::schedule::parse_duration("backoff", &self.backoff).unwrap_or(DEFAULT_BACKOFF_MS)
        };
        let doublings = next.saturating_sub(2).min(30);
        base.saturating_mul(1 << doublings).min(MAX_BACKOFF_MS)
    }

    /// The timeout in milliseconds, if the task sets one (validated configs only).
    pub fn timeout_ms(&self) -> Option<i64> {
        (!self.timeout.is_empty()).then(|| crate::limits::parse_timeout("timeout", &self.timeout).ok())?
    }

    /// The memory limit in bytes, if the task sets one (validated configs only).
    pub fn memory_bytes(&self) -> Option<u64> {
        (!self.memory.is_empty()).then(|| crate::limits::parse_memory("memory", &self.memory).ok())?
    }

    fn validate(&self, i: usize, task_ids: &BTreeSet<&str>) -> Result<(), Error> {
        if !self.timeout.is_empty() {
            crate::limits::parse_timeout(&format!("tasks[{i}].timeout"), &self.timeout)?;
        }
        if let Some(cpu) = self.cpu {
            cpu.check(&format!("tasks[{i}].cpu"))?;
        }
        if !self.memory.is_empty() {
            crate::limits::parse_memory(&format!("tasks[{i}].memory"), &self.memory)?;
        }
        if !self.workdir.is_empty() {
            crate::limits::check_workdir(&format!("tasks[{i}].workdir"), &self.workdir)?;
        }
        crate::executors::check_labels(&format!("tasks[{i}].executor_labels"), &self.executor_labels)?;
        if !self.user.is_empty() {
            check_user(&format!("tasks[{i}].user"), &self.user)?;
        }
        if self.retries > MAX_RETRIES {
            return Err(Error::invalid(
                format!("tasks[{i}].retries"),
                format!("must be at most {MAX_RETRIES}, got {}", self.retries),
            ));
        }
        if !self.backoff.is_empty() {
            let field = format!("tasks[{i}].backoff");
            let ms = crate::schedule::parse_duration(&field, &self.backoff)?;
            if ms > MAX_BACKOFF_MS {
                return Err(Error::invalid(field, "must be at most 1h"));
            }
        }
        let image = self.image.trim();
        if image.is_empty() {
            return Err(Error::invalid(format!("tasks[{i}].image"), "must not be empty"));
        }
        if image != self.image || self.image.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                format!("tasks[{i}].image"),
                "must not contain whitespace",
            ));
        }
        check_len(&format!("tasks[{i}].image"), &self.image, MAX_IMAGE_LEN)?;
        check_image_reference(&format!("tasks[{i}].image"), &self.image)?;
        let command_bytes: usize = self.command.iter().map(String::len).sum();
        if command_bytes > MAX_COMMAND_BYTES {
            return Err(Error::invalid(
                format!("tasks[{i}].command"),
                format!("must be at most {MAX_COMMAND_BYTES} bytes in all"),
            ));
        }
        if self.command.iter().any(|arg| arg.contains('\0')) {
            return Err(Error::invalid(
                format!("tasks[{i}].command"),
                "must not contain NUL bytes",
            ));
        }
        let mut env_bytes = 0;
        for (key, value) in &self.env {
            let field = format!("tasks[{i}].env.{key}");
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::invalid(field, "env names must be non-empty, without '=' or NUL"));
            }
            if value.contains('\0') {
                return Err(Error::invalid(field, "env values must not contain NUL"));
            }
            env_bytes += key.len() + value.len();
        }
        if env_bytes > MAX_ENV_BYTES {
            return Err(Error::invalid(
                format!("tasks[{i}].env"),
                format!("must be at most {MAX_ENV_BYTES} bytes in all"),
            ));
        }
        for parent in self.depends_on.keys() {
            let field = format!("tasks[{i}].depends_on.{parent}");
            if parent == &self.id {
                return Err(Error::invalid(field, "a task cannot depend on itself"));
            }
            if !task_ids.contains(parent.as_str()) {
                return Err(Error::invalid(field, format!("unknown task {parent:?}")));
            }
        }
        Ok(())
    }
}

/// Refuses a task that sets one of [`REFUSED_TASK_FIELDS`], naming it and saying why. JSON that does not
/// parse, or has no list of tasks, passes: the typed parse that follows says what is wrong with it.
fn check_refused_fields(json: &str) -> Result<(), Error> {
    let Ok(serde_json::Value::Object(pipeline)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Ok(());
    };
    let Some(serde_json::Value::Array(tasks)) = pipeline.get("tasks") else {
        return Ok(());
    };
    for (i, task) in tasks.iter().enumerate() {
        let Some(task) = task.as_object() else { continue };
        if let Some((field, why)) = REFUSED_TASK_FIELDS.iter().find(|(field, _)| task.contains_key(*field)) {
            return Err(Error::invalid(format!("tasks[{i}].{field}"), *why));
        }
    }
    Ok(())
}

/// The longest user or group name a task's `user` may hold (Linux's own limit).
const MAX_USER_NAME_LEN: usize = 32;

/// Checks a task's `user`: a user and optionally a group after a colon, each a name (letters, digits,
/// `_`, `.`, `-`, not starting with `-`, at most 32 characters) or a numeric id below 4294967295.
pub(crate) fn check_user(field: &str, user: &str) -> Result<(), Error> {
    let part_ok = |part: &str| {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return part.parse::<u32>().is_ok_and(|id| id < u32::MAX);
        }
        !part.is_empty()
            && part.len() <= MAX_USER_NAME_LEN
            && !part.starts_with('-')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    if !part_ok(name) || !group.is_none_or(part_ok) {
        return Err(Error::invalid(
            field,
            format!("{user:?} is not a user such as 1000, 1000:1000, nobody or nobody:nogroup"),
        ));
    }
    Ok(())
}

/// A loose check of Docker's reference grammar, `[host[:port]/]path[:tag][@digest]`, so that a typo fails at
/// registration rather than as an opaque Engine error when the task runs.
pub(crate) fn check_image_reference(field: &str, image: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::invalid(
            field,
            format!("{image:?} is not an image reference: {why}"),
        ))
    };
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest
        && !digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
        })
    {
        return bad("the digest after '@' must be algorithm:hex");
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(colon) => (&name[..last_slash + colon], Some(&name[last_slash + colon + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag
        && (tag.is_empty() || tag.len() > 128 || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return bad("a tag is 1-128 letters, digits, '_', '.' or '-'");
    }
    let components: Vec<&str> = path.split('/').collect();
    // The first component may be a registry host (with a port, and in any case); the rest are lower case.
    let host = components.len() > 1
        && (components[0].contains('.') || components[0].contains(':') || components[0] == "localhost");
    for (n, component) in components.iter().enumerate() {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        let ok = if n == 0 && host {
            !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        } else {
            !component.is_empty() && component.chars().all(allowed)
        };
        if !ok {
            return bad("repository names use lower-case letters, digits, '.', '_' and '-'");
        }
    }
    Ok(())
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max {
        return Err(Error::invalid(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
