//! Warm pools: per (owner, backend, image, limits), started sandboxes whose agent already
//! answers. The owner is an opaque name the services give (their tenant): a box is made for
//! one owner's pool and only ever goes back to it.
//!
//! A sandbox leaves the pool for one use. After it, a box its backend can reset to a clean state
//! (`Sandbox::reset`: nothing of the last request left) comes back to the same pool; any other
//! is destroyed and the pool refills in the background, a few creations at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use faas_common::PoolInfo;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sandbox::{create_counted, destroy_counted, Backend, Sandbox, SandboxSpec};

/// How many pool creations run at once, across all pools.
const CREATE_CONCURRENCY: usize = 4;
/// How many pools (distinct backend, image and limits) may exist; cached requests beyond that
/// run in fresh sandboxes without starting a new pool.
pub const MAX_POOLS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub owner: String,
    pub backend: &'static str,
    pub image: String,
    pub memory_mb: u64,
    pub cpu_millis: u64,
    pub pids: u64,
    pub isolation: crate::sandbox::Isolation,
    pub network: crate::sandbox::Network,
}

impl PoolKey {
    pub fn new(owner: &str, backend: &'static str, spec: &SandboxSpec) -> Self {
        PoolKey {
            owner: owner.to_string(),
            backend,
            image: spec.image.clone(),
            memory_mb: spec.limits.memory_mb,
            cpu_millis: (spec.limits.cpu_cores * 1000.0).round() as u64,
            pids: spec.limits.pids,
            isolation: spec.isolation,
            network: spec.network.clone(),
        }
    }
}

struct Pool {
    backend: Arc<dyn Backend>,
    spec: SandboxSpec,
    ready: VecDeque<Box<dyn Sandbox>>,
    creating: usize,
    /// Used boxes being reset, each coming back here unless its reset fails.
    resetting: usize,
    target: usize,
    last_error: Option<String>,
}

impl Pool {
    fn new(backend: &Arc<dyn Backend>, spec: &SandboxSpec, target: usize) -> Self {
        Pool {
            backend: backend.clone(),
            spec: spec.clone(),
            ready: VecDeque::new(),
            creating: 0,
            resetting: 0,
            target,
            last_error: None,
        }
    }
}

pub struct WarmPools {
    pools: Mutex<HashMap<PoolKey, Pool>>,
    closed: AtomicBool,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Told when a reset box comes back (or its reset failed).
    returned: tokio::sync::Notify,
}

