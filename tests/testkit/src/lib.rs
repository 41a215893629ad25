//! What Gofer's end-to-end tests, the demo and the benchmark share: build the binaries and the local
//! task image, start `goferd dev` as a real process on a temp dir, drive it with `goferctl`, and clean
//! up its containers and process even when a test fails.

mod image;
mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use image::build_task_image;
pub use s3::S3Server;

/// The local image the demo, the tests, the example and the benchmarks run tasks in: the host's `sh`
/// and coreutils `FROM scratch` (see [`build_task_image`]).
pub const TASK_IMAGE: &str = "gofer/toolbox:1";

/// The workspace root, found from CARGO_MANIFEST_DIR of gofer-testkit (two levels up).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("gofer-testkit lives two directories below the workspace root")
        .to_path_buf()
}

/// A `cargo` command run in the workspace root.
///
/// `cargo run` and `cargo test` hand their child the package variables of the crate they run. Some build
/// scripts (ring's) declare `rerun-if-env-changed` on those, so inheriting them would rebuild ring and
/// everything above it here, and again in the caller's next cargo command: they are removed.
pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(name, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
        {
            command.env_remove(name);
        }
    }
    command
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds `goferd` and `goferctl` with `profile` and returns the directory that holds them.
fn build_binaries(profile: BuildProfile) -> std::result::Result<PathBuf, String> {
    let (args, dir): (&[&str], &str) = match profile {
        BuildProfile::Debug => (&["build", "--quiet", "-p", "goferd", "-p", "goferctl"], "debug"),
        BuildProfile::Release => (&["build", "--release", "-p", "goferd", "-p", "goferctl"], "release"),
    };
    let status = cargo_command(args)
        .status()
        .map_err(|e| format!("running cargo {}: {e}", args.join(" ")))?;
    if !status.success() {
        return Err(format!("cargo {} failed", args.join(" ")));
    }
    Ok(target_dir().join(dir))
}

/// The directory holding the built `goferd` and `goferctl`, building them first (once per process).
pub fn bin_dir() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binaries(BuildProfile::Debug))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Which cargo profile the `goferd` and `goferctl` binaries are built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildProfile {
    /// `cargo build`, into `target/debug`: what the tests use.
    Debug,
    /// `cargo build --release`, into `target/release`: what the benchmarks use, since a debug
    /// build's timings say little about the product.
    Release,
}

/// The directory holding `goferd` and `goferctl` built with `profile`, building them first (once per
/// process and profile). `BuildProfile::Debug` is exactly [`bin_dir`]; a release build is not quiet,
/// because it takes minutes and its progress is worth seeing.
pub fn bin_dir_with_profile(profile: BuildProfile) -> Result<PathBuf> {
    if profile == BuildProfile::Debug {
        return bin_dir();
    }
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binaries(BuildProfile::Release))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Builds the task image [`TASK_IMAGE`] once per process and returns its tag.
pub fn task_image() -> Result<&'static str> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_task_image(TASK_IMAGE).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(TASK_IMAGE)
}

/// What one look at a condition [`wait_until`] waits for found: the value waited for, or a description
/// of what was there instead, which the timeout error repeats. `Option` says no more than "not yet";
/// [`Seen`] says what was seen.
pub trait Observation<T> {
    /// The value waited for, or what was seen instead.
    fn into_seen(self) -> std::result::Result<T, String>;
}

impl<T> Observation<T> for Option<T> {
    fn into_seen(self) -> std::result::Result<T, String> {
        self.ok_or_else(|| "not yet (the check says no more)".to_string())
    }
}

/// A look at a condition that says what it saw when the condition does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<T> {
    /// The condition holds: here is the value waited for.
    Done(T),
    /// The condition does not hold yet: this is what was seen.
    NotYet(String),
}

impl<T: std::fmt::Debug> Seen<T> {
    /// `value` if `done` takes it, else its `Debug` form as what was seen.
    pub fn check(value: T, done: impl FnOnce(&T) -> bool) -> Seen<T> {
        if done(&value) {
            Seen::Done(value)
        } else {
            Seen::NotYet(format!("{value:?}"))
        }
    }
}

impl<T> Observation<T> for Seen<T> {
    fn into_seen(self) -> std::result::Result<T, String> {
        match self {
            Seen::Done(value) => Ok(value),
            Seen::NotYet(seen) => Err(seen),
        }
    }
}

