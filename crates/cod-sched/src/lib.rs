//! Admission and ordering of runs.
//!
//! Each run holds one worker slot (one CPU) for its whole duration. At most `workers` runs
//! execute at once; up to `queue` more wait, first come first served; beyond that a run is
//! refused at once with an estimate of when to retry. A slot is a small number that also
//! selects the sandbox's cgroup and uid, so a slot is never held by two runs.
//!
//! This crate knows nothing of sandboxes or HTTP.
#![forbid(unsafe_code)]

mod admission;

pub use admission::{Admission, Permit, Rejected, Stats};
