//! The simple applets — `echo`, `sleep`, `true`, `false`, `cat`, `env`, `test`, `alloc`, `seq` — used both as standalone
//! commands (`/bin/echo` in the image) and as in-process builtins of the tiny shell.
//!
//! Every applet writes through [`Io`] and flushes as it goes, so a log follower sees each line
//! as soon as it is produced.

use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::external;
use crate::stdio::{Io, describe};

/// An applet's entry point: arguments after the command name, the streams; returns the exit status.
pub type Applet = fn(&[String], &mut Io) -> i32;

/// The applets that the shell also runs in-process, by name.
pub fn builtin(name: &str) -> Option<Applet> {
    let applet: Applet = match name {
        "echo" => echo,
        "sleep" => sleep,
        "true" => |_, _| 0,
        "false" => |_, _| 1,
        "cat" => cat,
        "env" => env,
        "test" => test,
        "alloc" => alloc,
        "seq" => seq,
        _ => return None,
    };
    Some(applet)
}

/// `alloc MIB`: takes MIB mebibytes of memory, touches every page, holds it for a second and exits 0 (a task
/// over its memory limit is killed before that).
pub fn alloc(args: &[String], io: &mut Io) -> i32 {
    let Some(mib) = args.first().and_then(|a| a.parse::<usize>().ok()) else {
        return fail(io, "alloc: expected a number of MiB") * 2;
    };
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        // Non-zero bytes, so the pages are really written.
        held.push(vec![1u8; 1 << 20]);
    }
    std::thread::sleep(Duration::from_secs(1));
    let total: usize = held.iter().map(Vec::len).sum();
    write_out(io, "alloc", format!("held {} MiB\n", total >> 20).as_bytes())
}

/// `seq N`: prints the numbers 1 to N, one per line (a lot of output, fast, for log tests).
pub fn seq(args: &[String], io: &mut Io) -> i32 {
    let Some(last) = args.first().and_then(|a| a.parse::<u64>().ok()) else {
        return fail(io, "seq: expected a number") * 2;
    };
    let mut chunk = String::with_capacity(64 * 1024);
    for n in 1..=last {
        chunk.push_str(&n.to_string());
        chunk.push('\n');
        if chunk.len() >= 60 * 1024 || n == last {
            let status = write_out(io, "seq", chunk.as_bytes());
            if status != 0 {
                return status;
            }
            chunk.clear();
        }
    }
    0
}

/// `test A OP B`: compares two integers with `-eq`, `-ne`, `-lt`, `-le`, `-gt` or `-ge`, or two strings
/// with `=` or `!=`; exits 0 if it holds, 1 if not, 2 on bad usage.
pub fn test(args: &[String], io: &mut Io) -> i32 {
    let [a, op, b] = args else {
        return fail(io, "test: expected A OP B") * 2;
    };
    let holds = match op.as_str() {
        "=" => a == b,
        "!=" => a != b,
        _ => {
            let (Ok(x), Ok(y)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) else {
                return fail(io, &format!("test: integers expected, got {a:?} and {b:?}")) * 2;
            };
            match op.as_str() {
                "-eq" => x == y,
                "-ne" => x != y,
                "-lt" => x < y,
                "-le" => x <= y,
                "-gt" => x > y,
                "-ge" => x >= y,
                _ => return fail(io, &format!("test: unknown operator {op:?}")) * 2,
            }
        }
    };
    i32::from(!holds)
}

/// `echo [-n] ARGS...`: the arguments joined by spaces, then a newline unless `-n` was given.
pub fn echo(args: &[String], io: &mut Io) -> i32 {
    let mut rest = args;
    let mut newline = true;
    while let Some((first, tail)) = rest.split_first()
        && first == "-n"
    {
        newline = false;
        rest = tail;
    }
    let mut line = rest.join(" ");
    if newline {
        line.push('\n');
    }
    write_out(io, "echo", line.as_bytes())
}

