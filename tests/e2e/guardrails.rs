//! A task's guardrails against real Docker: a timeout stops it and fails it as timed out, CPU and memory
//! limits and the working directory reach the container (as `docker inspect` shows), the GOFER_ variables
//! are in its environment, and a task over its memory limit is killed with a reason that says so.

use std::time::Duration;

use anyhow::{Context, Result};
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, wait_until};
use serde_json::Value;

use crate::{now_millis, start, tasks, wait_for_end};

/// Registers `pipeline` with the one task `task`, runs it to its end and returns the run's id and JSON,
/// and the task's.
fn run_one_task(dev: &GoferDev, pipeline: &str, task: Value) -> Result<(String, Value, Value)> {
    dev.register(&one_task(pipeline, task))?;
    let run = dev.ctl_ok(&["run", "start", pipeline])?.trim().to_string();
    let ended = wait_for_end(dev, pipeline, &run)?;
    let task = tasks(dev, pipeline, &run)?.remove("a").context("task a")?;
    Ok((run, ended, task))
}

fn one_task(pipeline: &str, task: Value) -> String {
    let mut task = task;
    task["id"] = "a".into();
    task["image"] = TASK_IMAGE.into();
    serde_json::json!({"id": pipeline, "tasks": [task]}).to_string()
}

#[test]
fn a_task_past_its_timeout_is_stopped_and_failed_as_timed_out() -> Result<()> {
    let dev = start()?;
    let (_, ended, task) = run_one_task(
        &dev,
        "slow",
        serde_json::json!({"command": ["sleep", "60"], "timeout": "1s"}),
    )?;
    assert_eq!(ended["state"], "FAILED", "{ended}");
    assert_eq!(task["state"], "FAILED", "{task}");
    assert!(
        task["state_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 1s"),
        "{task}"
    );
    Ok(())
}

#[test]
fn a_timeout_counts_from_the_container_start_even_across_a_restart_of_goferd() -> Result<()> {
    let mut dev = start()?;
    dev.register(&one_task(
        "stubborn",
        serde_json::json!({"command": ["sleep", "120"], "timeout": "6s"}),
    ))?;
    let run = dev.ctl_ok(&["run", "start", "stubborn"])?.trim().to_string();
    let started = wait_until("the task to run", Duration::from_secs(60), || {
        let task = &tasks(&dev, "stubborn", &run)?["a"];
        Ok((task["state"] == "RUNNING").then(|| task["started_unix_millis"].as_i64().unwrap_or(0)))
    })?;
    // goferd stops (its container keeps running) and stays down until the timeout has passed.
    dev.stop()?;
    wait_until("the timeout to pass", Duration::from_secs(30), || {
        Ok((now_millis() > started + 6_000).then_some(()))
    })?;
    let relaunched = now_millis();
    dev.relaunch()?;
    let ended = wait_for_end(&dev, "stubborn", &run)?;
    assert_eq!(ended["state"], "FAILED", "{ended}");
    let task = &tasks(&dev, "stubborn", &run)?["a"];
    assert!(
        task["state_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 6s"),
        "{task}"
    );
    // The adopted attempt got what was left of its timeout (nothing), not a fresh six seconds.
    let ended_at = task["ended_unix_millis"].as_i64().unwrap_or(0);
    assert!(
        ended_at < relaunched + 6_000,
        "ended {} ms after the relaunch",
        ended_at - relaunched
    );
    Ok(())
}

