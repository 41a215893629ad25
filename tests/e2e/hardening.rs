//! Task containers run hardened against real Docker (20.10, cgroup v1 here): what the kernel shows inside
//! the container (no-new-privileges, the reduced capability set, the pids limit, the task's user) and what
//! `docker inspect` shows of its HostConfig (never privileged, no mounts or devices, the bridge network, the
//! capped json-file log). And what a pipeline may ask for: fields that would give a task power over the
//! host are refused saying why, a pipeline above one of the cluster's ceilings is refused naming it, and a
//! task without a limit gets the cluster's default.

use std::time::Duration;

use anyhow::{Context, Result};
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, wait_until};
use serde_json::Value;

use crate::{start, stderr, wait_for_end};

/// The effective capabilities of root in a task container: CHOWN (0), DAC_OVERRIDE (1), FOWNER (3),
/// FSETID (4), KILL (5), SETGID (6), SETUID (7) and NET_BIND_SERVICE (10); Docker's default set is
/// `a80425fb`.
const TASK_CAPABILITIES: u64 = 0x4fb;

/// The pids limit every task container gets (`gofer_docker::PIDS_LIMIT`).
const PIDS_LIMIT: u64 = 2048;

/// A script that prints the kernel's view of the container: its `/proc/self/status` and its pids limit
/// (cgroup v1 or v2), then waits to be stopped.
const SHOW_AND_WAIT: &str = "cat /proc/self/status; \
    echo pids.max $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max); \
    echo shown; exec sleep 300";

/// The value of `key` in `status` lines such as `CapEff:\t00000000000004fb`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// `docker inspect` of the one running container of `pipeline`'s task `task`.
fn inspect_task_container(pipeline: &str, task: &str) -> Result<Option<Value>> {
    let ids = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=dev.gofer.pipeline={pipeline}")])
        .args(["--filter", &format!("label=dev.gofer.task={task}")])
        .output()?;
    let id = String::from_utf8_lossy(&ids.stdout).trim().to_string();
    if id.is_empty() {
        return Ok(None);
    }
    inspect(&id)
}

/// `docker inspect` of container `id`; none if it is gone.
pub(crate) fn inspect(id: &str) -> Result<Option<Value>> {
    let out = std::process::Command::new("docker").args(["inspect", id]).output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&out.stdout).context("docker inspect")?;
    Ok(Some(value[0].clone()))
}

/// Checks what every container Gofer makes says in its HostConfig, on `network`.
pub(crate) fn assert_hardened(container: &Value, network: &str) {
    let host = &container["HostConfig"];
    assert_eq!(host["Privileged"], false, "{host}");
    assert_eq!(host["NetworkMode"], network, "{host}");
    for empty in ["Binds", "Mounts", "Devices"] {
        assert!(
            host[empty].as_array().is_none_or(Vec::is_empty),
            "{empty}: {}",
            host[empty]
        );
    }
    assert!(
        container["Mounts"].as_array().is_none_or(Vec::is_empty),
        "{}",
        container["Mounts"]
    );
    assert_eq!(host["SecurityOpt"], serde_json::json!(["no-new-privileges"]), "{host}");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]), "{host}");
    // The bits of TASK_CAPABILITIES, by name (Docker shows them as the client spelled them, with or
    // without `CAP_`).
    let kept = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "NET_BIND_SERVICE",
        "SETGID",
        "SETUID",
    ];
    let mut added: Vec<&str> = host["CapAdd"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|cap| cap.strip_prefix("CAP_").unwrap_or(cap))
        .collect();
    added.sort_unstable();
    assert_eq!(added, kept, "{host}");
    assert_eq!(host["PidsLimit"], PIDS_LIMIT, "{host}");
    assert_eq!(host["LogConfig"]["Type"], "json-file", "{host}");
    assert_eq!(
        host["LogConfig"]["Config"],
        serde_json::json!({"max-size": "100m", "max-file": "3"}),
        "{host}"
    );
}

#[test]
fn a_task_container_runs_hardened_and_as_the_user_it_names() -> Result<()> {
    let dev = start()?;
    let pipeline = format!("hardened-{}", std::process::id());
    let json = serde_json::json!({"id": pipeline, "tasks": [
        {"id": "root", "image": TASK_IMAGE, "command": ["sh", "-c", SHOW_AND_WAIT]},
        {"id": "someone", "image": TASK_IMAGE, "command": ["sh", "-c", SHOW_AND_WAIT], "user": "1234:5678"},
    ]});
    dev.register(&json.to_string())?;
    let run = dev.ctl_ok(&["run", "start", &pipeline])?.trim().to_string();
    let mut shown = std::collections::BTreeMap::new();
    for task in ["root", "someone"] {
        let status = wait_until("the task to show its status", Duration::from_secs(60), || {
            let log = dev.ctl_ok(&["task", "logs", &pipeline, &run, task])?;
            Ok(Seen::check(log, |log| log.lines().any(|l| l == "shown")))
        })?;
        // While it runs, Docker shows the HostConfig the executor asked for.
        let container = wait_until("the task's container", Duration::from_secs(30), || {
            inspect_task_container(&pipeline, task)
        })?;
        assert_hardened(&container, "bridge");
        shown.insert(task, (status, container));
    }
    dev.ctl_ok(&["run", "cancel", &pipeline, &run, "--grace", "1s"])?;
    let ended = wait_for_end(&dev, &pipeline, &run)?;
    assert_eq!(ended["state"], "CANCELLED", "{ended}");

    let (root, _) = &shown["root"];
    let capabilities = |status: &str| status_field(status, "CapEff").and_then(|hex| u64::from_str_radix(hex, 16).ok());
    assert_eq!(capabilities(root), Some(TASK_CAPABILITIES), "{root}");
    assert_eq!(status_field(root, "CapBnd"), Some("00000000000004fb"), "{root}");
    assert_eq!(status_field(root, "NoNewPrivs"), Some("1"), "{root}");
    assert_eq!(
        status_field(root, "Uid").map(|u| u.split_whitespace().next()),
        Some(Some("0"))
    );
    assert!(
        root.lines().any(|l| l == format!("pids.max {PIDS_LIMIT}")),
        "the kernel enforces the pids limit: {root}"
    );

    let (someone, container) = &shown["someone"];
    assert_eq!(container["Config"]["User"], "1234:5678");
    let ids = |key: &str| status_field(someone, key).map(|ids| ids.split_whitespace().collect::<Vec<_>>());
    assert_eq!(ids("Uid"), Some(vec!["1234"; 4]), "{someone}");
    assert_eq!(ids("Gid"), Some(vec!["5678"; 4]), "{someone}");
    // Not root: no capabilities at all, and none to gain.
    assert_eq!(capabilities(someone), Some(0), "{someone}");
    assert_eq!(status_field(someone, "NoNewPrivs"), Some("1"), "{someone}");
    Ok(())
}

