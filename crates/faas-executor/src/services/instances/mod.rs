//! Instances and snapshots: long-lived boxes whose files outlive their processes, snapshots of
//! them, and restores and branches of those snapshots. The store records them, so a restarted
//! server lists them all and re-attaches the boxes that still run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_common::{
    BranchResponse, EnvVars, ExecuteResponse, InstanceCreateRequest, InstanceExecRequest,
    InstanceInfo, InstanceStatus, IsolationLevel, Mode, SnapshotCreateRequest, SnapshotInfo,
    SnapshotKind,
};
use faas_store::{now_ms, InstanceRecord, SnapshotRecord, Store};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Limits, Network, Sandbox, SandboxSpec};
use crate::error::{Error, Result};
use crate::service::{run_agent, Executor, RunInfo, AGENT_GRACE};

/// What an instance was made with (kept in the store as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub pids: u64,
    pub isolation: IsolationLevel,
    pub env: Vec<(String, String)>,
    pub idle_timeout_s: Option<u64>,
    /// The caller's labels (not inherited by restores, branches and forks).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
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
            network: Network::None,
            isolation: self.isolation,
            mounts: Vec::new(),
        }
    }
}

/// An exec in an instance, checked and ready to run.
pub(crate) struct RunnableExec {
    live: Arc<LiveBox>,
    spec: InstanceSpec,
    timeout_ms: u64,
    stdin: Option<Vec<u8>>,
}

/// A running instance's box.
pub struct LiveBox {
    pub sandbox: Box<dyn Sandbox>,
    /// Execs running in it now: an instance is not idle while one runs, however long.
    busy: std::sync::atomic::AtomicUsize,
    /// When an exec last started or ended (ms since the epoch), or the box started.
    last_used_ms: std::sync::atomic::AtomicI64,
}

impl LiveBox {
    fn new(sandbox: Box<dyn Sandbox>) -> Arc<LiveBox> {
        Arc::new(LiveBox {
            sandbox,
            busy: Default::default(),
            last_used_ms: now_ms().into(),
        })
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

/// Instance state shared by the executor.
#[derive(Default)]
pub struct InstanceState {
    live: Mutex<HashMap<String, Arc<LiveBox>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl InstanceState {
    fn live(&self, id: &str) -> Option<Arc<LiveBox>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
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
        source_snapshot: r.source_snapshot.clone(),
        created_at_ms: r.created_ms,
        last_used_at_ms: r.last_used_ms,
        metadata: spec.metadata,
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

fn snapshot_info(r: &SnapshotRecord, took_ms: Option<f64>) -> SnapshotInfo {
    SnapshotInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        instance_id: r.instance_id.clone(),
        parent_id: r.parent_id.clone(),
        backend: r.backend.clone(),
        image: r.image.clone(),
        kind: if r.kind == "memory" {
            SnapshotKind::Memory
        } else {
            SnapshotKind::Filesystem
        },
        size_bytes: r.size_bytes.max(0) as u64,
        tags: r.tags.clone(),
        created_at_ms: r.created_ms,
        took_ms,
        checkpoint_ms: r.artifact["checkpoint_ms"].as_f64(),
    }
}

impl Executor {
    pub(crate) fn store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or_else(|| {
            Error::Unsupported("this server has no store: instances and snapshots are off".into())
        })
    }

    fn backend_named(&self, name: &str) -> Result<Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.backend.clone())
            .ok_or_else(|| {
                Error::BackendUnavailable(format!("the {name} backend is not available now"))
            })
    }

