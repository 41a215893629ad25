//! Bad input: every invalid pipeline is refused with InvalidArgument naming the field and nothing is
//! stored; unknown things are NotFound; a missing or wrong token is Unauthenticated; usage errors exit 2;
//! the server keeps serving after each.

use std::time::Duration;

use anyhow::Result;
use gofer_testkit::wait_until;

use crate::{start, stderr};

fn task(id: &str) -> String {
    format!(r#"{{"id": "{id}", "image": "img"}}"#)
}

#[test]
fn invalid_pipelines_are_refused_naming_the_field_and_nothing_is_stored() -> Result<()> {
    let dev = start()?;
    let many: Vec<String> = (0..201).map(|i| task(&format!("t{i}"))).collect();
    let long = "x".repeat(65);
    let cases: Vec<(String, &str)> = vec![
        (r#"{"id": "p", "tasks": [ "#.to_string(), "malformed JSON"),
        (format!(r#"{{"id": "p", "tasks": [{}, {}]}}"#, task("a"), task("a")), "tasks[1].id"),
        (format!(r#"{{"id": "p", "tasks": [{}]}}"#, task("")), "tasks[0].id"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "img", "depends_on": {"nope": "success"}}]}"#.into(), "tasks[0].depends_on.nope"),
        (
            r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "depends_on": {"b": "any"}}, {"id": "b", "image": "i", "depends_on": {"a": "any"}}]}"#.into(),
            "cycle",
        ),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": ""}]}"#.into(), "tasks[0].image"),
        (format!(r#"{{"id": "p", "tasks": [{}]}}"#, task("Bad.Id")), "tasks[0].id"),
        (format!(r#"{{"id": "{long}", "tasks": [{}]}}"#, task("a")), "id:"),
        (format!(r#"{{"id": "p", "tasks": [{}]}}"#, many.join(",")), "at most 200"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "depends_on": {"a": "sometimes"}}]}"#.into(), "tasks[0].depends_on.a"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "timeout": "-5s"}]}"#.into(), "tasks[0].timeout"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "timeout": "0s"}]}"#.into(), "tasks[0].timeout"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "retries": 11}]}"#.into(), "tasks[0].retries"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "memory": "1MiB"}]}"#.into(), "tasks[0].memory"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "memory": "lots"}]}"#.into(), "tasks[0].memory"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "cpu": 0}]}"#.into(), "tasks[0].cpu"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "cpu": -1.5}]}"#.into(), "tasks[0].cpu"),
        (r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "workdir": "relative"}]}"#.into(), "tasks[0].workdir"),
    ];
    for (json, expected) in &cases {
        let output = dev.register_output(json)?;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{expected}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
        assert!(!err.contains("Status {") && !err.contains("panicked"), "{err}");
        // JSON that does not parse is refused by goferctl itself; everything else by the server.
        if !err.contains("malformed JSON") {
            assert!(err.contains("InvalidArgument"), "{err}");
        }
    }
    assert_eq!(dev.ctl_json(&["pipeline", "list"])?, serde_json::json!([]));
    Ok(())
}

#[test]
fn unknown_things_missing_tokens_and_usage_errors_are_refused_and_the_server_keeps_serving() -> Result<()> {
    let dev = start()?;
    for args in [
        vec!["run", "start", "nope"],
        vec!["pipeline", "get", "nope"],
        vec!["run", "get", "nope", "1"],
        vec!["task", "list", "nope", "1"],
        vec!["--namespace", "nowhere", "pipeline", "list"],
    ] {
        let output = dev.ctl(&args)?;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(stderr(&output).contains("NotFound"), "{args:?}: {}", stderr(&output));
    }
    dev.register(&crate::pipeline("known", &[("a", "true", &[])]))?;
    let output = dev.ctl(&["run", "get", "known", "42"])?;
    assert!(
        stderr(&output).contains("NotFound") && stderr(&output).contains("run 42"),
        "{}",
        stderr(&output)
    );

    let wrong = dev.goferctl().args(["--token", "wrong", "pipeline", "list"]).output()?;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("Unauthenticated"), "{}", stderr(&wrong));
    let config = std::fs::read_to_string(dev.config_path())?;
    let no_token: String = config
        .lines()
        .filter(|l| !l.starts_with("token"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare = dev.config_path().with_file_name("no-token.toml");
    std::fs::write(&bare, no_token)?;
    let host = dev.host.clone();
    let missing = dev
        .goferctl()
        .env("GOFER_CONFIG", &bare)
        .env("GOFER_TOKEN", "")
        .args(["--host", &host, "pipeline", "list"])
        .output()?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("Unauthenticated"), "{}", stderr(&missing));

    for args in [
        vec!["run", "get", "known", "not-a-number"],
        vec!["frobnicate"],
        vec!["run", "start"],
    ] {
        let output = dev.ctl(&args)?;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
    }
    let duplicate = dev.ctl(&["namespace", "create", "default"])?;
    assert!(stderr(&duplicate).contains("AlreadyExists"), "{}", stderr(&duplicate));
    let bad_namespace = dev.ctl(&["namespace", "create", "Not OK"])?;
    assert!(
        stderr(&bad_namespace).contains("InvalidArgument"),
        "{}",
        stderr(&bad_namespace)
    );

    // After all of that the server still serves, and never logged a panic.
    assert!(dev.ctl(&["run", "start", "known", "--wait"])?.status.success());
    assert!(!dev.server_log().contains("panicked"), "{}", dev.server_log());
    Ok(())
}

#[test]
fn cluster_status_shows_the_single_dev_node_as_leader() -> Result<()> {
    let dev = start()?;
    let status = dev.ctl_json(&["cluster", "status"])?;
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(status["nodes"][0]["role"], "LEADER");
    assert!(status["applied_index"].as_u64() >= Some(1));
    let digest = status["state_digest"].as_str().unwrap_or_default();
    assert!(
        digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{status}"
    );
    // The one node holds both one-at-a-time roles, each in its first epoch.
    let leases = wait_until("both leases", Duration::from_secs(10), || {
        let status = dev.ctl_json(&["cluster", "status"])?;
        let roles: Vec<(String, u64)> = status["leases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                (
                    l["role"].as_str().unwrap_or_default().to_string(),
                    l["epoch"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        Ok((roles.len() == 2).then_some(roles))
    })?;
    assert_eq!(
        leases,
        [("scheduler".to_string(), 1), ("extension-host".to_string(), 1)]
    );
    // The table prints the digest the JSON gives, once the state is quiet (the executor registers
    // shortly after the start, which changes it).
    let table = wait_until("the table to show the digest", Duration::from_secs(20), || {
        let digest = dev.ctl_json(&["cluster", "status"])?["state_digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let table = dev.ctl_ok(&["cluster", "status"])?;
        Ok(table.contains(&format!("state:       {digest}")).then_some(table))
    })?;
    assert!(table.contains("leader:      node 1"), "{table}");
    assert!(
        table.contains("ROLE") && table.contains("HOLDER") && table.contains("local/"),
        "{table}"
    );
    let bad = dev.ctl(&["cluster", "remove", "7"])?;
    assert!(stderr(&bad).contains("NotFound"), "{}", stderr(&bad));
    let usage = dev.ctl(&["cluster", "add", "x", "https://h:1"])?;
    assert_eq!(usage.status.code(), Some(2));
    Ok(())
}