/// Starts `goferd dev` with the task image built and more flags.
fn start_with(args: &[&str]) -> Result<GoferDev> {
    gofer_testkit::task_image()?;
    GoferDev::start_with_args(gofer_testkit::bin_dir()?, gofer_testkit::DEFAULT_LOG_FILTER, args)
}

#[test]
fn a_pipeline_over_a_ceiling_or_asking_for_the_host_is_refused_and_a_default_applies() -> Result<()> {
    let dev = start_with(&[
        "--task-default-memory",
        "64MiB",
        "--task-max-memory",
        "256MiB",
        "--task-max-timeout",
        "1h",
    ])?;
    for (task, field, ceiling) in [
        (r#""memory": "1GiB""#, "tasks[0].memory", "task_max_memory = 256MiB"),
        (r#""timeout": "2h""#, "tasks[0].timeout", "task_max_timeout = 1h"),
    ] {
        let json = format!(r#"{{"id": "greedy", "tasks": [{{"id": "a", "image": "{TASK_IMAGE}", {task}}}]}}"#);
        let output = dev.register_output(&json)?;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(field) && err.contains(ceiling) && err.contains("InvalidArgument"),
            "{err}"
        );
    }
    for (field, value, why) in [
        ("privileged", "true", "tasks never run privileged"),
        (
            "volumes",
            r#"["/var/run/docker.sock:/var/run/docker.sock"]"#,
            "host mounts",
        ),
        ("mounts", r#"[{"Source": "/", "Target": "/host"}]"#, "host mounts"),
        ("network_mode", r#""host""#, "host network"),
        ("network", r#""host""#, "host network"),
        ("cap_add", r#"["SYS_ADMIN"]"#, "capabilities"),
        ("devices", r#"["/dev/kmsg"]"#, "host devices"),
    ] {
        let json = format!(r#"{{"id": "p", "tasks": [{{"id": "a", "image": "{TASK_IMAGE}", "{field}": {value}}}]}}"#);
        let output = dev.register_output(&json)?;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{field}: {err}");
        assert!(
            err.contains(&format!("tasks[0].{field}: ")) && err.contains(why) && err.contains("InvalidArgument"),
            "{field}: {err}"
        );
    }
    let bad_user = dev.register_output(&format!(
        r#"{{"id": "p", "tasks": [{{"id": "a", "image": "{TASK_IMAGE}", "user": "root:x:y"}}]}}"#
    ))?;
    assert!(
        stderr(&bad_user).contains("tasks[0].user") && stderr(&bad_user).contains("InvalidArgument"),
        "{}",
        stderr(&bad_user)
    );
    assert_eq!(dev.ctl_json(&["pipeline", "list"])?, serde_json::json!([]));

    // A task without `memory` runs with the default, as its own cgroup says.
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    let json = serde_json::json!({"id": "modest", "tasks": [
        {"id": "a", "image": TASK_IMAGE, "command": ["sh", "-c", script]},
        {"id": "b", "image": TASK_IMAGE, "command": ["sh", "-c", script], "memory": "128MiB"},
    ]});
    dev.register(&json.to_string())?;
    let run = dev.ctl_ok(&["run", "start", "modest"])?.trim().to_string();
    let ended = wait_for_end(&dev, "modest", &run)?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    for (task, bytes) in [("a", 64u64 << 20), ("b", 128 << 20)] {
        let log = dev.ctl_ok(&["task", "logs", "modest", &run, task])?;
        assert_eq!(log.trim(), bytes.to_string(), "task {task}");
    }

    // A default above its ceiling stops goferd before it starts, naming both.
    let bad = std::process::Command::new(gofer_testkit::bin_dir()?.join("goferd"))
        .args(["dev", "--task-default-memory", "1GiB", "--task-max-memory", "256MiB"])
        .args(["--listen", "127.0.0.1:0", "--webhook-listen", "127.0.0.1:0"])
        .env("GOFER_DATA_DIR", dev.data_dir().with_file_name("unused"))
        .env("GOFER_CONFIG", dev.config_path().with_file_name("unused.toml"))
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    assert!(
        err.contains("task_default_memory") && err.contains("task_max_memory"),
        "{err}"
    );
    Ok(())
}
