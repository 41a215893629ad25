//! Secrets as a user drives them: put with goferctl from a file, named in a task's env, given to the
//! container and masked in its output; and the value is then looked for in every other place it could
//! leak to (goferd's stdout and stderr, the event stream, every `-o json` answer, the container's labels,
//! every file of the data dir: the raft log, the snapshots, the task logs). A secret that is missing
//! fails its task before any container starts; and a key rotation, end to end across restarts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{GoferDev, Seen, TASK_IMAGE, wait_until};
use serde_json::Value;

use crate::hardening::inspect;
use crate::{start, stderr, tasks, wait_for_end};

/// A value no other test or file holds.
pub(crate) fn unique_value(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{what}-{}-{nanos}-v4lue", std::process::id())
}

/// `goferctl secret put ARGS… FILE` with `value` in a file outside the data dir, removed afterwards.
fn put(dev: &GoferDev, args: &[&str], value: &str) -> Result<Value> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), format!("{value}\n"))?;
    let mut all = vec!["secret", "put"];
    all.extend(args);
    let path = file.path().to_str().context("a temp path")?.to_string();
    all.push(&path);
    dev.ctl_json(&all)
}

/// Registers a pipeline of one task `a` with `env` that runs `script`.
fn register(dev: &GoferDev, id: &str, env: Value, script: &str) -> Result<()> {
    let json = serde_json::json!({"id": id, "tasks": [{
        "id": "a", "image": TASK_IMAGE, "command": ["sh", "-c", script], "env": env,
    }]});
    dev.register(&json.to_string())?;
    Ok(())
}

/// Every file under `dir` whose bytes hold `needle`.
pub(crate) fn files_holding(dir: &Path, needle: &[u8]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    Ok(found)
}

#[test]
fn a_secret_reaches_its_task_masked_and_is_nowhere_else_in_the_clear() -> Result<()> {
    let dev = start()?;
    let id = format!("secretive-{}", std::process::id());
    let value = unique_value("db");
    let global = unique_value("hook");
    // The pipeline first (a pipeline secret's pipeline must exist), then the secrets.
    let env = serde_json::json!({
        "DB_PASS": "secret{{db_pass}}",
        "DSN": "pg://u:secret{{db_pass}}@db/x",
        "HOOK": "global_secret{{hook}}",
    });
    register(
        &dev,
        &id,
        env,
        "echo got:$DB_PASS:end; echo dsn:$DSN; echo hook:$HOOK:end; echo printed; exec sleep 300",
    )?;
    let stored = put(&dev, &[&id, "db_pass"], &value)?;
    ensure!(
        stored["size_bytes"] == value.len() as u64,
        "one trailing newline is dropped: {stored}"
    );
    put(&dev, &["--global", "--namespaces", "default,team-*", "hook"], &global)?;
    // A webhook's secret is sealed the same way.
    let webhook_secret = unique_value("webhook");
    dev.ctl_ok(&[
        "subscription",
        "create",
        &id,
        "webhook",
        "gh",
        "-s",
        &format!("secret={webhook_secret}"),
    ])?;

    let run = dev.ctl_ok(&["run", "start", &id])?.trim().to_string();
    let log = wait_until("the task to print", Duration::from_secs(60), || {
        let log = dev.ctl_ok(&["task", "logs", &id, &run, "a"])?;
        Ok(Seen::check(log, |log| log.contains("printed")))
    })?;
    // The masker replaces only the exact values: the container had them in its env.
    ensure!(log.contains("got:********:end"), "{log}");
    ensure!(log.contains("dsn:pg://u:********@db/x"), "{log}");
    ensure!(log.contains("hook:********:end"), "{log}");

    // The container's labels and name, while it runs.
    let ids = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=dev.gofer.pipeline={id}")])
        .output()?;
    let container_id = String::from_utf8_lossy(&ids.stdout).trim().to_string();
    let container = inspect(&container_id)?.context("the task's container")?;
    let labels = container["Config"]["Labels"].to_string();
    let name = container["Name"].to_string();
    dev.ctl_ok(&["run", "cancel", &id, &run, "--grace", "1s"])?;
    wait_for_end(&dev, &id, &run)?;

    let mut answers = vec![
        ("container labels", labels),
        ("container name", name),
        ("task logs", dev.ctl_ok(&["task", "logs", &id, &run, "a"])?),
    ];
    for args in [
        vec!["pipeline", "get", id.as_str()],
        vec!["run", "get", id.as_str(), run.as_str()],
        vec!["task", "list", id.as_str(), run.as_str()],
        vec!["secret", "list", id.as_str()],
        vec!["secret", "list", "--global"],
        vec!["subscription", "get", id.as_str(), "gh"],
        vec!["event", "list"],
    ] {
        let mut all = args.clone();
        all.extend(["-o", "json"]);
        answers.push(("goferctl -o json", dev.ctl_ok(&all)?));
    }
    let pipeline = dev.ctl_ok(&["pipeline", "get", &id, "-o", "json"])?;
    ensure!(
        pipeline.contains("secret{{db_pass}}"),
        "the pipeline keeps its placeholder: {pipeline}"
    );
    let listed = dev.ctl_json(&["secret", "list", &id])?;
    ensure!(
        listed[0]["key"] == "db_pass" && listed[0]["key_id"].as_str().is_some_and(|k| k.len() == 16),
        "{listed}"
    );

    answers.push(("goferd stderr", dev.server_log()));
    answers.push(("goferd stdout", std::fs::read_to_string(dev.stdout_path())?));
    for secret in [&value, &global, &webhook_secret] {
        for (place, text) in &answers {
            ensure!(!text.contains(secret.as_str()), "{place} holds a secret value:\n{text}");
        }
        let files = files_holding(&dev.data_dir(), secret.as_bytes())?;
        ensure!(files.is_empty(), "files of the data dir hold a secret value: {files:?}");
    }
    Ok(())
}

