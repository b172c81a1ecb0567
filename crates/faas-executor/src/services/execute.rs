//! The execute service: validates a request, picks a backend, gets a sandbox (new or warm),
//! runs the command through the agent, and cleans up. Handlers call this; they never touch a
//! backend directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_agent::ExecRequest;
use faas_common::{
    BackendStatus, ExecuteRequest, ExecuteResponse, ImageInfo, MetricsResponse, Mode, PoolInfo,
    PrewarmRequest, Runtime,
};
use tokio_util::task::TaskTracker;

use crate::agent::ExecOutcome;
use crate::backend::{
    create_counted, destroy_counted, Backend, DeathCause, Isolation, Limits, Network, Sandbox,
    SandboxSpec,
};
use crate::error::{Error, Result};
use crate::images::ImageStore;
use crate::metrics::{inc, Metrics};
use crate::pool::WarmPools;

/// How long a cached execution's clean-up and refill wait, so they start after its answer is
/// written rather than compete with it.
const CLEANUP_DELAY: Duration = Duration::from_millis(3);

/// How long past a command's own timeout the host waits for the agent before giving up on it.
pub(crate) const AGENT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The image used when a request names none.
    pub default_image: String,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_limits: Limits,
    pub max_memory_mb: u64,
    pub max_cpu_cores: f64,
    /// Cap on captured stdout+stderr per execution.
    pub output_limit: u64,
    /// Size a warm pool gets when a `cached` request first meets it.
    pub cached_pool_size: usize,
    /// Largest `count` a prewarm may ask for.
    pub max_pool_size: usize,
    /// Largest `count` a branch or fork may ask for.
    pub max_branch: usize,
    /// Where functions' code is unpacked.
    pub functions_dir: std::path::PathBuf,
    /// The image python and node functions run in when they name none.
    pub function_image: String,
    /// Largest invocation payload.
    pub max_payload_bytes: usize,
    /// A function sandbox unused this long is destroyed (beyond `min_warm`).
    pub function_idle_ms: u64,
    /// `max_concurrency` of a function that names none, and the most one may ask.
    pub function_concurrency: u32,
    pub max_function_concurrency: u32,
    /// Async invocations run at once by this server.
    pub queue_workers: usize,
    /// How long a claimed async invocation stays this server's without a renewal.
    pub queue_lease_ms: u64,
    /// First retry delay of a failed async attempt; it doubles each attempt.
    pub retry_base_ms: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            default_image: "faas/busybox:latest".into(),
            default_timeout_ms: 30_000,
            max_timeout_ms: 600_000,
            default_limits: Limits::default(),
            max_memory_mb: 16 * 1024,
            max_cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64,
            output_limit: faas_agent::DEFAULT_OUTPUT_LIMIT,
            cached_pool_size: 2,
            max_pool_size: 1024,
            max_branch: 32,
            functions_dir: "/var/lib/faas/functions".into(),
            function_image: "faas/bookworm-python3.11-node18:latest".into(),
            max_payload_bytes: 6 * 1024 * 1024,
            function_idle_ms: 300_000,
            function_concurrency: 16,
            max_function_concurrency: 256,
            queue_workers: 32,
            queue_lease_ms: 10_000,
            retry_base_ms: 1_000,
        }
    }
}

/// A backend this server knows of, whether or not it works here.
pub struct BackendEntry {
    pub name: &'static str,
    pub backend: Option<Arc<dyn Backend>>,
    /// What was found, or what is missing.
    pub detail: String,
}

pub struct Executor {
    pub(crate) cfg: ExecutorConfig,
    images: Option<Arc<ImageStore>>,
    pub(crate) backends: Vec<BackendEntry>,
    pools: Arc<WarmPools>,
    metrics: Arc<Metrics>,
    pub(crate) tasks: TaskTracker,
    /// Instances, snapshots and executions; `None` runs without them.
    pub(crate) store: Option<faas_store::Store>,
    pub(crate) instances: crate::instances::InstanceState,
    pub(crate) streams: crate::streams::Streams,
    pub(crate) functions: crate::functions::FunctionState,
}

