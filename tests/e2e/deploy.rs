//! The Compose deployment (`deploy/`): three state nodes, and an api, two schedulers, the extension host and
//! an executor each in its own container, on a private network, from an image built locally the way
//! `deploy/build-image.sh` does, with certificates from `deploy/certs.sh`. A pipeline registered through the
//! api runs when started on a state node; after the leader's container stops, another node leads and runs
//! go on; after the active scheduler is killed, or paused, the standby takes the lease in the next epoch and
//! runs go on; a node whose data volume was wiped catches up when it comes back. Each container holds only
//! its own key, and only those that check tokens hold the admin token; renewed certificates are taken up by
//! restarting their containers one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gofer_testkit::{Seen, bin_dir, task_image, wait_until, workspace_root};
use serde_json::Value;

use crate::pipeline;

/// goferctl's target for the api container; 1 to 3 are the state nodes, which serve the API too.
pub(crate) const API: usize = 4;

pub(crate) struct Deployment {
    project: String,
    image: String,
    compose: PathBuf,
    env: Vec<(String, String)>,
    configs: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

fn run(command: &mut Command) -> Result<String> {
    let output = command.output()?;
    ensure!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free ports: every listener is held until all are bound, so no port is picked twice.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl Deployment {
    pub(crate) fn up() -> Result<Deployment> {
        task_image()?;
        let bin = bin_dir()?;
        let root = workspace_root();
        let unique = format!("{}{}", std::process::id(), free_port()?);
        let dir = tempfile::Builder::new().prefix("gofer-deploy-").tempdir()?;
        let image = format!("gofer-test/goferd:{unique}");
        run(Command::new("bash")
            .arg(root.join("deploy/build-image.sh"))
            .arg(&image)
            .env("GOFER_GOFERD", bin.join("goferd")))?;
        let certs = dir.path().join("certs");
        run(Command::new("bash")
            .arg(root.join("deploy/certs.sh"))
            .arg(&certs)
            .env("GOFERD", bin.join("goferd")))?;
        let token = std::fs::read_to_string(certs.join("admin.token"))?.trim().to_string();
        let mut deployment = Deployment {
            project: format!("gofertest{unique}"),
            image,
            compose: root.join("deploy/compose.yaml"),
            env: Vec::new(),
            configs: Vec::new(),
            dir,
        };
        // The ports are picked free, then bound by Docker a moment later: another test may take one in
        // between, so a start refused for a port in use is tried again on fresh ports.
        let mut tries = 0;
        loop {
            tries += 1;
            deployment.pick_ports(&certs, &token)?;
            match deployment.compose(&["up", "-d"]) {
                Ok(_) => return Ok(deployment),
                Err(err) if tries < 3 && err.to_string().contains("address already in use") => {
                    deployment.compose(&["down", "-v"])?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Picks free host ports for the API of every node, the api container and the webhooks, and writes a
    /// goferctl config for each.
    fn pick_ports(&mut self, certs: &Path, token: &str) -> Result<()> {
        let ports = free_ports(API + 1)?;
        self.env = vec![
            ("GOFER_IMAGE".to_string(), self.image.clone()),
            ("GOFER_CERTS".to_string(), certs.display().to_string()),
            ("GOFER_WEBHOOK_PORT".to_string(), ports[API].to_string()),
            (
                "GOFER_EXTENSION_NETWORK".to_string(),
                format!("{}-extensions", self.project),
            ),
        ];
        self.configs.clear();
        for n in 1..=API {
            let api = ports[n - 1];
            let variable = if n == API {
                "GOFER_API_PORT".to_string()
            } else {
                format!("GOFER_NODE{n}_API_PORT")
            };
            self.env.push((variable, api.to_string()));
            let config = self.dir.path().join(format!("client{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    "host = \"https://127.0.0.1:{api}\"\ntoken = \"{token}\"\nca_cert = \"{}\"\nnamespace = \"default\"\n",
                    certs.join("ca.pem").display()
                ),
            )?;
            self.configs.push(config);
        }
        Ok(())
    }

    pub(crate) fn compose(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("docker-compose");
        command
            .args(["-p", &self.project, "-f"])
            .arg(&self.compose)
            .args(args)
            .envs(self.env.iter().cloned());
        run(&mut command)
    }

    pub(crate) fn json(&self, node: usize, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = run(Command::new(bin_dir()?.join("goferctl"))
            .env("GOFER_CONFIG", &self.configs[node - 1])
            .args(&all))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// goferctl on `node`, given up after two minutes (a `--wait` that never ends fails the test).
    fn ctl(&self, node: usize, args: &[&str]) -> Result<String> {
        run(Command::new("timeout")
            .arg("120")
            .arg(bin_dir()?.join("goferctl"))
            .env("GOFER_CONFIG", &self.configs[node - 1])
            .args(args))
    }

    /// goferctl on `node`, whatever its exit status.
    pub(crate) fn ctl_output(&self, node: usize, args: &[&str]) -> Result<std::process::Output> {
        // Given up after 10 s: a paused node accepts connections and never answers.
        Ok(Command::new("timeout")
            .arg("10")
            .arg(bin_dir()?.join("goferctl"))
            .env("GOFER_CONFIG", &self.configs[node - 1])
            .args(args)
            .output()?)
    }

    /// The container of node `n`.
    pub(crate) fn container(&self, n: u64) -> Result<String> {
        Ok(self.compose(&["ps", "-q", &format!("node{n}")])?.trim().to_string())
    }

    /// The scheduler lease as the api sees it, once a scheduler holds it: (container name, epoch).
    pub(crate) fn scheduler_lease(&self, not_in: &[u64]) -> Result<(String, u64)> {
        wait_until("a scheduler to hold the lease", Duration::from_secs(60), || {
            let status = self.json(API, &["cluster", "status"])?;
            let lease = status["leases"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["role"] == "scheduler")
                .cloned();
            Ok(lease.and_then(|l| {
                let holder = l["holder"].as_str()?;
                let epoch = l["epoch"].as_u64()?;
                let expires = l["expires_unix_millis"].as_i64()?;
                let live = expires > crate::now_millis();
                // The holder is NAME/SUFFIX, and NAME is its compose service.
                let name = holder.split('/').next()?.to_string();
                (live && !not_in.contains(&epoch)).then_some((name, epoch))
            }))
        })
    }

    /// The deployment's private network.
    pub(crate) fn network_name(&self) -> String {
        format!("{}_gofer", self.project)
    }

    /// `docker network ARGS`.
    pub(crate) fn network(&self, args: &[&str]) -> Result<String> {
        run(Command::new("docker").arg("network").args(args))
    }

    pub(crate) fn leader(&self, asked: usize, among: &[u64]) -> Result<(u64, String)> {
        wait_until("a leader", Duration::from_secs(90), || {
            let status = self.json(asked, &["cluster", "status"])?;
            let leader = status["leader_id"].as_u64().unwrap_or(0);
            let cluster = status["cluster_id"].as_str().unwrap_or_default().to_string();
            Ok(if !cluster.is_empty() && among.contains(&leader) {
                Seen::Done((leader, cluster))
            } else {
                Seen::NotYet(format!("node {asked} names leader {leader} of cluster {cluster:?}"))
            })
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Deployment {
    /// Brings a deployment up and runs `check` on it. On a failure (an error or a panic) it prints every
    /// container's log, takes the deployment down, and only then fails with the failure's message, so
    /// that the message ends the test's output rather than sitting above thousands of log lines.
    pub(crate) fn check(check: impl FnOnce(&Deployment) -> Result<()>) {
        let deployment = Deployment::up().expect("bringing the deployment up");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&deployment)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(format!("{err:?}")),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "a panic without a message".to_string()),
            ),
        };
        if failure.is_some() {
            deployment.print_logs();
        }
        drop(deployment);
        if let Some(failure) = failure {
            panic!("{failure}");
        }
    }

    fn print_logs(&self) {
        let logs = self.compose(&["logs", "--no-color"]).unwrap_or_default();
        eprintln!("--- compose logs ---\n{logs}--- end of compose logs ---");
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let cluster = self
            .json(1, &["cluster", "status"])
            .ok()
            .and_then(|s| s["cluster_id"].as_str().map(str::to_string));
        if std::thread::panicking() {
            self.print_logs();
        }
        let _ = self.compose(&["down", "-v"]);
        gofer_testkit::remove_cluster_containers(cluster.as_deref().unwrap_or_default());
        // The extension network outlives `down` while an extension container was still on it.
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("{}-extensions", self.project)])
            .output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

#[test]
fn the_compose_cluster_runs_pipelines_survives_its_leader_stopping_and_replaces_a_wiped_node() {
    Deployment::check(compose_cluster);
}

/// The compose services, and whether each checks tokens (and so is given the admin token).
const SERVICES: [(&str, bool); 9] = [
    ("node1", true),
    ("node2", true),
    ("node3", true),
    ("api", true),
    ("scheduler-a", true),
    ("scheduler-b", true),
    ("extension-host", true),
    ("executor", false),
    ("executor-b", false),
];

/// Every container is given, of the certificates directory, the CA certificate, its own directory and,
/// if it checks tokens, the admin token and the secret key: no other process's key. The keys and the
/// token are private.
fn each_container_holds_only_its_own_secrets(deployment: &Deployment) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let certs = deployment.path().join("certs").canonicalize()?;
    let mode = |path: &Path| -> Result<u32> { Ok(std::fs::metadata(path)?.permissions().mode() & 0o777) };
    ensure!(mode(&certs.join("admin.token"))? == 0o600, "admin.token is private");
    ensure!(mode(&certs.join("secret.key"))? == 0o600, "secret.key is private");
    for (service, checks_tokens) in SERVICES {
        let container = deployment.compose(&["ps", "-q", service])?.trim().to_string();
        let mounts: Value = serde_json::from_str(&run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{json .Mounts}}",
            &container,
        ]))?)?;
        let mut given: Vec<PathBuf> = mounts
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["Source"].as_str())
            .filter_map(|source| Path::new(source).canonicalize().ok())
            .filter_map(|source| source.strip_prefix(&certs).ok().map(Path::to_path_buf))
            .collect();
        given.sort();
        let mut expected = vec![PathBuf::from("ca.pem"), PathBuf::from(service)];
        if checks_tokens {
            expected.push(PathBuf::from("admin.token"));
            expected.push(PathBuf::from("secret.key"));
        }
        expected.sort();
        ensure!(
            given == expected,
            "{service} is given {given:?} of the certificates directory"
        );
        ensure!(mode(&certs.join(service))? == 0o700, "{service}/ is private");
        ensure!(
            mode(&certs.join(service).join(format!("{service}.key")))? == 0o600,
            "{service}'s key is private"
        );
    }
    Ok(())
}

/// Triggers work end to end through the api container, which runs apart from the extension host: an
/// installed extension's container reaches the extension host (itself in a container) on the extensions
/// network, shows as connected, and fires runs; a webhook subscription's URL is the published webhook
/// port, and a signed delivery to it starts a run.
fn triggers_work_through_the_separate_api(deployment: &Deployment) -> Result<()> {
    use crate::extensions::{TICKER_IMAGE, ticker_image};
    ticker_image()?;
    let json_path = deployment.path().join("ticked.json");
    std::fs::write(&json_path, pipeline("ticked", &[("a", "true", &[])]))?;
    deployment.ctl(API, &["pipeline", "register", json_path.to_str().context("utf-8")?])?;
    deployment.ctl(API, &["extension", "install", "ticker", TICKER_IMAGE])?;
    wait_until(
        "the ticker to connect, as the api sees it",
        Duration::from_secs(90),
        || {
            let e = deployment.json(API, &["extension", "get", "ticker"])?;
            Ok((e["registered"] == true && e["connected"] == true).then_some(()))
        },
    )?;
    deployment.ctl(API, &crate::extensions::SUBSCRIBE_EVERY_SECOND)?;
    let fired = wait_until("a ticker run to succeed", Duration::from_secs(90), || {
        let runs = deployment.json(API, &["run", "list", "ticked"])?;
        Ok(runs
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "SUCCEEDED" && r["trigger"]["extension"] == "ticker")
            .cloned())
    })?;
    ensure!(fired["trigger"]["subscription"] == "t", "{fired}");
    deployment.ctl(API, &["subscription", "delete", "ticked", "t"])?;

