//! Sandboxes that run one function version, kept warm between invocations.
//!
//! A python or node sandbox runs the runtime's shim (`shim.py`, `shim.js`): it imports the
//! handler once and then answers one JSON line per invocation, so a warm invocation costs a
//! round trip through the agent. Shell, binary and image functions run their program once per
//! invocation in the kept sandbox (the payload on stdin, the result on stdout).
//!
//! A sandbox serves one invocation at a time and only ever the version (of one tenant's
//! function: keys are scoped by tenant) it was made for, and counts against that tenant's
//! sandbox quotas while it lives. One that timed out, or whose shim died, is destroyed, never
//! reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_agent::ExecRequest;
use faas_common::{FunctionRuntime, InvocationError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sandbox::agent::{AgentProcess, ProcessEvent};
use crate::sandbox::exec::{run_agent, AGENT_GRACE};
use crate::sandbox::{create_counted, destroy_counted, Backend, BoxUsage, Sandbox, SandboxSpec};
use crate::services::tenants::{SandboxLease, Tenants};

const PY_SHIM: &str = include_str!("shim.py");
const NODE_SHIM: &str = include_str!("shim.js");

/// A version's settings, as stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FnConfig {
    pub runtime: FunctionRuntime,
    pub handler: Option<String>,
    pub image: String,
    /// What runs per invocation (shell, binary, image).
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub timeout_ms: u64,
    pub min_warm: u32,
    pub max_concurrency: u32,
    /// `auto`, `docker` or `native`.
    pub backend: faas_common::Runtime,
    #[serde(default)]
    pub isolation: faas_common::IsolationLevel,
    /// What its sandboxes may reach (`None`: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<faas_common::NetworkRequest>,
    /// `file` (one file, named `file_name`) or `archive`.
    pub code_form: String,
    pub file_name: Option<String>,
    pub code_size: u64,
}

/// A version ready to run: which one, its settings, the spec of its sandboxes and their
/// backend.
pub struct Version {
    /// `(tenant/name, version)`.
    pub key: VersionKey,
    pub tenant: String,
    pub name: String,
    /// When the version was made (a deleted and re-made function reuses version numbers).
    pub created_ms: i64,
    pub cfg: FnConfig,
    pub spec: SandboxSpec,
    pub backend: Arc<dyn Backend>,
}

/// What one invocation came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `succeeded`, `error` or `timeout`.
    pub status: &'static str,
    pub result: Option<serde_json::Value>,
    pub error: Option<InvocationError>,
    pub logs: String,
    pub duration_ms: f64,
    pub cold: bool,
    /// What the sandbox used for the invocation. CPU: its cgroup's counter after the
    /// invocation minus before it (a sandbox serves one invocation at a time, so the figure is
    /// this invocation's alone; a cold start counts from the sandbox's creation, so its start
    /// is included, as it is in `duration_ms`). Peak memory: the sandbox's since it started.
    /// `None` when no sandbox ran it or the backend cannot measure.
    pub usage: Option<BoxUsage>,
}

impl Outcome {
    fn failed(kind: &str, message: impl Into<String>, logs: String, cold: bool) -> Outcome {
        Outcome {
            status: "error",
            result: None,
            error: Some(InvocationError {
                kind: kind.into(),
                message: message.into(),
                traceback: None,
            }),
            logs,
            duration_ms: 0.0,
            cold,
            usage: None,
        }
    }
}

/// One started sandbox of a version.
struct Worker {
    sandbox: Box<dyn Sandbox>,
    /// Counts it against its tenant's quotas while it lives.
    _quota: SandboxLease,
    /// The shim (python, node).
    shim: Option<AgentProcess>,
    last_used: Instant,
}

/// Identifies a version's sandboxes: `(tenant/name, version)`.
pub type VersionKey = (String, i64);