impl Executor {
    /// `backends` in order of preference: `auto` takes the first available one.
    /// `images` is the native backend's image store, when there is one.
    pub fn new(
        cfg: ExecutorConfig,
        backends: Vec<BackendEntry>,
        images: Option<Arc<ImageStore>>,
        store: Option<faas_store::Store>,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        Arc::new(Executor {
            cfg,
            images,
            backends,
            pools: WarmPools::new(metrics.clone()),
            metrics: metrics.clone(),
            tasks: TaskTracker::new(),
            store,
            instances: Default::default(),
            streams: Default::default(),
            functions: crate::functions::FunctionState::new(metrics.clone()),
        })
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.cfg
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

    pub fn metrics(&self) -> MetricsResponse {
        self.metrics.snapshot()
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

    pub fn pools(&self) -> Vec<PoolInfo> {
        self.pools.list()
    }

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

    pub(crate) fn spec(
        &self,
        image: Option<&str>,
        memory_mb: Option<u64>,
        cpu_cores: Option<f64>,
        isolation: Option<Isolation>,
    ) -> Result<SandboxSpec> {
        let image = image
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .unwrap_or(&self.cfg.default_image);
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidRequest(format!(
                "invalid image name {image:?}"
            )));
        }
        let mut limits = self.cfg.default_limits;
        if let Some(m) = memory_mb {
            if !(16..=self.cfg.max_memory_mb).contains(&m) {
                return Err(Error::InvalidRequest(format!(
                    "memory_mb must be between 16 and {}, got {m}",
                    self.cfg.max_memory_mb
                )));
            }
            limits.memory_mb = m;
        }
        if let Some(c) = cpu_cores {
            if !(c >= 0.01 && c <= self.cfg.max_cpu_cores) {
                return Err(Error::InvalidRequest(format!(
                    "cpu_cores must be between 0.01 and {}, got {c}",
                    self.cfg.max_cpu_cores
                )));
            }
            limits.cpu_cores = c;
        }
        Ok(SandboxSpec {
            image: image.to_string(),
            env: Vec::new(),
            limits,
            network: Network::None,
            isolation: isolation.unwrap_or_default(),
            mounts: Vec::new(),
        })
    }