    let secret = "s3cret-for-gofer-compose";
    deployment.ctl(
        API,
        &[
            "subscription",
            "create",
            "ticked",
            "webhook",
            "gh",
            "-s",
            &format!("secret={secret}"),
        ],
    )?;
    let port = deployment
        .env
        .iter()
        .find(|(name, _)| name == "GOFER_WEBHOOK_PORT")
        .map(|(_, port)| port.clone())
        .context("the webhook port")?;
    let url = wait_until("the webhook URL, as the api sees it", Duration::from_secs(30), || {
        let subscription = deployment.json(API, &["subscription", "get", "ticked", "gh"])?;
        Ok(subscription["webhook_url"]
            .as_str()
            .filter(|url| !url.is_empty())
            .map(str::to_string))
    })?;
    ensure!(
        url == format!("http://127.0.0.1:{port}/webhooks/default/ticked/gh"),
        "{url}"
    );
    let body = br#"{"ref": "refs/heads/main"}"#;
    let headers = [
        ("X-Hub-Signature-256", crate::triggers::signature(secret, body)),
        ("X-GitHub-Delivery", "compose-1".to_string()),
    ];
    let (status, reply) = crate::triggers::post(&url, &headers, body)?;
    ensure!(status == 202, "{status}: {reply}");
    let run: Value = serde_json::from_str(&reply)?;
    let id = run["run_id"].as_u64().context("run_id")?;
    wait_until("the webhook's run to succeed", Duration::from_secs(90), || {
        let runs = deployment.json(API, &["run", "list", "ticked"])?;
        Ok(runs
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| {
                r["id"].as_u64() == Some(id) && r["state"] == "SUCCEEDED" && r["trigger"]["extension"] == "webhook"
            })
            .then_some(()))
    })?;
    deployment.ctl(API, &["subscription", "delete", "ticked", "gh"])?;
    deployment.ctl(API, &["extension", "uninstall", "ticker"])?;
    Ok(())
}

