//! Gofer's scheduler: it turns the pure plan into committed assignments and serves the executors'
//! `DispatchService` stream, through which it tells them what to start and stop and hears back what ran.
//!
//! The order is the dispatch protocol's: an assignment is committed to the replicated log *before* the
//! executor is told, and every report an executor sends is committed before it counts. Whatever is
//! assigned to a connected executor and not yet sent on its current stream is (re)sent, so a reconnecting
//! executor gets all its live attempts again; executors treat a Start they already run as a no-op.
//! The scheduler never touches Docker or redb; it reaches state through `gofer-state`.

mod dispatch;
mod reconcile;

pub use dispatch::{DispatchHandler, DispatchRedirect};
pub use reconcile::{EXECUTOR_LEASE, Scheduler};
