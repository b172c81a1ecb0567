//! The execute service: validates a request, picks a backend, gets a sandbox (new or warm),
//! runs the command through the agent, and cleans up. Handlers call this; they never touch a
//! backend directly. The `persistent`, `checkpointed` and `branched` modes are compositions of
//! the instances service's operations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_common::{
    Caller, EnvVars, ExecuteRequest, ExecuteResponse, InstanceCreateRequest, InstanceExecRequest,
    Mode, PoolInfo, PrewarmRequest, SnapshotCreateRequest,
};

use crate::config::PlatformConfig;
use crate::error::{Error, Result};
use crate::metrics::inc;
use crate::sandbox::exec::{died, run_agent, AGENT_GRACE};
use crate::sandbox::sandboxes::Sandboxes;
use crate::sandbox::{create_counted, destroy_counted};
use crate::services::instances::Instances;
use crate::services::run::{self, RunInfo};
use crate::services::streams::{check_id, Streams};
use crate::services::tenants::Tenants;

/// How long a cached execution's clean-up and refill wait, so they start after its answer is
/// written rather than compete with it.
const CLEANUP_DELAY: Duration = Duration::from_millis(1);

/// How long a cached request that finds its pool empty waits for a box being reset before it
/// makes a new one.
const RESET_WAIT: Duration = Duration::from_millis(100);

/// The execute service.
pub struct Executor {
    cfg: PlatformConfig,
    sandboxes: Arc<Sandboxes>,
    instances: Arc<Instances>,
    streams: Arc<Streams>,
    tenants: Arc<Tenants>,
}

impl Executor {
    pub fn new(
        cfg: PlatformConfig,
        sandboxes: Arc<Sandboxes>,
        instances: Arc<Instances>,
        streams: Arc<Streams>,
        tenants: Arc<Tenants>,
    ) -> Arc<Self> {
        Arc::new(Executor {
            cfg,
            sandboxes,
            instances,
            streams,
            tenants,
        })
    }

