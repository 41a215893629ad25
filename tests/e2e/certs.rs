//! `goferd certs init | issue NAME`: a cluster CA and certificates without openssl, private keys kept
//! private, nothing overwritten.

use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use gofer_testkit::bin_dir;

/// `goferd certs ARGS --dir DIR`.
fn certs_in(dir: &std::path::Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    let goferd = bin_dir().map_err(std::io::Error::other)?.join("goferd");
    std::process::Command::new(goferd)
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
}

#[test]
fn certs_init_and_issue_write_a_ca_and_certificates_and_never_overwrite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let goferd = |args: &[&str]| certs_in(&certs, args);
    assert!(goferd(&["init"])?.status.success());
    assert!(goferd(&["issue", "node1"])?.status.success());
    assert!(goferd(&["issue", "ops", "--san", "ops.example"])?.status.success());
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("node1.pem", 0o644),
        ("node1.key", 0o600),
        ("ops.key", 0o600),
    ] {
        let meta = std::fs::metadata(certs.join(file))?;
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    assert!(std::fs::read_to_string(certs.join("node1.pem"))?.starts_with("-----BEGIN CERTIFICATE-----"));
    let again = goferd(&["init"])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to replace"));
    let twice = goferd(&["issue", "node1"])?;
    assert_eq!(twice.status.code(), Some(1));
    let bad = goferd(&["issue", "../escape"])?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(!dir.path().join("escape.pem").exists());
    Ok(())
}

/// `goferd server` refuses bad settings at once, naming the field, before it waits for any state node.
#[test]
fn server_settings_are_refused_at_once_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let goferd = bin_dir()?.join("goferd");
    let certs_cmd = |args: &[&str]| certs_in(&certs, args);
    assert!(certs_cmd(&["init"])?.status.success());
    assert!(certs_cmd(&["issue", "api"])?.status.success());
    let path = |name: &str| certs.join(name).display().to_string();
    let common = [
        format!("--ca={}", path("ca.pem")),
        format!("--cert={}", path("api.pem")),
        format!("--key={}", path("api.key")),
        format!("--admin-token-file={}", path("admin.token")),
    ];
    // Nothing listens on port 1: a process that waited for the state nodes would hang for a minute.
    for (args, field) in [
        (
            vec![
                "--roles=api",
                "--name=api",
                "--api-listen=nonsense",
                "--state-nodes=https://127.0.0.1:1",
            ],
            "API port",
        ),
        (
            vec!["--roles=api", "--name=api", "--state-nodes=https://127.0.0.1:notaport"],
            "state_nodes",
        ),
        (vec!["--roles=api", "--name=api"], "state_nodes"),
        (
            vec!["--roles=executor", "--name=x", "--state-nodes=https://127.0.0.1:1"],
            "schedulers",
        ),
        (vec!["--roles=state,api", "--data-dir=d"], "node_id"),
        (vec!["--roles=api,bogus", "--name=api"], "roles"),
    ] {
        let output = std::process::Command::new("timeout")
            .arg("20")
            .arg(&goferd)
            .arg("server")
            .args(&common)
            .args(&args)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // `goferd executor` is the executor role alone: it needs the schedulers, not the state nodes.
    let executor = |args: &[&str]| {
        std::process::Command::new("timeout")
            .arg("3")
            .arg(&goferd)
            .arg("executor")
            .args(&common)
            .args(["--name=x", "--schedulers=https://127.0.0.1:1"])
            .args(args)
            .output()
    };
    for (args, field) in [
        (&["--executor-backend=podman"][..], "executor_backend"),
        (&["--executor-label=no-equals-sign"][..], "executor_labels"),
        (&["--executor-label=Bad Key=v"][..], "executor_labels"),
    ] {
        let output = executor(args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
    let output = executor(&[
        "--executor-backend=benchmark-noop",
        "--executor-capacity=4",
        "--executor-label=zone=a",
    ])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(124),
        "it keeps running: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("goferd server x is up"), "{stdout}");
    Ok(())
}