    async fn instance_record(&self, id: &str) -> Result<InstanceRecord> {
        self.store()?
            .get_instance(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no instance {id}")))
    }

    async fn snapshot_record(&self, id: &str) -> Result<SnapshotRecord> {
        self.store()?
            .get_snapshot(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no snapshot {id}")))
    }

    pub async fn instance_create(&self, req: InstanceCreateRequest) -> Result<InstanceInfo> {
        let store = self.store()?;
        check_metadata(&req.metadata)?;
        if let Some(net) = req.network.as_deref() {
            if net != "none" {
                return Err(Error::Unsupported(format!(
                    "network {net:?} is not offered: sandboxes have no network (`none`)"
                )));
            }
        }
        let base = self.spec(
            req.image.as_deref(),
            req.memory_mb,
            req.cpu_cores,
            req.isolation,
        )?;
        let backend = self.resolve(req.runtime.unwrap_or_default())?;
        let spec = InstanceSpec {
            memory_mb: base.limits.memory_mb,
            cpu_cores: base.limits.cpu_cores,
            pids: base.limits.pids,
            isolation: base.isolation,
            env: req.env_vars.0.clone(),
            idle_timeout_s: req.idle_timeout_s.filter(|s| *s > 0),
            metadata: req.metadata.clone(),
        };
        let id = new_id();
        let sandbox = backend
            .instance_create(&id, &spec.sandbox(&base.image), None)
            .await?;
        let now = now_ms();
        let rec = InstanceRecord {
            id: id.clone(),
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
        self.instances.set_live(&id, Some(LiveBox::new(sandbox)));
        info(&rec)
    }

    /// Every instance, or those whose metadata has every `(key, value)` of `metadata`.
    pub async fn instance_list(&self, metadata: &[(String, String)]) -> Result<Vec<InstanceInfo>> {
        let mut all = Vec::new();
        for r in self.store()?.list_instances().await? {
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

    pub async fn instance_get(&self, id: &str) -> Result<InstanceInfo> {
        info(&self.instance_record(id).await?)
    }

    /// Runs a command in a running instance; its files and processes stay.
    pub async fn instance_exec(
        &self,
        id: &str,
        req: InstanceExecRequest,
    ) -> Result<ExecuteResponse> {
        self.instance_exec_as(id, req, None).await
    }

    /// Like [`Executor::instance_exec`]; with `request_id`, its output goes to that
    /// execution's stream as it comes.
    pub(crate) async fn instance_exec_as(
        &self,
        id: &str,
        req: InstanceExecRequest,
        request_id: Option<&str>,
    ) -> Result<ExecuteResponse> {
        let t0 = Instant::now();
        let (out, run) = self.instance_run(id, req, request_id).await?;
        let (live, spec, timeout_ms) = (run.live, run.spec, run.timeout_ms);
        let mut resp = self.response(
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
                memory_mb: spec.memory_mb,
                started: t0,
            },
        );
        resp.instance_id = Some(id.to_string());
        Ok(resp)
    }

    async fn instance_run(
        &self,
        id: &str,
        req: InstanceExecRequest,
        request_id: Option<&str>,
    ) -> Result<(crate::agent::ExecOutcome, RunnableExec)> {
        let mut run = self.runnable(id, &req).await?;
        let (live, timeout_ms, stdin) = (run.live.clone(), run.timeout_ms, run.stdin.take());
        let exec = self.exec_request(&req.command, &req.env_vars, &req.working_dir, timeout_ms);
        let guard = Duration::from_millis(timeout_ms) + AGENT_GRACE;
        let busy = Busy::new(&live);
        let stream = request_id.map(|r| (&self.streams, r));
        let out = match run_agent(live.sandbox.as_ref(), exec, stdin, guard, stream).await {
            Ok(out) => out,
            // Nothing ran: its box is gone (killed from outside, or its memory limit ended it).
            Err(Error::AgentUnreachable { message, .. }) => {
                let why =
                    format!("its box is gone ({message}); its files are kept: start it again");
                if let Some(l) = self.instances.set_live(id, None) {
                    let _ = l.sandbox.destroy().await;
                }
                self.store()?
                    .set_instance_status(id, "lost", Some(&why))
                    .await?;
                return Err(Error::Conflict(format!("instance {id} is lost: {why}")));
            }
            // The box went away under the command because the instance was stopped, deleted
            // or restored meanwhile: the state changed, not a fault.
            Err(e @ Error::Agent { .. })
                if !self
                    .instances
                    .live(id)
                    .is_some_and(|now| Arc::ptr_eq(&now, &live)) =>
            {
                tracing::debug!(instance = id, error = %e, "instance left its box mid-exec");
                // A stop records its status once the box is gone: it may still say running.
                let state = match self.store()?.get_instance(id).await? {
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
        drop(busy);
        let _ = self.store()?.touch_instance(id, now_ms()).await;
        Ok((out, run))
    }

    /// What an exec in instance `id` needs, or why it cannot run (unknown, not running, bad
    /// input): checked before anything runs.
    pub(crate) async fn runnable(
        &self,
        id: &str,
        req: &InstanceExecRequest,
    ) -> Result<RunnableExec> {
        let rec = self.instance_record(id).await?;
        let live = self.instances.live(id).ok_or_else(|| {
            Error::Conflict(format!("instance {id} is {}: start it first", rec.status))
        })?;
        let timeout_ms = self.timeout(req.timeout_ms)?;
        let stdin = req.stdin_bytes().map_err(Error::InvalidRequest)?;
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        Ok(RunnableExec {
            live,
            spec: InstanceSpec::parse(&rec.spec, &format!("instance {id}"))?,
            timeout_ms,
            stdin,
        })
    }

    pub(crate) fn timeout(&self, asked: Option<u64>) -> Result<u64> {
        let timeout_ms = asked.unwrap_or(self.cfg.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > self.cfg.max_timeout_ms {
            return Err(Error::InvalidRequest(format!(
                "timeout_ms must be between 1 and {}, got {timeout_ms}",
                self.cfg.max_timeout_ms
            )));
        }
        Ok(timeout_ms)
    }

    /// Stops an instance's box; its files stay. Stopping a stopped one is fine.
    pub async fn instance_stop(&self, id: &str) -> Result<InstanceInfo> {
        self.instance_stop_because(id, None).await
    }

    async fn instance_stop_because(&self, id: &str, why: Option<&str>) -> Result<InstanceInfo> {
        let lock = self.instances.lock(id);
        let _held = lock.lock().await;
        self.instance_record(id).await?;
        if let Some(live) = self.instances.set_live(id, None) {
            live.sandbox.destroy().await?;
        }
        self.store()?
            .set_instance_status(id, "stopped", why)
            .await?;
        self.instance_get(id).await
    }

    /// Starts a stopped (or lost) instance's box over its kept files.
    pub async fn instance_start(&self, id: &str) -> Result<InstanceInfo> {
        let lock = self.instances.lock(id);
        let _held = lock.lock().await;
        let rec = self.instance_record(id).await?;
        if self.instances.live(id).is_some() {
            return info(&rec);
        }
        let backend = self.backend_named(&rec.backend)?;
        let spec = InstanceSpec::parse(&rec.spec, &format!("instance {id}"))?;
        let sandbox = backend
            .instance_start(id, &spec.sandbox(&rec.image))
            .await?;
        self.instances.set_live(id, Some(LiveBox::new(sandbox)));
        let store = self.store()?;
        store.set_instance_status(id, "running", None).await?;
        store.touch_instance(id, now_ms()).await?;
        self.instance_get(id).await
    }

    /// Destroys an instance: its box and its files. Snapshots taken of it stay.
    pub async fn instance_delete(&self, id: &str) -> Result<()> {
        let lock = self.instances.lock(id);
        let _held = lock.lock().await;
        let rec = self.instance_record(id).await?;
        if let Some(live) = self.instances.set_live(id, None) {
            let _ = live.sandbox.destroy().await;
        }
        self.backend_named(&rec.backend)?
            .instance_remove(id)
            .await?;
        self.store()?.delete_instance(id).await?;
        self.instances
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// The bytes of file `path` in a running instance.
    pub async fn instance_read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        check_path(path)?;
        let (out, _) = self
            .instance_run(
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
    pub async fn instance_write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        check_path(path)?;
        let (out, _) = self
            .instance_run(
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

    // ---- snapshots ----

    pub async fn snapshot_create(&self, req: SnapshotCreateRequest) -> Result<SnapshotInfo> {
        let id = req
            .instance_id
            .clone()
            .ok_or_else(|| Error::InvalidRequest("instance_id is required".into()))?;
        let t0 = Instant::now();
        let lock = self.instances.lock(&id);
        let _held = lock.lock().await;
        let rec = self.instance_record(&id).await?;
        let backend = self.backend_named(&rec.backend)?;
        let sid = new_id();
        let live = self.instances.live(&id);
        let (artifact, size) = backend
            .snapshot(
                &id,
                live.as_ref().map(|l| l.sandbox.as_ref()),
                &sid,
                req.memory,
            )
            .await?;
        let snap = SnapshotRecord {
            id: sid.clone(),
            name: req.name.clone(),
            instance_id: Some(id.clone()),
            parent_id: rec.source_snapshot.clone(),
            backend: rec.backend.clone(),
            image: rec.image.clone(),
            kind: if req.memory { "memory" } else { "filesystem" }.into(),
            size_bytes: size as i64,
            tags: req.tags.clone(),
            artifact: artifact.clone(),
            spec: rec.spec.clone(),
            created_ms: now_ms(),
        };
        if let Err(e) = self.store()?.insert_snapshot(&snap).await {
            let _ = backend.snapshot_remove(&sid, &artifact).await;
            return Err(e.into());
        }
        Ok(snapshot_info(
            &snap,
            Some(t0.elapsed().as_secs_f64() * 1000.0),
        ))
    }

    pub async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .store()?
            .list_snapshots()
            .await?
            .iter()
            .map(|r| snapshot_info(r, None))
            .collect())
    }

    pub async fn snapshot_get(&self, id: &str) -> Result<SnapshotInfo> {
        Ok(snapshot_info(&self.snapshot_record(id).await?, None))
    }

    /// Deletes a snapshot nothing depends on (409 while an instance restored or branched from
    /// it, or a snapshot taken on top of it, exists).
    pub async fn snapshot_delete(&self, id: &str) -> Result<()> {
        let rec = self.snapshot_record(id).await?;
        let (instances, snapshots) = self.store()?.snapshot_dependents(id).await?;
        if instances + snapshots > 0 {
            return Err(Error::Conflict(format!(
                "snapshot {id} is in use: {instances} instance(s) and {snapshots} snapshot(s) depend on it; delete them first"
            )));
        }
        self.backend_named(&rec.backend)?
            .snapshot_remove(id, &rec.artifact)
            .await?;
        self.store()?.delete_snapshot(id).await?;
        Ok(())
    }

    /// A new running instance with the snapshot's files.
    pub async fn snapshot_restore(&self, id: &str) -> Result<InstanceInfo> {
        let snap = self.snapshot_record(id).await?;
        self.restore_record(&snap).await
    }

    async fn restore_record(&self, snap: &SnapshotRecord) -> Result<InstanceInfo> {
        let backend = self.backend_named(&snap.backend)?;
        let spec = InstanceSpec::parse(&snap.spec, &format!("snapshot {}", snap.id))?;
        let id = new_id();
        let now = now_ms();
        // Recorded first: the snapshot cannot be deleted while its restore is being made.
        let rec = InstanceRecord {
            id: id.clone(),
            name: None,
            backend: snap.backend.clone(),
            image: snap.image.clone(),
            status: "stopped".into(),
            status_reason: Some("being restored".into()),
            spec: snap.spec.clone(),
            source_snapshot: Some(snap.id.clone()),
            created_ms: now,
            updated_ms: now,
            last_used_ms: now,
        };
        let store = self.store()?;
        store.insert_instance(&rec).await?;
        let made = backend
            .instance_create(&id, &spec.sandbox(&snap.image), Some(&snap.artifact))
            .await;
        match made {
            Ok(sandbox) => {
                self.instances.set_live(&id, Some(LiveBox::new(sandbox)));
                store.set_instance_status(&id, "running", None).await?;
                self.instance_get(&id).await
            }
            Err(e) => {
                let _ = store.delete_instance(&id).await;
                Err(e)
            }
        }
    }

    /// `count` new instances, each with the snapshot's files, independent of each other.
    pub async fn snapshot_branch(&self, id: &str, count: u32) -> Result<BranchResponse> {
        let t0 = Instant::now();
        self.check_branch_count(count)?;
        let snap = self.snapshot_record(id).await?;
        let instances = self.branch_record(&snap, count).await?;
        Ok(BranchResponse {
            instances,
            snapshot_id: snap.id,
            took_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn check_branch_count(&self, count: u32) -> Result<()> {
        if count == 0 || count as usize > self.cfg.max_branch {
            return Err(Error::InvalidRequest(format!(
                "count must be between 1 and {}, got {count}",
                self.cfg.max_branch
            )));
        }
        Ok(())
    }

    async fn branch_record(&self, snap: &SnapshotRecord, count: u32) -> Result<Vec<InstanceInfo>> {
        let made = futures::future::join_all((0..count).map(|_| self.restore_record(snap))).await;
        let mut ok = Vec::new();
        let mut failed = None;
        for r in made {
            match r {
                Ok(i) => ok.push(i),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // All or nothing.
            for i in &ok {
                let _ = self.instance_delete(&i.id).await;
            }
            return Err(e);
        }
        Ok(ok)
    }

    /// Snapshots instance `id`, then branches the snapshot `count` times.
    pub async fn instance_fork(&self, id: &str, count: u32) -> Result<BranchResponse> {
        let t0 = Instant::now();
        self.check_branch_count(count)?;
        let snap = self
            .snapshot_create(SnapshotCreateRequest {
                instance_id: Some(id.to_string()),
                name: Some(format!("fork of {id}")),
                tags: vec!["fork".into()],
                memory: false,
            })
            .await?;
        let rec = self.snapshot_record(&snap.id).await?;
        let instances = self.branch_record(&rec, count).await?;
        Ok(BranchResponse {
            instances,
            snapshot_id: snap.id,
            took_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    // ---- execute modes made of instances and snapshots ----

    /// `persistent`, `checkpointed` and `branched`: compositions of instances and snapshots.
    pub(crate) async fn execute_stateful(
        &self,
        req: faas_common::ExecuteRequest,
        mode: Mode,
        request_id: &str,
    ) -> Result<ExecuteResponse> {
        let rid = Some(request_id);
        self.store()?;
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
        };
        let mut resp = match mode {
            Mode::Persistent => {
                let id = match &req.instance_id {
                    Some(id) => id.clone(),
                    None => self.instance_create(create()).await?.id,
                };
                self.instance_exec_as(&id, exec, rid).await?
            }
            Mode::Checkpointed => match &req.snapshot_id {
                // Restore, then run (in a throwaway instance).
                Some(sid) => {
                    let inst = self.snapshot_restore(sid).await?;
                    let r = self.instance_exec_as(&inst.id, exec, rid).await;
                    let _ = self.instance_delete(&inst.id).await;
                    let mut r = r?;
                    r.snapshot_id = Some(sid.clone());
                    r.instance_id = None;
                    r
                }
                // Run, then snapshot.
                None => {
                    let inst = self.instance_create(create()).await?;
                    let ran = self.instance_exec_as(&inst.id, exec, rid).await;
                    let snap = match &ran {
                        Ok(_) => Some(
                            self.snapshot_create(SnapshotCreateRequest {
                                instance_id: Some(inst.id.clone()),
                                name: None,
                                tags: vec!["checkpointed".into()],
                                memory: false,
                            })
                            .await,
                        ),
                        Err(_) => None,
                    };
                    let _ = self.instance_delete(&inst.id).await;
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
                let (snap, temporary) = match self.store()?.get_snapshot(&from).await? {
                    Some(s) => (s, false),
                    None => {
                        self.instance_record(&from).await.map_err(|_| {
                            Error::NotFound(format!("no snapshot or instance {from}"))
                        })?;
                        let made = self
                            .snapshot_create(SnapshotCreateRequest {
                                instance_id: Some(from.clone()),
                                name: None,
                                tags: vec!["branched".into()],
                                memory: false,
                            })
                            .await?;
                        (self.snapshot_record(&made.id).await?, true)
                    }
                };
                let ran = async {
                    let inst = self.restore_record(&snap).await?;
                    let r = self.instance_exec_as(&inst.id, exec, rid).await;
                    let _ = self.instance_delete(&inst.id).await;
                    r
                }
                .await;
                if temporary {
                    let _ = self.snapshot_delete(&snap.id).await;
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
        for rec in store.list_instances().await? {
            if rec.status != "running" {
                continue;
            }
            let attached = match self.backend_named(&rec.backend) {
                Ok(b) => b.instance_attach(&rec.id).await,
                Err(e) => Err(e),
            };
            match attached {
                Ok(Some(sandbox)) => {
                    tracing::info!(instance = %rec.id, "re-attached");
                    self.instances
                        .set_live(&rec.id, Some(LiveBox::new(sandbox)));
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

    /// Stops instances idle past their `idle_timeout_s`; runs until the executor shuts down.
    pub(crate) async fn reap_idle_instances(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.tasks.is_closed() {
                return;
            }
            let Ok(list) = self.instance_list(&[]).await else {
                continue;
            };
            let now = now_ms();
            for i in list {
                let Some(limit) = i.idle_timeout_s else {
                    continue;
                };
                let limit_ms = (limit as i64) * 1000;
                if i.status == InstanceStatus::Running
                    && now - i.last_used_at_ms > limit_ms
                    && self
                        .instances
                        .live(&i.id)
                        .is_some_and(|l| l.idle_ms(now_ms()) > limit_ms)
                {
                    let why = format!("stopped after {limit} s without an exec");
                    tracing::info!(instance = %i.id, "{why}");
                    let _ = self.instance_stop_because(&i.id, Some(&why)).await;
                }
            }
        }
    }

    /// The running instances' boxes are left running: a restarted server re-attaches them.
    pub(crate) fn forget_live_instances(&self) {
        self.instances
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Files are addressed by absolute path inside the box.
fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Error::InvalidRequest(format!(
            "path must be absolute, got {path:?}"
        )));
    }
    Ok(())
}