#[test]
fn a_missing_secret_fails_its_task_naming_the_key_and_no_container_is_made() -> Result<()> {
    let dev = start()?;
    let id = format!("unsecret-{}", std::process::id());
    register(&dev, &id, serde_json::json!({"X": "secret{{not_there}}"}), "echo ran")?;
    let run = dev.ctl_ok(&["run", "start", &id])?.trim().to_string();
    let ended = wait_for_end(&dev, &id, &run)?;
    ensure!(ended["state"] == "FAILED", "{ended}");
    let task = &tasks(&dev, &id, &run)?["a"];
    let attempt = &task["attempts"][0];
    ensure!(
        attempt["reason"] == "env X: secret \"not_there\" of pipeline default/".to_string() + &id + " not found",
        "{task}"
    );
    ensure!(attempt["started_unix_millis"] == 0, "the attempt never started: {task}");
    let ran = |l: &&str| l.contains("attempt running") && l.contains(id.as_str());
    ensure!(!dev.server_log().lines().any(|l| ran(&l)), "no container ran");
    let made = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=dev.gofer.pipeline={id}")])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&made.stdout).trim().is_empty(),
        "no container was made"
    );

    // A malformed placeholder is refused at registration, naming the task and env key.
    let bad = serde_json::json!({"id": "bad-placeholder", "tasks": [{
        "id": "t", "image": TASK_IMAGE, "env": {"K": "secret{{oops"},
    }]});
    let refused = dev.register_output(&bad.to_string())?;
    ensure!(refused.status.code() == Some(1), "{}", stderr(&refused));
    ensure!(stderr(&refused).contains("tasks[0].env.K"), "{}", stderr(&refused));
    Ok(())
}

/// The rotation test's webhook secret.
const HOOK_SECRET: &str = "0123456789abcdef-rotation";

#[test]
fn a_key_rotation_seals_everything_under_the_new_key_and_the_old_one_can_then_go() -> Result<()> {
    let mut dev = start()?;
    let id = format!("rotated-{}", std::process::id());
    let value = unique_value("rotated");
    register(&dev, &id, serde_json::json!({"P": "secret{{p}}"}), "echo got:$P:end")?;
    put(&dev, &[&id, "p"], &value)?;
    dev.ctl_ok(&[
        "subscription",
        "create",
        &id,
        "webhook",
        "hook",
        "-s",
        &format!("secret={HOOK_SECRET}"),
    ])?;
    let url = dev.ctl_json(&["subscription", "get", &id, "hook"])?["webhook_url"]
        .as_str()
        .context("webhook_url")?
        .to_string();
    // An extension's install-time settings are sealed too (its image need not exist for that).
    let setting = format!("api_key={}", unique_value("install"));
    dev.ctl_ok(&[
        "extension",
        "install",
        "unrun",
        "gofer-test/no-such-extension:1",
        "--setting",
        &setting,
    ])?;
    let too_long = format!("big={}", "x".repeat(3001));
    let refused = dev.ctl(&[
        "extension",
        "install",
        "big",
        "gofer-test/no-such-extension:1",
        "--setting",
        &too_long,
    ])?;
    ensure!(
        stderr(&refused).contains("settings.big") && stderr(&refused).contains("at most 3000 bytes"),
        "{}",
        stderr(&refused)
    );
    let old_id = dev.ctl_json(&["secret", "list", &id])?[0]["key_id"].clone();

    // A new key; the nodes restart with it, and the old one only to open what it sealed.
    let keys = tempfile::tempdir()?;
    let new_key = keys.path().join("new.key");
    std::fs::write(&new_key, format!("{}\n", "5a".repeat(32)))?;
    let old_key = dev.data_dir().join("secret.key");
    let (new_key, old_key) = (new_key.display().to_string(), old_key.display().to_string());
    dev.set_extra_args(&["--secret-key-file", &new_key, "--secret-old-key-file", &old_key]);
    dev.restart()?;
    let rotated = dev.ctl_json(&["secret", "rotate-key"])?;
    ensure!(
        rotated["resealed"] == 3,
        "the secret, the webhook's secret and the extension's setting: {rotated}"
    );
    let new_id = rotated["key_id"].clone();
    ensure!(new_id != old_id, "{rotated}");
    ensure!(dev.ctl_json(&["secret", "list", &id])?[0]["key_id"] == new_id);
    let again = dev.ctl_json(&["secret", "rotate-key"])?;
    ensure!(again["resealed"] == 0, "nothing is left under the old key: {again}");

    // The old key goes. The webhook's secret still checks a delivery's signature, and the run it starts
    // still gets the pipeline secret.
    dev.set_extra_args(&["--secret-key-file", &new_key]);
    dev.restart()?;
    let url = url.replace(
        url.split('/').nth(2).unwrap_or_default(),
        dev.webhooks.trim_start_matches("http://"),
    );
    let body = br#"{"ref": "main"}"#;
    let headers = vec![
        ("X-Hub-Signature-256", crate::triggers::signature(HOOK_SECRET, body)),
        ("X-GitHub-Delivery", "rotation-1".to_string()),
    ];
    let (status, reply) = crate::triggers::post(&url, &headers, body)?;
    ensure!(status == 202, "{status} {reply}");
    let ended = wait_for_end(&dev, &id, "1")?;
    ensure!(ended["state"] == "SUCCEEDED", "{ended}");
    let log = dev.ctl_ok(&["task", "logs", &id, "1", "a"])?;
    ensure!(log.contains("got:********:end"), "{log}");
    Ok(())
}