/// `sleep SECONDS...`: sleeps for the sum of the durations. Each is a non-negative decimal number
/// with an optional unit suffix `s`, `m`, `h` or `d`; `infinity` sleeps until a signal arrives.
pub fn sleep(args: &[String], io: &mut Io) -> i32 {
    if args.is_empty() {
        return fail(io, "sleep: missing operand");
    }
    let mut total = 0.0;
    for arg in args {
        match parse_seconds(arg) {
            Some(seconds) => total += seconds,
            None => return fail(io, &format!("sleep: invalid time interval '{arg}'")),
        }
    }
    match Duration::try_from_secs_f64(total) {
        Ok(duration) => std::thread::sleep(duration),
        // Too large to represent (or infinite): sleep until the process is signalled.
        Err(_) => loop {
            std::thread::sleep(Duration::from_secs(u64::from(u32::MAX)));
        },
    }
    0
}

/// Parses one `sleep` operand into seconds.
fn parse_seconds(text: &str) -> Option<f64> {
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1.0),
        Some((at, 'm')) => (&text[..at], 60.0),
        Some((at, 'h')) => (&text[..at], 3600.0),
        Some((at, 'd')) => (&text[..at], 86400.0),
        _ => (text, 1.0),
    };
    // `f64::from_str` also accepts "inf"/"infinity" (wanted) and "NaN" (rejected below).
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then_some(value * unit)
}

/// `cat [FILE...]`: copies the files (`-` or no argument meaning stdin) to stdout, chunk by chunk.
pub fn cat(args: &[String], io: &mut Io) -> i32 {
    let stdin_only = ["-".to_string()];
    let inputs = if args.is_empty() { &stdin_only[..] } else { args };
    let mut status = 0;
    for name in inputs {
        let copied = if name == "-" {
            copy(io, |io, buf| io.stdin.read(buf))
        } else {
            match std::fs::File::open(name) {
                Ok(mut file) => copy(io, |_, buf| file.read(buf)),
                Err(err) => Err(Failure::Read(err)),
            }
        };
        match copied {
            Ok(()) => {}
            Err(Failure::Read(err)) => {
                let _ = writeln!(io.err(), "cat: {name}: {}", describe(&err));
                status = 1;
            }
            Err(Failure::Write(err)) => {
                return fail(io, &format!("cat: write error: {}", describe(&err)));
            }
        }
    }
    let _ = io.err().flush();
    status
}

/// Which side of a copy failed.
enum Failure {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies everything `read` yields to the command's stdout, flushing after every chunk.
/// `read` gets the streams so that it can read the shell's stdin.
fn copy(io: &mut Io, mut read: impl FnMut(&mut Io, &mut [u8]) -> std::io::Result<usize>) -> Result<(), Failure> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read(io, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(Failure::Read(err)),
        };
        let out = io.out();
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(Failure::Write)?;
    }
}

/// `env [NAME=VALUE]... [COMMAND [ARG]...]`: without a command, prints the environment (with the
/// assignments applied) as `KEY=VALUE` lines; with one, runs it with the assignments added.
pub fn env(args: &[String], io: &mut Io) -> i32 {
    let mut assignments: Vec<(String, String)> = Vec::new();
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first()
        && let Some((key, value)) = first.split_once('=')
        && !key.is_empty()
    {
        assignments.push((key.to_string(), value.to_string()));
        rest = tail;
    }
    if let Some(option) = rest.first().filter(|arg| arg.starts_with('-')) {
        return fail(io, &format!("env: unsupported option '{option}'"));
    }
    if !rest.is_empty() {
        return external::run(rest, &assignments, io, "env");
    }
    let mut text = Vec::new();
    for (key, value) in std::env::vars_os() {
        if assignments.iter().any(|(name, _)| key.as_bytes() == name.as_bytes()) {
            continue;
        }
        text.extend_from_slice(key.as_bytes());
        text.push(b'=');
        text.extend_from_slice(value.as_bytes());
        text.push(b'\n');
    }
    for (key, value) in &assignments {
        text.extend_from_slice(format!("{key}={value}\n").as_bytes());
    }
    write_out(io, "env", &text)
}

/// Writes `bytes` to the command's stdout and flushes; on failure reports `who: write error` and
/// returns 1.
fn write_out(io: &mut Io, who: &str, bytes: &[u8]) -> i32 {
    let out = io.out();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(err) => fail(io, &format!("{who}: write error: {}", describe(&err))),
    }
}

