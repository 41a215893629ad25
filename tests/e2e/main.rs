//! End to end: a real `goferd dev` process per test on a temp dir, real Docker, the locally built task
//! image, driven with `goferctl` exactly as a user would. Every test cleans up its process and containers
//! through `GoferDev`'s drop, even when it fails.

mod access;
mod bad_input;
mod certs;
mod chaos;
mod cli;
mod cluster;
mod deploy;
mod dispatch_chaos;
mod events;
mod extensions;
mod guardrails;
mod hardening;
mod objects;
mod paging;
mod placement;
mod runs;
mod secrets;
mod task_tokens;
mod tokens;
mod triggers;

use std::time::Duration;

use anyhow::Result;
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, task_image, wait_until};
use serde_json::Value;

/// Starts a server with the task image built.
fn start() -> Result<GoferDev> {
    task_image()?;
    GoferDev::start()
}

/// A task for [`pipeline`]: its id, its `sh -c` script, and its parents with their conditions.
type TaskSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A pipeline with the given tasks, as JSON.
fn pipeline(id: &str, tasks: &[TaskSpec]) -> String {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|(task, script, deps)| {
            let deps: serde_json::Map<String, Value> = deps
                .iter()
                .map(|(p, c)| (p.to_string(), Value::String(c.to_string())))
                .collect();
            serde_json::json!({"id": task, "image": TASK_IMAGE, "command": ["sh", "-c", script], "depends_on": deps})
        })
        .collect();
    serde_json::json!({"id": id, "name": id, "tasks": tasks}).to_string()
}

/// Waits until the run reaches a final state and returns it as JSON.
fn wait_for_end(dev: &GoferDev, pipeline: &str, run: &str) -> Result<Value> {
    wait_until("the run to end", Duration::from_secs(90), || {
        let value = dev.ctl_json(&["run", "get", pipeline, run])?;
        Ok(Seen::check(value, |value| {
            matches!(value["state"].as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELLED"))
        }))
    })
}

/// The run's task executions by task id.
fn tasks(dev: &GoferDev, pipeline: &str, run: &str) -> Result<std::collections::BTreeMap<String, Value>> {
    let list = dev.ctl_json(&["task", "list", pipeline, run])?;
    Ok(list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t["task_id"].as_str().unwrap_or_default().to_string(), t))
        .collect())
}

/// The wall clock in Unix milliseconds, as goferd stamps times.
fn now_millis() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The stderr of a goferctl call.
fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A child process (such as a `docker events` follower) killed when dropped, also when a test fails.
pub(crate) struct ChildGuard(pub(crate) std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
