//! Counters of the executor, incremented where the thing they count happens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use faas_common::{MetricsResponse, Mode};

#[derive(Debug, Default)]
pub struct Metrics {
    executions: Mutex<BTreeMap<(&'static str, Mode), u64>>,
    pub warm_hits: AtomicU64,
    pub warm_misses: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub oom_kills: AtomicU64,
    pub sandboxes_created: AtomicU64,
    pub sandboxes_destroyed: AtomicU64,
    /// Used boxes reset to a clean state and given back to their pool.
    pub sandboxes_reset: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn execution(&self, backend: &'static str, mode: Mode) {
        let mut m = self.executions.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((backend, mode)).or_default() += 1;
    }

    pub fn snapshot(&self) -> MetricsResponse {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut executions: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut total = 0;
        for ((backend, mode), n) in self
            .executions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            executions
                .entry(backend.to_string())
                .or_default()
                .insert(mode.to_string(), *n);
            total += n;
        }
        let created = get(&self.sandboxes_created);
        let destroyed = get(&self.sandboxes_destroyed);
        MetricsResponse {
            executions,
            executions_total: total,
            warm_hits: get(&self.warm_hits),
            warm_misses: get(&self.warm_misses),
            failures: get(&self.failures),
            timeouts: get(&self.timeouts),
            oom_kills: get(&self.oom_kills),
            sandboxes_created: created,
            sandboxes_destroyed: destroyed,
            sandboxes_live: created.saturating_sub(destroyed),
            sandboxes_reset: get(&self.sandboxes_reset),
        }
    }
}
