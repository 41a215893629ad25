//! The standard streams as the applets see them: which output stream a command's stdout and stderr
//! are routed to (`>&2`, `2>&1`), and the readers/writers behind them.
//!
//! It exists so that every applet and shell builtin writes through one small, injectable type:
//! the binary hands it the real process streams, unit tests hand it in-memory buffers, and the
//! shell re-routes it per command without touching file descriptors.

use std::io::{self, Read, Write};

/// One of the two standard output streams of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Standard input plus the two output streams, with a routing of "this command's stdout/stderr"
/// onto the underlying streams.
pub struct Io<'a> {
    /// Standard input (only `cat` reads it).
    pub stdin: &'a mut dyn Read,
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    /// Where the command's stdout (index 0) and stderr (index 1) go.
    route: [Stream; 2],
}

impl<'a> Io<'a> {
    /// Streams with the natural routing (stdout to stdout, stderr to stderr).
    pub fn new(stdin: &'a mut dyn Read, stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Io {
            stdin,
            stdout,
            stderr,
            route: [Stream::Stdout, Stream::Stderr],
        }
    }

    /// A reborrow whose stdout and stderr go to `out` and `err` as seen through the current routing,
    /// so routings compose like shell redirections do.
    pub fn routed(&mut self, out: Stream, err: Stream) -> Io<'_> {
        let route = [self.resolve(out), self.resolve(err)];
        Io {
            stdin: &mut *self.stdin,
            stdout: &mut *self.stdout,
            stderr: &mut *self.stderr,
            route,
        }
    }

    /// The underlying stream that `stream` currently refers to.
    pub fn resolve(&self, stream: Stream) -> Stream {
        match stream {
            Stream::Stdout => self.route[0],
            Stream::Stderr => self.route[1],
        }
    }

    /// The command's standard output.
    pub fn out(&mut self) -> &mut dyn Write {
        self.underlying(self.route[0])
    }

    /// The command's standard error.
    pub fn err(&mut self) -> &mut dyn Write {
        self.underlying(self.route[1])
    }

    /// Flushes both underlying streams, ignoring errors (used before handing the terminal to a
    /// child process and before exiting, where there is nobody left to report to).
    pub fn flush_all(&mut self) {
        let _ = self.stdout.flush();
        let _ = self.stderr.flush();
    }

    fn underlying(&mut self, stream: Stream) -> &mut dyn Write {
        match stream {
            Stream::Stdout => &mut *self.stdout,
            Stream::Stderr => &mut *self.stderr,
        }
    }
}

/// An I/O error as a short message in the style of the classic tools ("No such file or
/// directory"), without std's " (os error 2)" suffix.
pub fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_composes_like_redirections() {
        let (mut input, mut out, mut err) = (io::empty(), Vec::new(), Vec::new());
        let mut io = Io::new(&mut input, &mut out, &mut err);
        {
            // `>&2`: stdout goes to stderr.
            let mut to_err = io.routed(Stream::Stderr, Stream::Stderr);
            write!(to_err.out(), "a").unwrap();
            // Nested `2>&1` inside it still ends up on the real stderr.
            let mut nested = to_err.routed(Stream::Stderr, Stream::Stdout);
            write!(nested.err(), "b").unwrap();
            assert_eq!(nested.resolve(Stream::Stderr), Stream::Stderr);
        }
        write!(io.out(), "c").unwrap();
        assert_eq!(out, b"c");
        assert_eq!(err, b"ab");
    }

    #[test]
    fn describe_strips_the_os_error_suffix() {
        let err = io::Error::from_raw_os_error(2);
        assert_eq!(describe(&err), "No such file or directory");
        let custom = io::Error::other("plain message");
        assert_eq!(describe(&custom), "plain message");
    }
}
