//! The domain's one error type. Its kind maps to a gRPC code in `gofer-proto`, its message is shown to users.

use serde::{Deserialize, Serialize};

/// A refusal: bad input, or a command that the current state does not allow.
///
/// It is `Serialize` because a rejected command is the deterministic result of applying a log entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A field of the input is invalid; `field` is its path, such as `tasks[1].depends_on.a`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The named thing does not exist, such as `pipeline "hello"`.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The state does not allow the command, such as cancelling a run that ended.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The command's issuer does not hold the lease it was fenced with: nothing about the command itself
    /// was wrong, and it may be sent again by whoever holds the lease now.
    #[error("fenced: {0}")]
    Fenced(String),
    /// What was asked for is past what is kept, such as events that were pruned.
    #[error("{0}")]
    OutOfRange(String),
}

/// The small fixed set of error kinds that `gofer-proto` maps to gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    OutOfRange,
}

impl Error {
    /// Builds an `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Run `run` of pipeline `pipeline` does not exist (any more).
    pub(crate) fn run_not_found(pipeline: &str, run: u64) -> Self {
        Error::NotFound(format!("run {run} of pipeline {pipeline:?}"))
    }

    /// A refusal of a command whose issuer does not hold the lease it was fenced with.
    pub fn fenced(reason: impl std::fmt::Display) -> Self {
        Error::Fenced(reason.to_string())
    }

    /// Whether this is a [`Error::Fenced`] refusal: the command was not applied because its issuer lost
    /// its lease, not because of what it asked.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced(_))
    }

    /// The kind of refusal this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) | Error::Fenced(_) => ErrorKind::FailedPrecondition,
            Error::OutOfRange(_) => ErrorKind::OutOfRange,
        }
    }
}
