//! Admission and ordering of runs.
//!
//! Each run holds one worker slot (one CPU) for its whole duration. The [`Scheduler`]
//! admits runs (per-client rate and concurrency limits, a queue bounded by count, by
//! expected CPU time and by how long a run would wait), orders the waiting ones (shortest
//! expected first with aging, fair share between clients) and places them (a slot where
//! the run's runtime is warm, when one is free). Expected lengths come from history:
//! the same content before, the client's runs in that runtime, the runtime's runs.
//!
//! [`Worker`] is the seam to whatever executes runs; jobs, tickets and events are
//! serializable so that a broker can carry them between machines.
//!
//! This crate knows nothing of sandboxes or HTTP, and records no metrics itself: callers
//! read [`Stats`], [`Scheduler::queue_depths`] and each [`Permit`]'s wait.
#![forbid(unsafe_code)]

mod estimate;
pub mod loadtest;
mod scheduler;
mod ticket;
mod worker;

pub use estimate::Basis;
pub use scheduler::{
    Permit, Policy, RejectReason, Rejected, Scheduler, SchedulerConfig, Stats, Waiter,
};
pub use ticket::{ClientId, ClientLimits, JobId, Ticket};
pub use worker::{Usage, Worker, WorkerEvent};