/// The key of `tenant`'s function `name` (tenant ids have no `/`).
pub fn scoped(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

struct VersionPool {
    idle: Vec<Worker>,
    /// Sandboxes, idle, busy or starting.
    total: usize,
    /// Of those, still starting.
    starting: usize,
    permits: Arc<Semaphore>,
    max_concurrency: u32,
}

impl VersionPool {
    fn new(cfg: &FnConfig) -> VersionPool {
        VersionPool {
            idle: Vec::new(),
            total: 0,
            starting: 0,
            permits: Arc::new(Semaphore::new(cfg.max_concurrency as usize)),
            max_concurrency: cfg.max_concurrency,
        }
    }
}

/// Every function version's sandboxes on this server.
pub struct Runners {
    pools: Mutex<HashMap<VersionKey, VersionPool>>,
    metrics: Arc<Metrics>,
    tenants: Arc<Tenants>,
}

/// A sandbox lent to one invocation; given back with [`Runners::give_back`] or destroyed.
pub struct Lease {
    key: VersionKey,
    worker: Option<Worker>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Taken before a cold start (see [`Lease::needs_start`]), so a sync invoke over its
    /// tenant's quota is refused before anything starts.
    pub quota: Option<SandboxLease>,
}

impl Lease {
    /// Whether serving it starts a new sandbox.
    pub fn needs_start(&self) -> bool {
        self.worker.is_none()
    }
}

fn shim_line(payload: &serde_json::Value, id: &str, timeout_ms: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "id": id,
        "payload": payload,
        "timeout_ms": timeout_ms,
    }))
    .unwrap_or_default();
    line.push(b'\n');
    line
}

#[derive(Deserialize)]
struct ShimAnswer {
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<InvocationError>,
    #[serde(default)]
    logs: String,
}