    /// Runs one execute request. The work runs in its own task, so a client that disconnects
    /// does not cut it short: the sandbox is always cleaned up.
    pub async fn execute(
        self: &Arc<Self>,
        caller: &Caller,
        req: ExecuteRequest,
    ) -> Result<ExecuteResponse> {
        let request_id = match &req.request_id {
            Some(id) => {
                check_id(id)?;
                id.clone()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let stream_key = Streams::key(&caller.tenant, &request_id);
        if !self.streams.open(&stream_key) {
            return Err(Error::Conflict(format!(
                "an execution with request_id {request_id} is running"
            )));
        }
        let mode = req.mode.unwrap_or_default();
        let this = self.clone();
        let span = tracing::info_span!("execute", request_id = %request_id);
        let work = tracing::Instrument::instrument(
            this.clone()
                .execute_inner(caller.clone(), request_id.clone(), stream_key, req),
            span,
        );
        let r = match self.sandboxes.tasks.spawn(work).await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!("execute task failed: {e}"))),
        };
        if r.is_err() {
            inc(&self.sandboxes.metrics.failures);
        }
        self.streams
            .finish_execution(&caller.tenant, &request_id, mode, &r);
        r
    }

    async fn execute_inner(
        self: Arc<Self>,
        caller: Caller,
        request_id: String,
        stream_key: String,
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
                let mut resp = self
                    .execute_stateful(&caller, req, mode, &stream_key)
                    .await?;
                resp.request_id = request_id;
                resp.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
                return Ok(resp);
            }
        }
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        let network = run::network(&self.tenants, &caller.tenant, req.network.as_ref()).await?;
        let timeout_ms = run::timeout(&self.cfg, req.timeout_ms)?;
        let mut stdin = req.stdin_bytes().map_err(Error::InvalidRequest)?;
        let mut spec = run::spec(
            &self.cfg,
            req.image.as_deref(),
            req.memory_mb,
            req.cpu_cores,
            req.isolation,
        )?;
        spec.network = network;
        let backend = self.sandboxes.resolve(req.runtime.unwrap_or_default())?;
        // The box counts against the tenant's quotas while the request runs.
        let _lease = self
            .tenants
            .lease_sandbox(&caller.tenant, spec.limits.memory_mb)
            .await?;
        let owner = caller.tenant.as_str();
        let pooled = match mode {
            Mode::Cached => {
                self.sandboxes
                    .pools
                    .take_or_wait(owner, backend.name(), &spec, RESET_WAIT)
                    .await
            }
            _ => None,
        };
        let (mut sandbox, mut warm) = match pooled {
            Some(sb) => {
                inc(&self.sandboxes.metrics.warm_hits);
                (sb, true)
            }
            None => {
                if mode == Mode::Cached {
                    inc(&self.sandboxes.metrics.warm_misses);
                }
                let sb = create_counted(&self.sandboxes.metrics, backend.as_ref(), &spec).await?;
                if mode == Mode::Cached {
                    self.sandboxes
                        .pools
                        .ensure(owner, &backend, &spec, self.cfg.cached_pool_size);
                }
                (sb, false)
            }
        };
        let exec = run::exec_request(
            &self.cfg,
            &req.command,
            &req.env_vars,
            &req.working_dir,
            timeout_ms,
        );
        let guard = Duration::from_millis(timeout_ms) + AGENT_GRACE;
        tracing::debug!(sandbox = sandbox.id(), warm, "running");
        let first_stdin = if warm { stdin.clone() } else { stdin.take() };
        let started = Instant::now();
        let stream = Some((&*self.streams, stream_key.as_str()));
        let mut ran = run_agent(
            sandbox.as_ref(),
            exec.clone(),
            first_stdin,
            guard,
            run::to_stream(stream),
        )
        .await;
        // A warm box whose agent is gone (killed from outside while it waited) ran nothing:
        // replace it with a fresh one and run there.
        if let Err(Error::AgentUnreachable { message, .. }) = &ran {
            if warm {
                tracing::warn!(sandbox = sandbox.id(), %message, "warm sandbox is dead; using a new one");
                let _ = destroy_counted(&self.sandboxes.metrics, sandbox).await;
                sandbox = create_counted(&self.sandboxes.metrics, backend.as_ref(), &spec).await?;
                warm = false;
                ran = run_agent(
                    sandbox.as_ref(),
                    exec,
                    stdin.take(),
                    guard,
                    run::to_stream(stream),
                )
                .await;
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
        // Measured before the box is reset or destroyed: since it was made or last reset.
        let usage = sandbox.usage().await.ok();
        // Ephemeral waits for the box's removal (it is gone when the answer arrives). Cached
        // answers first, then resets the box and gives it back to its pool, or, when it cannot
        // be reset, removes it and refills the pool, in the background.
        match mode {
            Mode::Cached => {
                let (metrics, pools) =
                    (self.sandboxes.metrics.clone(), self.sandboxes.pools.clone());
                let (pool_backend, pool_spec) = (backend.name(), spec.clone());
                let owner = owner.to_string();
                pools.reset_started(&owner, pool_backend, &pool_spec);
                self.sandboxes.tasks.spawn(async move {
                    // Once the answer is on its way: the reset (or a refill's box start) and
                    // the removal would otherwise compete with it for the CPUs.
                    tokio::time::sleep(CLEANUP_DELAY).await;
                    let sandbox = match sandbox.reset().await {
                        Ok(()) => {
                            inc(&metrics.sandboxes_reset);
                            match pools.reset_done(&owner, pool_backend, &pool_spec, Some(sandbox)) {
                                None => return Ok(()),
                                Some(extra) => extra,
                            }
                        }
                        Err(e) => {
                            if !matches!(e, Error::Unsupported(_)) {
                                tracing::info!(sandbox = sandbox.id(), error = %e.chain(), "not reused: destroyed");
                            }
                            pools.reset_done(&owner, pool_backend, &pool_spec, None);
                            pools.refill_pool(&owner, pool_backend, &pool_spec);
                            sandbox
                        }
                    };
                    destroy_counted(&metrics, sandbox).await
                });
            }
            _ => {
                let _ = destroy_counted(&self.sandboxes.metrics, sandbox).await;
            }
        }
        let out = ran?;
        self.sandboxes.metrics.execution(backend_name, mode);
        let run = RunInfo {
            request_id,
            backend: backend_name,
            sandbox_id,
            mode,
            warm,
            timeout_ms,
            memory_mb: spec.limits.memory_mb,
            started: t0,
            usage,
        };
        Ok(run::response(&self.sandboxes.metrics, out, run))
    }

    /// The caller's warm pools.
    pub fn pools(&self, caller: &Caller) -> Vec<PoolInfo> {
        self.sandboxes.pools(Some(&caller.tenant))
    }

    /// Sets a warm pool of the caller's size and starts filling it; the image must exist.
    pub async fn prewarm(&self, caller: &Caller, req: PrewarmRequest) -> Result<PoolInfo> {
        if req.count > self.cfg.max_pool_size {
            return Err(Error::InvalidRequest(format!(
                "count must be at most {}, got {}",
                self.cfg.max_pool_size, req.count
            )));
        }
        let spec = run::spec(
            &self.cfg,
            req.image.as_deref(),
            req.memory_mb,
            req.cpu_cores,
            req.isolation,
        )?;
        let backend = self.sandboxes.resolve(req.runtime.unwrap_or_default())?;
        // A warm pool is the tenant's sandboxes waiting: no more than its quotas allow.
        let q = self.tenants.effective(&caller.tenant).await?;
        let (boxes, mem) = (
            q.concurrent_sandboxes.unwrap_or(0),
            q.memory_mb.unwrap_or(0),
        );
        if boxes > 0 && req.count as u64 > boxes {
            return Err(Error::QuotaExceeded(format!(
                "a pool of {} is over the quota concurrent_sandboxes of {boxes}",
                req.count
            )));
        }
        if mem > 0 && req.count as u64 * spec.limits.memory_mb > mem {
            return Err(Error::QuotaExceeded(format!(
                "a pool of {} boxes of {} MiB is over the quota memory_mb of {mem}",
                req.count, spec.limits.memory_mb
            )));
        }
        backend.check_image(&spec.image).await?;
        self.sandboxes
            .pools
            .set_target(&caller.tenant, &backend, &spec, req.count)
    }

    /// `persistent`, `checkpointed` and `branched`: compositions of instances and snapshots.
    async fn execute_stateful(
        &self,
        caller: &Caller,
        req: ExecuteRequest,
        mode: Mode,
        stream_key: &str,
    ) -> Result<ExecuteResponse> {
        let rid = Some(stream_key);
        self.instances.store()?;
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        let exec = InstanceExecRequest {
            command: req.command.clone(),
            env_vars: req.env_vars.clone(),
            working_dir: req.working_dir.clone(),
            timeout_ms: req.timeout_ms,
            stdin: req.stdin.clone(),
            stdin_b64: req.stdin_b64.clone(),
        };
        let create = || InstanceCreateRequest {
            image: req.image.clone(),
            name: None,
            runtime: req.runtime,
            isolation: req.isolation,
            cpu_cores: req.cpu_cores,
            memory_mb: req.memory_mb,
            env_vars: EnvVars::default(),
            idle_timeout_s: None,
            network: req.network.clone(),
            metadata: Default::default(),
            public_ports: false,
        };
        let mut resp = match mode {
            Mode::Persistent => {
                let id = match &req.instance_id {
                    Some(id) => id.clone(),
                    None => self.instances.instance_create(caller, create()).await?.id,
                };
                self.instances
                    .instance_exec_as(caller, &id, exec, rid)
                    .await?
            }
            Mode::Checkpointed => match &req.snapshot_id {
                // Restore, then run (in a throwaway instance).
                Some(sid) => {
                    let inst = self.instances.snapshot_restore(caller, sid).await?;
                    let r = self
                        .instances
                        .instance_exec_as(caller, &inst.id, exec, rid)
                        .await;
                    let _ = self.instances.instance_delete(caller, &inst.id).await;
                    let mut r = r?;
                    r.snapshot_id = Some(sid.clone());
                    r.instance_id = None;
                    r
                }
                // Run, then snapshot.
                None => {
                    let inst = self.instances.instance_create(caller, create()).await?;
                    let ran = self
                        .instances
                        .instance_exec_as(caller, &inst.id, exec, rid)
                        .await;
                    let snap = match &ran {
                        Ok(_) => Some(
                            self.instances
                                .snapshot_create(
                                    caller,
                                    SnapshotCreateRequest {
                                        instance_id: Some(inst.id.clone()),
                                        name: None,
                                        tags: vec!["checkpointed".into()],
                                        memory: false,
                                    },
                                )
                                .await,
                        ),
                        Err(_) => None,
                    };
                    let _ = self.instances.instance_delete(caller, &inst.id).await;
                    let mut r = ran?;
                    r.snapshot_id = Some(snap.expect("made when the run succeeded")?.id);
                    r.instance_id = None;
                    r
                }
            },
            Mode::Branched => {
                let from = req.branch_from.clone().ok_or_else(|| {
                    Error::InvalidRequest(
                        "mode branched needs branch_from: a snapshot or instance id".into(),
                    )
                })?;
                // An instance is snapshotted first; that snapshot goes when the run is done.
                let (snap, temporary) = match self
                    .instances
                    .store()?
                    .get_snapshot(Some(&caller.tenant), &from)
                    .await?
                {
                    Some(s) => (s, false),
                    None => {
                        self.instances
                            .instance_record(caller, &from)
                            .await
                            .map_err(|_| {
                                Error::NotFound(format!("no snapshot or instance {from}"))
                            })?;
                        let made = self
                            .instances
                            .snapshot_create(
                                caller,
                                SnapshotCreateRequest {
                                    instance_id: Some(from.clone()),
                                    name: None,
                                    tags: vec!["branched".into()],
                                    memory: false,
                                },
                            )
                            .await?;
                        (
                            self.instances.snapshot_record(caller, &made.id).await?,
                            true,
                        )
                    }
                };
                let ran = async {
                    let inst = self.instances.restore_record(caller, &snap).await?;
                    let r = self
                        .instances
                        .instance_exec_as(caller, &inst.id, exec, rid)
                        .await;
                    let _ = self.instances.instance_delete(caller, &inst.id).await;
                    r
                }
                .await;
                if temporary {
                    let _ = self.instances.snapshot_delete(caller, &snap.id).await;
                }
                let mut r = ran?;
                r.snapshot_id = (!temporary).then(|| snap.id.clone());
                r.instance_id = None;
                r
            }
            Mode::Ephemeral | Mode::Cached => {
                return Err(Error::Internal(format!("mode {mode} is not stateful")))
            }
        };
        resp.mode = mode;
        Ok(resp)
    }
}
