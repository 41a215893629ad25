//! An extension written with the SDK (`examples/extension-ticker`), built into a local image, installed
//! (its container hardened), subscribed to and fired end to end; crashed and restarted by the host;
//! uninstalled.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use gofer_testkit::{build_binary_image, wait_until};

use crate::{pipeline, start, stderr};

const TICKER_IMAGE: &str = "gofer-test/ticker:1";

fn ticker_image() -> Result<()> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_binary_image("gofer-example-ticker", "gofer-ticker", TICKER_IMAGE).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

#[test]
fn an_sdk_extension_is_installed_fires_runs_and_is_restarted_after_a_crash() -> Result<()> {
    ticker_image()?;
    let dev = start()?;
    dev.register(&pipeline("ticked", &[("a", "true", &[])]))?;
    dev.ctl_ok(&[
        "extension",
        "install",
        "ticker",
        TICKER_IMAGE,
        "--setting",
        "crash_after=2",
    ])?;
    let extension = wait_until("the ticker to register", Duration::from_secs(60), || {
        let e = dev.ctl_json(&["extension", "get", "ticker"])?;
        Ok((e["registered"] == true && e["connected"] == true).then_some(e))
    })?;
    assert_eq!(extension["builtin"], false);
    // Its container is hardened as a task's, but on the host network, where it reaches the node.
    let container = wait_until("the ticker's container", Duration::from_secs(30), || {
        crate::hardening::inspect(&format!("gofer-ext-ticker-{}", dev.cluster))
    })?;
    crate::hardening::assert_hardened(&container, "host");
    assert!(
        extension["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "every_seconds")
    );

    // Settings are checked against what the extension registered.
    let unknown = dev.ctl(&[
        "subscription",
        "create",
        "ticked",
        "ticker",
        "t",
        "-s",
        "every_seconds=1",
        "-s",
        "speed=9",
    ])?;
    assert!(
        stderr(&unknown).contains("settings.speed") && stderr(&unknown).contains("InvalidArgument"),
        "{}",
        stderr(&unknown)
    );
    let missing = dev.ctl(&["subscription", "create", "ticked", "ticker", "t"])?;
    assert!(
        stderr(&missing).contains("settings.every_seconds"),
        "{}",
        stderr(&missing)
    );

    dev.ctl_ok(&[
        "subscription",
        "create",
        "ticked",
        "ticker",
        "t",
        "-s",
        "every_seconds=1",
    ])?;
    // It fires twice, crashes, is restarted by the host, gets its subscription again and fires on.
    let runs = wait_until("four ticker runs", Duration::from_secs(90), || {
        let runs = dev.ctl_json(&["run", "list", "ticked"])?;
        let runs = runs.as_array().cloned().unwrap_or_default();
        Ok((runs.len() >= 4).then_some(runs))
    })?;
    for run in &runs {
        assert_eq!(run["trigger"]["extension"], "ticker");
        assert_eq!(run["trigger"]["subscription"], "t");
    }
    let mut keys: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["trigger"]["idempotency_key"].as_str())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), runs.len(), "every run has its own key");
    assert!(
        dev.server_log().contains("extension exited; restarting it"),
        "the crash was seen and handled"
    );

    // An extension in use cannot be uninstalled; once its subscription is gone it can, and its container goes.
    let busy = dev.ctl(&["extension", "uninstall", "ticker"])?;
    assert!(stderr(&busy).contains("FailedPrecondition"), "{}", stderr(&busy));
    dev.ctl_ok(&["subscription", "delete", "ticked", "t"])?;
    dev.ctl_ok(&["extension", "uninstall", "ticker"])?;
    wait_until("the ticker container to go", Duration::from_secs(30), || {
        Ok(dev
            .containers()?
            .iter()
            .all(|c| !c.starts_with("gofer-ext-ticker"))
            .then_some(()))
    })?;
    Ok(())
}

#[test]
fn an_extension_whose_image_is_missing_says_so() -> Result<()> {
    let dev = start()?;
    dev.ctl_ok(&["extension", "install", "ghost", "gofer-test/no-such-extension:1"])?;
    let extension = wait_until("the launch error to show", Duration::from_secs(30), || {
        let e = dev.ctl_json(&["extension", "get", "ghost"])?;
        Ok(e["last_error"]
            .as_str()
            .is_some_and(|m| m.contains("not found locally"))
            .then_some(e))
    })?;
    assert_eq!(extension["connected"], false);
    dev.ctl_ok(&["extension", "uninstall", "ghost"])?;
    Ok(())
}