#[test]
fn limits_the_working_directory_and_the_gofer_variables_reach_the_container() -> Result<()> {
    let dev = start()?;
    let pipeline = format!("limits-{}", std::process::id());
    let task = serde_json::json!({
        "command": ["sh", "-c", "env; sleep 3"], "cpu": 0.5, "memory": "64MiB", "workdir": "/work",
    });
    dev.register(&one_task(&pipeline, task))?;
    let run = dev.ctl_ok(&["run", "start", &pipeline])?;
    let run = run.trim();
    // While it runs, Docker shows the limits the executor set.
    let inspected = wait_until("the task's container", Duration::from_secs(60), || {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=dev.gofer.pipeline={pipeline}")])
            .output()?;
        let id = String::from_utf8_lossy(&ids.stdout).trim().to_string();
        if id.is_empty() {
            return Ok(None);
        }
        let out = std::process::Command::new("docker").args(["inspect", &id]).output()?;
        let value: Value = serde_json::from_slice(&out.stdout).context("docker inspect")?;
        Ok(Some(value[0].clone()))
    })?;
    assert_eq!(
        inspected["HostConfig"]["NanoCpus"], 500_000_000,
        "{}",
        inspected["HostConfig"]
    );
    assert_eq!(
        inspected["HostConfig"]["Memory"],
        64 * 1024 * 1024,
        "{}",
        inspected["HostConfig"]
    );
    assert_eq!(inspected["Config"]["WorkingDir"], "/work");
    let ended = wait_for_end(&dev, &pipeline, run)?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    let env = dev.ctl_ok(&["task", "logs", &pipeline, run, "a"])?;
    for expected in [
        "GOFER_NAMESPACE=default".to_string(),
        format!("GOFER_PIPELINE_ID={pipeline}"),
        "GOFER_PIPELINE_VERSION=1".to_string(),
        format!("GOFER_RUN_ID={run}"),
        "GOFER_TASK_ID=a".to_string(),
        "GOFER_ATTEMPT=1".to_string(),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} not in {env}");
    }
    Ok(())
}

#[test]
fn a_task_over_its_memory_limit_is_killed_and_says_so() -> Result<()> {
    let dev = start()?;
    let (_, ended, task) = run_one_task(
        &dev,
        "hungry",
        // `tail` keeps its input's last lines, and 256 MiB of zeros is one line: far past the limit.
        serde_json::json!({"command": ["sh", "-c", "head -c 256M /dev/zero | tail >/dev/null"], "memory": "16MiB"}),
    )?;
    assert_eq!(ended["state"], "FAILED", "{ended}");
    let reason = task["state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("out of memory") && reason.contains("16 MiB"), "{task}");
    Ok(())
}

#[test]
fn parallelism_one_runs_three_runs_started_at_once_one_after_the_other_in_order() -> Result<()> {
    let dev = start()?;
    let json = serde_json::json!({"id": "serial", "parallelism": 1, "tasks": [
        {"id": "a", "image": TASK_IMAGE, "command": ["sleep", "1"]},
    ]});
    dev.register(&json.to_string())?;
    for _ in 0..3 {
        dev.ctl_ok(&["run", "start", "serial"])?;
    }
    let mut runs = Vec::new();
    for run in ["1", "2", "3"] {
        runs.push(wait_for_end(&dev, "serial", run)?);
    }
    for run in &runs {
        assert_eq!(run["state"], "SUCCEEDED", "{run}");
    }
    // Each run started only once the one before it ended: never two RUNNING at once, oldest first.
    for pair in runs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after["started_unix_millis"].as_i64() >= before["ended_unix_millis"].as_i64(),
            "run {} started before run {} ended: {before} {after}",
            after["id"],
            before["id"]
        );
    }
    Ok(())
}

#[test]
fn cancel_gives_running_containers_the_grace_it_names_before_killing_them() -> Result<()> {
    let dev = start()?;
    let pipeline = format!("graceful-{}", std::process::id());
    // A shell that ignores SIGTERM, like the sleep it runs, stands for a task that does not stop when asked:
    // only SIGKILL ends it.
    dev.register(&one_task(
        &pipeline,
        serde_json::json!({"command": ["sh", "-c", "trap '' TERM; sleep 300"]}),
    ))?;
    // Docker's own record of the signals sent to the container, followed from before the run starts.
    let file = tempfile::NamedTempFile::new()?;
    let events = crate::ChildGuard(
        std::process::Command::new("docker")
            .args(["events", "--filter", "event=kill"])
            .args(["--filter", &format!("label=dev.gofer.pipeline={pipeline}")])
            .args(["--format", "{{.Actor.Attributes.signal}} {{.TimeNano}}"])
            .stdout(file.reopen()?)
            .spawn()?,
    );
    let run = dev.ctl_ok(&["run", "start", &pipeline])?.trim().to_string();
    wait_until("the task to run", Duration::from_secs(60), || {
        Ok(Seen::check(
            tasks(&dev, &pipeline, &run)?["a"]["state"].clone(),
            |state| state == "RUNNING",
        ))
    })?;
    let bad = dev.ctl(&["run", "cancel", &pipeline, &run, "--grace", "soon"])?;
    assert!(crate::stderr(&bad).contains("--grace"), "{}", crate::stderr(&bad));
    dev.ctl_ok(&["run", "cancel", &pipeline, &run, "--grace", "2s"])?;
    let ended = wait_for_end(&dev, &pipeline, &run)?;
    assert_eq!(ended["state"], "CANCELLED", "{ended}");
    let signals = wait_until("Docker to report SIGTERM and SIGKILL", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(file.path())?;
        let signals: Vec<(String, i64)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(signal, at)| Some((signal.to_string(), at.parse().ok()?)))
            .collect();
        Ok((signals.len() >= 2).then_some(signals))
    })?;
    drop(events);
    assert_eq!(
        (signals[0].0.as_str(), signals[1].0.as_str()),
        ("15", "9"),
        "{signals:?}"
    );
    let grace = Duration::from_nanos(u64::try_from(signals[1].1 - signals[0].1).unwrap_or(0));
    // The 2 s it was given, not the default 10 s.
    assert!(
        grace >= Duration::from_millis(1500) && grace < Duration::from_secs(9),
        "SIGKILL came {grace:?} after SIGTERM"
    );
    Ok(())
}

