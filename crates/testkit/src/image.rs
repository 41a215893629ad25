//! Builds Gofer's local test and demo image: the static `gofer-toolbox` multi-call binary
//! (`crates/toolbox`) installed in an image `FROM scratch`.
//!
//! It exists because the machine has no container registry to pull a base image from, so the
//! end-to-end tests, the demo and the benchmark build their one image locally, from source. Several
//! test processes may ask for the image at once: cargo serialises the binary builds itself, the
//! image step runs under a machine-wide lock file per tag, a rebuild is skipped when the existing
//! image already carries the binary's hash as a label, and a failed `docker build` still counts as
//! success if the image that someone else produced meanwhile is the right one.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The names the toolbox binary is installed under in the image's `/bin`.
pub const TOOLBOX_COMMANDS: [&str; 11] = [
    "gofer-toolbox",
    "sh",
    "echo",
    "sleep",
    "true",
    "false",
    "cat",
    "env",
    "test",
    "alloc",
    "seq",
];

/// The only target installed on the build machine; static glibc is fine for the toolbox because it
/// does no name-service (DNS/NSS) lookups.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The image label carrying the FNV-1a hash of the binary the image was built from.
const HASH_LABEL: &str = "gofer.toolbox.hash";

/// How long to wait for another process that is building the same tag.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the toolbox binary statically and a local Docker image `tag` FROM scratch with it; returns once `docker image inspect tag` succeeds.
pub fn build_toolbox_image(workspace_root: &Path, tag: &str) -> Result<()> {
    let binary = build_toolbox_binary(workspace_root)?;
    let bytes = std::fs::read(&binary).with_context(|| format!("reading the toolbox binary {}", binary.display()))?;
    let hash = format!("{:016x}", fnv1a64(&bytes));
    let _lock = BuildLock::acquire(&std::env::temp_dir(), tag)?;
    if image_label(tag).is_ok_and(|label| label == hash) {
        return Ok(());
    }

    let context = tempfile::Builder::new()
        .prefix("gofer-toolbox-image-")
        .tempdir()
        .context("creating a temporary Docker build context for the toolbox image")?;
    write_build_context(context.path(), &bytes, &hash)?;
    let mut build = Command::new("docker");
    build.args(["build", "-q", "-t", tag]).arg(context.path());
    let output = run(&mut build, "docker build")?;
    if !output.status.success() {
        // A concurrent builder of the same tag may have made us fail; its image is as good as ours.
        if image_label(tag).is_ok_and(|label| label == hash) {
            return Ok(());
        }
        bail!(
            "building the toolbox image {tag}: `docker build -q -t {tag} {}` failed ({}): {}",
            context.path().display(),
            output.status,
            stderr(&output)
        );
    }
    let label = image_label(tag).with_context(|| format!("the toolbox image {tag} is missing after `docker build`"))?;
    if label != hash {
        bail!(
            "the toolbox image {tag} has label {HASH_LABEL}={label:?} right after being built from \
             a binary with hash {hash}; another process may be building it from different sources"
        );
    }
    Ok(())
}

/// The workspace root, found from CARGO_MANIFEST_DIR of gofer-testkit (two levels up).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("gofer-testkit lives two directories below the workspace root")
        .to_path_buf()
}

