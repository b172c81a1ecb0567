//! The composition root: [`Platform`] builds the sandbox layer's handle and the services in one
//! place, hands each service what it needs, runs the start-up recovery and the background
//! tasks, and shuts everything down. Nothing else in the crate knows it.

use std::sync::Arc;

use faas_common::MetricsResponse;
use faas_store::Store;

use crate::config::PlatformConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::sandbox::images::ImageStore;
use crate::sandbox::sandboxes::{BackendEntry, Sandboxes};
use crate::services::execute::Executor;
use crate::services::functions::{queue, Functions};
use crate::services::instances::Instances;
use crate::services::streams::Streams;
use crate::services::tenants::Tenants;

pub struct Platform {
    cfg: PlatformConfig,
    /// Instances, snapshots, executions and functions; `None` runs without them.
    store: Option<Store>,
    pub sandboxes: Arc<Sandboxes>,
    pub execute: Arc<Executor>,
    pub instances: Arc<Instances>,
    pub functions: Arc<Functions>,
    pub streams: Arc<Streams>,
    pub tenants: Arc<Tenants>,
}

impl Platform {
    /// `backends` in order of preference: `auto` takes the first available one.
    /// `images` is the native backend's image store, when there is one.
    pub fn new(
        cfg: PlatformConfig,
        backends: Vec<BackendEntry>,
        images: Option<Arc<ImageStore>>,
        store: Option<Store>,
    ) -> Arc<Self> {
        let sandboxes = Sandboxes::new(backends, images, Arc::new(Metrics::default()));
        let streams = Arc::new(Streams::new(store.clone(), sandboxes.tasks.clone()));
        let tenants = Tenants::new(store.clone(), cfg.default_quotas);
        let instances = Instances::new(
            cfg.clone(),
            sandboxes.clone(),
            store.clone(),
            streams.clone(),
            tenants.clone(),
        );
        let execute = Executor::new(
            cfg.clone(),
            sandboxes.clone(),
            instances.clone(),
            streams.clone(),
            tenants.clone(),
        );
        let functions = Functions::new(
            cfg.clone(),
            sandboxes.clone(),
            store.clone(),
            tenants.clone(),
        );
        Arc::new(Platform {
            cfg,
            store,
            sandboxes,
            execute,
            instances,
            functions,
            streams,
            tenants,
        })
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> MetricsResponse {
        self.sandboxes.metrics.snapshot()
    }

    /// Removes the sandboxes an earlier, killed run left behind, recovers the instances, and
    /// starts the background tasks: the idle-instance reaper, the functions' record writer and
    /// idle reaper, and the async queue's dispatcher.
    pub async fn recover(&self) -> Result<usize> {
        let mut n = 0;
        for b in self.sandboxes.available() {
            n += b.remove_leftovers().await?;
        }
        self.instances.recover_instances().await?;
        let tasks = &self.sandboxes.tasks;
        if self.store.is_some() {
            tasks.spawn(self.instances.clone().reap_idle_instances());
        }
        self.functions.start().await?;
        if self.store.is_some() {
            tasks.spawn(self.functions.clone().reap_idle());
            tasks.spawn(queue::run(self.functions.clone()));
        }
        Ok(n)
    }

    /// Destroys the warm pools and waits for in-flight work and clean-ups.
    pub async fn shutdown(&self) {
        self.sandboxes.pools.shutdown().await;
        self.instances.forget_live_instances();
        self.functions.stop().await;
        self.sandboxes.tasks.close();
        self.sandboxes.tasks.wait().await;
        self.functions.destroy_sandboxes().await;
        for b in self.sandboxes.available() {
            b.shutdown().await;
        }
        // Instances' boxes run on; their veths go with the rules (a new server gives them
        // new ones), so none is left open without its rules.
        if let Some(n) = self.sandboxes.net() {
            n.shutdown().await;
        }
    }
}
