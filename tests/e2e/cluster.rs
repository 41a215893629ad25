//! Three `goferd server` processes on loopback form a cluster over mutual-TLS Raft: any node takes any
//! call, a run started on a follower runs, and after the leader is killed with SIGKILL another node leads,
//! nothing acknowledged is lost, and runs go on; every node numbers the events alike, so a client resumes
//! the event stream on another node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use gofer_testkit::{Seen, bin_dir, task_image, wait_until};
use serde_json::Value;

use crate::pipeline;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Node {
    id: u64,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// `--bootstrap`'s value, every node's raft address.
    bootstrap: String,
    /// Each node's id and its api, raft and webhook ports.
    ports: Vec<(u64, u16, u16, u16)>,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        task_image()?;
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("gofer-cluster-").tempdir()?;
        let certs = dir.path().join("certs");
        let goferd = bin.join("goferd");
        let ok = |output: std::process::Output| -> Result<()> {
            anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            Ok(())
        };
        ok(Command::new(&goferd)
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .output()?)?;
        let mut ports = Vec::new();
        for id in 1..=3u64 {
            ok(Command::new(&goferd)
                // Peers and goferctl dial each node at 127.0.0.1.
                .args(["certs", "issue", &format!("node{id}"), "--ip", "127.0.0.1", "--dir"])
                .arg(&certs)
                .output()?)?;
            ports.push((id, free_port()?, free_port()?, free_port()?));
        }
        let bootstrap: Vec<String> = ports
            .iter()
            .map(|(id, _, raft, _)| format!("{id}=https://127.0.0.1:{raft}"))
            .collect();
        let token = std::fs::read_to_string(certs.join("admin.token"))?.trim().to_string();
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            bootstrap: bootstrap.join(","),
            ports: ports.clone(),
        };
        for (id, api, _, _) in ports {
            let config = cluster.dir.path().join(format!("node{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "host = \"https://127.0.0.1:{api}\"\ntoken = \"{token}\"\nca_cert = \"{}\"\nnamespace = \"default\"\n",
                    certs.join("ca.pem").display()
                ),
            )?;
            let log = cluster.dir.path().join(format!("node{id}.log"));
            cluster.nodes.push(Node {
                id,
                child: None,
                config,
                log,
            });
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` as the README says, on its data dir (`goferd server --bootstrap …` on every node),
    /// its stderr appended to its log.
    fn spawn(&mut self, id: u64) -> Result<()> {
        let (_, api, raft, webhook) = *self.ports.iter().find(|p| p.0 == id).context("a node id")?;
        let certs = self.dir.path().join("certs");
        let log = self.node(id).log.clone();
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(bin_dir()?.join("goferd"))
            .arg("server")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("node{id}.pem")))
            .arg("--key")
            .arg(certs.join(format!("node{id}.key")))
            .arg("--admin-token-file")
            .arg(certs.join("admin.token"))
            .args(["--bootstrap", &self.bootstrap])
            .env("GOFER_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()?;
        self.nodes.iter_mut().find(|n| n.id == id).context("a node id")?.child = Some(child);
        Ok(())
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node ids are 1-3")
    }

    fn ctl(&self, id: u64, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(bin_dir()?.join("goferctl"))
            .env("GOFER_CONFIG", &self.node(id).config)
            .env_remove("GOFER_HOST")
            .env_remove("GOFER_TOKEN")
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    fn json(&self, id: u64, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let output = self.ctl(id, &all)?;
        anyhow::ensure!(
            output.status.success(),
            "goferctl {all:?} on node {id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn register(&self, id: u64, json: &str) -> Result<()> {
        let path = self.dir.path().join("pipeline.json");
        std::fs::write(&path, json)?;
        let output = self.ctl(id, &["pipeline", "register", path.to_str().context("utf-8 path")?])?;
        anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    /// The leader as node `asked` sees it, once it sees one among `among`.
    fn leader(&self, asked: u64, among: &[u64]) -> Result<(u64, Value)> {
        wait_until("an agreed leader", Duration::from_secs(60), || {
            let status = self.json(asked, &["cluster", "status"])?;
            let leader = status["leader_id"].as_u64().unwrap_or(0);
            let initialized = !status["cluster_id"].as_str().unwrap_or_default().is_empty();
            Ok(if initialized && among.contains(&leader) {
                Seen::Done((leader, status))
            } else {
                Seen::NotYet(format!(
                    "node {asked} names leader {leader} (initialized: {initialized})"
                ))
            })
        })
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.iter_mut().find(|n| n.id == id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- node {} ---\n{}",
                    n.id,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let cluster_id = self
            .json(1, &["cluster", "status"])
            .ok()
            .and_then(|s| s["cluster_id"].as_str().map(str::to_string));
        for id in 1..=3 {
            self.kill(id);
        }
        gofer_testkit::remove_cluster_containers(cluster_id.as_deref().unwrap_or_default());
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn run_succeeds(cluster: &Cluster, node: u64, pipeline: &str) -> Result<String> {
    let output = cluster.ctl(node, &["run", "start", pipeline, "--wait"])?;
    anyhow::ensure!(
        output.status.success(),
        "run start --wait on node {node}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// The events node `node` lists after `from`, parsed.
fn events(cluster: &Cluster, node: u64, from: u64) -> Result<Vec<Value>> {
    let output = cluster.ctl(node, &["event", "list", "--from", &from.to_string(), "-o", "json"])?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[test]
fn a_three_node_cluster_serves_from_any_node_and_survives_losing_its_leader() -> Result<()> {
    let mut cluster = Cluster::start()?;
    let (leader, status) = cluster.leader(1, &[1, 2, 3])?;
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{status}");
    let cluster_id = status["cluster_id"].as_str().unwrap_or_default().to_string();
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();

    // Writes and runs through followers.
    cluster.register(
        followers[0],
        &pipeline("spread", &[("a", "echo from the cluster", &[])]),
    )?;
    // Read-your-writes across nodes: the other follower sees the registration on the very next call.
    assert_eq!(
        cluster.json(followers[1], &["pipeline", "get", "spread"])?["latest_version"],
        1
    );
    assert_eq!(run_succeeds(&cluster, followers[1], "spread")?, "1");
    // Logs are kept by the node whose scheduler dispatched the task (the leader); any node serves them.
    let logs = cluster.ctl(followers[0], &["task", "logs", "spread", "1", "a", "--follow"])?;
    assert_eq!(String::from_utf8_lossy(&logs.stdout).trim(), "from the cluster");

    // Every node's executor takes work: the two beside standby schedulers follow the redirect to the
    // active one, so all three are alive, and six runs started at once land on all three.
    wait_until("three live executors", Duration::from_secs(60), || {
        let status = cluster.json(followers[0], &["cluster", "status"])?;
        let alive: Vec<String> = status["executors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|e| e["lost_unix_millis"].as_i64().unwrap_or(0) == 0)
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        Ok(Seen::check(alive, |alive| alive.len() == 3))
    })?;
    cluster.register(leader, &pipeline("sixfold", &[("a", "sleep 3", &[])]))?;
    for _ in 0..6 {
        let started = cluster.ctl(followers[0], &["run", "start", "sixfold"])?;
        anyhow::ensure!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    }
    let mut executors = std::collections::BTreeSet::new();
    for run in 1..=6 {
        let run = run.to_string();
        let ended = wait_until("a sixfold run to end", Duration::from_secs(90), || {
            let value = cluster.json(leader, &["run", "get", "sixfold", &run])?;
            Ok(Seen::check(value, |v| {
                v["state"] == "SUCCEEDED" || v["state"] == "FAILED"
            }))
        })?;
        assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
        let tasks = cluster.json(leader, &["task", "list", "sixfold", &run])?;
        executors.insert(tasks[0]["executor"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(executors.len(), 3, "the runs ran on {executors:?}");

    // Every node numbers the events alike: a client may read them from any node.
    let seen = events(&cluster, leader, 0)?;
    assert!(!seen.is_empty());
    for node in &followers {
        assert_eq!(events(&cluster, *node, 0)?, seen, "node {node}'s events");
    }
    let last_seen = seen.last().and_then(|e| e["id"].as_u64()).context("an event id")?;
    // Every node holds a copy of every log blob (seven runs' logs, some of them alike), none is owed.
    wait_until("every node to hold every blob", Duration::from_secs(30), || {
        let status = cluster.json(followers[0], &["cluster", "status"])?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        Ok(Seen::check(nodes, |nodes| {
            nodes.len() == 3
                && nodes
                    .iter()
                    .all(|n| n["blob_count"].as_u64().unwrap_or(0) >= 2 && n["blob_backlog"].as_u64() == Some(0))
        }))
    })?;

    // Kill the leader: another node leads, nothing acknowledged is lost, runs go on.
    cluster.kill(leader);
    let (new_leader, _) = cluster.leader(followers[0], &followers)?;
    assert_ne!(new_leader, leader);
    let pipeline = cluster.json(followers[1], &["pipeline", "get", "spread"])?;
    assert_eq!(pipeline["latest_version"], 1);
    // The dead leader's scheduler received run 1's log, and the log is a blob on the survivors too:
    // either serves it.
    for node in &followers {
        let logs = cluster.ctl(*node, &["task", "logs", "spread", "1", "a"])?;
        assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
        assert_eq!(
            String::from_utf8_lossy(&logs.stdout).trim(),
            "from the cluster",
            "through node {node}"
        );
    }
    assert_eq!(
        cluster.json(followers[1], &["run", "get", "spread", "1"])?["state"],
        "SUCCEEDED"
    );
    assert_eq!(run_succeeds(&cluster, followers[0], "spread")?, "2");
    // A client that read the events from the dead leader resumes on another node, after its last id.
    let resumed = events(&cluster, followers[1], last_seen)?;
    let ids: Vec<u64> = seen.iter().chain(&resumed).filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "each event once, no gap"
    );
    assert!(
        resumed
            .iter()
            .any(|e| e["kind"] == "run" && e["run"]["run_id"] == 2 && e["run"]["state"] == "SUCCEEDED"),
        "{resumed:#?}"
    );
    gofer_testkit::remove_cluster_containers(&cluster_id);
    Ok(())
}

/// What goferctl printed, or why it failed.
fn out(output: std::process::Output) -> Result<Vec<u8>> {
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(output.stdout)
}

/// Reads every run's log and both objects through node `via` and checks them byte for byte.
fn check_kept(cluster: &Cluster, via: u64, runs: u64, object: &[u8]) -> Result<()> {
    for run in 1..=runs {
        let logs = out(cluster.ctl(via, &["task", "logs", "kept", &run.to_string(), "a"])?)
            .with_context(|| format!("run {run}'s log through node {via}"))?;
        let text = String::from_utf8_lossy(&logs);
        let numbers: String = (1..=30_000).map(|n| format!("{n}\n")).collect();
        anyhow::ensure!(
            text == format!("log of run {run}\n{numbers}"),
            "run {run}'s log through node {via}: {} bytes starting {:?}",
            logs.len(),
            &text[..text.len().min(40)]
        );
    }
    let got = out(cluster.ctl(via, &["object", "get", "kept", "cache.bin"])?)?;
    anyhow::ensure!(
        got == object,
        "the pipeline's object through node {via}: {} bytes",
        got.len()
    );
    let got = out(cluster.ctl(via, &["object", "get", "kept", "result", "--run", "1"])?)?;
    anyhow::ensure!(got == b"run one\n", "run 1's object through node {via}");
    Ok(())
}

/// Waits until node `asked` reports every state node holding `count` or more blobs and owing none.
fn wait_for_copies(cluster: &Cluster, asked: u64, count: u64) -> Result<Value> {
    wait_until("every node to hold every blob", Duration::from_secs(60), || {
        let status = cluster.json(asked, &["cluster", "status"])?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let done = nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["blob_count"].as_u64().unwrap_or(0) >= count && n["blob_backlog"].as_u64() == Some(0));
        Ok(if done {
            Seen::Done(status)
        } else {
            Seen::NotYet(format!("{nodes:?}"))
        })
    })
}

#[test]
fn no_single_node_loss_loses_a_log_or_an_object_and_a_wiped_node_gets_every_blob_back() -> Result<()> {
    let mut cluster = Cluster::start()?;
    let (leader, status) = cluster.leader(1, &[1, 2, 3])?;
    let cluster_id = status["cluster_id"].as_str().unwrap_or_default().to_string();
    // Each run's log is its own: a first line with the run id, then the numbers to 30,000 (169 KB).
    let script = "echo \"log of run $GOFER_RUN_ID\"; seq 1 30000";
    cluster.register(leader, &pipeline("kept", &[("a", script, &[])]))?;
    let runs = 3;
    for run in 1..=runs {
        assert_eq!(run_succeeds(&cluster, 1 + run % 3, "kept")?, run.to_string());
    }
    let object: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = cluster.dir.path().join("cache.bin");
    std::fs::write(&file, &object)?;
    out(cluster.ctl(
        2,
        &["object", "put", "kept", "cache.bin", file.to_str().context("utf-8")?],
    )?)?;
    let small = cluster.dir.path().join("result");
    std::fs::write(&small, b"run one\n")?;
    out(cluster.ctl(
        3,
        &[
            "object",
            "put",
            "kept",
            "result",
            small.to_str().context("utf-8")?,
            "--run",
            "1",
        ],
    )?)?;
    // Three logs and two objects, all distinct.
    wait_for_copies(&cluster, 1, runs + 2)?;

    // Each node in turn dies by SIGKILL; the two others serve everything.
    for dead in [1, 2, 3] {
        cluster.kill(dead);
        let alive: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != dead).collect();
        cluster.leader(alive[0], &alive)?;
        for via in &alive {
            check_kept(&cluster, *via, runs, &object)?;
        }
        cluster.spawn(dead)?;
        cluster.leader(dead, &[1, 2, 3])?;
    }

    // A node loses its disk and comes back empty (deploy/README.md, "Replacing a node"): it catches up
    // from the leader and copies every blob from the others.
    let wiped = 2;
    cluster.kill(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped))?;
    cluster.spawn(wiped)?;
    // Its copies are on its disk again, and the cluster's record of them says so (the record is the
    // replicated holders: the node first records what it lost, then what it copied).
    let blobs = cluster.data_dir(wiped).join("state/blobs");
    let files = || -> u64 {
        std::fs::read_dir(&blobs)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|shard| std::fs::read_dir(shard.path()).into_iter().flatten().flatten())
            .count() as u64
    };
    wait_until("the wiped node to copy every blob", Duration::from_secs(60), || {
        Ok(Seen::check(files(), |files| *files >= runs + 2))
    })?;
    wait_for_copies(&cluster, wiped, runs + 2)?;
    // Then another node dies, and the wiped one serves everything from its own copies.
    cluster.kill(3);
    cluster.leader(wiped, &[1, wiped])?;
    check_kept(&cluster, wiped, runs, &object)?;
    gofer_testkit::remove_cluster_containers(&cluster_id);
    Ok(())
}