/// Reads the shim's next answer line; stderr seen meanwhile is added to `logs`.
async fn read_answer(
    shim: &mut AgentProcess,
    logs: &mut String,
) -> std::result::Result<ShimAnswer, String> {
    let mut line = Vec::new();
    loop {
        match shim.next().await {
            Ok(ProcessEvent::Stdout(data) | ProcessEvent::Pty(data)) => {
                line.extend_from_slice(&data);
                if let Some(nl) = line.iter().position(|&b| b == b'\n') {
                    return serde_json::from_slice(&line[..nl])
                        .map_err(|e| format!("the runtime answered with a malformed line: {e}"));
                }
            }
            Ok(ProcessEvent::Stderr(data)) => logs.push_str(&String::from_utf8_lossy(&data)),
            Ok(ProcessEvent::Exited(info)) => {
                return Err(format!(
                    "the runtime exited with code {} during the invocation",
                    info.exit_code
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl Runners {
    pub fn new(metrics: Arc<Metrics>, tenants: Arc<Tenants>) -> Self {
        Runners {
            pools: Mutex::new(HashMap::new()),
            metrics,
            tenants,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VersionKey, VersionPool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Started sandboxes of a version (idle or busy; not those still starting).
    pub fn warm(&self, key: &VersionKey) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |p| p.total.saturating_sub(p.starting))
    }

    /// Waits (up to `wait`) for one of the version's concurrency slots and takes an idle
    /// sandbox if there is one. `None` from the lease's worker means a cold start is needed.
    pub async fn lease(&self, v: &Version, wait: Option<Duration>) -> Result<Lease> {
        let (key, cfg) = (&v.key, &v.cfg);
        let permits = {
            let mut pools = self.lock();
            let pool = pools
                .entry(key.clone())
                .or_insert_with(|| VersionPool::new(&v.cfg));
            pool.permits.clone()
        };
        let acquire = permits.acquire_owned();
        let permit = match wait {
            Some(w) => tokio::time::timeout(w, acquire).await.map_err(|_| {
                Error::RateLimited(format!(
                    "function {} is at its concurrency limit ({}) and no slot freed within {w:?}",
                    key.0, cfg.max_concurrency
                ))
            })?,
            None => acquire.await,
        }
        .map_err(|_| Error::Conflict(format!("function {} was deleted", key.0)))?;
        let worker = {
            let mut pools = self.lock();
            // Most recently used first: it is the likeliest to be hot in caches.
            pools.get_mut(key).and_then(|p| p.idle.pop())
        };
        Ok(Lease {
            key: key.clone(),
            worker,
            _permit: permit,
            quota: None,
        })
    }

    /// Starts a sandbox for `cfg` (and its shim), counted in the version's pool. On a
    /// runtime that failed to load the handler, the outcome to report is returned instead.
    async fn start(
        &self,
        v: &Version,
        quota: Option<SandboxLease>,
    ) -> Result<std::result::Result<Worker, Outcome>> {
        let quota = match quota {
            Some(q) => q,
            None => {
                self.tenants
                    .lease_sandbox(&v.tenant, v.spec.limits.memory_mb)
                    .await?
            }
        };
        if let Some(p) = self.lock().get_mut(&v.key) {
            p.total += 1;
            p.starting += 1;
        }
        let started = self.start_inner(v, quota).await;
        if let Some(p) = self.lock().get_mut(&v.key) {
            p.starting = p.starting.saturating_sub(1);
            if started.is_err() {
                p.total = p.total.saturating_sub(1);
            }
        }
        started
    }

    async fn start_inner(
        &self,
        v: &Version,
        quota: SandboxLease,
    ) -> Result<std::result::Result<Worker, Outcome>> {
        let (key, cfg) = (&v.key, &v.cfg);
        let sandbox = create_counted(&self.metrics, v.backend.as_ref(), &v.spec).await?;
        let argv: Vec<String> = match cfg.runtime {
            FunctionRuntime::Python => vec![
                "python3".into(),
                "-u".into(),
                "-B".into(),
                "-c".into(),
                PY_SHIM.into(),
            ],
            FunctionRuntime::Node => vec!["node".into(), "-e".into(), NODE_SHIM.into()],
            _ => {
                return Ok(Ok(Worker {
                    sandbox,
                    _quota: quota,
                    shim: None,
                    last_used: Instant::now(),
                }))
            }
        };
        let mut env = vec![
            (
                "FAAS_HANDLER".to_string(),
                cfg.handler.clone().unwrap_or_default(),
            ),
            ("FAAS_FUNCTION_NAME".into(), v.name.clone()),
            ("FAAS_FUNCTION_VERSION".into(), key.1.to_string()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        env.extend(cfg.env.iter().cloned());
        let req = ExecRequest {
            argv,
            env,
            cwd: Some(super::code::GUEST_CODE_DIR.into()),
            ..Default::default()
        };
        let started = async {
            let mut shim = sandbox.agent().spawn(req).await?;
            let mut logs = String::new();
            let answer = read_answer(&mut shim, &mut logs).await;
            Ok::<_, Error>((shim, answer, logs))
        };
        let init = Duration::from_millis(cfg.timeout_ms.max(30_000));
        let outcome = match tokio::time::timeout(init, started).await {
            Ok(Ok((shim, Ok(a), _))) if a.ready == Some(true) => {
                return Ok(Ok(Worker {
                    sandbox,
                    _quota: quota,
                    shim: Some(shim),
                    last_used: Instant::now(),
                }))
            }
            Ok(Ok((_, Ok(a), logs))) => Outcome {
                error: a.error.map(|e| InvocationError {
                    message: format!("loading the handler failed: {}", e.message),
                    ..e
                }),
                ..Outcome::failed("init_error", "loading the handler failed", logs, true)
            },
            Ok(Ok((_, Err(e), logs))) => Outcome::failed("init_error", e, logs, true),
            Ok(Err(e)) => Outcome::failed("sandbox_failed", e.to_string(), String::new(), true),
            Err(_) => Outcome::failed(
                "init_error",
                format!("the runtime did not load the handler within {init:?}"),
                String::new(),
                true,
            ),
        };
        self.discard(
            key,
            Worker {
                sandbox,
                _quota: quota,
                shim: None,
                last_used: Instant::now(),
            },
        )
        .await;
        Ok(Err(outcome))
    }

    /// Runs one invocation on the lease's sandbox (starting one when the lease has none) and
    /// gives the sandbox back, or destroys it when it cannot serve again.
    pub async fn invoke(
        &self,
        mut lease: Lease,
        v: &Version,
        id: &str,
        payload: &serde_json::Value,
        payload_bytes: &[u8],
    ) -> Outcome {
        let cfg = &v.cfg;
        let begin = Instant::now();
        let cold = lease.worker.is_none();
        let mut worker = match lease.worker.take() {
            Some(w) => w,
            None => match self.start(v, lease.quota.take()).await {
                Ok(Ok(w)) => w,
                Ok(Err(mut outcome)) => {
                    outcome.duration_ms = ms(begin.elapsed());
                    return outcome;
                }
                Err(e) => {
                    let kind = match e {
                        Error::QuotaExceeded(_) => "quota_exceeded",
                        _ => "sandbox_failed",
                    };
                    let mut o = Outcome::failed(kind, e.to_string(), String::new(), true);
                    o.duration_ms = ms(begin.elapsed());
                    return o;
                }
            },
        };
        // A sandbox made for this invocation: all it used so far (its start) is this one's.
        let before = if cold {
            Some(BoxUsage::default())
        } else {
            worker.sandbox.usage().await.ok()
        };
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let run_start = Instant::now();
        let (mut outcome, reusable) = match worker.shim.as_mut() {
            Some(shim) => {
                let mut logs = String::new();
                let line = shim_line(payload, id, cfg.timeout_ms);
                let exchange = async {
                    shim.write(&line).await.map_err(|e| e.to_string())?;
                    read_answer(shim, &mut logs).await
                };
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(Ok(a)) => {
                        let mut all = a.logs;
                        all.push_str(&logs);
                        let o = if a.ok {
                            Outcome {
                                status: "succeeded",
                                result: Some(a.result.unwrap_or(serde_json::Value::Null)),
                                error: None,
                                logs: all,
                                duration_ms: 0.0,
                                cold,
                                usage: None,
                            }
                        } else {
                            Outcome {
                                status: "error",
                                result: None,
                                error: a.error.or_else(|| {
                                    Some(InvocationError {
                                        kind: "error".into(),
                                        message: "the handler failed".into(),
                                        traceback: None,
                                    })
                                }),
                                logs: all,
                                duration_ms: 0.0,
                                cold,
                                usage: None,
                            }
                        };
                        (o, true)
                    }
                    Ok(Err(e)) => (Outcome::failed("runtime_exited", e, logs, cold), false),
                    Err(_) => (timed_out(cfg.timeout_ms, logs, cold), false),
                }
            }
            None => {
                let argv = cfg.command.clone().unwrap_or_default();
                let exec = ExecRequest {
                    argv,
                    env: cfg.env.clone(),
                    cwd: Some(super::code::GUEST_CODE_DIR.into()),
                    timeout_ms: cfg.timeout_ms,
                    ..Default::default()
                };
                let guard = timeout + AGENT_GRACE;
                match run_agent(
                    worker.sandbox.as_ref(),
                    exec,
                    Some(payload_bytes.to_vec()),
                    guard,
                    |_, _| {},
                )
                .await
                {
                    Ok(out) => {
                        let logs = String::from_utf8_lossy(&out.stderr).into_owned();
                        if out.exit.timed_out {
                            (timed_out(cfg.timeout_ms, logs, cold), true)
                        } else if let Some(e) = out.spawn_error {
                            (Outcome::failed("exit_code", e, logs, cold), true)
                        } else if out.exit.exit_code != 0 {
                            let mut o = Outcome::failed(
                                "exit_code",
                                format!("the program exited with code {}", out.exit.exit_code),
                                logs.clone(),
                                cold,
                            );
                            if let Some(e) = o.error.as_mut() {
                                e.traceback = Some(logs);
                            }
                            (o, true)
                        } else {
                            let text = String::from_utf8_lossy(&out.stdout);
                            let result = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
                                serde_json::Value::String(text.trim_end().to_string())
                            });
                            let o = Outcome {
                                status: "succeeded",
                                result: Some(result),
                                error: None,
                                logs,
                                duration_ms: 0.0,
                                cold,
                                usage: None,
                            };
                            (o, true)
                        }
                    }
                    Err(e) => (
                        Outcome::failed("sandbox_failed", e.to_string(), String::new(), cold),
                        false,
                    ),
                }
            }
        };
        let after = worker.sandbox.usage().await.ok();
        outcome.usage = match (before, after) {
            (Some(b), Some(a)) => Some(BoxUsage {
                cpu_ns: a.cpu_ns.saturating_sub(b.cpu_ns),
                ..a
            }),
            _ => None,
        };
        // A warm call reports the handler's time; a cold one, the start as well.
        outcome.duration_ms = ms(if cold {
            begin.elapsed()
        } else {
            run_start.elapsed()
        });
        if reusable {
            worker.last_used = Instant::now();
            self.give_back(&lease.key, worker).await;
        } else {
            self.discard(&lease.key, worker).await;
        }
        outcome
    }

    async fn give_back(&self, key: &VersionKey, worker: Worker) {
        let back = {
            let mut pools = self.lock();
            match pools.get_mut(key) {
                Some(p) => {
                    p.idle.push(worker);
                    None
                }
                // The function was deleted meanwhile.
                None => Some(worker),
            }
        };
        if let Some(w) = back {
            let _ = destroy_counted(&self.metrics, w.sandbox).await;
        }
    }

    async fn discard(&self, key: &VersionKey, worker: Worker) {
        if let Some(p) = self.lock().get_mut(key) {
            p.total = p.total.saturating_sub(1);
        }
        drop(worker.shim);
        let _ = destroy_counted(&self.metrics, worker.sandbox).await;
    }

    /// Starts sandboxes of a version until `min` are started.
    pub async fn top_up(&self, v: &Version) {
        loop {
            let need = {
                let mut pools = self.lock();
                let pool = pools
                    .entry(v.key.clone())
                    .or_insert_with(|| VersionPool::new(&v.cfg));
                pool.total < v.cfg.min_warm as usize
            };
            if !need {
                return;
            }
            match self.start(v, None).await {
                Ok(Ok(w)) => self.give_back(&v.key, w).await,
                Ok(Err(o)) => {
                    tracing::warn!(function = %v.key.0, version = v.key.1, error = ?o.error, "min_warm: the runtime did not start");
                    return;
                }
                Err(e) => {
                    tracing::warn!(function = %v.key.0, version = v.key.1, error = %e.chain(), "min_warm: no sandbox");
                    return;
                }
            }
        }
    }

    /// Destroys idle sandboxes unused for `idle` (keeping `keep(key)` started ones per
    /// version), and forgets versions with nothing started.
    pub async fn reap(&self, idle: Duration, keep: impl Fn(&VersionKey) -> usize) {
        let mut gone = Vec::new();
        {
            let mut pools = self.lock();
            for (key, pool) in pools.iter_mut() {
                let keep = keep(key);
                let mut i = 0;
                while i < pool.idle.len() {
                    if pool.total > keep && pool.idle[i].last_used.elapsed() >= idle {
                        gone.push(pool.idle.remove(i));
                        pool.total -= 1;
                    } else {
                        i += 1;
                    }
                }
            }
            pools.retain(|_, p| {
                p.total > 0 || p.permits.available_permits() < p.max_concurrency as usize
            });
        }
        for w in gone {
            drop(w.shim);
            let _ = destroy_counted(&self.metrics, w.sandbox).await;
        }
    }

    /// Destroys every idle sandbox of function `name` (all versions, or those `only` keeps)
    /// and stops lending them; busy ones are destroyed when they come back.
    pub async fn remove(&self, name: &str, only: impl Fn(i64) -> bool) {
        let mut gone = Vec::new();
        {
            let mut pools = self.lock();
            let keys: Vec<VersionKey> = pools
                .keys()
                .filter(|k| k.0 == name && only(k.1))
                .cloned()
                .collect();
            for k in keys {
                if let Some(p) = pools.remove(&k) {
                    p.permits.close();
                    gone.extend(p.idle);
                }
            }
        }
        for w in gone {
            drop(w.shim);
            let _ = destroy_counted(&self.metrics, w.sandbox).await;
        }
    }

    /// Destroys everything (server shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<String> = self.lock().keys().map(|k| k.0.clone()).collect();
        for name in all {
            self.remove(&name, |_| true).await;
        }
    }
}

fn timed_out(timeout_ms: u64, logs: String, cold: bool) -> Outcome {
    Outcome {
        status: "timeout",
        result: None,
        error: Some(InvocationError {
            kind: "timeout".into(),
            message: format!("the function did not finish within its {timeout_ms} ms timeout; its sandbox was destroyed"),
            traceback: None,
        }),
        logs,
        duration_ms: 0.0,
        cold,
        usage: None,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