fn compose_cluster(deployment: &Deployment) -> Result<()> {
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    each_container_holds_only_its_own_secrets(deployment)?;
    triggers_work_through_the_separate_api(deployment)?;
    let json_path = deployment.path().join("hello.json");
    std::fs::write(
        &json_path,
        pipeline("composed", &[("a", "echo hello from compose", &[])]),
    )?;
    deployment.ctl(API, &["pipeline", "register", json_path.to_str().context("utf-8")?])?;
    assert_eq!(deployment.ctl(3, &["run", "start", "composed", "--wait"])?.trim(), "1");
    assert_eq!(
        deployment.ctl(2, &["task", "logs", "composed", "1", "a"])?,
        "hello from compose\n"
    );
    assert_eq!(
        deployment.ctl(API, &["task", "logs", "composed", "1", "a"])?,
        "hello from compose\n"
    );
    // The api runs apart from the extension host, yet sees the built-in triggers served.
    let extensions = deployment.json(API, &["extension", "list"])?;
    let builtins: Vec<&Value> = extensions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["builtin"] == true)
        .collect();
    assert!(!builtins.is_empty(), "{extensions}");
    assert!(builtins.iter().all(|e| e["connected"] == true), "{extensions}");
    // An executor container ran it, for a scheduler holding the lease.
    let tasks = deployment.json(API, &["task", "list", "composed", "1"])?;
    let task = &tasks[0];
    assert!(
        matches!(task["executor"].as_str(), Some("executor" | "executor-b")),
        "{task}"
    );
    // executor-b names only the state nodes, which run no scheduler: they point it at the active one,
    // whose address the lease records; both executors hold live leases.
    let status = wait_until("both executors to be registered", Duration::from_secs(60), || {
        let status = deployment.json(API, &["cluster", "status"])?;
        let alive: Vec<String> = status["executors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["lost_unix_millis"] == 0)
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        Ok((alive == ["executor", "executor-b"]).then_some(status))
    })?;
    let lease = status["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["role"] == "scheduler")
        .cloned()
        .unwrap_or_default();
    let (active, epoch) = deployment.scheduler_lease(&[])?;
    // The lease may have moved since the run (a loaded machine can miss a renewal): the run was assigned
    // in an epoch up to this one, by one of the two schedulers.
    assert!(
        lease["address"] == format!("https://{active}:7443") || lease["epoch"].as_u64() != Some(epoch),
        "{lease}"
    );
    assert!(
        task["scheduler_epoch"]
            .as_u64()
            .is_some_and(|e| (1..=epoch).contains(&e)),
        "{task}"
    );
    assert!(
        task["scheduler"]
            .as_str()
            .is_some_and(|s| s.starts_with("scheduler-a/") || s.starts_with("scheduler-b/")),
        "{task}"
    );

    // Kill the active scheduler: the standby takes the lease in the next epoch and runs go on.
    deployment.compose(&["kill", &active])?;
    let (standby, next_epoch) = deployment.scheduler_lease(&[epoch])?;
    assert_ne!(standby, active);
    assert!(next_epoch > epoch);
    assert_eq!(
        deployment.ctl(API, &["run", "start", "composed", "--wait"])?.trim(),
        "2"
    );
    let tasks = deployment.json(API, &["task", "list", "composed", "2"])?;
    assert_eq!(tasks[0]["scheduler_epoch"].as_u64(), Some(next_epoch), "{tasks}");
    deployment.compose(&["start", &active])?;

    // Pause the holder instead (its sockets stay open, it just stops answering): the lease moves, the
    // executor notices the silence and follows it, and runs go on.
    deployment.compose(&["pause", &standby])?;
    let (third, third_epoch) = deployment.scheduler_lease(&[epoch, next_epoch])?;
    assert_eq!(third, active);
    assert_eq!(
        deployment.ctl(API, &["run", "start", "composed", "--wait"])?.trim(),
        "3"
    );
    let tasks = deployment.json(API, &["task", "list", "composed", "3"])?;
    assert_eq!(tasks[0]["scheduler_epoch"].as_u64(), Some(third_epoch), "{tasks}");
    deployment.compose(&["unpause", &standby])?;

    deployment.compose(&["stop", &format!("node{leader}")])?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let (new_leader, _) = deployment.leader(others[0] as usize, &others)?;
    assert_ne!(new_leader, leader);
    assert_eq!(
        deployment
            .ctl(others[1] as usize, &["run", "start", "composed", "--wait"])?
            .trim(),
        "4"
    );
    deployment.compose(&["start", &format!("node{leader}")])?;

    // Replace a follower whose data volume is gone: it rejoins and catches up.
    let (leader, _) = deployment.leader(1, &[1, 2, 3])?;
    let follower = [1u64, 2, 3].into_iter().find(|n| *n != leader).expect("a follower");
    deployment.compose(&["rm", "-sf", &format!("node{follower}")])?;
    run(Command::new("docker").args(["volume", "rm", &format!("{}_node{follower}", deployment.project)]))?;
    deployment.compose(&["up", "-d", &format!("node{follower}")])?;
    let runs = wait_until("the replaced node to catch up", Duration::from_secs(90), || {
        let runs = deployment.json(follower as usize, &["run", "list", "composed"])?;
        Ok((runs.as_array().map(Vec::len) == Some(4)).then_some(runs))
    })?;
    assert!(
        runs.as_array().unwrap().iter().all(|r| r["state"] == "SUCCEEDED"),
        "{runs}"
    );

    // Rotation: renew the api's and the executors' certificates in their directories, restart those
    // containers one at a time, and runs go on through the api on the new certificates.
    let certs = deployment.path().join("certs");
    for service in ["api", "executor", "executor-b"] {
        run(Command::new(bin_dir()?.join("goferd"))
            .args(["certs", "renew", service, "--dir"])
            .arg(&certs)
            .arg("--out")
            .arg(certs.join(service)))?;
        deployment.compose(&["restart", service])?;
    }
    each_container_holds_only_its_own_secrets(deployment)?;
    wait_until("the restarted api to answer", Duration::from_secs(60), || {
        Ok(deployment.json(API, &["cluster", "status"]).ok())
    })?;
    assert_eq!(
        deployment.ctl(API, &["run", "start", "composed", "--wait"])?.trim(),
        "5"
    );
    Ok(())
}
