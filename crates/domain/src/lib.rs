//! Gofer's pure domain model: ids, the pipeline DAG rules, run and task transitions, and the replicated
//! state machine they make up.
//!
//! This crate does no IO and has no async runtime, clock or randomness: time and ids arrive inside
//! [`Command`]s, so applying the same log gives the same [`State`] on every node. The tidy test checks
//! its dependency list.

pub mod access;
pub mod blobs;
mod command;
mod error;
pub mod events;
pub mod executors;
#[cfg(test)]
mod fuzz;
mod ids;
pub mod inputs;
pub mod lease;
pub mod limits;
mod model;
mod object_commands;
mod pipeline;
mod plan;
mod runs;
pub mod schedule;
mod secret_commands;
pub mod secrets;
mod state;
mod subscriptions;
#[cfg(test)]
mod testing;
pub mod triggers;

pub use command::{Applied, AttemptOutcome, Command, MAX_BATCH};
pub use error::{Error, ErrorKind};
pub use ids::{MAX_ID_LEN, MAX_REQUEST_ID_LEN, validate_id, validate_request_id};
pub use model::{
    Assignment, AttemptId, AttemptRecord, AttemptRef, AttemptState, DEFAULT_NAMESPACE, NamespaceRecord, PipelineRecord,
    Readiness, Run, RunState, TaskExecution, TaskState,
};
pub use pipeline::{Condition, MAX_RETRIES, MAX_TASKS, PipelineConfig, TaskConfig};
pub use plan::plan;
pub use state::{Generation, State};