#[test]
fn the_node_wide_container_limit_keeps_independent_tasks_from_running_at_once() -> Result<()> {
    gofer_testkit::task_image()?;
    let dev = gofer_testkit::GoferDev::start_with_args(
        gofer_testkit::bin_dir()?,
        gofer_testkit::DEFAULT_LOG_FILTER,
        &["--max-containers", "1"],
    )?;
    let json = serde_json::json!({"id": "limited", "tasks": [
        {"id": "a", "image": TASK_IMAGE, "command": ["sleep", "1"]},
        {"id": "b", "image": TASK_IMAGE, "command": ["sleep", "1"]},
    ]});
    dev.register(&json.to_string())?;
    let run = dev.ctl_ok(&["run", "start", "limited"])?;
    let ended = wait_for_end(&dev, "limited", run.trim())?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    let tasks = tasks(&dev, "limited", run.trim())?;
    let span = |t: &Value| {
        let attempt = &t["attempts"][0];
        (
            attempt["assigned_unix_millis"].as_i64().unwrap_or(0),
            attempt["ended_unix_millis"].as_i64().unwrap_or(0),
        )
    };
    let (a, b) = (span(&tasks["a"]), span(&tasks["b"]));
    // One container at a time: the second was not even assigned before the first ended.
    assert!(a.0 >= b.1 || b.0 >= a.1, "a {a:?} and b {b:?} overlapped");
    Ok(())
}

#[test]
fn a_log_past_its_cap_keeps_its_head_and_tail_with_a_marker_between() -> Result<()> {
    gofer_testkit::task_image()?;
    let dev = gofer_testkit::GoferDev::start_with_args(
        gofer_testkit::bin_dir()?,
        gofer_testkit::DEFAULT_LOG_FILTER,
        &["--task-log-cap", "64KiB"],
    )?;
    // 1 to 200000, one per line: 1,288,895 bytes, twenty times the cap.
    let (run, ended, _) = run_one_task(&dev, "loud", serde_json::json!({"command": ["sh", "-c", "seq 200000"]}))?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    let log = dev.ctl_ok(&["task", "logs", "loud", &run, "a"])?;
    let full: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    let marker_at = log.find("\n[gofer: ").context("a marker in the log")?;
    let marker_end = marker_at + 1 + log[marker_at + 1..].find('\n').context("the marker's end")? + 1;
    let (head, marker, tail) = (&log[..marker_at], &log[marker_at..marker_end], &log[marker_end..]);
    // The head and the tail are the output's first and last 32 KiB, byte for byte.
    assert_eq!(head.len(), 32 << 10);
    assert_eq!(tail.len(), 32 << 10);
    assert!(full.starts_with(head), "head ends {:?}", &head[head.len() - 40..]);
    let expected_tail = &full[full.len() - tail.len()..];
    assert!(
        tail == expected_tail,
        "tail starts {:?} ends {:?}; expected {:?} … {:?}",
        &tail[..40],
        &tail[tail.len() - 40..],
        &expected_tail[..40],
        &expected_tail[expected_tail.len() - 40..]
    );
    let omitted = full.len() - (64 << 10);
    assert!(
        marker.contains(&format!("{omitted} bytes of output left out here")),
        "{marker}"
    );
    // A cap out of bounds stops goferd before it starts, naming the field.
    let bad = std::process::Command::new(gofer_testkit::bin_dir()?.join("goferd"))
        .args(["dev", "--task-log-cap", "1KiB"])
        .output()?;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("task_log_cap"));
    Ok(())
}
