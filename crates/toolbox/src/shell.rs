//! The `sh` applet: runs a script parsed by [`crate::parse`] — expands words, applies `>&2`-style
//! redirections, evaluates `;`/`&&`/`||`, runs builtins in-process and anything else as an
//! external program.
//!
//! It exists because a `FROM scratch` image has no shell, yet pipeline tasks in tests and the demo
//! are written as `sh -c '...'`. It is deliberately tiny: no pipes, no file redirections, no
//! variable assignment, no control flow, and expansions are not field-split (`$X` is always at
//! most one word).

use crate::applets;
use crate::external;
use crate::parse::{AndOr, Command, Connector, Segment, Word, parse};
use crate::stdio::{Io, Stream};

/// `sh -c SCRIPT [NAME [ARG]...]`, `sh FILE [ARG]...`, or `sh` (script on stdin).
pub fn main(args: &[String], io: &mut Io) -> i32 {
    let (script, positional) = match args.first().map(String::as_str) {
        Some("-c") => {
            let Some(script) = args.get(1) else {
                return usage_error(io, "sh: -c: option requires an argument");
            };
            let mut positional = args[2..].to_vec();
            if positional.is_empty() {
                positional.push("sh".to_string());
            }
            (script.clone(), positional)
        }
        None | Some("-") => {
            let mut script = String::new();
            if let Err(err) = io.stdin.read_to_string(&mut script) {
                return usage_error(io, &format!("sh: cannot read script from stdin: {err}"));
            }
            (script, vec!["sh".to_string()])
        }
        Some(option) if option.starts_with('-') => {
            return usage_error(io, &format!("sh: unsupported option {option} (only -c SCRIPT)"));
        }
        Some(path) => match std::fs::read_to_string(path) {
            Ok(script) => (script, args.to_vec()),
            Err(err) => {
                let _ = writeln!(io.err(), "sh: {path}: {}", crate::stdio::describe(&err));
                return 127;
            }
        },
    };
    let lookup = |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    Shell::new(io.routed(Stream::Stdout, Stream::Stderr), &lookup, positional).run(&script)
}

fn usage_error(io: &mut Io, message: &str) -> i32 {
    let _ = writeln!(io.err(), "{message}");
    let _ = io.err().flush();
    2
}

/// What running a command asks the script to do next.
enum Flow {
    /// Carry on with the next command (its status is in `$?`).
    Next,
    /// `exit`: stop the script with this status.
    Exit(i32),
}

/// The state of a running script.
pub struct Shell<'a> {
    io: Io<'a>,
    /// Looks up environment variables (injectable so tests need not mutate the process environment).
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// `$0`, `$1`, ...
    positional: Vec<String>,
    /// `$?`.
    status: i32,
}

impl<'a> Shell<'a> {
    pub fn new(io: Io<'a>, lookup: &'a dyn Fn(&str) -> Option<String>, positional: Vec<String>) -> Self {
        Shell {
            io,
            lookup,
            positional,
            status: 0,
        }
    }

    /// Runs a whole script and returns its exit status: that of the last command run, the
    /// argument of `exit`, or 2 for a syntax error (in which case nothing runs).
    pub fn run(&mut self, src: &str) -> i32 {
        let script = match parse(src) {
            Ok(script) => script,
            Err(err) => return usage_error(&mut self.io, &format!("sh: syntax error: {err}")),
        };
        for list in &script {
            if let Flow::Exit(code) = self.run_list(list) {
                return code;
            }
        }
        self.status
    }

    fn run_list(&mut self, list: &AndOr) -> Flow {
        let flow = self.run_command(&list.first);
        if let Flow::Exit(_) = flow {
            return flow;
        }
        for (connector, command) in &list.rest {
            let wanted = match connector {
                Connector::And => self.status == 0,
                Connector::Or => self.status != 0,
            };
            if wanted && let Flow::Exit(code) = self.run_command(command) {
                return Flow::Exit(code);
            }
        }
        Flow::Next
    }

    /// Runs one simple command and records its status in `$?`.
    fn run_command(&mut self, command: &Command) -> Flow {
        let argv: Vec<String> = command.words.iter().filter_map(|word| self.expand(word)).collect();
        let (mut out, mut err) = (Stream::Stdout, Stream::Stderr);
        for redirect in &command.redirects {
            let target = if redirect.to == Stream::Stdout { out } else { err };
            match redirect.from {
                Stream::Stdout => out = target,
                Stream::Stderr => err = target,
            }
        }
        let mut io = self.io.routed(out, err);
        let Some((name, args)) = argv.split_first() else {
            self.status = 0;
            return Flow::Next;
        };
        let status = if name == "exit" {
            let code = match args.first() {
                None => self.status,
                Some(arg) => match arg.parse::<i64>() {
                    Ok(code) => (code & 0xff) as i32,
                    Err(_) => usage_error(&mut io, &format!("sh: exit: Illegal number: {arg}")),
                },
            };
            io.flush_all();
            return Flow::Exit(code);
        } else if let Some(builtin) = applets::builtin(name) {
            let status = builtin(args, &mut io);
            io.flush_all();
            status
        } else {
            external::run(&argv, &[], &mut io, "sh")
        };
        self.status = status;
        Flow::Next
    }

