//! [`Sandboxes`]: what the services hold of the sandbox layer. The backends this server knows
//! (and `resolve`, which picks one for a request), the native backend's image store, the warm
//! pools, the metrics handle and the tracker of background work, whose end shutdown awaits.

use std::sync::Arc;

use faas_common::{BackendStatus, ImageInfo, PoolInfo, Runtime};
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sandbox::images::ImageStore;
use crate::sandbox::pool::WarmPools;
use crate::sandbox::Backend;

pub const FIRECRACKER_UNSUPPORTED: &str = "the firecracker runtime is not available: this build has no microVM backend and no firecracker binary is installed on this host (KVM alone is not enough)";

/// A backend this server knows of, whether or not it works here.
pub struct BackendEntry {
    pub name: &'static str,
    pub backend: Option<Arc<dyn Backend>>,
    /// What was found, or what is missing.
    pub detail: String,
}

pub struct Sandboxes {
    backends: Vec<BackendEntry>,
    images: Option<Arc<ImageStore>>,
    pub(crate) pools: Arc<WarmPools>,
    pub(crate) metrics: Arc<Metrics>,
    /// Background work (clean-ups, refills, the services' tasks) that shutdown waits for.
    pub(crate) tasks: TaskTracker,
    /// The boxes' egress, shared by the backends; taken down after them.
    net: std::sync::OnceLock<Arc<crate::sandbox::net::Net>>,
}

impl Sandboxes {
    /// `backends` in order of preference: `auto` takes the first available one.
    /// `images` is the native backend's image store, when there is one.
    pub fn new(
        backends: Vec<BackendEntry>,
        images: Option<Arc<ImageStore>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Sandboxes {
            backends,
            images,
            pools: WarmPools::new(metrics.clone()),
            metrics,
            tasks: TaskTracker::new(),
            net: std::sync::OnceLock::new(),
        })
    }

    /// The networking the backends were given (once).
    pub fn set_net(&self, net: Arc<crate::sandbox::net::Net>) {
        let _ = self.net.set(net);
    }

    pub fn net(&self) -> Option<&Arc<crate::sandbox::net::Net>> {
        self.net.get()
    }

    pub fn backend_statuses(&self) -> Vec<BackendStatus> {
        let mut v: Vec<BackendStatus> = self
            .backends
            .iter()
            .map(|b| BackendStatus {
                name: b.name.to_string(),
                available: b.backend.is_some(),
                detail: b.detail.clone(),
            })
            .collect();
        if !v.iter().any(|b| b.name == "firecracker") {
            v.push(BackendStatus {
                name: "firecracker".into(),
                available: false,
                detail: FIRECRACKER_UNSUPPORTED.into(),
            });
        }
        v
    }

    /// The backend `auto` resolves to.
    pub fn default_backend(&self) -> Option<&'static str> {
        self.backends
            .iter()
            .find(|b| b.backend.is_some())
            .map(|b| b.name)
    }

    /// The backends that work here.
    pub(crate) fn available(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.backends.iter().filter_map(|b| b.backend.as_ref())
    }

    /// The images of the native backend's store.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let Some(store) = &self.images else {
            return Ok(Vec::new());
        };
        Ok(store
            .list()?
            .into_iter()
            .map(|r| ImageInfo {
                name: r.name,
                layers: r.layers,
                size_bytes: r.size_bytes,
                source: r.source,
                created_unix: r.created_unix,
            })
            .collect())
    }

    /// The warm pools of `owner`, or every pool.
    pub fn pools(&self, owner: Option<&str>) -> Vec<PoolInfo> {
        self.pools.list(owner)
    }

    /// The backend a request's `runtime` names (`auto`: the first that works).
    pub(crate) fn resolve(&self, runtime: Runtime) -> Result<Arc<dyn Backend>> {
        let name = match runtime {
            Runtime::Firecracker => return Err(Error::Unsupported(FIRECRACKER_UNSUPPORTED.into())),
            Runtime::Auto => {
                return self
                    .backends
                    .iter()
                    .find_map(|b| b.backend.clone())
                    .ok_or_else(|| {
                        let why: Vec<String> = self
                            .backends
                            .iter()
                            .map(|b| format!("{}: {}", b.name, b.detail))
                            .collect();
                        Error::BackendUnavailable(format!(
                            "no backend works on this host ({})",
                            why.join("; ")
                        ))
                    })
            }
            Runtime::Docker => "docker",
            Runtime::Native => "native",
        };
        match self.backends.iter().find(|b| b.name == name) {
            Some(BackendEntry {
                backend: Some(b), ..
            }) => Ok(b.clone()),
            Some(BackendEntry { detail, .. }) => Err(Error::BackendUnavailable(format!(
                "backend {name} is not available: {detail}"
            ))),
            None => Err(Error::Unsupported(format!(
                "backend {name} is not configured on this server"
            ))),
        }
    }

    /// The backend a record names (an instance's or a snapshot's).
    pub(crate) fn backend_named(&self, name: &str) -> Result<Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.backend.clone())
            .ok_or_else(|| {
                Error::BackendUnavailable(format!("the {name} backend is not available now"))
            })
    }
}
