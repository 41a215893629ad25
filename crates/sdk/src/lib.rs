//! Write Gofer pipelines in Rust. A typed builder makes the pipeline and [`Pipeline::finish`] prints its
//! JSON form (documented in `docs/pipeline-format.md`) for `goferctl pipeline register DIR` to read.
//!
//! ```
//! use gofer_sdk::{Pipeline, Task, Condition};
//!
//! let pipeline = Pipeline::new("hello", "Hello")
//!     .description("says hi, then more")
//!     .task(Task::new("a", "gofer/toolbox:1").command(["sh", "-c", "echo hi"]).env("K", "V"))
//!     .task(Task::new("b", "gofer/toolbox:1").command(["sh", "-c", "echo after"]).depends_on("a", Condition::Success));
//! assert!(pipeline.to_json().contains("\"depends_on\""));
//! ```
//!
//! The SDK checks nothing the server does not check again: the server is where the rules live.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a task needs of a parent before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The parent ended, whatever its state.
    Any,
    /// The parent succeeded.
    Success,
    /// The parent failed.
    Failure,
}

/// One task: a container image, its command and env, and its parents.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    id: String,
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, Condition>,
    #[serde(skip_serializing_if = "is_zero")]
    retries: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    backoff: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    memory: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    workdir: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    inject_api_token: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    executor_labels: BTreeMap<String, String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Task {
    /// A task `id` that runs `image` with the image's own command.
    pub fn new(id: impl Into<String>, image: impl Into<String>) -> Self {
        Task {
            id: id.into(),
            image: image.into(),
            command: Vec::new(),
            env: BTreeMap::new(),
            depends_on: BTreeMap::new(),
            retries: 0,
            backoff: String::new(),
            timeout: String::new(),
            cpu: None,
            memory: String::new(),
            workdir: String::new(),
            user: String::new(),
            inject_api_token: false,
            executor_labels: BTreeMap::new(),
        }
    }

    /// Stops an attempt that runs longer than `timeout` (such as `"5m"`) and fails it as timed out.
    pub fn timeout(mut self, timeout: impl Into<String>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// Limits the container to `cpus` CPUs (such as `0.5`).
    pub fn cpu(mut self, cpus: f64) -> Self {
        self.cpu = Some(cpus);
        self
    }

    /// Limits the container's memory (such as `"256MiB"`, at least 6 MiB).
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = memory.into();
        self
    }

    /// Runs the command in `dir`, an absolute path.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = dir.into();
        self
    }

    /// Runs the command as `user`, as Docker spells it: `"1000"`, `"1000:1000"`, `"nobody"` or
    /// `"nobody:nogroup"` (a name must exist in the image's `/etc/passwd`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Gives the task `GOFER_API_TOKEN`, a token that may read its own run and start runs of its own
    /// pipeline until the run ends, and `GOFER_HOST`, the API address that admits it.
    pub fn inject_api_token(mut self) -> Self {
        self.inject_api_token = true;
        self
    }

    /// Runs the task only on an executor labelled `key=value` (`goferd --executor-label`); call it again
    /// for more labels, all of which must match.
    pub fn executor_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.executor_labels.insert(key.into(), value.into());
        self
    }

    /// Tries again up to `retries` times (at most 10) after an attempt fails. An attempt lost with its
    /// executor is retried once even without this.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry, such as `"5s"` (1 s by default); it doubles for each retry after.
    pub fn backoff(mut self, backoff: impl Into<String>) -> Self {
        self.backoff = backoff.into();
        self
    }

    /// The command to run, replacing the image's.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Starts this task only after `parent` ended as `condition` says.
    pub fn depends_on(mut self, parent: impl Into<String>, condition: Condition) -> Self {
        self.depends_on.insert(parent.into(), condition);
        self
    }
}

/// A pipeline: a DAG of tasks and its settings.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    parallelism: u32,
    #[serde(skip_serializing_if = "is_zero")]
    keep_runs: u32,
    tasks: Vec<Task>,
}

impl Pipeline {
    /// A pipeline with an id (`[a-z0-9_-]`, at most 64 characters) and a name for people.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Pipeline {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            parallelism: 0,
            keep_runs: 0,
            tasks: Vec::new(),
        }
    }

    /// A description for people.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// How many runs (and their logs) to keep; older ended ones are pruned. 0 (the default) means 100.
    pub fn keep_runs(mut self, keep_runs: u32) -> Self {
        self.keep_runs = keep_runs;
        self
    }

    /// How many runs may be RUNNING at once; 0 (the default) means no limit.
    pub fn parallelism(mut self, parallelism: u32) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Adds a task.
    pub fn task(mut self, task: Task) -> Self {
        self.tasks.push(task);
        self
    }

    /// The pipeline's JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a pipeline always serializes")
    }

    /// Prints the JSON form on stdout: the last line of a pipeline program's `main`.
    pub fn finish(self) {
        println!("{}", self.to_json());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_documented_json_form() {
        let json = Pipeline::new("hello", "Hello")
            .task(Task::new("a", "img").command(["sh", "-c", "echo hi"]).env("K", "V"))
            .task(Task::new("b", "img").depends_on("a", Condition::Failure))
            .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["id"], "hello");
        assert_eq!(value["parallelism"], 0);
        assert_eq!(value["tasks"][0]["command"][2], "echo hi");
        assert_eq!(value["tasks"][0]["env"]["K"], "V");
        assert_eq!(value["tasks"][1]["depends_on"]["a"], "failure");
        assert!(value["tasks"][1].get("command").is_none());
        assert!(value["tasks"][1].get("user").is_none());
    }

    #[test]
    fn a_task_user_is_printed_as_the_server_reads_it() {
        let json = Pipeline::new("p", "P")
            .task(Task::new("a", "img").user("1000:1000"))
            .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["tasks"][0]["user"], "1000:1000");
    }
}