    /// Runs one execute request. The work runs in its own task, so a client that disconnects
    /// does not cut it short: the sandbox is always cleaned up.
    pub async fn execute(self: &Arc<Self>, req: ExecuteRequest) -> Result<ExecuteResponse> {
        let request_id = match &req.request_id {
            Some(id) => {
                crate::streams::check_id(id)?;
                id.clone()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        if !self.streams.open(&request_id) {
            return Err(Error::Conflict(format!(
                "an execution with request_id {request_id} is running"
            )));
        }
        let mode = req.mode.unwrap_or_default();
        let this = self.clone();
        let span = tracing::info_span!("execute", request_id = %request_id);
        let work = tracing::Instrument::instrument(
            this.clone().execute_inner(request_id.clone(), req),
            span,
        );
        let r = match self.tasks.spawn(work).await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!("execute task failed: {e}"))),
        };
        if r.is_err() {
            inc(&self.metrics.failures);
        }
        self.finish_execution(&request_id, mode, &r);
        r
    }

    /// Ends an execution's stream and records it (in the background: not on the hot path).
    pub(crate) fn finish_execution(
        self: &Arc<Self>,
        request_id: &str,
        mode: Mode,
        r: &Result<ExecuteResponse>,
    ) {
        let exit = match r {
            Ok(resp) => crate::streams::ExitEvent {
                exit_code: Some(resp.exit_code),
                timed_out: resp.timed_out,
                signal: resp.signal,
                oom_killed: resp.oom_killed,
                truncated: resp.truncated,
                duration_ms: Some(resp.duration_ms),
                error: resp.error.clone(),
            },
            Err(e) => crate::streams::ExitEvent {
                exit_code: None,
                timed_out: false,
                signal: None,
                oom_killed: false,
                truncated: false,
                duration_ms: None,
                error: Some(e.to_string()),
            },
        };
        self.streams.finish(request_id, exit);
        if let Some(store) = self.store.clone() {
            let now = faas_store::now_ms();
            let rec = match r {
                Ok(resp) => faas_store::ExecutionRecord {
                    id: request_id.to_string(),
                    mode: mode.to_string(),
                    backend: Some(resp.backend.clone()),
                    instance_id: resp.instance_id.clone(),
                    snapshot_id: resp.snapshot_id.clone(),
                    status: "finished".into(),
                    exit_code: Some(resp.exit_code),
                    stdout: resp.stdout.clone().into_bytes(),
                    stderr: resp.stderr.clone().into_bytes(),
                    error: resp.error.clone(),
                    duration_ms: Some(resp.duration_ms),
                    created_ms: now - resp.total_ms as i64,
                    finished_ms: Some(now),
                },
                Err(e) => faas_store::ExecutionRecord {
                    id: request_id.to_string(),
                    mode: mode.to_string(),
                    backend: None,
                    instance_id: None,
                    snapshot_id: None,
                    status: "failed".into(),
                    exit_code: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    error: Some(e.to_string()),
                    duration_ms: None,
                    created_ms: now,
                    finished_ms: Some(now),
                },
            };
            self.tasks.spawn(async move {
                if let Err(e) = store.finish_execution(&rec).await {
                    tracing::warn!(execution = %rec.id, error = %e, "could not record the execution");
                }
            });
        }
    }

    async fn execute_inner(
        self: Arc<Self>,
        request_id: String,
        req: ExecuteRequest,
    ) -> Result<ExecuteResponse> {
        let t0 = Instant::now();
        let mode = req.mode.unwrap_or_default();
        for (field, given, valid) in [
            ("snapshot_id", &req.snapshot_id, Mode::Checkpointed),
            ("branch_from", &req.branch_from, Mode::Branched),
            ("instance_id", &req.instance_id, Mode::Persistent),
        ] {
            if given.is_some() && mode != valid {
                return Err(Error::InvalidRequest(format!(
                    "{field} is not valid with mode {mode} (only with {valid})"
                )));
            }
        }
        match mode {
            Mode::Ephemeral | Mode::Cached => {}
            Mode::Checkpointed | Mode::Branched | Mode::Persistent => {
                let mut resp = self.execute_stateful(req, mode, &request_id).await?;
                resp.request_id = request_id;
                resp.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
                return Ok(resp);
            }
        }
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        if let Some(net) = req.network.as_deref() {
            if net != "none" {
                return Err(Error::Unsupported(format!(
                    "network {net:?} is not offered: sandboxes have no network (`none`)"
                )));
            }
        }
        let timeout_ms = self.timeout(req.timeout_ms)?;
        let mut stdin = req.stdin_bytes().map_err(Error::InvalidRequest)?;
        let spec = self.spec(
            req.image.as_deref(),
            req.memory_mb,
            req.cpu_cores,
            req.isolation,
        )?;
        let backend = self.resolve(req.runtime.unwrap_or_default())?;

        let pooled = match mode {
            Mode::Cached => self.pools.take(backend.name(), &spec),
            _ => None,
        };
        let (mut sandbox, mut warm) = match pooled {
            Some(sb) => {
                inc(&self.metrics.warm_hits);
                (sb, true)
            }
            None => {
                if mode == Mode::Cached {
                    inc(&self.metrics.warm_misses);
                }
                let sb = create_counted(&self.metrics, backend.as_ref(), &spec).await?;
                if mode == Mode::Cached {
                    self.pools
                        .ensure(&backend, &spec, self.cfg.cached_pool_size);
                }
                (sb, false)
            }
        };
        let exec = self.exec_request(&req.command, &req.env_vars, &req.working_dir, timeout_ms);
        let guard = Duration::from_millis(timeout_ms) + AGENT_GRACE;
        tracing::debug!(sandbox = sandbox.id(), warm, "running");
        let first_stdin = if warm { stdin.clone() } else { stdin.take() };
        let started = Instant::now();
        let stream = Some((&self.streams, request_id.as_str()));
        let mut ran = run_agent(sandbox.as_ref(), exec.clone(), first_stdin, guard, stream).await;
        // A warm box whose agent is gone (killed from outside while it waited) ran nothing:
        // replace it with a fresh one and run there.
        if let Err(Error::AgentUnreachable { message, .. }) = &ran {
            if warm {
                tracing::warn!(sandbox = sandbox.id(), %message, "warm sandbox is dead; using a new one");
                let _ = destroy_counted(&self.metrics, sandbox).await;
                sandbox = create_counted(&self.metrics, backend.as_ref(), &spec).await?;
                warm = false;
                ran = run_agent(sandbox.as_ref(), exec, stdin.take(), guard, stream).await;
            }
        }
        // The box died under the command: say why when the host kernel recorded it.
        if let Err(Error::Agent { .. }) = &ran {
            if let Some(cause) = sandbox.death_cause().await {
                ran = Ok(died(cause, started.elapsed()));
            }
        }
        let backend_name = sandbox.backend();
        let sandbox_id = sandbox.id().to_string();
        // A used sandbox is never reused. Ephemeral waits for its removal (the box is gone
        // when the answer arrives); cached answers first and removes it in the background.
        match mode {
            Mode::Cached => {
                let (metrics, pools) = (self.metrics.clone(), self.pools.clone());
                let (pool_backend, pool_spec) = (backend.name(), spec.clone());
                self.tasks.spawn(async move {
                    // Once the answer is on its way: the refill (a box start) and the removal
                    // would otherwise compete with it for the CPUs.
                    tokio::time::sleep(CLEANUP_DELAY).await;
                    pools.refill_pool(pool_backend, &pool_spec);
                    destroy_counted(&metrics, sandbox).await
                });
            }
            _ => {
                let _ = destroy_counted(&self.metrics, sandbox).await;
            }
        }
        let out = ran?;
        self.metrics.execution(backend_name, mode);
        let run = RunInfo {
            request_id,
            backend: backend_name,
            sandbox_id,
            mode,
            warm,
            timeout_ms,
            memory_mb: spec.limits.memory_mb,
            started: t0,
        };
        Ok(self.response(out, run))
    }

    /// What the agent is asked to run.
    pub(crate) fn exec_request(
        &self,
        command: &faas_common::CommandSpec,
        env: &faas_common::EnvVars,
        cwd: &Option<String>,
        timeout_ms: u64,
    ) -> ExecRequest {
        ExecRequest {
            argv: command.to_argv(),
            env: env.0.clone(),
            cwd: cwd.clone(),
            timeout_ms,
            output_limit: self.cfg.output_limit,
            ..Default::default()
        }
    }

    pub(crate) fn response(&self, out: ExecOutcome, run: RunInfo) -> ExecuteResponse {
        let x = &out.exit;
        if x.timed_out {
            inc(&self.metrics.timeouts);
        }
        if x.oom_killed {
            inc(&self.metrics.oom_kills);
        }
        let error = if let Some(e) = &out.sandbox_error {
            Some(e.clone())
        } else if let Some(e) = &out.spawn_error {
            Some(format!("could not start the command: {e}"))
        } else if x.timed_out {
            Some(format!(
                "command timed out after {} ms; its process group was killed",
                run.timeout_ms
            ))
        } else if x.oom_killed {
            Some(format!(
                "memory limit exceeded: the command was killed by the OOM killer (limit {} MiB)",
                run.memory_mb
            ))
        } else {
            None
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ExecuteResponse {
            request_id: run.request_id,
            exit_code: x.exit_code,
            output: stdout.clone(),
            logs: stderr.clone(),
            stdout,
            stderr,
            duration_ms: x.duration_us as f64 / 1000.0,
            total_ms: run.started.elapsed().as_secs_f64() * 1000.0,
            error,
            timed_out: x.timed_out,
            signal: x.signal,
            oom_killed: x.oom_killed,
            truncated: x.truncated,
            backend: run.backend.to_string(),
            mode: run.mode,
            warm: run.warm,
            sandbox_id: run.sandbox_id,
            snapshot_id: None,
            instance_id: None,
        }
    }

    /// Sets a warm pool's size and starts filling it; the image must exist.
    pub async fn prewarm(&self, req: PrewarmRequest) -> Result<PoolInfo> {
        if req.count > self.cfg.max_pool_size {
            return Err(Error::InvalidRequest(format!(
                "count must be at most {}, got {}",
                self.cfg.max_pool_size, req.count
            )));
        }
        let spec = self.spec(req.image.as_deref(), None, None, req.isolation)?;
        let backend = self.resolve(req.runtime.unwrap_or_default())?;
        backend.check_image(&spec.image).await?;
        self.pools.set_target(&backend, &spec, req.count)
    }

    /// Removes the sandboxes an earlier, killed run left behind.
    pub async fn recover(self: &Arc<Self>) -> Result<usize> {
        let mut n = 0;
        for b in self.backends.iter().filter_map(|b| b.backend.as_ref()) {
            n += b.remove_leftovers().await?;
        }
        self.recover_instances().await?;
        if self.store.is_some() {
            self.tasks.spawn(self.clone().reap_idle_instances());
        }
        self.start_functions().await?;
        Ok(n)
    }

    /// Destroys the warm pools and waits for in-flight work and clean-ups.
    pub async fn shutdown(&self) {
        self.pools.shutdown().await;
        self.forget_live_instances();
        self.stop_functions().await;
        self.tasks.close();
        self.tasks.wait().await;
        self.destroy_function_sandboxes().await;
        for b in self.backends.iter().filter_map(|b| b.backend.as_ref()) {
            b.shutdown().await;
        }
    }
}