/// Prints `message` to the command's stderr and returns status 1.
fn fail(io: &mut Io, message: &str) -> i32 {
    let _ = writeln!(io.err(), "{message}");
    let _ = io.err().flush();
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `applet` with `stdin` as input; returns (status, stdout, stderr).
    fn run(applet: Applet, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let (mut input, mut out, mut err) = (stdin, Vec::new(), Vec::new());
        let status = applet(&args, &mut Io::new(&mut input, &mut out, &mut err));
        (status, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn echo_joins_arguments_and_honours_dash_n() {
        assert_eq!(run(echo, &["a", "b  c"], b""), (0, "a b  c\n".into(), String::new()));
        assert_eq!(run(echo, &["-n", "a"], b""), (0, "a".into(), String::new()));
        assert_eq!(run(echo, &[], b""), (0, "\n".into(), String::new()));
        assert_eq!(run(echo, &["a", "-n"], b""), (0, "a -n\n".into(), String::new()));
    }

    #[test]
    fn test_compares_integers_and_strings() {
        let t = |args: &[&str]| run(test, args, b"").0;
        assert_eq!((t(&["3", "-ge", "3"]), t(&["2", "-ge", "3"])), (0, 1));
        assert_eq!(
            (t(&["1", "-eq", "1"]), t(&["1", "-ne", "1"]), t(&["1", "-lt", "2"])),
            (0, 1, 0)
        );
        assert_eq!((t(&["a", "=", "a"]), t(&["a", "!=", "a"])), (0, 1));
        assert_eq!((t(&["x", "-ge", "1"]), t(&["1", "-zz", "1"]), t(&["1"])), (2, 2, 2));
    }

    #[test]
    fn true_and_false_return_their_status() {
        assert_eq!(run(builtin("true").unwrap(), &["ignored"], b"").0, 0);
        assert_eq!(run(builtin("false").unwrap(), &[], b"").0, 1);
        assert!(builtin("sh").is_none());
        assert!(builtin("exit").is_none());
    }

    #[test]
    fn sleep_parses_decimals_units_and_infinity() {
        assert_eq!(parse_seconds("0.5"), Some(0.5));
        assert_eq!(parse_seconds("2"), Some(2.0));
        assert_eq!(parse_seconds("1.5m"), Some(90.0));
        assert_eq!(parse_seconds("2h"), Some(7200.0));
        assert_eq!(parse_seconds("1d"), Some(86400.0));
        assert_eq!(parse_seconds("infinity"), Some(f64::INFINITY));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("NaN"), None);
        assert_eq!(parse_seconds("soon"), None);
        assert_eq!(parse_seconds(""), None);
    }

    #[test]
    fn sleep_sleeps_and_rejects_bad_operands() {
        let started = std::time::Instant::now();
        assert_eq!(run(sleep, &["0.05", "0.05"], b"").0, 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(
            run(sleep, &["x"], b""),
            (1, String::new(), "sleep: invalid time interval 'x'\n".into())
        );
        assert_eq!(
            run(sleep, &[], b""),
            (1, String::new(), "sleep: missing operand\n".into())
        );
    }

    #[test]
    fn cat_copies_stdin_and_files_and_reports_missing_ones() {
        assert_eq!(
            run(cat, &[], b"line 1\nline 2"),
            (0, "line 1\nline 2".into(), String::new())
        );

        let path = std::env::temp_dir().join(format!("gofer-toolbox-cat-{}", std::process::id()));
        std::fs::write(&path, "from file\n").unwrap();
        let file = path.to_str().unwrap();
        let (status, out, err) = run(cat, &[file, "-", "/no/such/file"], b"from stdin\n");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(status, 1);
        assert_eq!(out, "from file\nfrom stdin\n");
        assert_eq!(err, "cat: /no/such/file: No such file or directory\n");
    }

    #[test]
    fn env_prints_the_environment_with_assignments() {
        let (status, out, err) = run(env, &["GOFER_TOOLBOX_TEST=a=b", "GOFER_TOOLBOX_EMPTY="], b"");
        assert_eq!((status, err.as_str()), (0, ""));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&"GOFER_TOOLBOX_TEST=a=b"), "{out}");
        assert!(lines.contains(&"GOFER_TOOLBOX_EMPTY="), "{out}");
        if let Some(path) = std::env::var_os("PATH") {
            assert!(
                lines.contains(&format!("PATH={}", path.to_str().unwrap()).as_str()),
                "{out}"
            );
        }
        assert_eq!(run(env, &["-i"], b"").0, 1);
    }
}
