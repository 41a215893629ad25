//! Local `goferd server` clusters for benchmarks: certificates from `goferd certs`, member processes
//! that can be killed and started again, and the leader as the nodes report it. Every process is killed
//! when its [`Member`] is dropped, also on error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gofer_proto::v1;

use crate::{Api, ClientConfig, connect};

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A member process that can be killed and started again with the same command.
pub struct Member {
    pub id: u64,
    pub command: Vec<String>,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Member {
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("GOFER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.command[0]))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The files both clusters use: a CA, one certificate per member, the admin token.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
}

impl Pki {
    /// A CA, the admin token, and a certificate for each of `names`.
    pub fn make(goferd: &Path, dir: &Path, names: &[String]) -> Result<Pki> {
        let certs = dir.join("certs");
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(goferd)
                .arg("certs")
                .args(args)
                .arg("--dir")
                .arg(&certs)
                .output()?;
            ensure!(
                out.status.success(),
                "goferd certs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        run(&["init"])?;
        for name in names {
            // Every process is dialled at 127.0.0.1 (goferd's and etcd's alike).
            run(&["issue", name, "--ip", "127.0.0.1"])?;
        }
        let ca_pem = std::fs::read_to_string(certs.join("ca.pem"))?;
        Ok(Pki { dir: certs, ca_pem })
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `goferd server` nodes of one cluster.
pub struct GoferCluster {
    pub members: Vec<Member>,
    pub configs: BTreeMap<u64, ClientConfig>,
}

impl GoferCluster {
    /// Starts `nodes` nodes named `node<ID>` (each needs a certificate in `pki`), each also given
    /// `extra` flags.
    pub fn start(bin: &Path, pki: &Pki, dir: &Path, nodes: u64, extra: &[&str]) -> Result<GoferCluster> {
        let mut ports = Vec::new();
        for id in 1..=nodes {
            ports.push((id, free_port()?, free_port()?, free_port()?));
        }
        let bootstrap: Vec<String> = ports
            .iter()
            .map(|(id, _, raft, _)| format!("{id}=https://127.0.0.1:{raft}"))
            .collect();
        let token = std::fs::read_to_string(pki.dir.join("admin.token"))?.trim().to_string();
        let (mut members, mut configs) = (Vec::new(), BTreeMap::new());
        for (id, api, raft, webhook) in ports {
            let command: Vec<String> = vec![
                bin.join("goferd").display().to_string(),
                "server".into(),
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                dir.join(format!("gofer{id}")).display().to_string(),
                "--api-listen".into(),
                format!("127.0.0.1:{api}"),
                "--raft-listen".into(),
                format!("127.0.0.1:{raft}"),
                "--webhook-listen".into(),
                format!("127.0.0.1:{webhook}"),
                "--ca".into(),
                pki.file("ca.pem"),
                "--cert".into(),
                pki.file(&format!("node{id}.pem")),
                "--key".into(),
                pki.file(&format!("node{id}.key")),
                "--admin-token-file".into(),
                pki.file("admin.token"),
                "--bootstrap".into(),
                bootstrap.join(","),
            ];
            let command = command.into_iter().chain(extra.iter().map(|a| a.to_string())).collect();
            let mut member = Member {
                id,
                command,
                log: dir.join(format!("gofer{id}.log")),
                child: None,
            };
            member.start()?;
            members.push(member);
            configs.insert(
                id,
                ClientConfig {
                    host: format!("https://127.0.0.1:{api}"),
                    token: token.clone(),
                    ca_cert: pki.dir.join("ca.pem"),
                    namespace: "default".into(),
                },
            );
        }
        Ok(GoferCluster { members, configs })
    }

    pub async fn client(&self, id: u64) -> Result<Api> {
        connect(&self.configs[&id]).await
    }

    /// The leader as the live nodes see it, once the cluster is initialized.
    pub async fn leader(&self, deadline: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            for member in self.members.iter().filter(|m| m.child.is_some()) {
                if let Ok(mut api) = self.client(member.id).await
                    && let Ok(status) = api.get_cluster_status(v1::GetClusterStatusRequest {}).await
                {
                    let status = status.into_inner();
                    let alive = self
                        .members
                        .iter()
                        .any(|m| m.id == status.leader_id && m.child.is_some());
                    if alive && !status.cluster_id.is_empty() {
                        return Ok(status.leader_id);
                    }
                }
            }
            ensure!(start.elapsed() < deadline, "no Gofer leader within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
