//! Running programs that are not built in: looking a command name up in `PATH` (falling back to
//! `/bin`, the only directory of the scratch image), spawning it with the current routing of
//! stdout/stderr, and turning the outcome into a shell exit status.
//!
//! Shared by the shell (`sh -c 'prog args'`) and by `env NAME=VALUE prog args`.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::stdio::{Io, Stream, describe};

/// Runs `argv[0]` with arguments `argv[1..]` and the extra environment `env`, waits for it and
/// returns its exit status (128 + signal number if it was killed). `who` prefixes diagnostics:
/// `sh: NAME: not found` with status 127, or status 126 if it exists but cannot be executed.
pub fn run(argv: &[String], env: &[(String, String)], io: &mut Io, who: &str) -> i32 {
    let Some(name) = argv.first() else { return 0 };
    let Some(path) = resolve(name, std::env::var_os("PATH")) else {
        let _ = writeln!(io.err(), "{who}: {name}: not found");
        let _ = io.err().flush();
        return 127;
    };
    // Anything we wrote must reach the streams before the child's output does.
    io.flush_all();
    let spawned = child_stdio(io.resolve(Stream::Stdout), Stream::Stdout).and_then(|stdout| {
        let stderr = child_stdio(io.resolve(Stream::Stderr), Stream::Stderr)?;
        Command::new(&path)
            .arg0(name)
            .args(&argv[1..])
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(stdout)
            .stderr(stderr)
            .status()
    });
    match spawned {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(err) => {
            let (code, message) = match err.kind() {
                io::ErrorKind::NotFound => (127, "not found".to_string()),
                _ => (126, describe(&err)),
            };
            let _ = writeln!(io.err(), "{who}: {name}: {message}");
            let _ = io.err().flush();
            code
        }
    }
}

/// Finds the program for a command name: a name containing `/` is used as given; otherwise the
/// first executable regular file named `name` in the directories of `path_var`, then in `/bin`.
pub fn resolve(name: &str, path_var: Option<OsString>) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    if name.is_empty() {
        return None;
    }
    let searched: Vec<PathBuf> = match path_var {
        Some(path) if !path.is_empty() => std::env::split_paths(&path).collect(),
        _ => Vec::new(),
    };
    searched
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/bin")))
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }
        })
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The child's stream `natural` (its fd 1 or 2) when it should write to our stream `target`:
/// inherited if they are the same, otherwise a duplicate of our other descriptor.
fn child_stdio(target: Stream, natural: Stream) -> io::Result<Stdio> {
    if target == natural {
        return Ok(Stdio::inherit());
    }
    let fd = match target {
        Stream::Stdout => io::stdout().as_fd().try_clone_to_owned()?,
        Stream::Stderr => io::stderr().as_fd().try_clone_to_owned()?,
    };
    Ok(Stdio::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_a_slash_are_used_verbatim() {
        assert_eq!(resolve("./prog", None), Some(PathBuf::from("./prog")));
        assert_eq!(resolve("/no/such/prog", None), Some(PathBuf::from("/no/such/prog")));
    }

    #[test]
    fn lookup_searches_path_and_requires_the_execute_bit() {
        let dir = std::env::temp_dir().join(format!("gofer-toolbox-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("gofer-toolbox-test-exe");
        let plain = dir.join("gofer-toolbox-test-plain");
        std::fs::write(&exe, b"").unwrap();
        std::fs::write(&plain, b"").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();

        let path = Some(OsString::from(format!("/nonexistent:{}", dir.display())));
        assert_eq!(resolve("gofer-toolbox-test-exe", path.clone()), Some(exe));
        assert_eq!(resolve("gofer-toolbox-test-plain", path.clone()), None);
        assert_eq!(resolve("gofer-toolbox-test-missing", path), None);
        assert_eq!(resolve("", None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_commands_report_not_found_with_status_127() {
        let (mut input, mut out, mut err) = (io::empty(), Vec::new(), Vec::new());
        let argv = vec!["gofer-toolbox-no-such-command".to_string()];
        assert_eq!(run(&argv, &[], &mut Io::new(&mut input, &mut out, &mut err), "sh"), 127);
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "sh: gofer-toolbox-no-such-command: not found\n"
        );
    }
}
