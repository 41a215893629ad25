//! Placement by executor labels, as a user sees it on `goferd dev --executor-label zone=a`: a task that
//! requires the executor's label runs, one that requires a label no executor carries waits PENDING and
//! `task list` says why, as does one larger than any executor's host; and a pipeline with malformed labels is refused naming the field.

use std::time::Duration;

use anyhow::{Result, ensure};
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, bin_dir, task_image, wait_until};

use crate::{stderr, tasks};

#[test]
fn a_task_runs_only_on_an_executor_with_its_labels_and_says_why_it_waits() -> Result<()> {
    task_image()?;
    let dev = GoferDev::start_with_args(bin_dir()?, "info", &["--executor-label", "zone=a"])?;
    let id = format!("placed-{}", std::process::id());
    let task = |task: &str, zone: &str| serde_json::json!({"id": task, "image": TASK_IMAGE, "command": ["true"], "executor_labels": {"zone": zone}});
    // Larger than any executor here: its size is the Docker host's, a few CPUs.
    let huge = serde_json::json!({"id": "huge", "image": TASK_IMAGE, "command": ["true"], "cpu": 256});
    let json = serde_json::json!({"id": id, "tasks": [task("here", "a"), task("nowhere", "b"), huge]});
    dev.register(&json.to_string())?;
    dev.ctl_ok(&["run", "start", &id])?;
    let seen = wait_until("the zone=a task to succeed", Duration::from_secs(60), || {
        let tasks = tasks(&dev, &id, "1")?;
        Ok(Seen::check(tasks, |t| t["here"]["state"] == "SUCCEEDED"))
    })?;
    let waiting = &seen["nowhere"];
    ensure!(
        waiting["state"] == "PENDING" && waiting["state_reason"] == "no executor with zone=b",
        "{waiting}"
    );
    ensure!(waiting["executor"].as_str().unwrap_or_default().is_empty(), "{waiting}");
    let too_big = &seen["huge"];
    ensure!(
        too_big["state"] == "PENDING" && too_big["state_reason"] == "no executor with cpu>=256",
        "{too_big}"
    );
    let table = dev.ctl_ok(&["task", "list", &id, "1"])?;
    ensure!(table.contains("no executor with zone=b"), "{table}");
    dev.ctl_ok(&["run", "cancel", &id, "1"])?;

    let bad = serde_json::json!({"id": "badly-placed", "tasks": [{
        "id": "a", "image": TASK_IMAGE, "executor_labels": {"zone": "a\u{7}"},
    }]});
    let refused = dev.register_output(&bad.to_string())?;
    ensure!(!refused.status.success());
    ensure!(
        stderr(&refused).contains("tasks[0].executor_labels.zone"),
        "{}",
        stderr(&refused)
    );
    Ok(())
}