/// The outcome of a command whose whole box the kernel killed: everything in it ended by
/// SIGKILL when the box went, so that is the status reported.
fn died(cause: DeathCause, ran_for: Duration) -> ExecOutcome {
    let message = match cause {
        DeathCause::OutOfMemory => "memory limit exceeded: the OOM killer ended the sandbox",
        DeathCause::ProcessLimit => "process limit reached: the sandbox could not fork and ended",
    };
    ExecOutcome {
        exit: faas_agent::ExitInfo {
            exit_code: 128 + 9,
            signal: Some(9),
            oom_killed: cause == DeathCause::OutOfMemory,
            duration_us: ran_for.as_micros() as u64,
            ..Default::default()
        },
        sandbox_error: Some(message.to_string()),
        ..Default::default()
    }
}

/// Runs `exec` through the sandbox's agent, giving up after `guard`.
pub(crate) async fn run_agent(
    sandbox: &dyn Sandbox,
    exec: ExecRequest,
    stdin: Option<Vec<u8>>,
    guard: Duration,
    stream: Option<(&crate::streams::Streams, &str)>,
) -> Result<ExecOutcome> {
    let on_output = |kind: faas_agent::FrameKind, chunk: &[u8]| {
        if let Some((streams, id)) = stream {
            let data = String::from_utf8_lossy(chunk).into_owned();
            let ev = match kind {
                faas_agent::FrameKind::Stderr => crate::streams::OutputEvent::Stderr { data },
                _ => crate::streams::OutputEvent::Stdout { data },
            };
            streams.push(id, ev);
        }
    };
    match tokio::time::timeout(guard, sandbox.agent().exec(exec, stdin, on_output)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Internal(format!(
            "the agent of sandbox {} did not report within {guard:?}; the sandbox was destroyed",
            sandbox.id()
        ))),
    }
}

/// What the response needs to know of how a command was run.
pub(crate) struct RunInfo {
    pub request_id: String,
    pub backend: &'static str,
    pub sandbox_id: String,
    pub mode: Mode,
    pub warm: bool,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub started: Instant,
}

pub const FIRECRACKER_UNSUPPORTED: &str = "the firecracker runtime is not available: this build has no microVM backend and no firecracker binary is installed on this host (KVM alone is not enough)";
