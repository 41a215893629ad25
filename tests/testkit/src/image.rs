//! Builds Gofer's local test and demo image `FROM scratch` out of the host's own programs: its `sh` (dash
//! on Debian), the coreutils that the tasks of the tests, the demo, the example and the benchmarks call,
//! and the shared libraries `ldd` lists for each, the dynamic loader included, as
//! `deploy/build-image.sh` builds goferd's image.
//!
//! It exists because the machine has no container registry to pull a base image from. It refuses to
//! need anything a fresh Debian machine with Rust and Docker lacks (dash and coreutils are always there;
//! busybox is not), and to compile any program for the image. Several test processes may ask for the
//! image at once: the build runs under a machine-wide lock file per tag, a rebuild is skipped when the
//! existing image already carries the SHA-256 of its inputs (every file copied in, and the Dockerfile)
//! as a label, and a failed `docker build` still counts as success if the image that someone else
//! produced meanwhile is the right one.
//!
//! The image's entrypoint, its PID 1, is GNU `timeout 0` (no time limit) in front of the task's command.
//! The kernel drops a signal sent to a container's PID 1 unless PID 1 handles it, so a bare `sleep` would
//! ignore `docker stop`'s SIGTERM until the grace ran out and SIGKILL came. `timeout` handles SIGTERM and
//! SIGINT, passes them on to the command, and exits with the command's status (143 when SIGTERM ended
//! it), so a task stops when asked unless it ignores SIGTERM itself.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The programs the image holds in `/bin`, copied from the host: the shell, the commands the tasks call
/// (`head` and `tail` make a memory-hungry task for the out-of-memory test), and `timeout`, the
/// entrypoint. A task that needs another command needs its name here.
const IMAGE_COMMANDS: [&str; 12] = [
    "sh", "echo", "sleep", "true", "false", "cat", "env", "test", "seq", "head", "tail", "timeout",
];

/// Where the host's programs are looked up, in this order: the system's own directories, never the
/// user's `PATH`, which may hold other implementations of the same commands.
const HOST_BIN_DIRS: [&str; 2] = ["/usr/bin", "/bin"];

/// The Dockerfile, but for its last line, the label carrying the hash of the inputs (this text included).
const DOCKERFILE: &str = "FROM scratch\n\
    COPY rootfs/ /\n\
    ENV PATH=/bin\n\
    ENTRYPOINT [\"/bin/timeout\", \"0\"]\n\
    CMD [\"/bin/sh\"]\n";

/// The image label carrying the SHA-256 of the image's inputs, in hex.
const HASH_LABEL: &str = "gofer.image.inputs-sha256";

/// How long to wait for another process that is building the same tag.
const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// One file of the image: its absolute path in the image and its bytes, read from the host.
#[derive(Debug, PartialEq, Eq)]
struct ImageFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// Builds the local Docker image `tag` FROM scratch with the host's shell, commands and their shared
/// libraries; returns once `docker image inspect tag` shows it with the hash of those inputs.
pub fn build_task_image(tag: &str) -> Result<()> {
    let bin_dirs = HOST_BIN_DIRS.map(Path::new);
    let files = host_files(&IMAGE_COMMANDS, &bin_dirs)?;
    let hash = inputs_hash(&files, DOCKERFILE);
    let _lock = BuildLock::acquire(&std::env::temp_dir(), tag)?;
    if image_label(tag).is_ok_and(|label| label == hash) {
        return Ok(());
    }

    let context = tempfile::Builder::new()
        .prefix("gofer-task-image-")
        .tempdir()
        .context("creating a temporary Docker build context for the task image")?;
    write_build_context(context.path(), &files, &hash)?;
    let mut build = Command::new("docker");
    build.args(["build", "-q", "-t", tag]).arg(context.path());
    let output = run(&mut build, "docker build")?;
    if !output.status.success() {
        // A concurrent builder of the same tag may have made us fail; its image is as good as ours.
        if image_label(tag).is_ok_and(|label| label == hash) {
            return Ok(());
        }
        bail!(
            "building the task image {tag}: `docker build -q -t {tag} {}` failed ({}): {}",
            context.path().display(),
            output.status,
            stderr(&output)
        );
    }
    let label = image_label(tag).with_context(|| format!("the task image {tag} is missing after `docker build`"))?;
    if label != hash {
        bail!(
            "the task image {tag} has label {HASH_LABEL}={label:?} right after being built from \
             inputs with hash {hash}; another process may be building it from different files"
        );
    }
    Ok(())
}

/// The files of the image, sorted by their path in it: each command of `commands`, found in the first
/// of `bin_dirs` that has it, as `/bin/<command>`, and every shared library those need, at the path
/// `ldd` names. Symbolic links are followed: the image gets the files' contents.
fn host_files(commands: &[&str], bin_dirs: &[&Path]) -> Result<Vec<ImageFile>> {
    // Path in the image -> the host file to copy there.
    let mut sources: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for command in commands {
        let host = bin_dirs
            .iter()
            .map(|dir| dir.join(command))
            .find(|path| path.is_file())
            .with_context(|| {
                format!("the task image needs `{command}`, which is in none of {bin_dirs:?} on this machine")
            })?;
        for library in shared_libraries(&host)? {
            sources.insert(library.clone(), library);
        }
        sources.insert(Path::new("/bin").join(command), host);
    }
    sources
        .into_iter()
        .map(|(path, host)| {
            let bytes = std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
            Ok(ImageFile { path, bytes })
        })
        .collect()
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader included: absolute paths on the
/// host, where the image needs them too. None for a statically linked binary.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    let output = run(&mut ldd, "ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stderr(&output).contains("not a dynamic executable") || text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "`ldd {}` failed ({}): {}",
            binary.display(),
            output.status,
            stderr(&output)
        );
    }
    parse_ldd(&text).with_context(|| format!("`ldd {}`", binary.display()))
}

/// The absolute paths in `ldd`'s output. Its lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6
/// (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)` or `linux-vdso.so.1 (0x...)` (the vDSO, which is no
/// file); a library it could not find (`libx.so.1 => not found`) is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let resolved = line.rsplit("=>").next().unwrap_or_default().trim();
        if resolved.starts_with("not found") {
            bail!("a shared library is missing: {}", line.trim());
        }
        if let Some(path) = resolved.split_whitespace().next().filter(|path| path.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// The SHA-256, in hex, of `dockerfile` and of every file's path, length and bytes, in `files`' order.
fn inputs_hash(files: &[ImageFile], dockerfile: &str) -> String {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    hash.update(dockerfile.as_bytes());
    for file in files {
        hash.update(file.path.as_os_str().as_bytes());
        hash.update(&[0]);
        hash.update(&u64::try_from(file.bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
        hash.update(&file.bytes);
    }
    hash.finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Fills `dir` with `rootfs/` (every file of `files` at its path, executable) and the Dockerfile,
/// labelled with `hash`.
fn write_build_context(dir: &Path, files: &[ImageFile], hash: &str) -> Result<()> {
    let rootfs = dir.join("rootfs");
    for file in files {
        let path = rootfs.join(file.path.strip_prefix("/").unwrap_or(&file.path));
        let parent = path.parent().unwrap_or(&rootfs);
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        std::fs::write(&path, &file.bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    let dockerfile = dir.join("Dockerfile");
    std::fs::write(&dockerfile, format!("{DOCKERFILE}LABEL {HASH_LABEL}={hash}\n"))
        .with_context(|| format!("writing {}", dockerfile.display()))
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
        let path = dir.join(format!("gofer-task-image-{name}.lock"));
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
                             process building the task image {tag}",
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

#[cfg(test)]
mod tests;
