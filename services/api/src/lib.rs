//! Gofer's public API: the `gofer.v1.GoferService` handlers, and the bearer-token check every service
//! of a node shares.
//!
//! Handlers are thin: convert the request, propose one command or read the applied state, convert back.
//! This crate never touches redb or Docker; it reaches state through `gofer-state` and logs through its
//! `LogStore`.

mod auth;
mod events;
mod logs;
mod service;

pub use auth::{Principal, TokenAuth, hash_token};
pub use service::{ApiService, NoTriggers, TriggerDirectory};
