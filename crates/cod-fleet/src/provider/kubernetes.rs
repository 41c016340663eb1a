//! The Kubernetes provider: sets the worker Deployment's replicas (cargo feature
//! `kubernetes`).
//!
//! The manager needs only the Deployment and its `scale` subresource: `get` on
//! `deployments` and `get`/`patch` on `deployments/scale` (see `deploy/manager.yaml`). It
//! reads the Deployment's wanted and ready replicas, and writes the wanted count with a JSON
//! merge patch of the `scale` subresource, as `kubectl scale` does. Kubernetes picks the pods
//! to remove; each one gets `SIGTERM` and drains within its `terminationGracePeriodSeconds`.
//! Pods have no identity the policy could choose from, so the workers this provider lists
//! are named after their state (`cod-worker/ready-0`, `cod-worker/starting-0`).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

use super::{Provider, ProviderError};
use crate::policy::Decision;
use crate::worker::{WorkerState, WorkerView};

/// Which Deployment the provider scales.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Namespace of the worker Deployment; empty: the client's default (in a cluster, the
    /// manager pod's own namespace).
    pub namespace: String,
    /// The worker Deployment's name.
    pub deployment: String,
    /// The field manager named in patches.
    pub field_manager: String,
    /// Slots of one worker pod, as reported.
    pub slots: u32,
}

impl Default for KubernetesConfig {
    fn default() -> KubernetesConfig {
        KubernetesConfig {
            namespace: String::new(),
            deployment: "cod-worker".into(),
            field_manager: "cod-fleet".into(),
            slots: 64,
        }
    }
}

/// The Kubernetes provider failed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No cluster configuration was found (in-cluster service account or kubeconfig).
    #[error("finding the cluster's configuration (in-cluster or kubeconfig)")]
    Config(#[source] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The Deployment could not be read.
    #[error("reading deployment {namespace}/{name}")]
    Get {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The Deployment could not be scaled.
    #[error("scaling deployment {namespace}/{name} to {replicas}")]
    Scale {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The replicas asked for.
        replicas: u32,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Scales a Deployment of `cod worker` pods.
#[derive(Clone)]
pub struct KubernetesProvider {
    api: Api<Deployment>,
    namespace: String,
    name: String,
    params: PatchParams,
    slots: u32,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("namespace", &self.namespace)
            .field("deployment", &self.name)
            .finish_non_exhaustive()
    }
}

/// Replica counts of the Deployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Wanted (`spec.replicas`).
    pub wanted: u32,
    /// Ready (`status.readyReplicas`).
    pub ready: u32,
}

fn count(n: Option<i32>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

impl KubernetesProvider {
    /// Connects with the cluster configuration found in the environment (the pod's service
    /// account in a cluster, else the kubeconfig).
    pub async fn connect(config: KubernetesConfig) -> Result<KubernetesProvider, KubernetesError> {
        let kc = Config::infer().await.map_err(KubernetesError::Config)?;
        KubernetesProvider::with_config(kc, config)
    }

    /// Connects with an explicit client configuration (tests point it at a mock server).
    pub fn with_config(
        kc: Config,
        config: KubernetesConfig,
    ) -> Result<KubernetesProvider, KubernetesError> {
        let namespace = if config.namespace.is_empty() {
            kc.default_namespace.clone()
        } else {
            config.namespace.clone()
        };
        let client = Client::try_from(kc).map_err(KubernetesError::Client)?;
        Ok(KubernetesProvider {
            api: Api::namespaced(client, &namespace),
            namespace,
            name: config.deployment,
            params: PatchParams {
                field_manager: Some(config.field_manager),
                ..PatchParams::default()
            },
            slots: config.slots,
        })
    }

    /// The Deployment's wanted and ready replicas.
    pub async fn replicas(&self) -> Result<Replicas, KubernetesError> {
        let d = self
            .api
            .get(&self.name)
            .await
            .map_err(|source| KubernetesError::Get {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })?;
        let wanted = count(d.spec.as_ref().and_then(|s| s.replicas));
        let ready = count(d.status.as_ref().and_then(|s| s.ready_replicas));
        Ok(Replicas { wanted, ready })
    }

    /// Sets the Deployment's replicas through its `scale` subresource; answers the count
    /// the API server holds afterwards.
    pub async fn set_replicas(&self, replicas: u32) -> Result<u32, KubernetesError> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let scale = self
            .api
            .patch_scale(&self.name, &self.params, &patch)
            .await
            .map_err(|source| KubernetesError::Scale {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                replicas,
                source,
            })?;
        let now = count(scale.spec.and_then(|s| s.replicas));
        tracing::info!(namespace = %self.namespace, deployment = %self.name, replicas = now,
            "deployment scaled");
        Ok(now)
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn workers(&self) -> Result<Vec<WorkerView>, ProviderError> {
        let r = self.replicas().await?;
        let ready = r.ready.min(r.wanted);
        let mut v: Vec<WorkerView> = (0..ready)
            .map(|i| {
                WorkerView::new(format!("{}/ready-{i}", self.name), WorkerState::Ready)
                    .with_slots(self.slots, 0)
            })
            .collect();
        v.extend((0..r.wanted - ready).map(|i| {
            WorkerView::new(format!("{}/starting-{i}", self.name), WorkerState::Starting)
        }));
        Ok(v)
    }

    async fn apply(&self, decision: &Decision) -> Result<(), ProviderError> {
        self.set_replicas(decision.target).await?;
        Ok(())
    }
}
