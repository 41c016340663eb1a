//! The compute resource manager: how many workers the fleet needs, and getting them.
//!
//! - [`policy`]: the autoscaling policy, pure and unit-tested: from queues, arrivals, busy
//!   slots and history to a number of workers, their runtime mix, and whom to drain.
//! - [`bus`]: the fleet's NATS JetStream names, settings and records.
//! - [`curve`]: the previous days' load by time of day, for pre-scaling.
//! - [`cpus`]: CPU lists, for workers that keep to some of a host's CPUs.
//! - [`mix`]: splitting slots between runtimes.
//! - [`worker`]: workers as the manager sees them.
//! - [`provider`]: what starts and stops workers: local processes, Kubernetes, a plan.
//! - [`source`]: where the load comes from (JSON lines now; NATS in the distributed mode).
//! - [`nats_source`]: the load of a fleet on NATS JetStream: queues, arrivals, slots.
//! - [`manager`]: the loop that measures, decides, acts and logs.
//! - [`sim`]: `cod simulate`, a day of the full load through the real scheduler and policy.
//!
//! This crate never runs programs and never touches a sandbox.
#![forbid(unsafe_code)]

pub mod bus;
pub mod cpus;
pub mod curve;
pub mod manager;
pub mod mix;
pub mod nats_source;
pub mod policy;
pub mod provider;
pub mod sim;
pub mod source;
pub mod worker;

pub use curve::{DayCurve, PrescaleConfig};
pub use manager::{Manager, ManagerError};
pub use nats_source::NatsSource;
pub use policy::{
    Autoscaler, Decision, Held, Observation, PolicyConfig, PolicyError, Reason, RuntimeLoad,
};
pub use provider::{PlanProvider, Provider, ProviderError};
pub use source::{JsonLines, LoadSample, LoadSource, SourceError};
pub use worker::{WorkerId, WorkerState, WorkerView};
