//! Runs through the whole path: success, failure with a failure handler and skips, cancel, live log
//! following by two clients, restarts, a missing image, orphaned containers.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use gofer_testkit::{Seen, TASK_IMAGE, wait_until};

use crate::{pipeline, start, stderr, tasks, wait_for_end};

#[test]
fn a_pipeline_runs_to_success_and_keeps_its_logs() -> Result<()> {
    let dev = start()?;
    let json = pipeline(
        "hello",
        &[
            ("a", "echo hi; echo to-stderr >&2", &[]),
            ("b", "echo after $K", &[("a", "success")]),
        ],
    );
    assert_eq!(dev.register(&json)?, 1);
    let output = dev.ctl(&["run", "start", "hello", "--wait"])?;
    assert!(output.status.success(), "run start --wait: {}", stderr(&output));
    assert_eq!(String::from_utf8(output.stdout)?.trim(), "1");

    let run = dev.ctl_json(&["run", "get", "hello", "1"])?;
    assert_eq!(run["state"], "SUCCEEDED");
    assert!(run["ended_unix_millis"].as_i64().unwrap() >= run["started_unix_millis"].as_i64().unwrap());
    let tasks = tasks(&dev, "hello", "1")?;
    for id in ["a", "b"] {
        assert_eq!(tasks[id]["state"], "SUCCEEDED", "{id}: {}", tasks[id]);
        assert_eq!(tasks[id]["exit_code"], 0);
        assert!(tasks[id]["started_unix_millis"].as_i64().unwrap() > 0);
        assert!(tasks[id]["ended_unix_millis"].as_i64().unwrap() >= tasks[id]["started_unix_millis"].as_i64().unwrap());
    }
    // b started after a ended: its dependency held.
    assert!(tasks["b"]["started_unix_millis"].as_i64() >= tasks["a"]["ended_unix_millis"].as_i64());
    let logs = dev.ctl_ok(&["task", "logs", "hello", "1", "a"])?;
    assert!(logs.contains("hi\n") && logs.contains("to-stderr\n"), "{logs:?}");
    assert_eq!(dev.ctl_ok(&["task", "logs", "hello", "1", "b"])?, "after\n");

    // Tables for people, too.
    let table = dev.ctl_ok(&["run", "list", "hello"])?;
    assert!(table.lines().next().unwrap().starts_with("RUN"), "{table}");
    assert!(table.contains("SUCCEEDED"), "{table}");
    // Containers are removed once their logs are stored.
    wait_until("containers to be removed", Duration::from_secs(30), || {
        Ok(dev.containers()?.is_empty().then_some(()))
    })?;
    // goferd's stderr is a file here, not a terminal: its log is plain text, with no colour codes.
    let log = dev.server_log();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "{log}");
    Ok(())
}

#[test]
fn a_failing_task_runs_its_failure_dependent_and_skips_the_rest() -> Result<()> {
    let dev = start()?;
    let json = pipeline(
        "fails",
        &[
            ("build", "echo building; exit 3", &[]),
            ("deploy", "echo deploying", &[("build", "success")]),
            ("after-deploy", "echo never", &[("deploy", "any")]),
            ("alert", "echo build failed", &[("build", "failure")]),
            ("cleanup", "echo cleaning", &[("build", "any")]),
        ],
    );
    dev.register(&json)?;
    let output = dev.ctl(&["run", "start", "fails", "--wait"])?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed run exits 1: {}",
        stderr(&output)
    );
    let run = dev.ctl_json(&["run", "get", "fails", "1"])?;
    assert_eq!(run["state"], "FAILED");
    let tasks = tasks(&dev, "fails", "1")?;
    assert_eq!(tasks["build"]["state"], "FAILED");
    assert_eq!(tasks["build"]["exit_code"], 3);
    assert_eq!(tasks["deploy"]["state"], "SKIPPED");
    assert_eq!(tasks["deploy"]["exit_code"], serde_json::Value::Null);
    // Skips cascade: `any` after a SKIPPED parent still runs, since the parent did end.
    assert_eq!(tasks["after-deploy"]["state"], "SUCCEEDED");
    assert_eq!(tasks["alert"]["state"], "SUCCEEDED");
    assert_eq!(tasks["cleanup"]["state"], "SUCCEEDED");
    assert_eq!(dev.ctl_ok(&["task", "logs", "fails", "1", "alert"])?, "build failed\n");
    // Asking for the logs of a task that never ran says so on stderr.
    let skipped = dev.ctl(&["task", "logs", "fails", "1", "deploy", "--follow"])?;
    assert!(skipped.status.success());
    assert!(skipped.stdout.is_empty());
    assert!(
        stderr(&skipped).contains("task deploy never ran (SKIPPED"),
        "{}",
        stderr(&skipped)
    );
    Ok(())
}

