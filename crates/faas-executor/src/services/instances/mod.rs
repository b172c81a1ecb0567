//! Instances and snapshots: long-lived boxes whose files outlive their processes, snapshots of
//! them, and restores and branches of those snapshots. The store records them, so a restarted
//! server lists them all and re-attaches the boxes that still run.
//!
//! This file: the [`Instances`] service, instances' life (create, exec, stop, start, delete),
//! their files, and recovery after a restart; [`snapshots`]: snapshots, restores, branches and
//! forks.

mod snapshots;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_common::{
    Caller, DeadlineAction, EnvVars, ExecuteResponse, InstanceCreateRequest, InstanceDeadline,
    InstanceExecRequest, InstanceInfo, InstanceStatus, IsolationLevel, Mode,
};
use faas_store::{now_ms, InstanceRecord, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::PlatformConfig;
use crate::error::{Error, Result};
use crate::sandbox::agent::ExecOutcome;
use crate::sandbox::exec::{run_agent, AGENT_GRACE};
use crate::sandbox::net::EgressPolicy;
use crate::sandbox::sandboxes::Sandboxes;
use crate::sandbox::{Limits, Network, Sandbox, SandboxSpec};
use crate::services::run::{self, RunInfo};
use crate::services::streams::{OutputEvent, Streams};
use crate::services::tenants::{usage_record, Counted, SandboxLease, Tenants};

pub mod ports;
pub mod processes;

/// What an instance was made with (kept in the store as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub pids: u64,
    pub isolation: IsolationLevel,
    pub env: Vec<(String, String)>,
    pub idle_timeout_s: Option<u64>,
    /// What it may reach, as asked, and whether its tenant could reach the private ranges
    /// when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<faas_common::NetworkRequest>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private_egress: bool,
    /// The caller's labels (not inherited by restores, branches and forks).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// With `public_ports`: the token that opens its ports without a key (a restore, branch
    /// or fork gets its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_token: Option<String>,
    /// The envd access token of an instance made through the E2B surface: what opens its
    /// processes and files there without an API key (kept across stop and start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Its ports answer without a key or token ([`CreateOptions::open_ports`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_ports: bool,
    /// When it ends by itself, and how (an E2B sandbox's timeout); restores, branches and
    /// forks do not inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<InstanceDeadline>,
    /// The template it was made from (the E2B surface's name of its image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl InstanceSpec {
    /// The spec kept in a record (`what` names the record in the error).
    fn parse(value: &serde_json::Value, what: &str) -> Result<InstanceSpec> {
        serde_json::from_value(value.clone())
            .map_err(|e| Error::Internal(format!("{what} spec: {e}")))
    }

    fn sandbox(&self, image: &str) -> SandboxSpec {
        SandboxSpec {
            image: image.to_string(),
            env: self.env.clone(),
            limits: Limits {
                memory_mb: self.memory_mb,
                cpu_cores: self.cpu_cores,
                pids: self.pids,
            },
            network: self.network_policy(),
            isolation: self.isolation,
            mounts: Vec::new(),
        }
    }

    /// Its rules, checked when it was made (none, should a kept spec not parse).
    fn network_policy(&self) -> Network {
        use faas_common::{EgressDefault, NetworkRequest};
        let policy = match &self.network {
            Some(NetworkRequest::Named(n)) if n == "internet" => EgressPolicy::internet(),
            Some(NetworkRequest::Rules(r)) => {
                match EgressPolicy::rules(r.egress == EgressDefault::Allow, &r.allow, &r.deny) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "an instance's kept network rules do not parse; it gets no network");
                        return Network::None;
                    }
                }
            }
            _ => return Network::None,
        };
        Network::Egress(Arc::new(policy.with_private(self.private_egress)))
    }
}

/// An exec in an instance, checked and ready to run.
pub(crate) struct RunnableExec {
    live: Arc<LiveBox>,
    timeout_ms: u64,
    stdin: Option<Vec<u8>>,
}

/// A running instance's box.
pub struct LiveBox {
    pub sandbox: Box<dyn Sandbox>,
    /// Whose it is: another tenant's requests do not find it.
    tenant: String,
    /// Counts it against its tenant's quotas while it runs.
    _lease: SandboxLease,
    /// When it started running (ms since the epoch), for its usage.
    started_ms: i64,
    /// Its memory limit (an exec's answer reports it; no store read per exec).
    memory_mb: u64,
    /// Execs running in it now: an instance is not idle while one runs, however long.
    busy: std::sync::atomic::AtomicUsize,
    /// When an exec last started or ended (ms since the epoch), or the box started.
    last_used_ms: std::sync::atomic::AtomicI64,
    /// What opens its ports without a key (`public_ports`).
    ports_token: Option<String>,
    /// What opens it on the E2B surface (`InstanceSpec::access_token`).
    access_token: Option<String>,
    /// Its ports answer anyone (`InstanceSpec::open_ports`).
    open_ports: bool,
}

