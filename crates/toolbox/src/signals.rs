//! Termination signals: the toolbox often runs as PID 1 of a container, and the kernel does not
//! apply the default action of a signal to PID 1 unless a handler is installed, so without this
//! `docker stop` (SIGTERM) would be ignored until the daemon gives up and sends SIGKILL.
//!
//! This is the only `unsafe` code in the crate; it stays std-only by declaring the two C library
//! functions it needs instead of depending on the `libc` crate.

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

unsafe extern "C" {
    /// `signal(2)`: installs `handler` (a function address) for `signum`, returns the previous one.
    fn signal(signum: i32, handler: usize) -> usize;
    /// `_exit(2)`: ends the process at once, without atexit handlers or stdio flushing.
    fn _exit(status: i32) -> !;
}

/// Exits with the shell convention for "killed by signal": 128 + the signal number (143 for SIGTERM).
extern "C" fn exit_on_signal(signum: i32) {
    // SAFETY: `_exit` is async-signal-safe (POSIX), so calling it from a signal handler is allowed,
    // and it never returns into the interrupted code. Nothing needs flushing: every applet flushes
    // its output as it writes it.
    unsafe { _exit(128 + signum) }
}

/// `SIG_IGN`, the disposition that ignores a signal.
const SIG_IGN: usize = 1;

/// Makes SIGTERM and SIGINT end the process promptly with status 143 / 130; with
/// `GOFER_TOOLBOX_IGNORE_SIGTERM=1` in the environment SIGTERM is ignored instead, to stand for a task that
/// does not stop when asked (tests of the grace period before SIGKILL).
pub fn install() {
    let handler = exit_on_signal as extern "C" fn(i32) as usize;
    if std::env::var_os("GOFER_TOOLBOX_IGNORE_SIGTERM").is_some_and(|v| v == "1") {
        // SAFETY: SIG_IGN is a valid disposition for SIGTERM.
        unsafe { signal(SIGTERM, SIG_IGN) };
        // SAFETY: as below.
        unsafe { signal(SIGINT, handler) };
        return;
    }
    for signum in [SIGTERM, SIGINT] {
        // SAFETY: `handler` is the address of an `extern "C" fn(i32)`, the handler type `signal`
        // expects, and that handler only calls an async-signal-safe function. If installing fails
        // (it cannot for these signal numbers) the default disposition stays, which is harmless.
        unsafe { signal(signum, handler) };
    }
}
