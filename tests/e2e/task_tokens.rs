//! A run's task token, as a task gets it with `inject_api_token`: it reads its own run and starts runs of
//! its own pipeline, nothing else, is masked in the task's output, and stops working when the run ends.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, build_binary_image, wait_until};

use crate::tokens::as_token;
use crate::{start, stderr, tasks, wait_for_end};

/// An image holding only goferctl (and the libraries it links), as its entrypoint.
pub(crate) const GOFERCTL_IMAGE: &str = "gofer-test/goferctl:1";

pub(crate) fn goferctl_image() -> Result<()> {
    static BUILT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_binary_image("goferctl", "goferctl", GOFERCTL_IMAGE).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Registers pipeline `id`: one task that prints its token's tail (the token without its prefix, which the
/// mask does not hide), the whole token (which it does) and the API address, then waits.
fn register(dev: &GoferDev, id: &str, inject: bool) -> Result<()> {
    let script = r#"echo "tail=${GOFER_API_TOKEN#gofer_run/}"; echo "whole=$GOFER_API_TOKEN"; echo "host=$GOFER_HOST"; sleep 60"#;
    let json = serde_json::json!({"id": id, "tasks": [{
        "id": "a", "image": TASK_IMAGE, "command": ["sh", "-c", script], "inject_api_token": inject,
    }]});
    dev.register(&json.to_string())?;
    Ok(())
}

/// The task's output once it printed its three lines.
fn printed(dev: &GoferDev, id: &str, run: &str) -> Result<String> {
    wait_until("the task to print its token", Duration::from_secs(60), || {
        let logs = dev.ctl(&["task", "logs", id, run, "a"])?;
        let text = String::from_utf8_lossy(&logs.stdout).to_string();
        Ok(Seen::check(text, |text| text.contains("host=")))
    })
}

fn line<'t>(text: &'t str, key: &str) -> Result<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("no {key} line in {text:?}"))
}

#[test]
fn a_task_token_reads_its_run_and_starts_its_pipeline_and_stops_when_the_run_ends() -> Result<()> {
    let dev = start()?;
    let id = format!("tokened-{}", std::process::id());
    let other = format!("other-{}", std::process::id());
    register(&dev, &id, true)?;
    register(&dev, &other, false)?;
    dev.ctl_ok(&["run", "start", &id])?;
    dev.ctl_ok(&["run", "start", &other])?;
    let output = printed(&dev, &id, "1")?;
    let token = format!("gofer_run/{}", line(&output, "tail=")?);
    ensure!(token.starts_with(&format!("gofer_run/default/{id}/1/")), "{token}");
    ensure!(line(&output, "whole=")? == "********", "the token is masked: {output}");
    ensure!(line(&output, "host=")?.starts_with("https://"), "{output}");
    ensure!(
        !printed(&dev, &other, "1")?.contains("tail=gofer"),
        "only a task that asks gets a token"
    );

    let ok = |args: &[&str]| -> Result<String> {
        let out = as_token(&dev, &token, args)?;
        ensure!(out.status.success(), "{args:?}: {}", stderr(&out));
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let refused = |args: &[&str]| -> Result<String> {
        let out = as_token(&dev, &token, args)?;
        ensure!(!out.status.success(), "{args:?} is refused");
        Ok(stderr(&out))
    };
    ok(&["run", "get", &id, "1"])?;
    ok(&["task", "list", &id, "1"])?;
    ok(&["whoami"])?;
    ok(&["run", "start", &id])?;
    for (args, what) in [
        (vec!["run", "get", &other, "1"], "another pipeline's run"),
        (vec!["run", "get", &id, "2"], "another run of its pipeline"),
        (vec!["run", "start", &other], "starting another pipeline"),
        (vec!["run", "cancel", &id, "1"], "cancelling"),
        (vec!["pipeline", "list"], "listing pipelines"),
        (vec!["token", "list"], "listing tokens"),
        (vec!["secret", "list", &id], "listing secrets"),
    ] {
        let message = refused(&args)?;
        ensure!(message.contains("task token of run default"), "{what}: {message}");
    }

    // The run ends: the token stops working at once, everywhere it is checked.
    dev.ctl_ok(&["run", "cancel", &id, "1"])?;
    wait_for_end(&dev, &id, "1")?;
    let message = refused(&["run", "get", &id, "1"])?;
    ensure!(message.contains("run is over"), "{message}");
    for run in [(id.as_str(), "2"), (other.as_str(), "1")] {
        dev.ctl_ok(&["run", "cancel", run.0, run.1])?;
        wait_for_end(&dev, run.0, run.1)?;
    }
    Ok(())
}

/// From inside its container, on Docker's bridge network, a task reaches the API at its `GOFER_HOST` (the
/// executor's relay), verifies it with `GOFER_CA_CERT_PEM`, and is its run's token there: goferctl with no
/// flags reads its own run and is refused anything else.
#[test]
fn a_task_reaches_the_api_from_its_container_with_no_flags() -> Result<()> {
    goferctl_image()?;
    let dev = start()?;
    let id = format!("calls-home-{}", std::process::id());
    let task = |task: &str, command: &[&str]| serde_json::json!({"id": task, "image": GOFERCTL_IMAGE, "command": command, "inject_api_token": true});
    let json = serde_json::json!({"id": id, "tasks": [
        task("reads", &["run", "get", &id, "1", "-o", "json"]),
        task("whoami", &["whoami"]),
        task("lists", &["pipeline", "list"]),
    ]});
    dev.register(&json.to_string())?;
    dev.ctl_ok(&["run", "start", &id])?;
    wait_for_end(&dev, &id, "1")?;
    let tasks = tasks(&dev, &id, "1")?;
    let log = |task: &str| -> Result<String> {
        let out = dev.ctl(&["task", "logs", &id, "1", task])?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    for task in ["reads", "whoami"] {
        ensure!(
            tasks[task]["state"] == "SUCCEEDED",
            "{task}: {}; its log: {}",
            tasks[task],
            log(task)?
        );
    }
    let read: serde_json::Value = serde_json::from_str(&log("reads")?).context("the run as JSON")?;
    ensure!(
        read["pipeline_id"] == id.as_str() && read["state"] == "RUNNING",
        "the run, as the task read it while running: {read}"
    );
    ensure!(
        log("whoami")?.contains(&format!("token run default/{id}/1 ")),
        "{}",
        log("whoami")?
    );
    ensure!(tasks["lists"]["state"] == "FAILED", "{}", tasks["lists"]);
    let refused = log("lists")?;
    ensure!(refused.contains("cannot ListPipelines"), "{refused}");
    Ok(())
}