impl LiveBox {
    fn new(
        sandbox: Box<dyn Sandbox>,
        spec: &InstanceSpec,
        tenant: &str,
        lease: SandboxLease,
        started_ms: i64,
    ) -> Arc<LiveBox> {
        Arc::new(LiveBox {
            sandbox,
            tenant: tenant.to_string(),
            _lease: lease,
            started_ms,
            memory_mb: spec.memory_mb,
            busy: Default::default(),
            last_used_ms: now_ms().into(),
            ports_token: spec.ports_token.clone(),
            access_token: spec.access_token.clone(),
            open_ports: spec.open_ports,
        })
    }

    /// Records a use now (a process started in it, input sent to one).
    fn touch(&self) {
        self.last_used_ms
            .store(now_ms(), std::sync::atomic::Ordering::SeqCst);
    }

    /// How long it has gone without an exec at `now`: zero while one runs. An exec's end is
    /// recorded before it stops counting as running, so the end of a long exec is never
    /// mistaken for a long idleness.
    fn idle_ms(&self, now: i64) -> i64 {
        use std::sync::atomic::Ordering::SeqCst;
        if self.busy.load(SeqCst) > 0 {
            return 0;
        }
        now - self.last_used_ms.load(SeqCst)
    }
}

/// Counts an exec in a [`LiveBox`] while it lives.
struct Busy(Arc<LiveBox>);

impl Busy {
    fn new(live: &Arc<LiveBox>) -> Busy {
        use std::sync::atomic::Ordering::SeqCst;
        live.busy.fetch_add(1, SeqCst);
        live.last_used_ms.store(now_ms(), SeqCst);
        Busy(live.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.last_used_ms.store(now_ms(), SeqCst);
        self.0.busy.fetch_sub(1, SeqCst);
    }
}

/// What [`Instances::instance_create_with`] adds to a request.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Give it an envd access token (an E2B sandbox).
    pub access_token: bool,
    /// It ends by itself this long after it is made (its box up), and how.
    pub timeout: Option<(Duration, DeadlineAction)>,
    /// The template it was made from, as its surface names it.
    pub template: Option<String>,
    /// Its ports answer anyone who names them (E2B's default, `allowPublicTraffic`): its id,
    /// 128 random bits then, is what opens them.
    pub open_ports: bool,
}

/// The tag of a snapshot that lives only as long as the instances restored from it: the
/// last one's deletion deletes it ([`Instances::instance_fork_with`]).
pub const TRANSIENT_TAG: &str = "transient";

/// What [`Instances::snapshot_restore_with`] changes in the snapshot's spec.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// An access token is made when this asks for one or the snapshot's instance had one.
    pub create: CreateOptions,
    /// Its labels, in place of the snapshot's.
    pub metadata: BTreeMap<String, String>,
    /// Variables set over the snapshot's.
    pub env: Vec<(String, String)>,
}

/// The instances service: instances, their files and their snapshots.
pub struct Instances {
    cfg: PlatformConfig,
    sandboxes: Arc<Sandboxes>,
    /// Instances and snapshots are recorded here; `None` runs without them.
    store: Option<Store>,
    streams: Arc<Streams>,
    pub(crate) tenants: Arc<Tenants>,
    /// The running instances' boxes.
    live: Mutex<HashMap<String, Arc<LiveBox>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances being ended at their deadline now.
    ending: Mutex<HashSet<String>>,
}

impl Instances {
    pub fn new(
        cfg: PlatformConfig,
        sandboxes: Arc<Sandboxes>,
        store: Option<Store>,
        streams: Arc<Streams>,
        tenants: Arc<Tenants>,
    ) -> Arc<Self> {
        Arc::new(Instances {
            cfg,
            sandboxes,
            store,
            streams,
            tenants,
            live: Default::default(),
            locks: Default::default(),
            ending: Default::default(),
        })
    }

    fn live(&self, id: &str) -> Option<Arc<LiveBox>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The caller's running instance `id`.
    fn live_of(&self, caller: &Caller, id: &str) -> Option<Arc<LiveBox>> {
        self.live(id).filter(|l| l.tenant == caller.tenant)
    }