/// Waits for `check` to find what it looks for (`Some`, or [`Seen::Done`]), looking every 50 ms until
/// `deadline`; the timeout error says what the last look saw: its error, or what it found instead.
pub fn wait_until<T, O: Observation<T>>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<O>,
) -> Result<T> {
    let start = Instant::now();
    let mut looks = 0u32;
    loop {
        looks += 1;
        let last = match check().map(Observation::into_seen) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => format!("saw {seen}"),
            Err(err) => format!("failed: {err:#}"),
        };
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}; the last of {looks} looks {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `GOFER_LOG` filter [`GoferDev::start`] runs goferd with.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// A `goferd dev` process on its own temp data dir and client config.
pub struct GoferDev {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    log_filter: String,
    /// More `goferd dev` flags, given on every (re)start.
    extra_args: Vec<String>,
    /// More environment variables for goferd, given on every (re)start.
    extra_env: Vec<(String, String)>,
    pub host: String,
    pub cluster: String,
    /// The webhook listener's base URL, such as `http://127.0.0.1:41234`.
    pub webhooks: String,
}

impl GoferDev {
    /// Starts `goferd dev` on a fresh temp dir and waits until it is ready.
    pub fn start() -> Result<Self> {
        Self::start_with(bin_dir()?, DEFAULT_LOG_FILTER)
    }

    /// Starts `goferd dev` from the binaries in `bin_dir` (see [`bin_dir_with_profile`]) with
    /// `GOFER_LOG=log_filter`, on a fresh temp dir, and waits until it is ready. Restarts keep both.
    pub fn start_with(bin_dir: PathBuf, log_filter: &str) -> Result<Self> {
        Self::start_with_args(bin_dir, log_filter, &[])
    }

    /// As [`GoferDev::start_with`], with more `goferd dev` flags.
    pub fn start_with_args(bin_dir: PathBuf, log_filter: &str, extra_args: &[&str]) -> Result<Self> {
        Self::start_with_env(bin_dir, log_filter, extra_args, &[])
    }

    /// As [`GoferDev::start_with_args`], with more environment variables for goferd.
    pub fn start_with_env(
        bin_dir: PathBuf,
        log_filter: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("gofer-e2e-").tempdir()?;
        let mut dev = GoferDev {
            dir,
            child: None,
            bin: bin_dir,
            log_filter: log_filter.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            host: String::new(),
            cluster: String::new(),
            webhooks: String::new(),
        };
        dev.launch()?;
        Ok(dev)
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The client config goferctl uses.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Where goferd's stderr goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("goferd.log")
    }

    /// goferd's stderr so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where goferd's stdout is copied.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("goferd.out")
    }

    /// Replaces the extra `goferd dev` flags the next (re)start gives.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(self.bin.join("goferd"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--webhook-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.data_dir())
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("GOFER_CONFIG", self.config_path())
            .env("GOFER_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting goferd dev")?;
        let stdout = child.stdout.take().context("goferd stdout")?;
        self.child = Some(child);
        let mut copy = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path())?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut host = None;
            let mut cluster = None;
            let mut webhooks = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = std::io::Write::write_all(&mut copy, format!("{line}\n").as_bytes());
                if let Some(rest) = line.trim().strip_prefix("api:") {
                    host = Some(rest.trim().to_string());
                }
                if let Some(rest) = line.trim().strip_prefix("cluster:") {
                    cluster = Some(rest.trim().to_string());
                }
                if let Some(rest) = line.trim().strip_prefix("webhooks:") {
                    webhooks = Some(rest.trim().to_string());
                }
                if line.trim().starts_with("try:") {
                    let _ = tx.send((host.clone(), cluster.clone(), webhooks.clone()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((Some(host), Some(cluster), Some(webhooks))) => {
                self.host = host;
                self.cluster = cluster;
                self.webhooks = webhooks;
                Ok(())
            }
            _ => bail!("goferd dev did not become ready; its log:\n{}", self.server_log()),
        }
    }

    /// Stops goferd with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("goferd did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops and starts goferd again on the same data dir.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Starts goferd again on the same data dir after [`GoferDev::stop`].
    pub fn relaunch(&mut self) -> Result<()> {
        self.launch()
    }

    /// A goferctl command with this server's config.
    pub fn goferctl(&self) -> Command {
        let mut command = Command::new(self.bin.join("goferctl"));
        command
            .env("GOFER_CONFIG", self.config_path())
            .env_remove("GOFER_HOST")
            .env_remove("GOFER_TOKEN")
            .env_remove("GOFER_NAMESPACE")
            .stdin(Stdio::null());
        command
    }

    /// Runs goferctl with `args` and returns its output, whatever its exit status.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.goferctl().args(args).output().context("running goferctl")
    }

    /// Runs goferctl with `args`, fails unless it exits 0, and returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.ctl(args)?;
        if !output.status.success() {
            bail!(
                "goferctl {} exited {:?}: {}",
                args.join(" "),
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Runs goferctl with `args` plus `-o json` and parses its stdout.
    pub fn ctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ctl_ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("goferctl printed no JSON: {out}"))
    }

    /// Registers a pipeline from JSON text through stdin; returns the version.
    pub fn register(&self, json: &str) -> Result<u64> {
        let output = self.register_output(json)?;
        if !output.status.success() {
            bail!("register failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        value["version"].as_u64().context("register printed no version")
    }

    /// Runs `goferctl pipeline register - -o json` with `json` on stdin.
    pub fn register_output(&self, json: &str) -> Result<Output> {
        self.register_output_in("default", json)
    }

    /// Registers a pipeline from JSON text in `namespace`, failing unless goferctl succeeds.
    pub fn register_in(&self, namespace: &str, json: &str) -> Result<()> {
        let output = self.register_output_in(namespace, json)?;
        if !output.status.success() {
            bail!(
                "register in {namespace} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Runs `goferctl -n NAMESPACE pipeline register - -o json` with `json` on stdin.
    pub fn register_output_in(&self, namespace: &str, json: &str) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .goferctl()
            .args(["-n", namespace, "pipeline", "register", "-", "-o", "json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(json.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Names of this server's containers that still exist.
    pub fn containers(&self) -> Result<Vec<String>> {
        cluster_containers(&self.cluster)
    }
}

/// Names of the containers, running or not, that carry cluster `cluster`'s label.
pub fn cluster_containers(cluster: &str) -> Result<Vec<String>> {
    labelled(&["ps", "-a", "--format", "{{.Names}}"], cluster)
}

/// Names of the networks that carry cluster `cluster`'s label (its nodes' extension networks).
pub fn cluster_networks(cluster: &str) -> Result<Vec<String>> {
    labelled(&["network", "ls", "--format", "{{.Name}}"], cluster)
}

/// What a `docker` listing (`list`: `ps -a` or `network ls` with a `--format`) prints, a line each, of
/// what carries cluster `cluster`'s label.
fn labelled(list: &[&str], cluster: &str) -> Result<Vec<String>> {
    let output = Command::new("docker")
        .args(list)
        .arg("--filter")
        .arg(format!("label=dev.gofer.cluster={cluster}"))
        .output()?;
    Ok(String::from_utf8(output.stdout)?.lines().map(str::to_string).collect())
}

/// Removes every container of cluster `cluster` (none when the id is empty), and then its networks,
/// which a goferd that was killed rather than stopped leaves behind, ignoring failures: for cleanup. A
/// create that a killed goferd sent just before it died can still land in the Engine after a first
/// sweep, so it sweeps until two sweeps 200 ms apart find nothing, for at most 3 s.
pub fn remove_cluster_containers(cluster: &str) {
    if cluster.is_empty() {
        return;
    }
    sweep_cluster_containers(cluster);
    if let Ok(networks) = cluster_networks(cluster)
        && !networks.is_empty()
    {
        let _ = Command::new("docker").args(["network", "rm"]).args(&networks).output();
    }
}

fn sweep_cluster_containers(cluster: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < deadline {
        match cluster_containers(cluster) {
            Ok(names) if !names.is_empty() => {
                quiet = 0;
                let _ = Command::new("docker").args(["rm", "-f"]).args(&names).output();
            }
            Ok(_) => quiet += 1,
            Err(_) => return,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for GoferDev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_cluster_containers(&self.cluster);
        if std::thread::panicking() {
            eprintln!(
                "--- goferd log ({}) ---\n{}",
                self.log_path().display(),
                self.server_log()
            );
        }
    }
}

/// Builds `bin` of `package` (debug) and a local image `tag` FROM scratch holding it and the shared
/// libraries `ldd` lists, with the binary as entrypoint. There is no registry to pull a base from.
pub fn build_binary_image(package: &str, bin: &str, tag: &str) -> Result<()> {
    let status = cargo_command(&["build", "--quiet", "-p", package, "--bin", bin]).status()?;
    if !status.success() {
        bail!("cargo build -p {package} --bin {bin} failed");
    }
    let binary = bin_dir()?.join(bin);
    let context = tempfile::Builder::new().prefix("gofer-image-").tempdir()?;
    let copy_into = |source: &Path, dest: &Path| -> Result<()> {
        let target = context.path().join(dest.strip_prefix("/").unwrap_or(dest));
        std::fs::create_dir_all(target.parent().context("a parent dir")?)?;
        std::fs::copy(source, &target).with_context(|| format!("copying {}", source.display()))?;
        Ok(())
    };
    copy_into(&binary, &PathBuf::from("/bin").join(bin))?;
    for library in image::shared_libraries(&binary)? {
        copy_into(&library, &library)?;
    }
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM scratch\nCOPY . /\nENTRYPOINT [\"/bin/{bin}\"]\n"),
    )?;
    let built = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context.path())
        .output()?;
    if !built.status.success() {
        bail!(
            "docker build -t {tag} failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