#[test]
fn cancel_stops_the_running_container() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline(
        "slow",
        &[
            ("sleepy", "echo started; sleep 300", &[]),
            ("next", "echo never", &[("sleepy", "any")]),
        ],
    ))?;
    let run = dev.ctl_ok(&["run", "start", "slow"])?.trim().to_string();
    wait_until("the task to run", Duration::from_secs(60), || {
        Ok(Seen::check(
            tasks(&dev, "slow", &run)?["sleepy"]["state"].clone(),
            |state| state == "RUNNING",
        ))
    })?;
    assert_eq!(dev.containers()?.len(), 1);
    dev.ctl_ok(&["run", "cancel", "slow", &run])?;
    let ended = wait_for_end(&dev, "slow", &run)?;
    assert_eq!(ended["state"], "CANCELLED");
    let ended_tasks = tasks(&dev, "slow", &run)?;
    assert_eq!(ended_tasks["sleepy"]["state"], "CANCELLED");
    assert_eq!(ended_tasks["next"]["state"], "CANCELLED");
    wait_until("the container to be gone", Duration::from_secs(30), || {
        Ok(dev.containers()?.is_empty().then_some(()))
    })?;
    assert!(
        dev.ctl_ok(&["task", "logs", "slow", &run, "sleepy"])?
            .contains("started")
    );
    // --wait on a cancelled run exits 1.
    dev.register(&pipeline("slow2", &[("sleepy", "sleep 300", &[])]))?;
    let mut waiting = dev
        .goferctl()
        .args(["run", "start", "slow2", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until("run 1 of slow2 to run", Duration::from_secs(60), || {
        Ok(Seen::check(
            tasks(&dev, "slow2", "1")?["sleepy"]["state"].clone(),
            |state| state == "RUNNING",
        ))
    })?;
    dev.ctl_ok(&["run", "cancel", "slow2", "1"])?;
    let status = wait_until("run start --wait to exit", Duration::from_secs(60), || {
        Ok(waiting.try_wait()?)
    })?;
    assert_eq!(status.code(), Some(1));
    Ok(())
}

#[test]
fn two_clients_follow_one_task_live() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline(
        "chatty",
        &[("talk", "echo one; sleep 3; echo two; sleep 0.5; echo three >&2", &[])],
    ))?;
    let run = dev.ctl_ok(&["run", "start", "chatty"])?.trim().to_string();
    let follow = || {
        dev.goferctl()
            .args(["task", "logs", "chatty", &run, "talk", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let (mut first, second) = (follow()?, follow()?);
    let mut first_out = BufReader::new(first.stdout.take().context("stdout")?);
    let mut line = String::new();
    first_out.read_line(&mut line)?;
    assert_eq!(line, "one\n");
    // The first line arrived while the task was still running: the follow is live, not a replay.
    assert_eq!(tasks(&dev, "chatty", &run)?["talk"]["state"], "RUNNING");
    // stdout and stderr reach Docker through separate pipes, so only lines apart in time keep their order
    // across the two streams; the script spaces them out.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut first_out, &mut rest)?;
    assert_eq!(line + &rest, "one\ntwo\nthree\n");
    assert!(first.wait()?.success());
    let second = second.wait_with_output()?;
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(String::from_utf8(second.stdout)?, "one\ntwo\nthree\n");
    // A follower that starts after the end gets everything and exits.
    assert_eq!(
        dev.ctl_ok(&["task", "logs", "chatty", &run, "talk", "--follow"])?,
        "one\ntwo\nthree\n"
    );
    Ok(())
}

#[test]
fn restart_keeps_everything_and_ids_keep_counting() -> Result<()> {
    let mut dev = start()?;
    dev.ctl_ok(&["namespace", "create", "team-a"])?;
    dev.register(&pipeline("keep", &[("a", "echo v1", &[])]))?;
    assert_eq!(dev.register(&pipeline("keep", &[("a", "echo v2", &[])]))?, 2);
    assert!(dev.ctl(&["run", "start", "keep", "--wait"])?.status.success());
    dev.restart()?;
    let namespaces = dev.ctl_json(&["namespace", "list"])?;
    let ids: Vec<&str> = namespaces
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["default", "team-a"]);
    let pipeline = dev.ctl_json(&["pipeline", "get", "keep"])?;
    assert_eq!(pipeline["latest_version"], 2);
    assert_eq!(pipeline["config"]["tasks"][0]["command"][2], "echo v2");
    let run = dev.ctl_json(&["run", "get", "keep", "1"])?;
    assert_eq!(
        (run["state"].as_str(), run["version"].as_u64()),
        (Some("SUCCEEDED"), Some(2))
    );
    assert_eq!(tasks(&dev, "keep", "1")?["a"]["exit_code"], 0);
    assert_eq!(dev.ctl_ok(&["task", "logs", "keep", "1", "a"])?, "v2\n");
    assert_eq!(dev.ctl_ok(&["run", "start", "keep", "--wait"])?.trim(), "2");
    assert_eq!(dev.register(&crate::pipeline("keep", &[("a", "echo v3", &[])]))?, 3);
    Ok(())
}

#[test]
fn a_run_in_flight_survives_a_restart_without_a_second_container() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline(
        "long",
        &[
            ("a", "echo before; sleep 4; echo after", &[]),
            ("b", "echo next", &[("a", "success")]),
        ],
    ))?;
    let run = dev.ctl_ok(&["run", "start", "long"])?.trim().to_string();
    wait_until("the task to run", Duration::from_secs(60), || {
        Ok(Seen::check(tasks(&dev, "long", &run)?["a"]["state"].clone(), |state| {
            state == "RUNNING"
        }))
    })?;
    let before = dev.containers()?;
    assert_eq!(before.len(), 1);
    dev.restart()?;
    // The restarted executor adopts the running container instead of starting a second one.
    assert_eq!(dev.containers()?, before);
    let ended = wait_for_end(&dev, "long", &run)?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    let tasks = tasks(&dev, "long", &run)?;
    assert_eq!(tasks["a"]["attempt"], 1);
    assert_eq!(dev.ctl_ok(&["task", "logs", "long", &run, "a"])?, "before\nafter\n");
    Ok(())
}

