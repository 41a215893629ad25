//! An extension written with the SDK (`examples/extension-ticker`), built into a local image, installed
//! (its container hardened, on a network of its own), subscribed to and fired end to end; crashed and
//! restarted by the host; uninstalled. From its network only the extension service is reachable, not the
//! node's API or webhook port, and the network goes when goferd stops.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{GoferDev, build_binary_image, wait_until};

use crate::{pipeline, start, stderr};

pub(crate) const TICKER_IMAGE: &str = "gofer-test/ticker:1";
/// An image holding only `gofer-probe`, which says which addresses it can connect to.
const PROBE_IMAGE: &str = "gofer-test/probe:1";

pub(crate) fn ticker_image() -> Result<()> {
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
    // Install-time settings are sealed in the state and reach the container opened.
    let key = crate::secrets::unique_value("ticker-key");
    let extension = install_ticker(
        &dev,
        &["--setting", "crash_after=2", "--setting", &format!("api_key={key}")],
    )?;
    assert_eq!(extension["builtin"], false);
    // Its container is hardened as a task's, on the node's extension network.
    let container = wait_until("the ticker's container", Duration::from_secs(30), || {
        crate::hardening::inspect(&format!("gofer-ext-ticker-{}", dev.cluster))
    })?;
    crate::hardening::assert_hardened(&container, &extension_network(&dev));
    let env = container["Config"]["Env"].to_string();
    assert!(env.contains(&format!("GOFER_SETTING_API_KEY={key}")), "{env}");
    assert!(env.contains("GOFER_SETTING_CRASH_AFTER=2"), "{env}");
    let holding = crate::secrets::files_holding(&dev.data_dir(), key.as_bytes())?;
    assert!(holding.is_empty(), "the setting in the clear in {holding:?}");
    assert!(
        extension["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "every_seconds")
    );

    // Settings are checked against what the extension registered.
    let unknown = dev.ctl(&[&SUBSCRIBE_EVERY_SECOND[..], &["-s", "speed=9"]].concat())?;
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

    subscribe_every_second(&dev)?;
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

/// Installs the ticker with more `goferctl extension install` flags, and returns it once it registered
/// and is connected.
fn install_ticker(dev: &GoferDev, flags: &[&str]) -> Result<serde_json::Value> {
    let mut args = vec!["extension", "install", "ticker", TICKER_IMAGE];
    args.extend(flags);
    dev.ctl_ok(&args)?;
    wait_until("the ticker to register", Duration::from_secs(60), || {
        let e = dev.ctl_json(&["extension", "get", "ticker"])?;
        Ok((e["registered"] == true && e["connected"] == true).then_some(e))
    })
}

/// Subscribes pipeline `ticked` to the ticker, every second, as subscription `t`.
fn subscribe_every_second(dev: &GoferDev) -> Result<()> {
    dev.ctl_ok(&SUBSCRIBE_EVERY_SECOND)?;
    Ok(())
}

/// `goferctl` arguments that subscribe pipeline `ticked` to the ticker, every second, as subscription `t`.
pub(crate) const SUBSCRIBE_EVERY_SECOND: [&str; 7] = [
    "subscription",
    "create",
    "ticked",
    "ticker",
    "t",
    "-s",
    "every_seconds=1",
];

fn probe_image() -> Result<()> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binary_image("gofer-testkit", "gofer-probe", PROBE_IMAGE).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The name of the extension network of `goferd dev` (whose node is called `local`).
fn extension_network(dev: &GoferDev) -> String {
    format!("gofer-ext-{}-local", dev.cluster)
}

/// The gateway of Docker network `name`, or `None` if there is no such network.
fn network_gateway(name: &str) -> Result<Option<String>> {
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            name,
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        ])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(Some(text.split_whitespace().next().context("a gateway")?.to_string()))
}

/// The port of an address such as `https://127.0.0.1:7443`.
fn port_of(address: &str) -> Result<&str> {
    address.rsplit(':').next().context("a port")
}

#[test]
fn an_extension_runs_on_a_network_of_its_own_that_reaches_only_the_extension_service() -> Result<()> {
    ticker_image()?;
    probe_image()?;
    let mut dev = start()?;
    let network = extension_network(&dev);
    ensure!(
        network_gateway(&network)?.is_none(),
        "a node that runs no extension makes no network"
    );
    dev.register(&pipeline("ticked", &[("a", "true", &[])]))?;
    install_ticker(&dev, &[])?;
    subscribe_every_second(&dev)?;
    wait_until("a ticker run", Duration::from_secs(60), || {
        let runs = dev.ctl_json(&["run", "list", "ticked"])?;
        Ok((!runs.as_array().cloned().unwrap_or_default().is_empty()).then_some(()))
    })?;

    // Not on the host's network: on the node's own, dialling the extension service on its gateway.
    let container =
        crate::hardening::inspect(&format!("gofer-ext-ticker-{}", dev.cluster))?.context("the ticker's container")?;
    crate::hardening::assert_hardened(&container, &network);
    let gateway = network_gateway(&network)?.context("the extension network")?;
    let host = container["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.strip_prefix("GOFER_HOST="))
        .next()
        .context("GOFER_HOST")?
        .to_string();
    ensure!(host.starts_with(&format!("https://{gateway}:")), "GOFER_HOST={host}");
    let options = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            &network,
            "--format",
            "{{json .Options}} {{.Internal}}",
        ])
        .output()?;
    let options = String::from_utf8(options.stdout)?;
    ensure!(
        options.trim() == r#"{"com.docker.network.bridge.enable_icc":"false"} false"#,
        "its containers must not reach each other, but may reach out: {options}"
    );

    // From the network, the extension service answers; the node's API and webhook ports, on the host's
    // loopback, are out of reach, through the gateway or otherwise.
    let (extensions, api, webhooks) = (port_of(&host)?, port_of(&dev.host)?, port_of(&dev.webhooks)?);
    let targets = [
        (format!("{gateway}:{extensions}"), "open"),
        (format!("{gateway}:{api}"), "closed"),
        (format!("{gateway}:{webhooks}"), "closed"),
        (format!("127.0.0.1:{api}"), "closed"),
    ];
    let probe = std::process::Command::new("docker")
        .args(["run", "--rm", "--network", &network])
        .args(["--label", &format!("dev.gofer.cluster={}", dev.cluster), PROBE_IMAGE])
        .args(targets.iter().map(|(target, _)| target))
        .output()?;
    ensure!(probe.status.success(), "the probe failed: {}", stderr(&probe));
    let seen = String::from_utf8(probe.stdout)?;
    let expected: String = targets
        .iter()
        .map(|(target, state)| format!("{target} {state}\n"))
        .collect();
    ensure!(seen == expected, "the probe saw:\n{seen}expected:\n{expected}");

    // goferd stopped, its extension's container and network are gone.
    dev.stop()?;
    ensure!(network_gateway(&network)?.is_none(), "{network} outlived goferd");
    Ok(())
}
