//! The one Status mapping: domain errors keep their message and get their code; internal errors are
//! logged once here and reach the client without detail.

use gofer_domain::{Error, ErrorKind};
use tonic::{Code, Status};

/// Turns a domain refusal into a Status with its code and message.
pub fn into_status(err: Error) -> Status {
    let code = match err.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::OutOfRange => Code::OutOfRange,
    };
    Status::new(code, err.to_string())
}

/// Logs a failure that should not happen (at `error`) and returns an `Internal` Status that names `what`
/// failed without leaking the detail.
pub fn internal(what: &str, err: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %err, "{what} failed");
    Status::internal(format!("{what} failed"))
}

/// Logs a failure that passes (a leader change, a peer restarting) at `warn`, since a cluster expects
/// them, and returns an `Unavailable` Status that names `what` and asks the client to try again, without
/// leaking the detail.
pub fn unavailable(what: &str, err: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %err, "{what} failed");
    Status::unavailable(format!("{what} is unavailable, try again"))
}
