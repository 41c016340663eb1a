//! Providers: what actually starts and stops workers.
//!
//! A [`Provider`] reports the workers it runs and carries out a [`Decision`]: start so many,
//! drain these. It answers once the order is given, not when the workers are ready or gone;
//! the next [`Provider::workers`] shows where they are.
//!
//! - [`LocalProvider`]: `cod worker` processes (or any command) on this host.
//! - [`PlanProvider`]: nothing real; a fleet in memory that follows every decision at once
//!   (`cod fleet --dry-run`).
//! - `KubernetesProvider` (cargo feature `kubernetes`): a Deployment's replicas.

use std::future::Future;
use std::sync::Arc;

use crate::policy::Decision;
use crate::worker::WorkerView;

#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
mod plan;

#[cfg(feature = "kubernetes")]
pub use kubernetes::{KubernetesConfig, KubernetesError, KubernetesProvider};
pub use local::{LocalConfig, LocalError, LocalEvent, LocalProvider};
pub use plan::PlanProvider;

/// A provider failed to list or change its workers.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The local provider failed.
    #[error("local provider")]
    Local(#[from] LocalError),
    /// The Kubernetes provider failed.
    #[cfg(feature = "kubernetes")]
    #[error("kubernetes provider")]
    Kubernetes(#[from] KubernetesError),
}

/// Something that starts and stops workers.
pub trait Provider: Send + Sync {
    /// Its name, as in logs (`local`, `kubernetes`, `plan`).
    fn name(&self) -> &'static str;

    /// The workers it runs now, in any state.
    fn workers(&self) -> impl Future<Output = Result<Vec<WorkerView>, ProviderError>> + Send;

    /// Carries out `decision`: starts `decision.start` workers and drains `decision.drain`
    /// (a provider that cannot choose whom to drain sets its size to `decision.target`).
    fn apply(&self, decision: &Decision) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

impl<P: Provider> Provider for Arc<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn workers(&self) -> impl Future<Output = Result<Vec<WorkerView>, ProviderError>> + Send {
        (**self).workers()
    }

    fn apply(&self, decision: &Decision) -> impl Future<Output = Result<(), ProviderError>> + Send {
        (**self).apply(decision)
    }
}
