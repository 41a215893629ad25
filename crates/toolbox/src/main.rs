//! `gofer-toolbox`: a tiny static multi-call binary (`sh -c`, `echo`, `sleep`, `true`, `false`,
//! `cat`, `env`, `test`, `alloc`, `seq`) that is the whole userland of Gofer's locally built `FROM scratch` test and demo
//! image, since the machine has no container registry to pull a real base image from.
//!
//! This file owns dispatch: the command is the name the binary was invoked as (`/bin/sh`,
//! `/bin/echo`, ... are copies of it), or its first argument when invoked under any other name
//! (`gofer-toolbox echo hi`).

mod applets;
mod external;
mod parse;
mod shell;
mod signals;
mod stdio;

use applets::Applet;
use stdio::Io;

const USAGE: &str = "usage: gofer-toolbox COMMAND [ARG]...\n\
    commands: sh -c SCRIPT, echo [-n] ARG..., sleep SECONDS, true, false, cat [FILE]..., env\n\
    (or invoke a copy of this binary named after the command)\n";

fn main() {
    signals::install();
    let argv: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let (mut stdin, mut stdout, mut stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut io = Io::new(&mut stdin, &mut stdout, &mut stderr);
    let status = dispatch(&argv, &mut io);
    io.flush_all();
    std::process::exit(status);
}

/// Runs the command selected by `argv` and returns its exit status.
fn dispatch(argv: &[String], io: &mut Io) -> i32 {
    let invoked = argv.first().map_or("", |arg0| arg0.rsplit('/').next().unwrap_or(arg0));
    if let Some(applet) = applet(invoked) {
        return applet(&argv[1..], io);
    }
    let Some(name) = argv.get(1) else {
        let _ = io.err().write_all(USAGE.as_bytes());
        return 2;
    };
    if let Some(applet) = applet(name) {
        return applet(&argv[2..], io);
    }
    if name == "--help" || name == "-h" {
        let _ = io.out().write_all(USAGE.as_bytes());
        return 0;
    }
    let _ = write!(io.err(), "gofer-toolbox: unknown command: {name}\n{USAGE}");
    127
}

/// The applet called `name`: the shell, or one of the simple applets.
fn applet(name: &str) -> Option<Applet> {
    if name == "sh" {
        Some(shell::main)
    } else {
        applets::builtin(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> (i32, String, String) {
        let argv: Vec<String> = argv.iter().map(|arg| arg.to_string()).collect();
        let (mut input, mut out, mut err) = (std::io::empty(), Vec::new(), Vec::new());
        let status = dispatch(&argv, &mut Io::new(&mut input, &mut out, &mut err));
        (status, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn dispatches_on_the_invoked_name() {
        assert_eq!(run(&["/bin/echo", "hi"]), (0, "hi\n".into(), String::new()));
        assert_eq!(run(&["sh", "-c", "echo a && false"]), (1, "a\n".into(), String::new()));
        assert_eq!(run(&["/bin/false"]).0, 1);
    }

    #[test]
    fn otherwise_dispatches_on_the_first_argument() {
        assert_eq!(
            run(&["/bin/gofer-toolbox", "echo", "hi"]),
            (0, "hi\n".into(), String::new())
        );
        assert_eq!(run(&["./target/release/gofer-toolbox", "sh", "-c", "exit 7"]).0, 7);
        assert_eq!(run(&["gofer-toolbox", "--help"]), (0, USAGE.into(), String::new()));
        assert_eq!(run(&["gofer-toolbox"]), (2, String::new(), USAGE.into()));
        let (status, _, err) = run(&["gofer-toolbox", "ls"]);
        assert_eq!(status, 127);
        assert!(err.starts_with("gofer-toolbox: unknown command: ls\n"), "{err}");
    }
}