    /// Destroys a running instance's box and records how long it ran and what it used.
    async fn end_live(&self, id: &str, live: Arc<LiveBox>) -> Result<()> {
        let used = live.sandbox.usage().await.ok();
        let r = live.sandbox.destroy().await;
        if let Some(store) = &self.store {
            let wall = Duration::from_millis((now_ms() - live.started_ms).max(0) as u64);
            let u = usage_record(
                format!("inst:{id}:{}", live.started_ms),
                &live.tenant,
                "instance",
                Some(id),
                wall,
                used,
                live.memory_mb,
            );
            if let Err(e) = store.insert_usage(&u).await {
                tracing::warn!(instance = id, error = %e, "could not record the instance's usage");
            }
        }
        r
    }

    fn set_live(&self, id: &str, b: Option<Arc<LiveBox>>) -> Option<Arc<LiveBox>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match b {
            Some(b) => live.insert(id.to_string(), b),
            None => live.remove(id),
        }
    }

    /// One lifecycle operation at a time per instance.
    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or_else(|| {
            Error::Unsupported("this server has no store: instances and snapshots are off".into())
        })
    }

    /// The caller's instance `id`; another tenant's is `not_found`, as a missing one.
    pub(crate) async fn instance_record(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<InstanceRecord> {
        self.store()?
            .get_instance(Some(&caller.tenant), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no instance {id}")))
    }

    /// Checks the tenant's `instances` quota for `adding` more and takes a sandbox lease
    /// for one of them, before anything is made.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        adding: u64,
        memory_mb: u64,
    ) -> Result<SandboxLease> {
        let have = self.store()?.count_instances(&caller.tenant).await?;
        self.tenants
            .check_count(
                &caller.tenant,
                Counted::Instances,
                have.max(0) as u64,
                adding,
            )
            .await?;
        self.tenants.lease_sandbox(&caller.tenant, memory_mb).await
    }

    pub async fn instance_create(
        &self,
        caller: &Caller,
        req: InstanceCreateRequest,
    ) -> Result<InstanceInfo> {
        self.instance_create_with(caller, req, CreateOptions::default())
            .await
    }

    /// [`Instances::instance_create`] with what only the platform's own surfaces ask for.
    pub async fn instance_create_with(
        &self,
        caller: &Caller,
        req: InstanceCreateRequest,
        opts: CreateOptions,
    ) -> Result<InstanceInfo> {
        let store = self.store()?;
        check_metadata(&req.metadata)?;
        let network = run::network(&self.tenants, &caller.tenant, req.network.as_ref()).await?;
        let base = run::spec(
            &self.cfg,
            req.image.as_deref(),
            req.memory_mb,
            req.cpu_cores,
            req.isolation,
        )?;
        let backend = self.sandboxes.resolve(req.runtime.unwrap_or_default())?;
        let spec = InstanceSpec {
            memory_mb: base.limits.memory_mb,
            cpu_cores: base.limits.cpu_cores,
            pids: base.limits.pids,
            isolation: base.isolation,
            env: req.env_vars.0.clone(),
            idle_timeout_s: req.idle_timeout_s.filter(|s| *s > 0),
            network: req.network.clone().filter(|n| !n.is_none()),
            private_egress: network.policy().is_some_and(|p| p.private),
            metadata: req.metadata.clone(),
            ports_token: req.public_ports.then(new_token).transpose()?,
            access_token: opts.access_token.then(new_token).transpose()?,
            open_ports: opts.open_ports,
            deadline: None,
            template: opts.template.clone(),
        };
        let lease = self.admit(caller, 1, spec.memory_mb).await?;
        let id = if opts.open_ports { long_id() } else { new_id() };
        let sandbox = backend
            .instance_create(&id, &spec.sandbox(&base.image), None)
            .await?;
        let now = now_ms();
        let mut spec = spec;
        spec.deadline = opts.timeout.map(|t| deadline_after(now, t));
        let rec = InstanceRecord {
            id: id.clone(),
            tenant: caller.tenant.clone(),
            name: req.name.clone(),
            backend: backend.name().to_string(),
            image: base.image.clone(),
            status: "running".into(),
            status_reason: None,
            spec: serde_json::to_value(&spec).expect("serializable"),
            source_snapshot: None,
            created_ms: now,
            updated_ms: now,
            last_used_ms: now,
        };
        if let Err(e) = store.insert_instance(&rec).await {
            let _ = sandbox.destroy().await;
            let _ = backend.instance_remove(&id).await;
            return Err(e.into());
        }
        self.set_live(
            &id,
            Some(LiveBox::new(sandbox, &spec, &caller.tenant, lease, now)),
        );
        info(&rec)
    }

    /// The caller's instances, or those whose metadata has every `(key, value)` of
    /// `metadata`.
    pub async fn instance_list(
        &self,
        caller: &Caller,
        metadata: &[(String, String)],
    ) -> Result<Vec<InstanceInfo>> {
        let mut all = Vec::new();
        for r in self.store()?.list_instances(Some(&caller.tenant)).await? {
            let i = info(&r)?;
            if metadata
                .iter()
                .all(|(k, v)| i.metadata.get(k).is_some_and(|have| have == v))
            {
                all.push(i);
            }
        }
        Ok(all)
    }

    pub async fn instance_get(&self, caller: &Caller, id: &str) -> Result<InstanceInfo> {
        info(&self.instance_record(caller, id).await?)
    }

    /// Runs a command in a running instance; its files and processes stay.
    pub async fn instance_exec(
        &self,
        caller: &Caller,
        id: &str,
        req: InstanceExecRequest,
    ) -> Result<ExecuteResponse> {
        let resp = self.instance_exec_as(caller, id, req, None).await?;
        // An execute's run is recorded with the execution; this one on its own.
        if let Some(store) = &self.store {
            let u = faas_store::UsageRecord {
                id: format!("iexec:{}", resp.request_id),
                tenant: caller.tenant.clone(),
                kind: "instance_exec".into(),
                subject: Some(id.to_string()),
                wall_ms: resp.duration_ms,
                cpu_ms: resp.cpu_ms.unwrap_or(0.0),
                memory_mib_s: resp.memory_mb as f64 * resp.duration_ms / 1000.0,
                peak_memory_bytes: resp
                    .peak_memory_mb
                    .map_or(0, |m| (m * 1024.0 * 1024.0) as i64),
                at_ms: now_ms(),
            };
            let store = store.clone();
            self.sandboxes.tasks.spawn(async move {
                if let Err(e) = store.insert_usage(&u).await {
                    tracing::warn!(error = %e, "could not record an instance exec's usage");
                }
            });
        }
        Ok(resp)
    }

    /// Like [`Instances::instance_exec`]; with `request_id`, its output goes to that
    /// execution's stream as it comes.
    pub(crate) async fn instance_exec_as(
        &self,
        caller: &Caller,
        id: &str,
        req: InstanceExecRequest,
        request_id: Option<&str>,
    ) -> Result<ExecuteResponse> {
        let t0 = Instant::now();
        let (out, run, usage) = self.instance_run(caller, id, req, request_id).await?;
        let (live, timeout_ms) = (run.live, run.timeout_ms);
        let mut resp = run::response(
            &self.sandboxes.metrics,
            out,
            RunInfo {
                request_id: request_id
                    .map(str::to_string)
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                backend: live.sandbox.backend(),
                sandbox_id: live.sandbox.id().to_string(),
                mode: Mode::Persistent,
                warm: true,
                timeout_ms,
                memory_mb: live.memory_mb,
                started: t0,
                usage,
            },
        );
        resp.instance_id = Some(id.to_string());
        Ok(resp)
    }

    /// Runs a command in the caller's running instance `id`. With what it ran, says what the
    /// box used meanwhile (its CPU time over the command, counting anything else that ran in
    /// it at the same time; its peak memory since it started).
    async fn instance_run(
        &self,
        caller: &Caller,
        id: &str,
        req: InstanceExecRequest,
        request_id: Option<&str>,
    ) -> Result<(ExecOutcome, RunnableExec, Option<crate::sandbox::BoxUsage>)> {
        let mut run = self.runnable(caller, id, &req).await?;
        let (live, timeout_ms, stdin) = (run.live.clone(), run.timeout_ms, run.stdin.take());
        let exec = run::exec_request(
            &self.cfg,
            &req.command,
            &req.env_vars,
            &req.working_dir,
            timeout_ms,
        );
        let guard = Duration::from_millis(timeout_ms) + AGENT_GRACE;
        let busy = Busy::new(&live);
        let before = live.sandbox.usage().await.ok();
        let stream = request_id.map(|r| (&*self.streams, r));
        let out = match run_agent(
            live.sandbox.as_ref(),
            exec,
            stdin,
            guard,
            run::to_stream(stream),
        )
        .await
        {
            Ok(out) => out,
            // Nothing ran: its box is gone (killed from outside, or its memory limit ended it).
            Err(Error::AgentUnreachable { message, .. }) => {
                let why =
                    format!("its box is gone ({message}); its files are kept: start it again");
                if let Some(l) = self.set_live(id, None) {
                    let _ = self.end_live(id, l).await;
                }
                self.store()?
                    .set_instance_status(id, "lost", Some(&why))
                    .await?;
                return Err(Error::Conflict(format!("instance {id} is lost: {why}")));
            }
            // The box went away under the command because the instance was stopped, deleted
            // or restored meanwhile: the state changed, not a fault.
            Err(e @ Error::Agent { .. })
                if !self.live(id).is_some_and(|now| Arc::ptr_eq(&now, &live)) =>
            {
                tracing::debug!(instance = id, error = %e, "instance left its box mid-exec");
                // A stop records its status once the box is gone: it may still say running.
                let state = match self.store()?.get_instance(None, id).await? {
                    Some(r) if r.status == "running" => "stopped".to_string(),
                    Some(r) => r.status,
                    None => "deleted".into(),
                };
                return Err(Error::Conflict(format!(
                    "instance {id} was {state} while the command ran"
                )));
            }
            Err(e) => return Err(e),
        };
        let after = live.sandbox.usage().await.ok();
        let usage = match (before, after) {
            (Some(b), Some(a)) => Some(crate::sandbox::BoxUsage {
                cpu_ns: a.cpu_ns.saturating_sub(b.cpu_ns),
                ..a
            }),
            _ => None,
        };
        drop(busy);
        // The last use is for display (the idle reaper reads the box's own): recorded off the
        // answer's path.
        if let Ok(store) = self.store() {
            let (store, id) = (store.clone(), id.to_string());
            self.sandboxes.tasks.spawn(async move {
                let _ = store.touch_instance(&id, now_ms()).await;
            });
        }
        Ok((out, run, usage))
    }

    /// What an exec in instance `id` needs, or why it cannot run (unknown, not running, bad
    /// input): checked before anything runs.
    pub(crate) async fn runnable(
        &self,
        caller: &Caller,
        id: &str,
        req: &InstanceExecRequest,
    ) -> Result<RunnableExec> {
        // A live box is a running instance: the store is read only to say why one is not.
        let live = match self.live_of(caller, id) {
            Some(live) => live,
            None => {
                let rec = self.instance_record(caller, id).await?;
                return Err(Error::Conflict(format!(
                    "instance {id} is {}: start it first",
                    rec.status
                )));
            }
        };
        let timeout_ms = run::timeout(&self.cfg, req.timeout_ms)?;
        let stdin = req.stdin_bytes().map_err(Error::InvalidRequest)?;
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        Ok(RunnableExec {
            live,
            timeout_ms,
            stdin,
        })
    }

    /// Stops an instance's box; its files stay. Stopping a stopped one is fine.
    pub async fn instance_stop(&self, caller: &Caller, id: &str) -> Result<InstanceInfo> {
        self.instance_stop_because(caller, id, None).await
    }

    async fn instance_stop_because(
        &self,
        caller: &Caller,
        id: &str,
        why: Option<&str>,
    ) -> Result<InstanceInfo> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.instance_record(caller, id).await?;
        self.stop_held(id, why).await?;
        self.instance_get(caller, id).await
    }

    /// Stops instance `id`, its lock held.
    async fn stop_held(&self, id: &str, why: Option<&str>) -> Result<()> {
        if let Some(live) = self.set_live(id, None) {
            self.end_live(id, live).await?;
        }
        self.store()?
            .set_instance_status(id, "stopped", why)
            .await?;
        Ok(())
    }

    /// Starts a stopped (or lost) instance's box over its kept files.
    pub async fn instance_start(&self, caller: &Caller, id: &str) -> Result<InstanceInfo> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let rec = self.instance_record(caller, id).await?;
        if self.live(id).is_some() {
            return info(&rec);
        }
        let backend = self.sandboxes.backend_named(&rec.backend)?;
        let mut spec = InstanceSpec::parse(&rec.spec, &format!("instance {id}"))?;
        if spec.deadline.is_some_and(|d| d.at_ms <= now_ms()) {
            // It passed while the instance was stopped: started again, it runs without one
            // (or with the one its caller sets next), not to be stopped again at once.
            spec.deadline = None;
            self.store()?
                .set_instance_spec(id, &serde_json::to_value(&spec).expect("serializable"))
                .await?;
        }
        let lease = self
            .tenants
            .lease_sandbox(&caller.tenant, spec.memory_mb)
            .await?;
        let sandbox = backend
            .instance_start(id, &spec.sandbox(&rec.image))
            .await?;
        self.set_live(
            id,
            Some(LiveBox::new(sandbox, &spec, &rec.tenant, lease, now_ms())),
        );
        let store = self.store()?;
        store.set_instance_status(id, "running", None).await?;
        store.touch_instance(id, now_ms()).await?;
        self.instance_get(caller, id).await
    }

    /// Destroys an instance: its box and its files. Snapshots taken of it stay.
    pub async fn instance_delete(&self, caller: &Caller, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let rec = self.instance_record(caller, id).await?;
        self.delete_held(&rec).await
    }

    /// Sets (`None`: clears) when the caller's instance `id` ends by itself, and how. It is
    /// kept with the instance (a restarted server keeps it) and holds while the instance
    /// runs: a stopped one waits, and a start after it passed clears it.
    pub async fn set_deadline(
        &self,
        caller: &Caller,
        id: &str,
        deadline: Option<InstanceDeadline>,
    ) -> Result<InstanceInfo> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let mut rec = self.instance_record(caller, id).await?;
        let mut spec = InstanceSpec::parse(&rec.spec, &format!("instance {id}"))?;
        spec.deadline = deadline;
        rec.spec = serde_json::to_value(&spec).expect("serializable");
        if !self.store()?.set_instance_spec(id, &rec.spec).await? {
            return Err(Error::NotFound(format!("no instance {id}")));
        }
        info(&rec)
    }

    /// What the caller's running instance `id` used since its box started (its cgroup's
    /// figures), and when that was (ms since the epoch).
    pub async fn instance_usage(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(crate::sandbox::BoxUsage, i64)> {
        let live = self.running_box(caller, id).await?;
        let used = live.sandbox.usage().await?;
        Ok((used, live.started_ms))
    }

    /// Ends instance `id` of `tenant` as its deadline says, if it still says so once the
    /// instance's lock is held (a new deadline may have come meanwhile).
    async fn end_at_deadline(&self, id: &str, tenant: &str) {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let caller = Caller::platform_for(tenant);
        let Ok(rec) = self.instance_record(&caller, id).await else {
            return;
        };
        let Ok(i) = info(&rec) else {
            return;
        };
        let Some(d) = i.deadline.filter(|d| deadline_applies(&i, d, now_ms())) else {
            return;
        };
        let r = match d.then {
            DeadlineAction::Delete => {
                tracing::info!(instance = %id, "deleted at its deadline");
                self.delete_held(&rec).await
            }
            DeadlineAction::Stop => {
                tracing::info!(instance = %id, "stopped at its deadline");
                self.stop_held(id, Some("stopped at its deadline")).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(instance = %id, error = %e, "could not end the instance at its deadline");
        }
    }

    /// Deletes instance `rec`, its lock held.
    async fn delete_held(&self, rec: &InstanceRecord) -> Result<()> {
        let id = rec.id.as_str();
        if let Some(live) = self.set_live(id, None) {
            let _ = self.end_live(id, live).await;
        }
        self.sandboxes
            .backend_named(&rec.backend)?
            .instance_remove(id)
            .await?;
        self.store()?.delete_instance(id).await?;
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(snap) = &rec.source_snapshot {
            self.collect_transient(snap).await;
        }
        Ok(())
    }

    /// The bytes of file `path` in a running instance.
    pub async fn instance_read_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>> {
        check_path("path", path)?;
        let (out, _, _) = self
            .instance_run(
                caller,
                id,
                InstanceExecRequest {
                    command: faas_common::CommandSpec::Argv(vec![
                        "cat".into(),
                        "--".into(),
                        path.into(),
                    ]),
                    env_vars: EnvVars::default(),
                    working_dir: None,
                    timeout_ms: None,
                    stdin: None,
                    stdin_b64: None,
                },
                None,
            )
            .await?;
        if out.exit.exit_code != 0 {
            return Err(Error::NotFound(format!(
                "cannot read {path} in instance {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if out.exit.truncated {
            return Err(Error::InvalidRequest(format!(
                "{path} is larger than the output cap ({} bytes)",
                self.cfg.output_limit
            )));
        }
        Ok(out.stdout)
    }

    /// Writes `data` to file `path` in a running instance (parent directories made).
    pub async fn instance_write_file(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<()> {
        check_path("path", path)?;
        let (out, _, _) = self
            .instance_run(
                caller,
                id,
                InstanceExecRequest {
                    command: faas_common::CommandSpec::Argv(vec![
                        "sh".into(),
                        "-c".into(),
                        r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#.into(),
                        "sh".into(),
                        path.into(),
                    ]),
                    env_vars: EnvVars::default(),
                    working_dir: None,
                    timeout_ms: None,
                    stdin: None,
                    stdin_b64: Some(base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        &data,
                    )),
                },
                None,
            )
            .await?;
        if out.exit.exit_code != 0 {
            return Err(Error::InvalidRequest(format!(
                "cannot write {path} in instance {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Runs a command in an instance and returns its output as a stream at once.
    pub async fn instance_exec_stream(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        req: InstanceExecRequest,
    ) -> Result<(String, mpsc::UnboundedReceiver<OutputEvent>)> {
        // Errors that need no run (unknown, stopped, bad input) are answered as errors.
        self.runnable(caller, id, &req).await?;
        let rid = uuid::Uuid::new_v4().to_string();
        let key = Streams::key(&caller.tenant, &rid);
        self.streams.open(&key);
        let rx = self.streams.subscribe(&key).expect("just opened");
        let (this, id, r2, caller) = (self.clone(), id.to_string(), rid.clone(), caller.clone());
        self.sandboxes.tasks.spawn(async move {
            let r = this.instance_exec_as(&caller, &id, req, Some(&key)).await;
            this.streams
                .finish_execution(&caller.tenant, &r2, Mode::Persistent, &r);
        });
        Ok((rid, rx))
    }

    // ---- life of the server ----

    /// After a restart: instances recorded as running get their box back (re-attached), or
    /// are marked `lost` with the reason. Executions left `running` by a crash are failed.
    pub async fn recover_instances(&self) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store
            .fail_running_executions("the server stopped while it ran")
            .await?;
        for rec in store.list_instances(None).await? {
            if rec.status != "running" {
                continue;
            }
            let attached = match (
                InstanceSpec::parse(&rec.spec, &format!("instance {}", rec.id)),
                self.sandboxes.backend_named(&rec.backend),
            ) {
                (Ok(spec), Ok(b)) => b
                    .instance_attach(&rec.id, &spec.sandbox(&rec.image))
                    .await
                    .map(|found| found.map(|sandbox| (sandbox, spec))),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match attached {
                Ok(Some((sandbox, spec))) => {
                    tracing::info!(instance = %rec.id, "re-attached");
                    // It runs: it counts, whatever the quota says now.
                    let lease = self
                        .tenants
                        .lease_sandbox_unchecked(&rec.tenant, spec.memory_mb)
                        .await?;
                    // Running since its status last changed (it was started then).
                    let since = rec.updated_ms;
                    self.set_live(
                        &rec.id,
                        Some(LiveBox::new(sandbox, &spec, &rec.tenant, lease, since)),
                    );
                }
                Ok(None) => {
                    store
                        .set_instance_status(
                            &rec.id,
                            "lost",
                            Some("its box was gone when the server started (host restarted, or killed from outside); its files are kept: start it again"),
                        )
                        .await?;
                }
                Err(e) => {
                    let why = format!("could not re-attach after a server restart: {e}");
                    store
                        .set_instance_status(&rec.id, "lost", Some(&why))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Stops instances idle past their `idle_timeout_s`, and ends those whose deadline
    /// passed (looking again every second, or sooner when a deadline comes sooner); runs
    /// until the executor shuts down.
    pub(crate) async fn reap_idle_instances(self: Arc<Self>) {
        let mut pause = Duration::from_secs(1);
        loop {
            tokio::time::sleep(pause).await;
            pause = Duration::from_secs(1);
            if self.sandboxes.tasks.is_closed() {
                return;
            }
            let Ok(store) = self.store() else {
                return;
            };
            let Ok(records) = store.list_instances(None).await else {
                continue;
            };
            let now = now_ms();
            for rec in records {
                let Ok(i) = info(&rec) else {
                    continue;
                };
                if let Some(d) = i.deadline {
                    if deadline_applies(&i, &d, now) {
                        self.clone().spawn_end_at_deadline(&rec);
                        continue;
                    }
                    let left = d.at_ms - now;
                    if left > 0 && i.status == InstanceStatus::Running {
                        pause = pause.min(Duration::from_millis(left as u64));
                    }
                }
                let Some(limit) = i.idle_timeout_s else {
                    continue;
                };
                let limit_ms = (limit as i64) * 1000;
                let Some(live) = self.live(&i.id) else {
                    continue;
                };
                if i.status == InstanceStatus::Running
                    && now - i.last_used_at_ms > limit_ms
                    && live.idle_ms(now_ms()) > limit_ms
                {
                    // A background process that still runs is activity too.
                    if self.runs_processes(&live).await {
                        live.touch();
                        continue;
                    }
                    let why = format!("stopped after {limit} s without an exec");
                    tracing::info!(instance = %i.id, "{why}");
                    let caller = Caller::platform_for(&rec.tenant);
                    let _ = self.instance_stop_because(&caller, &i.id, Some(&why)).await;
                }
            }
        }
    }

    /// Ends `rec` at its deadline in the background, unless that is under way already.
    fn spawn_end_at_deadline(self: Arc<Self>, rec: &InstanceRecord) {
        let (id, tenant) = (rec.id.clone(), rec.tenant.clone());
        if !self
            .ending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone())
        {
            return;
        }
        let tasks = self.sandboxes.tasks.clone();
        tasks.spawn(async move {
            self.end_at_deadline(&id, &tenant).await;
            self.ending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// The running instances' boxes are left running: a restarted server re-attaches them.
    pub(crate) fn forget_live_instances(&self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Files are addressed by absolute path inside the box.
/// `what` names the field in the error.
fn check_path(what: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::InvalidRequest(format!(
            "{what} must be an absolute path, got {path:?}"
        )));
    }
    if path.contains('\0') {
        return Err(Error::InvalidRequest(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// The deadline `timeout` after `now` (ms since the epoch).
fn deadline_after(now: i64, (after, then): (Duration, DeadlineAction)) -> InstanceDeadline {
    InstanceDeadline {
        at_ms: now.saturating_add(after.as_millis().min(i64::MAX as u128) as i64),
        then,
    }
}

/// Whether deadline `d` of instance `i` ends it at `now`: it passed, and the instance runs
/// (or, to be deleted, lost its box: nobody paused it).
fn deadline_applies(i: &InstanceInfo, d: &InstanceDeadline, now: i64) -> bool {
    d.at_ms <= now
        && match i.status {
            InstanceStatus::Running => true,
            InstanceStatus::Lost => d.then == DeadlineAction::Delete,
            InstanceStatus::Stopped => false,
        }
}

/// An id that is also a secret (an instance whose ports are open to whoever names them).
pub(crate) fn long_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new instance's token (its ports token, its access token): 32 random bytes in hex.
pub(crate) fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(bytes))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

fn info(r: &InstanceRecord) -> Result<InstanceInfo> {
    let spec = InstanceSpec::parse(&r.spec, &format!("instance {}", r.id))?;
    let status = match r.status.as_str() {
        "running" => InstanceStatus::Running,
        "stopped" => InstanceStatus::Stopped,
        _ => InstanceStatus::Lost,
    };
    Ok(InstanceInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        status,
        status_reason: r.status_reason.clone(),
        backend: r.backend.clone(),
        image: r.image.clone(),
        isolation: spec.isolation,
        memory_mb: spec.memory_mb,
        cpu_cores: spec.cpu_cores,
        idle_timeout_s: spec.idle_timeout_s,
        network: spec.network.clone().unwrap_or_default(),
        source_snapshot: r.source_snapshot.clone(),
        created_at_ms: r.created_ms,
        last_used_at_ms: r.last_used_ms,
        metadata: spec.metadata,
        public_ports: spec.ports_token.is_some(),
        ports_token: spec.ports_token,
        deadline: spec.deadline,
        template: spec.template,
        access_token: spec.access_token,
    })
}

/// Metadata is string keys and values, [`faas_common::MAX_METADATA_BYTES`] in all.
fn check_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > faas_common::MAX_METADATA_BYTES {
        return Err(Error::InvalidRequest(format!(
            "metadata is {size} bytes; at most {} are kept",
            faas_common::MAX_METADATA_BYTES
        )));
    }
    if let Some(k) = m.keys().find(|k| k.is_empty()) {
        return Err(Error::InvalidRequest(format!(
            "metadata keys must not be empty, got {k:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(status: InstanceStatus) -> InstanceInfo {
        let spec = serde_json::json!({
            "memory_mb": 256, "cpu_cores": 1.0, "pids": 64, "isolation": "container",
            "env": [], "idle_timeout_s": null,
            "deadline": {"at_ms": 1000, "then": "delete"}
        });
        let rec = InstanceRecord {
            id: "i".into(),
            tenant: "t".into(),
            name: None,
            backend: "native".into(),
            image: "img".into(),
            status: match status {
                InstanceStatus::Running => "running",
                InstanceStatus::Stopped => "stopped",
                InstanceStatus::Lost => "lost",
            }
            .into(),
            status_reason: None,
            spec,
            source_snapshot: None,
            created_ms: 0,
            updated_ms: 0,
            last_used_ms: 0,
        };
        info(&rec).unwrap()
    }

    #[test]
    fn deadlines_end_running_instances_once_passed() {
        let i = instance(InstanceStatus::Running);
        let d = i.deadline.expect("kept in the spec");
        assert_eq!(d.then, DeadlineAction::Delete);
        assert!(!deadline_applies(&i, &d, 999));
        assert!(deadline_applies(&i, &d, 1000));
        // A stopped (paused) one waits; a lost one is deleted, but not stopped again.
        let stopped = instance(InstanceStatus::Stopped);
        assert!(!deadline_applies(&stopped, &d, 5000));
        let lost = instance(InstanceStatus::Lost);
        assert!(deadline_applies(&lost, &d, 5000));
        let stop = InstanceDeadline {
            then: DeadlineAction::Stop,
            ..d
        };
        assert!(!deadline_applies(&lost, &stop, 5000));
    }

    #[test]
    fn a_deadline_counts_from_when_the_box_is_up() {
        let d = deadline_after(1_000, (Duration::from_secs(3), DeadlineAction::Stop));
        assert_eq!(d.at_ms, 4_000);
        assert_eq!(
            deadline_after(i64::MAX - 1, (Duration::MAX, DeadlineAction::Delete)).at_ms,
            i64::MAX
        );
    }
}