    /// A word's value, or `None` if it is unquoted and expands to nothing.
    fn expand(&self, word: &Word) -> Option<String> {
        let mut value = String::new();
        for segment in &word.segments {
            match segment {
                Segment::Lit(text) => value.push_str(text),
                Segment::Var(name) => value.push_str(&(self.lookup)(name).unwrap_or_default()),
                Segment::Arg(index) => value.push_str(self.positional.get(*index).map_or("", String::as_str)),
                Segment::Status => value.push_str(&self.status.to_string()),
            }
        }
        (word.quoted || !value.is_empty()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` with a fixed environment and `stdin`; returns (status, stdout, stderr).
    fn sh(script: &str, stdin: &str) -> (i32, String, String) {
        let (mut input, mut out, mut err) = (stdin.as_bytes(), Vec::new(), Vec::new());
        let lookup = |name: &str| match name {
            "GREETING" => Some("hello world".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let io = Io::new(&mut input, &mut out, &mut err);
        let status = Shell::new(io, &lookup, vec!["sh".into(), "first".into()]).run(script);
        (status, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    fn ok(stdout: &str) -> (i32, String, String) {
        (0, stdout.to_string(), String::new())
    }

    #[test]
    fn commands_run_in_sequence() {
        assert_eq!(sh("echo one; echo two\necho three", ""), ok("one\ntwo\nthree\n"));
        assert_eq!(sh("echo -n a; echo b", ""), ok("ab\n"));
        assert_eq!(sh("", ""), ok(""));
    }

    #[test]
    fn and_or_lists_short_circuit() {
        assert_eq!(sh("true && echo yes", ""), ok("yes\n"));
        assert_eq!(sh("false && echo no", "").0, 1);
        assert_eq!(sh("false && echo no || echo fallback", ""), ok("fallback\n"));
        assert_eq!(sh("true || echo no && echo and", ""), ok("and\n"));
        assert_eq!(sh("false || false || echo third", ""), ok("third\n"));
        assert_eq!(sh("false; true", ""), ok(""));
    }

    #[test]
    fn status_expansion_tracks_the_last_command() {
        assert_eq!(sh("false; echo $?; echo $?", ""), ok("1\n0\n"));
        assert_eq!(sh("false || echo \"was ${?}\"", ""), ok("was 1\n"));
    }

    #[test]
    fn variables_expand_outside_single_quotes() {
        assert_eq!(
            sh(r#"echo $GREETING; echo "<$GREETING>" '$GREETING' ${GREETING}!"#, ""),
            ok("hello world\n<hello world> $GREETING hello world!\n")
        );
        // Unquoted empty expansions vanish; quoted ones stay as empty arguments.
        assert_eq!(sh("echo a $UNSET $EMPTY b", ""), ok("a b\n"));
        assert_eq!(sh(r#"echo a "$UNSET" b"#, ""), ok("a  b\n"));
        assert_eq!(sh("echo $0 $1 [$2]", ""), ok("sh first []\n"));
    }

    #[test]
    fn redirection_sends_stdout_to_stderr() {
        assert_eq!(
            sh("echo out; echo err >&2; echo err2 1>&2", ""),
            (0, "out\n".into(), "err\nerr2\n".into())
        );
        // `2>&1` sends a builtin's diagnostics to stdout.
        assert_eq!(
            sh("sleep x 2>&1", ""),
            (1, "sleep: invalid time interval 'x'\n".into(), String::new())
        );
        assert_eq!(
            sh("exit 2>&1 x", ""),
            (2, "sh: exit: Illegal number: x\n".into(), String::new())
        );
    }

    #[test]
    fn exit_stops_the_script() {
        assert_eq!(
            sh("echo hi; exit 3; echo unreachable", ""),
            (3, "hi\n".into(), String::new())
        );
        assert_eq!(sh("false; exit", "").0, 1);
        assert_eq!(sh("exit 256", "").0, 0);
        assert_eq!(sh("exit -1", "").0, 255);
        assert_eq!(sh("true && exit 4 || echo no", "").0, 4);
        assert_eq!(
            sh("exit nope", ""),
            (2, String::new(), "sh: exit: Illegal number: nope\n".into())
        );
    }

    #[test]
    fn builtins_run_in_process() {
        assert_eq!(sh("cat; echo done", "piped\n"), ok("piped\ndone\n"));
        assert_eq!(sh("sleep 0.01 && echo slept", ""), ok("slept\n"));
    }

    #[test]
    fn unknown_commands_fail_with_127() {
        assert_eq!(
            sh("gofer-no-such-command a; echo $?", ""),
            (0, "127\n".into(), "sh: gofer-no-such-command: not found\n".into())
        );
    }

    #[test]
    fn syntax_errors_run_nothing() {
        assert_eq!(
            sh("echo a; echo 'b", ""),
            (2, String::new(), "sh: syntax error: unterminated single quote\n".into())
        );
    }

    #[test]
    fn main_takes_the_script_from_dash_c_or_stdin() {
        let run = |args: &[&str], stdin: &str| {
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            let (mut input, mut out, mut err) = (stdin.as_bytes(), Vec::new(), Vec::new());
            let status = main(&args, &mut Io::new(&mut input, &mut out, &mut err));
            (status, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        assert_eq!(run(&["-c", "echo $0 $1", "name", "arg"], ""), ok("name arg\n"));
        assert_eq!(run(&["-c", "echo $0"], ""), ok("sh\n"));
        assert_eq!(
            run(&[], "echo from stdin; exit 5"),
            (5, "from stdin\n".into(), String::new())
        );
        assert_eq!(
            run(&["-c"], ""),
            (2, String::new(), "sh: -c: option requires an argument\n".into())
        );
        assert_eq!(run(&["-x"], "").0, 2);
    }
}