#[test]
fn a_missing_image_fails_the_task_not_the_server() -> Result<()> {
    let dev = start()?;
    let json = r#"{"id": "ghost", "tasks": [{"id": "a", "image": "gofer-test/not-here:1", "command": ["true"]}]}"#;
    dev.register(json)?;
    let output = dev.ctl(&["run", "start", "ghost", "--wait"])?;
    assert_eq!(output.status.code(), Some(1));
    let task = &tasks(&dev, "ghost", "1")?["a"];
    assert_eq!(task["state"], "FAILED");
    let reason = task["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not found locally") && reason.contains("gofer-test/not-here:1"),
        "{reason}"
    );
    // The server carries on.
    dev.register(&pipeline("fine", &[("a", "true", &[])]))?;
    assert!(dev.ctl(&["run", "start", "fine", "--wait"])?.status.success());
    Ok(())
}

#[test]
fn containers_no_live_attempt_owns_are_removed_on_start() -> Result<()> {
    let mut dev = start()?;
    // The executor cleans up when it connects; make the orphan after that, so this start leaves it alone.
    wait_until("the executor to connect", Duration::from_secs(30), || {
        Ok(dev.server_log().contains("executor connected").then_some(()))
    })?;
    let name = format!("gofer-orphan-{}", dev.cluster);
    let created = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &name])
        .args(["--label", &format!("dev.gofer.cluster={}", dev.cluster)])
        .args([
            "--label",
            "dev.gofer.executor=local",
            "--label",
            "dev.gofer.attempt-key=default/gone/9/x/1",
        ])
        .args([TASK_IMAGE, "sleep", "300"])
        .output()?;
    assert!(created.status.success(), "{}", stderr(&created));
    dev.restart()?;
    wait_until("the orphan to be removed", Duration::from_secs(30), || {
        Ok((!dev.containers()?.contains(&name)).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_task_that_ends_while_goferd_stops_is_recorded_as_it_ended() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline(
        "stopping",
        &[
            ("x", "echo x1; sleep 3; echo x2", &[]),
            ("y", "echo y", &[("x", "success")]),
            ("long", "sleep 300", &[]),
        ],
    ))?;
    let run = dev.ctl_ok(&["run", "start", "stopping"])?.trim().to_string();
    wait_until("x to run", Duration::from_secs(60), || {
        Ok(Seen::check(
            tasks(&dev, "stopping", &run)?["x"]["state"].clone(),
            |state| state == "RUNNING",
        ))
    })?;
    // x exits while goferd is down, so its report is not committed: its container must stay for the next
    // start to adopt, and not be removed (or called lost) before the report is committed.
    dev.stop()?;
    wait_until(
        "x's container to exit while goferd is down",
        Duration::from_secs(30),
        || {
            let exited = std::process::Command::new("docker")
                .args(["ps", "-a", "--format", "{{.Names}}", "--filter", "status=exited"])
                .args(["--filter", &format!("label=dev.gofer.cluster={}", dev.cluster)])
                .output()?;
            Ok(String::from_utf8_lossy(&exited.stdout)
                .lines()
                .any(|name| name.contains("-stopping-"))
                .then_some(()))
        },
    )?;
    dev.relaunch()?;
    let x = wait_until("x to end", Duration::from_secs(60), || {
        let x = tasks(&dev, "stopping", &run)?["x"].clone();
        Ok((x["state"] != "RUNNING" && x["state"] != "PENDING").then_some(x))
    })?;
    assert_eq!(
        (x["state"].as_str(), x["exit_code"].as_i64()),
        (Some("SUCCEEDED"), Some(0)),
        "{x}"
    );
    wait_until("y to succeed", Duration::from_secs(60), || {
        Ok((tasks(&dev, "stopping", &run)?["y"]["state"] == "SUCCEEDED").then_some(()))
    })?;
    assert_eq!(dev.ctl_ok(&["task", "logs", "stopping", &run, "x"])?, "x1\nx2\n");
    dev.ctl_ok(&["run", "cancel", "stopping", &run])?;
    assert_eq!(wait_for_end(&dev, "stopping", &run)?["state"], "CANCELLED");
    Ok(())
}

#[test]
fn a_request_id_starts_one_run_even_when_repeated_across_a_restart() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline("once", &[("a", "echo once", &[])]))?;
    let first = dev.ctl_json(&["run", "start", "once", "--request-id", "deploy-42"])?;
    assert_eq!(
        (first["id"].as_u64(), first["created"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(first["request_id"], "deploy-42");
    let again = dev.ctl_json(&["run", "start", "once", "--request-id", "deploy-42"])?;
    assert_eq!(
        (again["id"].as_u64(), again["created"].as_bool()),
        (Some(1), Some(false))
    );
    dev.restart()?;
    let output = dev.ctl(&["run", "start", "once", "--request-id", "deploy-42"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    assert!(
        stderr(&output).contains("started earlier with this request id"),
        "{}",
        stderr(&output)
    );
    // Without a request id goferctl makes a fresh one per call: every call starts a run.
    assert_eq!(dev.ctl_ok(&["run", "start", "once"])?.trim(), "2");
    assert_eq!(dev.ctl_ok(&["run", "start", "once"])?.trim(), "3");
    let runs = dev.ctl_json(&["run", "list", "once"])?;
    assert_eq!(runs.as_array().map(Vec::len), Some(3));
    for bad in ["two words", &"x".repeat(129)] {
        let output = dev.ctl(&["run", "start", "once", "--request-id", bad])?;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("request_id") && err.contains("InvalidArgument"), "{err}");
    }
    assert_eq!(
        dev.ctl_json(&["run", "list", "once"])?.as_array().map(Vec::len),
        Some(3)
    );
    wait_for_end(&dev, "once", "1")?;
    Ok(())
}

#[test]
fn a_task_that_fails_twice_succeeds_on_its_third_attempt_under_retries_two() -> Result<()> {
    let dev = start()?;
    let json = serde_json::json!({"id": "flaky", "tasks": [{
        "id": "a", "image": gofer_testkit::TASK_IMAGE, "retries": 2, "backoff": "100ms",
        "command": ["sh", "-c", "echo attempt $GOFER_ATTEMPT; test $GOFER_ATTEMPT -ge 3"],
    }]});
    dev.register(&json.to_string())?;
    let run = dev.ctl_ok(&["run", "start", "flaky"])?;
    let ended = wait_for_end(&dev, "flaky", run.trim())?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    let task = &tasks(&dev, "flaky", run.trim())?["a"];
    assert_eq!(
        (task["state"].as_str(), task["attempt"].as_u64()),
        (Some("SUCCEEDED"), Some(3)),
        "{task}"
    );
    let attempts = task["attempts"].as_array().cloned().unwrap_or_default();
    let summary: Vec<(String, bool)> = attempts
        .iter()
        .map(|a| {
            (
                a["state"].as_str().unwrap_or_default().to_string(),
                a["retried"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("FAILED".to_string(), true),
            ("FAILED".to_string(), true),
            ("SUCCEEDED".to_string(), false)
        ],
        "{task}"
    );
    assert_eq!(attempts[0]["reason"], "exited with code 1");
    assert_eq!(dev.ctl_ok(&["task", "logs", "flaky", run.trim(), "a"])?, "attempt 3\n");
    Ok(())
}

#[test]
fn parameters_reach_every_task_and_a_retry_runs_the_same_version_and_parameters() -> Result<()> {
    let dev = start()?;
    let json = serde_json::json!({"id": "params", "tasks": [
        {"id": "a", "image": gofer_testkit::TASK_IMAGE, "command": ["sh", "-c", "echo $TARGET $COLOR"],
         "env": {"COLOR": "task-wins"}},
    ]});
    dev.register(&json.to_string())?;
    let first = dev.ctl_json(&[
        "run",
        "start",
        "params",
        "--param",
        "TARGET=prod",
        "--param",
        "COLOR=blue",
    ])?;
    assert_eq!(first["parameters"]["TARGET"], "prod", "{first}");
    wait_for_end(&dev, "params", "1")?;
    assert_eq!(dev.ctl_ok(&["task", "logs", "params", "1", "a"])?, "prod task-wins\n");
    // A new version does not change what a retry of run 1 runs.
    let json = serde_json::json!({"id": "params", "tasks": [
        {"id": "a", "image": gofer_testkit::TASK_IMAGE, "command": ["sh", "-c", "echo version two"]},
    ]});
    assert_eq!(dev.register(&json.to_string())?, 2);
    let retry = dev.ctl_json(&["run", "retry", "params", "1"])?;
    assert_eq!(
        (
            retry["id"].as_u64(),
            retry["version"].as_u64(),
            retry["retry_of"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{retry}"
    );
    assert_eq!(retry["parameters"]["TARGET"], "prod", "{retry}");
    wait_for_end(&dev, "params", "2")?;
    assert_eq!(dev.ctl_ok(&["task", "logs", "params", "2", "a"])?, "prod task-wins\n");
    // Bad parameters are refused naming them, and a retry of a run that does not exist is NotFound.
    for (args, expected) in [
        (vec!["run", "start", "params", "--param", "1BAD=x"], "parameters.1BAD"),
        (vec!["run", "start", "params", "--param", "NOEQUALS"], "--param"),
        (vec!["run", "retry", "params", "99"], "NotFound"),
    ] {
        let output = dev.ctl(&args)?;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(
        dev.ctl_json(&["run", "list", "params"])?.as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}

#[test]
fn a_pipeline_keeps_its_newest_runs_and_their_logs_and_prunes_the_rest() -> Result<()> {
    let dev = start()?;
    let json = serde_json::json!({"id": "kept", "keep_runs": 2, "tasks": [
        {"id": "a", "image": gofer_testkit::TASK_IMAGE, "command": ["echo", "hello"]},
    ]});
    dev.register(&json.to_string())?;
    for _ in 0..3 {
        assert!(dev.ctl(&["run", "start", "kept", "--wait"])?.status.success());
    }
    let runs = dev.ctl_json(&["run", "list", "kept"])?;
    let ids: Vec<u64> = runs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(ids, [3, 2], "{runs}");
    let gone = dev.ctl(&["run", "get", "kept", "1"])?;
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
    assert_eq!(dev.ctl_ok(&["task", "logs", "kept", "3", "a"])?, "hello\n");
    // Its logs go too, from the state node's data dir.
    let logs = dev.data_dir().join("logs").join("default").join("kept");
    wait_until("run 1's logs to be removed", Duration::from_secs(60), || {
        Ok((!logs.join("1").exists() && logs.join("3").exists()).then_some(()))
    })?;
    Ok(())
}
