//! Functions: deploy (every deploy or update is a new immutable version), invoke synchronously,
//! or asynchronously through the durable queue in the store.
//!
//! - [`deploy`]: checking a deploy request and adding the version.
//! - [`code`]: the code on the host, unpacked by the checked routine, bound at `/var/task`.
//! - [`runner`]: warm sandboxes per version, the python and node shims.
//! - [`queue`]: workers that claim async invocations with leases, retry, dead-letter.

pub mod code;
mod deploy;
pub mod queue;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_common::{
    Caller, FunctionDeleted, FunctionInfo, FunctionRuntime, InvocationAccepted, InvocationError,
    InvocationInfo, InvocationsQuery, InvokeQuery,
};
use faas_store::{InvocationFilter, InvocationRecord, Store, VersionRecord};
use tokio_util::sync::CancellationToken;

use crate::config::PlatformConfig;
use crate::error::{Error, Result};
use crate::sandbox::sandboxes::Sandboxes;
use crate::sandbox::ReadOnlyMount;
use crate::services::run;
use crate::services::tenants::{usage_record, Counted, Tenants};
use code::CodeForm;
use runner::{scoped, FnConfig, Outcome, Runners, Version, VersionKey};

/// Invocations may ask for this many attempts at most.
pub const MAX_ATTEMPTS: i64 = 10;
pub const DEFAULT_ATTEMPTS: i64 = 3;

/// The functions service: deploys, invokes, the queue's state and the warm sandboxes.
pub struct Functions {
    cfg: PlatformConfig,
    sandboxes: Arc<Sandboxes>,
    /// Functions, versions and invocations; `None`: functions are off.
    store: Option<Store>,
    pub(crate) tenants: Arc<Tenants>,
    runners: Runners,
    loaded: Mutex<HashMap<VersionKey, Arc<Version>>>,
    /// Wakes the queue's dispatcher when this server enqueues.
    pub(crate) enqueued: tokio::sync::Notify,
    pub(crate) cancel: CancellationToken,
    /// This server's name in queue leases.
    pub(crate) owner: String,
    records: tokio::sync::mpsc::UnboundedSender<Finished>,
    records_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Finished>>>,
}

impl Functions {
    pub fn new(
        cfg: PlatformConfig,
        sandboxes: Arc<Sandboxes>,
        store: Option<Store>,
        tenants: Arc<Tenants>,
    ) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Functions {
            runners: Runners::new(sandboxes.metrics.clone(), tenants.clone()),
            tenants,
            cfg,
            sandboxes,
            store,
            loaded: Mutex::new(HashMap::new()),
            enqueued: tokio::sync::Notify::new(),
            cancel: CancellationToken::new(),
            owner: format!("server-{}", uuid::Uuid::new_v4()),
            records: tx,
            records_rx: Mutex::new(Some(rx)),
        })
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<VersionKey, Arc<Version>>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A finished sync invocation and what it used, to be recorded together.
type Finished = (InvocationRecord, Option<faas_store::UsageRecord>);

/// What an invocation attempt used, as a usage row (`None` when nothing ran).
pub(crate) fn attempt_usage(
    rec: &InvocationRecord,
    o: &Outcome,
    memory_mb: u64,
) -> Option<faas_store::UsageRecord> {
    o.usage.map(|u| {
        usage_record(
            format!("inv:{}:{}", rec.id, rec.attempts),
            &rec.tenant,
            "invocation",
            Some(&rec.function_name),
            Duration::from_secs_f64(o.duration_ms.max(0.0) / 1000.0),
            Some(u),
            memory_mb,
        )
    })
}

/// What an invoke answered.
pub enum Invoked {
    Done(Box<InvocationInfo>),
    Queued(InvocationAccepted),
}

fn ms_now() -> i64 {
    faas_store::now_ms()
}

