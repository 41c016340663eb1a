//! The fleet's shared compile cache: what one worker compiled, every worker runs without
//! compiling again. Artifacts live in the bus's object store
//! ([`cod_fleet::bus::ARTIFACTS_BUCKET`]) under their compile-cache key (a hash of the
//! sources, language, compiler version and flags), encoded with postcard; the object
//! store checks each object's SHA-256 digest on reading, so a damaged one is a miss.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use cod_runtime::{Artifact, ArtifactKey, SharedArtifacts};
use tokio::io::AsyncReadExt;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// A fetch slower than this is given up (the worker compiles instead).
const FETCH_PATIENCE: Duration = Duration::from_secs(2);

/// Compiled programs shared through the fleet's object store.
#[derive(Clone)]
pub struct SharedCompiles {
    store: ObjectStore,
    /// Programs offered and still being stored.
    uploads: TaskTracker,
}

impl std::fmt::Debug for SharedCompiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCompiles")
    }
}

impl SharedCompiles {
    /// Shares through `store`.
    pub fn new(store: ObjectStore) -> SharedCompiles {
        SharedCompiles {
            store,
            uploads: TaskTracker::new(),
        }
    }

    /// Waits until every program offered so far is stored (or failed to be): a worker
    /// that drains calls it last, so that what it compiled outlives it.
    pub async fn settle(&self) {
        self.uploads.close();
        self.uploads.wait().await;
    }

    async fn read(&self, key: ArtifactKey) -> Option<Artifact> {
        let mut object = self.store.get(key.to_string()).await.ok()?;
        let mut bytes = Vec::new();
        if let Err(e) = object.read_to_end(&mut bytes).await {
            warn!(%key, error = %e, "a shared compiled program could not be read");
            return None;
        }
        postcard::from_bytes(&bytes).ok()
    }
}

impl SharedArtifacts for SharedCompiles {
    fn fetch(
        &self,
        key: ArtifactKey,
    ) -> Pin<Box<dyn Future<Output = Option<Artifact>> + Send + '_>> {
        Box::pin(async move {
            tokio::time::timeout(FETCH_PATIENCE, self.read(key))
                .await
                .ok()
                .flatten()
        })
    }

    fn offer(&self, key: ArtifactKey, artifact: Arc<Artifact>) {
        let store = self.store.clone();
        self.uploads.spawn(async move {
            let Ok(bytes) = postcard::to_stdvec(&*artifact) else {
                return;
            };
            match store
                .put(key.to_string().as_str(), &mut bytes.as_slice())
                .await
            {
                Ok(_) => debug!(%key, bytes = bytes.len(), "compiled program shared"),
                Err(e) => warn!(%key, error = %e, "sharing a compiled program failed"),
            }
        });
    }
}
