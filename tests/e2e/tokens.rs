//! Tokens with roles and namespaces, as a user drives them: an admin makes a viewer and an operator
//! token, each is held to its role and its namespaces (refusals name who, what and where), lists and
//! the event stream show only what a token may see, and a disabled or expired token stops working.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{GoferDev, Seen, wait_until};

use crate::{pipeline, start, stderr};

/// Runs goferctl with `token` instead of the admin's.
pub(crate) fn as_token(dev: &GoferDev, token: &str, args: &[&str]) -> Result<std::process::Output> {
    dev.goferctl()
        .args(["--token", token])
        .args(args)
        .output()
        .context("running goferctl")
}

/// Makes a token and returns its secret.
fn create(dev: &GoferDev, args: &[&str]) -> Result<String> {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let created = dev.ctl_json(&all)?;
    let secret = created["secret"].as_str().context("a secret")?.to_string();
    ensure!(secret.starts_with("gofer_"), "{secret}");
    Ok(secret)
}

#[test]
fn each_token_is_held_to_its_role_and_namespaces_and_a_disabled_one_stops_working() -> Result<()> {
    let dev = start()?;
    for namespace in ["team-a", "team-b"] {
        dev.ctl_ok(&["namespace", "create", namespace])?;
    }
    let json = pipeline("p", &[("only", "echo hi", &[])]);
    for namespace in ["team-a", "team-b"] {
        dev.register_in(namespace, &json)?;
    }
    let viewer = create(&dev, &["ci-view", "--role", "viewer", "--namespace", "team-a"])?;
    let operator = create(&dev, &["ci-bot", "--role", "operator", "--namespace", "team-*"])?;

    // Who am I.
    let me = as_token(&dev, &viewer, &["whoami", "-o", "json"])?;
    ensure!(me.status.success(), "{}", stderr(&me));
    let me: serde_json::Value = serde_json::from_slice(&me.stdout)?;
    ensure!(me["name"] == "ci-view" && me["role"] == "VIEWER", "{me}");
    ensure!(me["namespaces"] == serde_json::json!(["team-a"]), "{me}");

    // A viewer reads its namespace, and nothing else; it changes nothing.
    let read = as_token(&dev, &viewer, &["-n", "team-a", "pipeline", "list"])?;
    ensure!(read.status.success(), "{}", stderr(&read));
    let other = as_token(&dev, &viewer, &["-n", "team-b", "pipeline", "list"])?;
    ensure!(!other.status.success(), "a viewer of team-a read team-b");
    ensure!(
        stderr(&other).contains("token ci-view (viewer on team-a) cannot ListPipelines in team-b")
            && stderr(&other).contains("PermissionDenied"),
        "{}",
        stderr(&other)
    );
    let start_run = as_token(&dev, &viewer, &["-n", "team-a", "run", "start", "p"])?;
    ensure!(
        stderr(&start_run).contains("token ci-view (viewer on team-a) cannot StartRun"),
        "{}",
        stderr(&start_run)
    );
    let namespaces = as_token(&dev, &viewer, &["namespace", "list", "-o", "json"])?;
    let namespaces: serde_json::Value = serde_json::from_slice(&namespaces.stdout)?;
    let ids: Vec<&str> = namespaces
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(ids == ["team-a"], "a viewer of team-a lists {ids:?}");

    // An operator runs pipelines in the namespaces its pattern matches, but administers nothing.
    let ran = as_token(&dev, &operator, &["-n", "team-b", "run", "start", "p", "--wait"])?;
    ensure!(ran.status.success(), "{}", stderr(&ran));
    let outside = as_token(&dev, &operator, &["-n", "default", "run", "start", "p"])?;
    ensure!(
        stderr(&outside).contains("cannot StartRun in default"),
        "{}",
        stderr(&outside)
    );
    for args in [
        &["namespace", "create", "team-c"][..],
        &["token", "create", "x", "--role", "viewer", "--namespace", "team-a"][..],
        &["token", "list"][..],
    ] {
        let refused = as_token(&dev, &operator, args)?;
        ensure!(
            !refused.status.success() && stderr(&refused).contains("PermissionDenied"),
            "an operator ran {args:?}: {}",
            stderr(&refused)
        );
    }

    // The event stream shows a viewer only its namespaces' events: the run in team-b is not among them.
    let events = as_token(&dev, &viewer, &["event", "list", "-o", "json"])?;
    ensure!(events.status.success(), "{}", stderr(&events));
    let seen = String::from_utf8_lossy(&events.stdout).to_string();
    ensure!(!seen.contains("team-b"), "a viewer of team-a saw: {seen}");
    let all = dev.ctl(&["event", "list", "-o", "json"])?;
    ensure!(
        String::from_utf8_lossy(&all.stdout).contains("team-b"),
        "the admin sees team-b's run"
    );

    // Listed without secrets; disabled, it stops working at once.
    let listed = dev.ctl_ok(&["token", "list", "-o", "json"])?;
    ensure!(
        !listed.contains(&viewer) && !listed.contains(&operator),
        "a secret was listed"
    );
    dev.ctl_ok(&["token", "disable", "ci-view"])?;
    let refused = as_token(&dev, &viewer, &["-n", "team-a", "pipeline", "list"])?;
    ensure!(
        !refused.status.success() && stderr(&refused).contains("Unauthenticated"),
        "{}",
        stderr(&refused)
    );
    let shown = dev.ctl_json(&["token", "get", "ci-view"])?;
    ensure!(shown["disabled_unix_millis"].as_i64().unwrap_or(0) > 0, "{shown}");
    dev.ctl_ok(&["token", "delete", "ci-view"])?;
    let gone = dev.ctl(&["token", "get", "ci-view"])?;
    ensure!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
    Ok(())
}

#[test]
fn a_token_stops_working_when_it_expires_and_bad_tokens_are_refused_naming_the_field() -> Result<()> {
    let dev = start()?;
    let brief = create(
        &dev,
        &["brief", "--role", "viewer", "--namespace", "*", "--expires", "2s"],
    )?;
    let before = as_token(&dev, &brief, &["pipeline", "list"])?;
    ensure!(before.status.success(), "{}", stderr(&before));
    wait_until("the token to expire", Duration::from_secs(30), || {
        let output = as_token(&dev, &brief, &["pipeline", "list"])?;
        Ok(Seen::check(stderr(&output), |text| text.contains("Unauthenticated")))
    })?;
    for (args, field) in [
        (
            &["token", "create", "Bad Name", "--role", "viewer", "--namespace", "a"][..],
            "name",
        ),
        (&["token", "create", "t", "--role", "viewer"][..], "namespaces"),
        (
            &["token", "create", "t", "--role", "viewer", "--namespace", "A/b"][..],
            "namespaces[0]",
        ),
    ] {
        let refused = dev.ctl(args)?;
        ensure!(
            stderr(&refused).contains(&format!("{field}:")) && stderr(&refused).contains("InvalidArgument"),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    let role = dev.ctl(&["token", "create", "t", "--role", "boss", "--namespace", "a"])?;
    ensure!(
        role.status.code() == Some(1) && stderr(&role).contains("--role"),
        "{}",
        stderr(&role)
    );
    Ok(())
}
