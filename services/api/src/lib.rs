//! Gofer's public API: the `gofer.v1.GoferService` handlers. The bearer-token check every service of a
//! node shares is `gofer-auth`'s.
//!
//! Handlers are thin: convert the request, propose one command or read the applied state, convert back.
//! This crate never touches redb or Docker; it reaches state through `gofer-state` and logs through its
//! `LogStore`.

mod events;
mod logs;
mod service;

pub use service::{ApiService, NoTriggers, TriggerDirectory};