/// Builds the statically linked toolbox binary in its own target directory (so that its
/// `RUSTFLAGS` do not invalidate the workspace's main build) and returns its path.
fn build_toolbox_binary(workspace_root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = workspace_root.join("target").join("toolbox");
    let mut build = Command::new(&cargo);
    build
        .current_dir(workspace_root)
        .args(["build", "--release", "-p", "gofer-toolbox", "--target", TARGET])
        .arg("--manifest-path")
        .arg(workspace_root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Takes precedence over RUSTFLAGS, so it must not leak in from a surrounding cargo.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    let output = run(&mut build, "cargo build")?;
    if !output.status.success() {
        bail!(
            "building the static toolbox binary: `{} build --release -p gofer-toolbox --target {TARGET}` \
             with RUSTFLAGS=\"-C target-feature=+crt-static\" failed ({}): {}",
            cargo.to_string_lossy(),
            output.status,
            stderr(&output)
        );
    }
    Ok(target_dir.join(TARGET).join("release").join("gofer-toolbox"))
}

/// Fills `dir` with `bin/` (the binary under every name in [`TOOLBOX_COMMANDS`]) and the Dockerfile.
fn write_build_context(dir: &Path, binary: &[u8], hash: &str) -> Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in TOOLBOX_COMMANDS {
        let path = bin.join(name);
        std::fs::write(&path, binary).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    let dockerfile = dir.join("Dockerfile");
    std::fs::write(&dockerfile, dockerfile_text(hash)).with_context(|| format!("writing {}", dockerfile.display()))
}

fn dockerfile_text(hash: &str) -> String {
    format!("FROM scratch\nCOPY bin/ /bin/\nENV PATH=/bin\nLABEL {HASH_LABEL}={hash}\nCMD [\"/bin/sh\"]\n")
}

/// The value of the hash label of image `tag` (empty if it has none); an error if
/// `docker image inspect` fails, e.g. because there is no such image.
fn image_label(tag: &str) -> Result<String> {
    let format = format!("{{{{index .Config.Labels \"{HASH_LABEL}\"}}}}");
    let mut inspect = Command::new("docker");
    inspect.args(["image", "inspect", "--format", &format, tag]);
    let output = run(&mut inspect, "docker image inspect")?;
    if !output.status.success() {
        bail!(
            "`docker image inspect {tag}` failed ({}): {}",
            output.status,
            stderr(&output)
        );
    }
    let label = String::from_utf8_lossy(&output.stdout).trim().to_string();
    // A missing label prints as "<no value>" (or nothing, depending on the Docker version).
    Ok(if label == "<no value>" { String::new() } else { label })
}

/// Exclusive right to build one image tag on this machine: a lock file created with `create_new`
/// and holding the owner's PID, removed when dropped. A lock left behind by a dead process (its
/// PID no longer exists) is broken; the lock only avoids duplicate builds, correctness does not
/// depend on it.
struct BuildLock {
    path: PathBuf,
}

impl BuildLock {
    fn acquire(dir: &Path, tag: &str) -> Result<BuildLock> {
        let name: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("gofer-toolbox-image-{name}.lock"));
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let lock = BuildLock { path };
                    write!(file, "{}", std::process::id())
                        .with_context(|| format!("writing the lock file {}", lock.path.display()))?;
                    return Ok(lock);
                }
                Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(&path) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "timed out after {LOCK_TIMEOUT:?} waiting for the lock file {} of another \
                             process building the toolbox image {tag}",
                            path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("creating the lock file {}", path.display()));
                }
            }
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the lock file at `path` was left behind: its PID is gone, or it has stayed empty (the
/// owner died between creating and writing it) for more than a few seconds.
fn lock_is_stale(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false; // Just released: retry at once.
    };
    match text.trim().parse::<u32>() {
        Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(10)),
    }
}

/// Runs `command` to completion, capturing its output; `what` names it if it cannot be started.
fn run(command: &mut Command, what: &str) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("starting `{what}` ({command:?})"))
}

fn stderr(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        "(no output on stderr)".to_string()
    } else {
        text
    }
}

/// 64-bit FNV-1a: a tiny, dependency-free fingerprint of the binary (not a security measure).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn workspace_root_is_two_levels_above_testkit() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("crates/testkit/Cargo.toml").is_file(), "{}", root.display());
    }

    #[test]
    fn build_lock_is_exclusive_and_breaks_stale_locks() {
        let dir = tempfile::tempdir().unwrap();
        let lock = BuildLock::acquire(dir.path(), "repo/name:tag").unwrap();
        assert_eq!(lock.path, dir.path().join("gofer-toolbox-image-repo_name_tag.lock"));
        assert_eq!(
            std::fs::read_to_string(&lock.path).unwrap(),
            std::process::id().to_string()
        );
        assert!(!lock_is_stale(&lock.path));

        // A waiter gets the lock once the holder releases it.
        let waiter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || BuildLock::acquire(&dir, "repo/name:tag").map(|_| Instant::now()))
        };
        std::thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        drop(lock);
        assert!(waiter.join().unwrap().unwrap() >= released);

        // A lock whose owner no longer exists is taken over.
        let path = dir.path().join("gofer-toolbox-image-dead.lock");
        std::fs::write(&path, u32::MAX.to_string()).unwrap();
        assert!(lock_is_stale(&path));
        let lock = BuildLock::acquire(dir.path(), "dead").unwrap();
        drop(lock);
        assert!(!path.exists());
    }

    #[test]
    fn build_context_holds_every_command_and_the_labelled_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        write_build_context(dir.path(), b"\x7fELF fake", "0123456789abcdef").unwrap();
        for name in TOOLBOX_COMMANDS {
            let path = dir.path().join("bin").join(name);
            assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF fake");
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap(),
            "FROM scratch\nCOPY bin/ /bin/\nENV PATH=/bin\n\
             LABEL gofer.toolbox.hash=0123456789abcdef\nCMD [\"/bin/sh\"]\n"
        );
    }
}