fn info_of(r: &InvocationRecord) -> InvocationInfo {
    InvocationInfo {
        invocation_id: r.id.clone(),
        function: r.function_name.clone(),
        version: r.version,
        status: r.status.clone(),
        result: r.result.clone(),
        error: r
            .error
            .as_ref()
            .and_then(|e| serde_json::from_value(e.clone()).ok()),
        logs: r.logs.clone().unwrap_or_default(),
        duration_ms: r.duration_ms,
        cold: r.cold,
        is_async: r.is_async,
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        attempt_errors: r.attempt_log.clone(),
        created_ms: r.created_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
    }
}

fn error_value(e: &InvocationError) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or(serde_json::Value::Null)
}

impl Functions {
    fn fn_store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or_else(|| {
            Error::Unsupported("functions need the store, and this server runs without one".into())
        })
    }

    fn function_info(
        &self,
        name: &str,
        v: &VersionRecord,
        created_ms: i64,
        updated_ms: i64,
    ) -> Result<FunctionInfo> {
        let cfg: FnConfig = serde_json::from_value(v.config.clone())
            .map_err(|e| Error::Internal(format!("stored config of {name} v{}: {e}", v.version)))?;
        Ok(FunctionInfo {
            name: name.to_string(),
            version: v.version,
            runtime: cfg.runtime,
            handler: cfg.handler,
            image: cfg.image,
            command: match cfg.runtime {
                FunctionRuntime::Image => cfg.command,
                _ => None,
            },
            env_vars: cfg.env.into_iter().collect::<BTreeMap<_, _>>(),
            memory_mb: cfg.memory_mb,
            cpu_cores: cfg.cpu_cores,
            timeout_ms: cfg.timeout_ms,
            min_warm: cfg.min_warm,
            max_concurrency: cfg.max_concurrency,
            backend: cfg.backend.as_str().to_string(),
            network: cfg.network.clone().unwrap_or_default(),
            code_sha256: v.code_sha256.clone(),
            code_size: cfg.code_size,
            versions: Vec::new(),
            warm: self.runners.warm(&(scoped(&v.tenant, name), v.version)),
            created_ms,
            updated_ms,
        })
    }

    /// `tenant`'s unpacked copy of `code`.
    async fn code_dir(
        &self,
        tenant: &str,
        cfg: &FnConfig,
        code: Vec<u8>,
    ) -> Result<std::path::PathBuf> {
        let form = match cfg.code_form.as_str() {
            "archive" => CodeForm::Archive,
            _ => CodeForm::File {
                name: cfg.file_name.clone().unwrap_or_default(),
            },
        };
        let root = code::tenant_root(&self.cfg.functions_dir.join("code"), tenant)?;
        tokio::task::spawn_blocking(move || code::materialize(&root, &form, &code))
            .await
            .map_err(|e| Error::Internal(format!("unpacking code: {e}")))?
    }

    /// A version's record (without its code): the latest, or the one asked for.
    async fn version_meta(
        &self,
        tenant: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<VersionRecord> {
        let store = self.fn_store()?;
        match version {
            None => Ok(store
                .get_function(tenant, name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?
                .latest),
            Some(n) => store
                .version_meta(tenant, name, n)
                .await?
                .ok_or_else(|| Error::NotFound(format!("function {name} has no version {n}"))),
        }
    }

    /// The version `meta` names, ready to run. Cached: versions never change, but a deleted
    /// and re-made function reuses numbers, so the cache is checked against `meta`'s time.
    async fn load_version(&self, meta: &VersionRecord) -> Result<Arc<Version>> {
        let store = self.fn_store()?;
        let (tenant, name, version) = (meta.tenant.as_str(), meta.name.as_str(), meta.version);
        let key = (scoped(tenant, name), version);
        if let Some(l) = self.loaded().get(&key) {
            if l.created_ms == meta.created_ms {
                return Ok(l.clone());
            }
        }
        let v = store
            .get_version(tenant, name, version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} has no version {version}")))?;
        let cfg: FnConfig = serde_json::from_value(v.config.clone())
            .map_err(|e| Error::Internal(format!("stored config of {name} v{version}: {e}")))?;
        let dir = self.code_dir(tenant, &cfg, v.code).await?;
        let mut spec = run::spec(
            &self.cfg,
            Some(&cfg.image),
            Some(cfg.memory_mb),
            Some(cfg.cpu_cores),
            Some(cfg.isolation),
        )?;
        spec.env = cfg.env.clone();
        spec.network = run::network(&self.tenants, tenant, cfg.network.as_ref()).await?;
        spec.mounts = vec![ReadOnlyMount {
            host: dir,
            guest: code::GUEST_CODE_DIR.into(),
        }];
        let backend = self.sandboxes.resolve(cfg.backend)?;
        let l = Arc::new(Version {
            key: key.clone(),
            tenant: tenant.to_string(),
            name: name.to_string(),
            created_ms: v.created_ms,
            cfg,
            spec,
            backend,
        });
        self.loaded().insert(key, l.clone());
        Ok(l)
    }

    pub async fn function_get(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<i64>,
    ) -> Result<FunctionInfo> {
        let store = self.fn_store()?;
        let tenant = caller.tenant.as_str();
        let f = store
            .get_function(tenant, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
        let v = match version {
            None => f.latest.clone(),
            Some(_) => self.version_meta(tenant, name, version).await?,
        };
        let mut info = self.function_info(name, &v, f.created_ms, f.updated_ms)?;
        info.versions = store
            .list_versions(tenant, name)
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        Ok(info)
    }

    pub async fn function_list(&self, caller: &Caller) -> Result<Vec<FunctionInfo>> {
        let store = self.fn_store()?;
        store
            .list_functions(&caller.tenant)
            .await?
            .iter()
            .map(|f| self.function_info(&f.name, &f.latest, f.created_ms, f.updated_ms))
            .collect()
    }

    /// Deletes a function with all its versions, destroys its sandboxes, and fails its queued
    /// invocations with `function_deleted`.
    pub async fn function_delete(&self, caller: &Caller, name: &str) -> Result<FunctionDeleted> {
        let store = self.fn_store()?;
        let err = error_value(&InvocationError {
            kind: "function_deleted".into(),
            message: format!("function {name} was deleted before this invocation ran"),
            traceback: None,
        });
        let failed = store
            .delete_function(&caller.tenant, name, &err)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
        let key = scoped(&caller.tenant, name);
        self.loaded().retain(|k, _| k.0 != key);
        self.runners.remove(&key, |_| true).await;
        Ok(FunctionDeleted {
            name: name.to_string(),
            failed_invocations: failed,
        })
    }

    /// Invokes a function with `payload` (JSON bytes; empty means `null`).
    pub async fn function_invoke(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        q: InvokeQuery,
        payload: &[u8],
        idempotency_key: Option<String>,
    ) -> Result<Invoked> {
        let store = self.fn_store()?;
        if payload.len() > self.cfg.max_payload_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the payload is {} bytes, over the {} byte limit",
                payload.len(),
                self.cfg.max_payload_bytes
            )));
        }
        let value: serde_json::Value = if payload.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(payload)
                .map_err(|e| Error::InvalidRequest(format!("the payload is not JSON: {e}")))?
        };
        let payload = serde_json::to_vec(&value).unwrap_or_default();
        let tenant = caller.tenant.as_str();
        let meta = self.version_meta(tenant, name, q.version).await?;
        let version = meta.version;
        if let Some(k) = &idempotency_key {
            if k.is_empty() || k.len() > 256 {
                return Err(Error::InvalidRequest(
                    "Idempotency-Key must be 1 to 256 characters".into(),
                ));
            }
        }
        let loaded = self.load_version(&meta).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut rec = InvocationRecord {
            id: id.clone(),
            tenant: tenant.to_string(),
            function_name: name.to_string(),
            version,
            is_async: q.is_async,
            status: "queued".into(),
            payload,
            result: None,
            error: None,
            logs: None,
            duration_ms: None,
            cold: None,
            attempts: 0,
            max_attempts: 1,
            attempt_log: Vec::new(),
            idempotency_key,
            callback_url: None,
            next_run_ms: ms_now(),
            lease_owner: None,
            lease_until_ms: None,
            created_ms: ms_now(),
            started_ms: None,
            finished_ms: None,
        };
        if q.is_async {
            if let Some(url) = &q.callback_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048
                {
                    return Err(Error::InvalidRequest(format!(
                        "callback_url must be an http(s) URL, got {url:?}"
                    )));
                }
            }
            let attempts = q.max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
            if !(1..=MAX_ATTEMPTS).contains(&attempts) {
                return Err(Error::InvalidRequest(format!(
                    "max_attempts must be between 1 and {MAX_ATTEMPTS}, got {attempts}"
                )));
            }
            rec.max_attempts = attempts;
            rec.callback_url = q.callback_url;
            // A repeat of a recorded key is answered with the first one, even at the quota.
            if let Some(k) = &rec.idempotency_key {
                if let Some(r) = store.invocation_by_key(tenant, name, k).await? {
                    return Ok(Invoked::Queued(InvocationAccepted {
                        invocation_id: r.id,
                        status: r.status,
                    }));
                }
            }
            let pending = store.count_pending_invocations(tenant).await?;
            self.tenants
                .check_count(tenant, Counted::QueuedInvocations, pending.max(0) as u64, 1)
                .await?;
            let stored = store.insert_invocation(&rec).await?;
            self.enqueued.notify_one();
            return Ok(Invoked::Queued(InvocationAccepted {
                invocation_id: stored.id,
                status: stored.status,
            }));
        }
        if let Some(k) = &rec.idempotency_key {
            // A sync call with a key already used answers with the earlier result (once it is
            // recorded: sync records are written just after the answer).
            if let Some(r) = store.invocation_by_key(tenant, name, k).await? {
                return Ok(Invoked::Done(Box::new(info_of(&r))));
            }
        }
        // Its own task: a client that goes away does not cut the invocation short, so its
        // sandbox is always given back or destroyed.
        let me = self.clone();
        let wait = Duration::from_millis(loaded.cfg.timeout_ms);
        let run = self.sandboxes.tasks.spawn(async move {
            let mut lease = me.runners.lease(&loaded, Some(wait)).await?;
            // A cold start needs room in the tenant's quotas: refused before anything starts.
            if lease.needs_start() {
                lease.quota = Some(
                    me.tenants
                        .lease_sandbox(&rec.tenant, loaded.spec.limits.memory_mb)
                        .await?,
                );
            }
            rec.started_ms = Some(ms_now());
            let outcome = me
                .runners
                .invoke(lease, &loaded, &rec.id, &value, &rec.payload)
                .await;
            finish(&mut rec, &outcome);
            rec.attempts = 1;
            let usage = attempt_usage(&rec, &outcome, loaded.cfg.memory_mb);
            let _ = me.records.send((rec.clone(), usage));
            Ok::<_, Error>(info_of(&rec))
        });
        let info = run
            .await
            .map_err(|e| Error::Internal(format!("invocation task: {e}")))??;
        Ok(Invoked::Done(Box::new(info)))
    }

    pub async fn invocation_get(&self, caller: &Caller, id: &str) -> Result<InvocationInfo> {
        let store = self.fn_store()?;
        match store.get_invocation(&caller.tenant, id).await? {
            Some(r) => Ok(info_of(&r)),
            None => {
                // A sync invocation is written shortly after it answers.
                tokio::time::sleep(Duration::from_millis(50)).await;
                store
                    .get_invocation(&caller.tenant, id)
                    .await?
                    .map(|r| info_of(&r))
                    .ok_or_else(|| Error::NotFound(format!("invocation {id} not found")))
            }
        }
    }

    pub async fn invocation_list(
        &self,
        caller: &Caller,
        q: InvocationsQuery,
    ) -> Result<Vec<InvocationInfo>> {
        let store = self.fn_store()?;
        if let Some(s) = &q.status {
            const ALL: [&str; 6] = [
                "queued",
                "running",
                "succeeded",
                "error",
                "timeout",
                "dead_letter",
            ];
            if !ALL.contains(&s.as_str()) {
                return Err(Error::InvalidRequest(format!(
                    "unknown status {s:?}; one of {}",
                    ALL.join(", ")
                )));
            }
        }
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Error::InvalidRequest(format!(
                "limit must be between 1 and 1000, got {limit}"
            )));
        }
        Ok(store
            .list_invocations(&InvocationFilter {
                tenant: caller.tenant.clone(),
                function: q.function,
                status: q.status,
                limit,
            })
            .await?
            .iter()
            .map(info_of)
            .collect())
    }

    /// Starts the record writer of sync invocations and, on SQLite, makes the leases of the
    /// last run claimable. Called once the backends' leftovers are gone, before the idle
    /// reaper ([`Functions::reap_idle`]) and the queue's dispatcher ([`queue::run`]) start.
    pub(crate) async fn start(&self) -> Result<()> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        if store.kind() == faas_store::DbKind::Sqlite {
            // One server per SQLite file: every lease is this server's, from its last run.
            let n = store.expire_leases().await?;
            if n > 0 {
                tracing::info!(
                    invocations = n,
                    "async invocations interrupted by the last stop are claimable again"
                );
            }
        }
        let rx = self
            .records_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = rx {
            self.sandboxes
                .tasks
                .spawn(write_records(store.clone(), rx, self.cancel.clone()));
        }
        Ok(())
    }

    /// Every 2 s: destroys sandboxes idle past `function_idle_ms` beyond `min_warm`, and
    /// tops `min_warm` up for each latest version; runs until the functions are stopped.
    pub(crate) async fn reap_idle(self: Arc<Self>) {
        let me = self;
        loop {
            tokio::select! {
                _ = me.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let latest: HashMap<String, (VersionRecord, u32)> = match me.fn_store() {
                Ok(s) => match s.list_all_functions().await {
                    Ok(fs) => fs
                        .into_iter()
                        .map(|f| {
                            let w = f.latest.config["min_warm"].as_u64().unwrap_or(0) as u32;
                            (scoped(&f.tenant, &f.name), (f.latest, w))
                        })
                        .collect(),
                    Err(_) => continue,
                },
                Err(_) => return,
            };
            let idle = Duration::from_millis(me.cfg.function_idle_ms);
            me.runners
                .reap(idle, |k| match latest.get(&k.0) {
                    Some((v, w)) if v.version == k.1 => *w as usize,
                    _ => 0,
                })
                .await;
            // Keep min_warm started for each latest version.
            for (name, (v, w)) in latest {
                if w > 0 && me.runners.warm(&(name, v.version)) < w as usize {
                    if let Ok(l) = me.load_version(&v).await {
                        me.runners.top_up(&l).await;
                    }
                }
            }
        }
    }

    /// Stops the functions' background work (their sandboxes go in `destroy_sandboxes`).
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
    }

    pub(crate) async fn destroy_sandboxes(&self) {
        self.runners.shutdown().await;
    }
}

/// Writes an outcome into a record.
fn finish(rec: &mut InvocationRecord, o: &Outcome) {
    rec.status = o.status.to_string();
    rec.result = o.result.clone();
    rec.error = o.error.as_ref().map(error_value);
    rec.logs = Some(o.logs.clone());
    rec.duration_ms = Some(o.duration_ms);
    rec.cold = Some(o.cold);
    rec.finished_ms = Some(ms_now());
}

/// Writes finished sync invocations in batches (one transaction per batch).
async fn write_records(
    store: Store,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Finished>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = cancel.cancelled() => None,
        };
        let mut batch: Vec<Finished> = first.into_iter().collect();
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.insert_invocations(&batch).await {
            tracing::error!(error = %e, records = batch.len(), "recording invocations failed");
        }
    }
}
