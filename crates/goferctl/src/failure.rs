//! `Failure`, the one error goferctl reports: a line for stderr after `error: `, then exit 1.
//!
//! A failure is worded for people where it happens, the Status code in parentheses where there is one;
//! nothing reads it again to decide what to do.

/// A failure to report: one line, exit 1.
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(err.to_string())
    }
}
