//! goferctl as people use it at a shell: completion scripts for bash, zsh and fish and `cron explain` (no
//! server needed), and `-o yaml`, which carries exactly the fields `-o json` does, one YAML document per
//! streamed record.

use anyhow::{Context, Result, ensure};
use gofer_testkit::bin_dir;
use serde_json::Value;

use crate::{pipeline, start};

fn goferctl(args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new(bin_dir()?.join("goferctl"))
        .args(args)
        // Completion needs no server: no setting may be read, even a broken one.
        .env("GOFER_HOST", "not a url")
        .output()
        .context("running goferctl")
}

#[test]
fn completion_scripts_cover_every_noun_and_the_shells_accept_them() -> Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let output = goferctl(&["completion", shell])?;
        ensure!(
            output.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let script = String::from_utf8(output.stdout)?;
        for word in [
            "goferctl",
            "namespace",
            "pipeline",
            "subscription",
            "object",
            "completion",
        ] {
            ensure!(script.contains(word), "the {shell} script names no {word}");
        }
        if shell == "bash" {
            let file = tempfile::NamedTempFile::new()?;
            std::fs::write(file.path(), &script)?;
            let checked = std::process::Command::new("bash").arg("-n").arg(file.path()).output()?;
            ensure!(
                checked.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }
    // An unknown shell is a usage error, exit 2, naming what it accepts.
    let output = goferctl(&["completion", "tcsh"])?;
    ensure!(output.status.code() == Some(2), "{:?}", output.status);
    ensure!(String::from_utf8_lossy(&output.stderr).contains("bash"));
    Ok(())
}

/// Parses `-o yaml` output into the JSON value it stands for.
fn yaml(text: &str) -> Result<Value> {
    serde_norway::from_str(text).with_context(|| format!("not YAML: {text}"))
}

#[test]
fn yaml_output_carries_the_same_fields_as_json() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline("yamled", &[("a", "echo hi", &[])]))?;
    let run = dev.ctl_ok(&["run", "start", "yamled", "--wait"])?.trim().to_string();
    for args in [
        vec!["namespace", "list"],
        vec!["pipeline", "get", "yamled"],
        vec!["run", "get", "yamled", run.as_str()],
        vec!["task", "list", "yamled", run.as_str()],
    ] {
        let json = dev.ctl_json(&args)?;
        let printed = dev.ctl_ok(&[&args[..], &["-o", "yaml"]].concat())?;
        ensure!(yaml(&printed)? == json, "{args:?}: {printed} against {json}");
        // YAML in block style, not JSON (which a YAML parser would take too).
        ensure!(
            !printed.trim_start().starts_with(['{', '[']),
            "{args:?} printed JSON: {printed}"
        );
    }
    // A stream prints one YAML document per record, each the record `-o json` prints as a line.
    let lines = dev.ctl_ok(&["event", "list", "--pipeline", "yamled", "-o", "json"])?;
    let documents = dev.ctl_ok(&["event", "list", "--pipeline", "yamled", "-o", "yaml"])?;
    let json: Vec<Value> = lines.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let yaml: Vec<Value> = documents
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(yaml)
        .collect::<Result<_>>()?;
    ensure!(!json.is_empty() && yaml == json, "{documents} against {lines}");
    Ok(())
}

#[test]
fn cron_explain_prints_the_next_instants_with_the_daylight_saving_shifts_marked() -> Result<()> {
    // 02:30 every day in Berlin, across the spring-forward night of 2026-03-29 (02:30 does not exist: it
    // fires once, at 03:00 CEST) and the fall-back night of 2026-10-25 (02:30 happens twice: it fires once).
    let berlin = |after: &str, count: &str, more: &[&str]| {
        let args = [
            "cron",
            "explain",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--after",
            after,
        ];
        goferctl(&[&args[..], &["--count", count], more].concat())
    };
    let spring = berlin("2026-03-27T00:00:00Z", "4", &["-o", "json"])?;
    ensure!(spring.status.success(), "{}", String::from_utf8_lossy(&spring.stderr));
    let spring: Value = serde_json::from_slice(&spring.stdout)?;
    let utc: Vec<&str> = spring["next_fires"]
        .as_array()
        .context("next_fires")?
        .iter()
        .filter_map(|f| f["utc"].as_str())
        .collect();
    ensure!(
        utc == [
            "2026-03-27 01:30:00 UTC",
            "2026-03-28 01:30:00 UTC",
            "2026-03-29 01:00:00 UTC",
            "2026-03-30 00:30:00 UTC"
        ],
        "{spring}"
    );
    ensure!(
        spring["next_fires"][2]["daylight_saving_shift"] == "UTC offset +01:00 → +02:00",
        "{spring}"
    );
    ensure!(spring["next_fires"][3]["daylight_saving_shift"].is_null(), "{spring}");
    ensure!(spring["next_fires_unix_millis"][0] == 1_774_575_000_000i64, "{spring}");

    let autumn = berlin("2026-10-24T12:00:00Z", "2", &[])?;
    let table = String::from_utf8(autumn.stdout)?;
    ensure!(
        table.contains("2026-10-25 02:30:00 CEST") && table.contains("2026-10-26 02:30:00 CET"),
        "{table}"
    );
    ensure!(table.contains("UTC offset +02:00 → +01:00"), "{table}");
    ensure!(
        !table.contains("2026-10-25 02:30:00 CET "),
        "the doubled 02:30 fired twice: {table}"
    );

    // Bad input names the argument and exits 1.
    let bad = goferctl(&["cron", "explain", "* * * * *", "--timezone", "Mars/Base"])?;
    ensure!(bad.status.code() == Some(1), "{:?}", bad.status);
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("--timezone"));
    let bad = goferctl(&["cron", "explain", "61 * * * *"])?;
    ensure!(bad.status.code() == Some(1), "{:?}", bad.status);
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("expression"));
    Ok(())
}