impl WarmPools {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(WarmPools {
            pools: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(CREATE_CONCURRENCY)),
            metrics,
            returned: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready sandbox from the pool of `spec`, if there is one. When the pool is empty
    /// while used boxes are being reset for it, waits up to `wait` for one of them: a reset
    /// takes a few milliseconds of one core, a new box several times that (and under a stream
    /// of requests, the boxes made for the misses are what the pool then has to absorb).
    pub async fn take_or_wait(
        self: &Arc<Self>,
        owner: &str,
        backend: &'static str,
        spec: &SandboxSpec,
        wait: std::time::Duration,
    ) -> Option<Box<dyn Sandbox>> {
        let key = PoolKey::new(owner, backend, spec);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.returned.notified();
            {
                let mut pools = self.lock();
                let pool = pools.get_mut(&key)?;
                if let Some(sb) = pool.ready.pop_front() {
                    return Some(sb);
                }
                if pool.resetting == 0 {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// A used box of `spec`'s pool is being reset (see [`WarmPools::reset_done`]).
    pub fn reset_started(&self, owner: &str, backend: &'static str, spec: &SandboxSpec) {
        if let Some(pool) = self.lock().get_mut(&PoolKey::new(owner, backend, spec)) {
            pool.resetting += 1;
        }
    }

    /// The reset of a box of `spec`'s pool ended: with the box when it is clean, which goes
    /// back to that pool (a box never changes pools: the key holds everything a box is made
    /// from) while the pool wants more ready boxes. A box the pool does not take is handed
    /// back to the caller, who destroys it.
    pub fn reset_done(
        &self,
        owner: &str,
        backend: &'static str,
        spec: &SandboxSpec,
        sandbox: Option<Box<dyn Sandbox>>,
    ) -> Option<Box<dyn Sandbox>> {
        let key = PoolKey::new(owner, backend, spec);
        let leftover = {
            let mut pools = self.lock();
            match pools.get_mut(&key) {
                Some(pool) => {
                    pool.resetting = pool.resetting.saturating_sub(1);
                    match sandbox {
                        Some(sb)
                            if !self.closed.load(Ordering::SeqCst)
                                && pool.ready.len() + pool.creating < pool.target =>
                        {
                            pool.ready.push_back(sb);
                            None
                        }
                        other => other,
                    }
                }
                None => sandbox,
            }
        };
        self.returned.notify_waiters();
        leftover
    }

    /// Refills the pool of `spec` up to its target. The caller does it after using what it
    /// took, so the refill's work does not compete with the command it is serving.
    pub fn refill_pool(self: &Arc<Self>, owner: &str, backend: &'static str, spec: &SandboxSpec) {
        self.refill(&PoolKey::new(owner, backend, spec));
    }

    /// Makes sure a pool for `spec` exists (new pools get `target`) and is filling. Does
    /// nothing once [`MAX_POOLS`] pools exist.
    pub fn ensure(
        self: &Arc<Self>,
        owner: &str,
        backend: &Arc<dyn Backend>,
        spec: &SandboxSpec,
        target: usize,
    ) {
        let key = PoolKey::new(owner, backend.name(), spec);
        {
            let mut pools = self.lock();
            if !pools.contains_key(&key) && pools.len() >= MAX_POOLS {
                return;
            }
            pools
                .entry(key.clone())
                .or_insert_with(|| Pool::new(backend, spec, target));
        }
        self.refill(&key);
    }

    /// Sets how many sandboxes the pool keeps ready, and starts filling it.
    pub fn set_target(
        self: &Arc<Self>,
        owner: &str,
        backend: &Arc<dyn Backend>,
        spec: &SandboxSpec,
        target: usize,
    ) -> Result<PoolInfo> {
        let key = PoolKey::new(owner, backend.name(), spec);
        let (surplus, info) = {
            let mut pools = self.lock();
            if !pools.contains_key(&key) && pools.len() >= MAX_POOLS {
                return Err(Error::InvalidRequest(format!(
                    "there are already {MAX_POOLS} warm pools; set one of them to 0 first"
                )));
            }
            let pool = pools
                .entry(key.clone())
                .or_insert_with(|| Pool::new(backend, spec, target));
            pool.target = target;
            let extra = pool.ready.len().saturating_sub(target);
            let surplus: Vec<Box<dyn Sandbox>> = pool.ready.drain(..extra).collect();
            (surplus, pool_info(&key, pool))
        };
        for sb in surplus {
            let metrics = self.metrics.clone();
            self.tasks
                .spawn(async move { destroy_counted(&metrics, sb).await });
        }
        self.refill(&key);
        Ok(info)
    }

    /// The pools of `owner`, or every pool.
    pub fn list(&self, owner: Option<&str>) -> Vec<PoolInfo> {
        let mut v: Vec<PoolInfo> = self
            .lock()
            .iter()
            .filter(|(k, _)| owner.is_none_or(|o| k.owner == o))
            .map(|(k, p)| pool_info(k, p))
            .collect();
        v.sort_by(|a, b| (&a.backend, &a.image).cmp(&(&b.backend, &b.image)));
        v
    }

    fn refill(self: &Arc<Self>, key: &PoolKey) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let (backend, spec, need) = {
            let mut pools = self.lock();
            let Some(pool) = pools.get_mut(key) else {
                return;
            };
            let need = pool.target.saturating_sub(pool.ready.len() + pool.creating);
            pool.creating += need;
            (pool.backend.clone(), pool.spec.clone(), need)
        };
        for _ in 0..need {
            let (this, backend, spec, key) =
                (self.clone(), backend.clone(), spec.clone(), key.clone());
            self.tasks.spawn(async move {
                let made = match this.permits.clone().acquire_owned().await {
                    Ok(_permit) if !this.closed.load(Ordering::SeqCst) => {
                        Some(create_counted(&this.metrics, backend.as_ref(), &spec).await)
                    }
                    _ => None,
                };
                let leftover = {
                    let mut pools = this.lock();
                    let pool = pools.get_mut(&key);
                    match (pool, made) {
                        (Some(pool), Some(Ok(sb))) => {
                            pool.creating -= 1;
                            if this.closed.load(Ordering::SeqCst) {
                                Some(sb)
                            } else {
                                pool.last_error = None;
                                pool.ready.push_back(sb);
                                None
                            }
                        }
                        (Some(pool), Some(Err(e))) => {
                            pool.creating -= 1;
                            tracing::warn!(image = %key.image, error = %e.chain(), "warm pool: create failed");
                            pool.last_error = Some(e.to_string());
                            None
                        }
                        (Some(pool), None) => {
                            pool.creating -= 1;
                            None
                        }
                        (None, Some(Ok(sb))) => Some(sb),
                        (None, _) => None,
                    }
                };
                if let Some(sb) = leftover {
                    let _ = destroy_counted(&this.metrics, sb).await;
                }
            });
        }
    }

    /// Stops refilling, destroys every ready sandbox and waits for creations in flight (which
    /// destroy what they made).
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let ready: Vec<Box<dyn Sandbox>> = self
            .lock()
            .values_mut()
            .flat_map(|p| p.ready.drain(..).collect::<Vec<_>>())
            .collect();
        let metrics = self.metrics.clone();
        futures::future::join_all(ready.into_iter().map(|sb| destroy_counted(&metrics, sb))).await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn pool_info(key: &PoolKey, p: &Pool) -> PoolInfo {
    PoolInfo {
        tenant: key.owner.clone(),
        image: key.image.clone(),
        backend: key.backend.to_string(),
        ready: p.ready.len(),
        creating: p.creating,
        target: p.target,
        memory_mb: key.memory_mb,
        cpu_cores: key.cpu_millis as f64 / 1000.0,
        isolation: key.isolation,
        last_error: p.last_error.clone(),
    }
}
