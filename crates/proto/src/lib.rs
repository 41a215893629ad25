//! The generated gRPC code for `gofer.v1`, its conversions to and from `gofer-domain`, and the one
//! place where errors become a `tonic::Status`.
//!
//! Prost types stay at the edge: services convert here and work on domain types inside. This crate does
//! no IO.

mod convert;
mod status;

/// The generated `gofer.v1` messages, clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("gofer.v1");
}

/// The encoded file descriptor set of `gofer.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gofer_descriptor.bin"));

pub use convert::{REDACTED, extension_to_proto, setting_from_proto, setting_to_proto, subscription_to_proto};
pub use convert::{
    config_from_proto, config_to_proto, event_to_proto, run_state_name, run_to_proto, task_state_name, task_to_proto,
};
pub use convert::{secret_to_proto, token_role_from_proto, token_role_to_proto, token_to_proto};
pub use status::{internal, into_status, unavailable};

/// The metadata key with which a process that is not the active scheduler refuses an executor's dispatch
/// stream while naming where the active scheduler is (`https://host:port`).
pub const SCHEDULER_ADDRESS_METADATA: &str = "gofer-scheduler-address";
