//! Where the figures were taken: CPUs, Docker Engine version, and the product's commit.

use std::process::Command;

use anyhow::{Context, Result};
use bollard::Docker;

/// Where the figures were taken.
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub docker_version: String,
    pub revision: String,
}

impl Machine {
    /// Reads the machine's description.
    pub async fn describe() -> Result<Machine> {
        let docker = Docker::connect_with_local_defaults()?;
        let docker_version = docker
            .version()
            .await
            .context("asking the Docker Engine its version")?
            .version
            .unwrap_or_else(|| "unknown".to_string());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| {
                    line.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, m)| m.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        Ok(Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            docker_version,
            revision: revision(),
        })
    }
}

/// The workspace's commit, marked when the product's code has uncommitted changes (the benchmark's own
/// crates, `bench/` and `tests/testkit/`, do not count: they are not what is measured).
fn revision() -> String {
    let root = gofer_testkit::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let status = git(&["status", "--porcelain", "--", ".", ":!bench", ":!tests/testkit"]);
    match (git(&["rev-parse", "--short", "HEAD"]), status) {
        (Some(commit), Some(status)) if status.is_empty() => commit,
        (Some(commit), Some(_)) => format!("{commit} with uncommitted changes to the product"),
        _ => "unknown".to_string(),
    }
}
