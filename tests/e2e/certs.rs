//! `goferd certs init | issue NAME | renew NAME`: a cluster CA and certificates without openssl, private
//! keys kept private, nothing overwritten but by a renewal; a process verified by the name it is dialled at.

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
    assert!(
        goferd(&["issue", "ops", "--dns", "ops.example", "--ip", "10.0.0.7"])?
            .status
            .success()
    );
    let ip_as_dns = goferd(&["issue", "ops2", "--dns", "10.0.0.7"])?;
    assert_eq!(ip_as_dns.status.code(), Some(2), "an IP address is not a DNS name");
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
    // A renewal replaces the certificate and key, and keeps the key private.
    let before = std::fs::read(certs.join("node1.pem"))?;
    let renewed = goferd(&["renew", "node1"])?;
    assert!(renewed.status.success(), "{}", String::from_utf8_lossy(&renewed.stderr));
    assert_ne!(std::fs::read(certs.join("node1.pem"))?, before);
    let key = std::fs::metadata(certs.join("node1.key"))?;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(goferd(&["renew", "nobody"])?.status.code(), Some(1));
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
    assert!(certs_cmd(&["issue", "other"])?.status.success());
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
        (
            vec![
                "--roles=extension-host",
                "--name=x",
                "--state-nodes=https://127.0.0.1:1",
                "--webhook-url=ftp://hooks.example/x",
            ],
            "webhook_url",
        ),
        (
            vec![
                "--roles=extension-host",
                "--name=x",
                "--state-nodes=https://127.0.0.1:1",
                "--extension-network= ",
            ],
            "extension_network",
        ),
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
    // Another certificate's key: refused at start naming both files, whatever the roles (an executor
    // builds no server config that would notice, only handshakes that would fail later).
    let mismatched = std::process::Command::new("timeout")
        .arg("20")
        .arg(&goferd)
        .arg("executor")
        .args([&common[0], &common[1], &format!("--key={}", path("other.key"))])
        .args(["--name=api", "--schedulers=https://127.0.0.1:1"])
        .output()?;
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert_eq!(mismatched.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&path("api.pem")) && stderr.contains(&path("other.key")) && stderr.contains("its own key"),
        "{stderr}"
    );
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

/// A child process killed when dropped, also when the test fails.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn an_executor_elsewhere_is_admitted_by_its_certificate_and_only_under_its_own_name() -> Result<()> {
    use std::time::Duration;

    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    for args in [
        &["init"][..],
        // goferctl and the executors dial the node at 127.0.0.1: its certificate must name that address.
        &["issue", "node1", "--ip", "127.0.0.1"],
        &["issue", "exec1", "--role", "executor"],
        &["issue", "exec2", "--role", "executor"],
    ] {
        assert!(certs_in(&certs, args)?.status.success(), "goferd certs {args:?}");
    }
    let path = |name: &str| certs.join(name).display().to_string();
    let bin = bin_dir()?;
    let (api, raft) = (free_port()?, free_port()?);
    // One node with the state, api and scheduler roles, and no executor of its own.
    let _node = Process(
        std::process::Command::new(bin.join("goferd"))
            .arg("server")
            .args(["--node-id=1", "--roles=state,api,scheduler"])
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--api-listen=127.0.0.1:{api}"))
            .arg(format!("--raft-listen=127.0.0.1:{raft}"))
            .arg(format!("--bootstrap=1=https://127.0.0.1:{raft}"))
            .args([
                format!("--ca={}", path("ca.pem")),
                format!("--cert={}", path("node1.pem")),
            ])
            .args([
                format!("--key={}", path("node1.key")),
                format!("--admin-token-file={}", path("admin.token")),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let token = std::fs::read_to_string(certs.join("admin.token"))?.trim().to_string();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "host = \"https://127.0.0.1:{api}\"\ntoken = \"{token}\"\nca_cert = \"{}\"\nnamespace = \"default\"\n",
            path("ca.pem")
        ),
    )?;
    let ctl = |args: &[&str]| {
        std::process::Command::new(bin.join("goferctl"))
            .env("GOFER_CONFIG", &config)
            .args(args)
            .output()
    };
    let pipeline = dir.path().join("p.json");
    std::fs::write(
        &pipeline,
        r#"{"id": "p", "tasks": [{"id": "a", "image": "none/needed:1"}]}"#,
    )?;
    gofer_testkit::wait_until("the node to take a pipeline", Duration::from_secs(60), || {
        Ok(ctl(&["pipeline", "register", pipeline.to_str().unwrap_or_default()])?
            .status
            .success()
            .then_some(()))
    })?;
    assert!(ctl(&["run", "start", "p"])?.status.success());
    // An executor without the admin token, on the benchmark backend, with `cert` as its certificate.
    let executor = |name: &str, cert: &str, log: &std::path::Path| -> Result<Process> {
        Ok(Process(
            std::process::Command::new(bin.join("goferd"))
                .arg("executor")
                .args([
                    format!("--name={name}"),
                    format!("--schedulers=https://127.0.0.1:{api}"),
                ])
                .args([
                    "--executor-backend=benchmark-noop".to_string(),
                    format!("--ca={}", path("ca.pem")),
                ])
                .args([
                    format!("--cert={}", path(&format!("{cert}.pem"))),
                    format!("--key={}", path(&format!("{cert}.key"))),
                ])
                .env("GOFER_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log)?)
                .spawn()?,
        ))
    };
    // exec2's certificate under exec1's name is refused, and the run waits.
    let impostor_log = dir.path().join("impostor.log");
    let impostor = executor("exec1", "exec2", &impostor_log)?;
    gofer_testkit::wait_until("the impostor to be refused", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&impostor_log)?;
        Ok(log.contains("not issued for executor").then_some(()))
    })?;
    let run = String::from_utf8_lossy(&ctl(&["run", "get", "p", "1", "-o", "json"])?.stdout).to_string();
    assert!(run.contains("\"PENDING\""), "{run}");
    drop(impostor);
    // exec1 with its own certificate is admitted and runs it.
    let _exec1 = executor("exec1", "exec1", &dir.path().join("exec1.log"))?;
    gofer_testkit::wait_until("the run to succeed", Duration::from_secs(30), || {
        let run = String::from_utf8_lossy(&ctl(&["run", "get", "p", "1", "-o", "json"])?.stdout).to_string();
        Ok(run.contains("\"SUCCEEDED\"").then_some(()))
    })?;
    let tasks: serde_json::Value = serde_json::from_slice(&ctl(&["task", "list", "p", "1", "-o", "json"])?.stdout)?;
    assert_eq!(tasks[0]["executor"], "exec1", "{tasks}");
    Ok(())
}
