//! Functions: deploy (every deploy or update is a new immutable version), invoke synchronously,
//! or asynchronously through the durable queue in the store.
//!
//! - [`code`]: the code on the host, unpacked by the checked routine, bound at `/var/task`.
//! - [`runner`]: warm sandboxes per version, the python and node shims.
//! - [`queue`]: workers that claim async invocations with leases, retry, dead-letter.

pub mod code;
pub mod queue;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use faas_common::{
    DeployRequest, FunctionDeleted, FunctionInfo, FunctionRuntime, InvocationAccepted,
    InvocationError, InvocationInfo, InvocationsQuery, InvokeQuery,
};
use faas_store::{InvocationFilter, InvocationRecord, NewVersion, Store, VersionRecord};
use tokio_util::sync::CancellationToken;

use crate::config::PlatformConfig;
use crate::error::{Error, Result};
use crate::sandbox::sandboxes::Sandboxes;
use crate::sandbox::ReadOnlyMount;
use crate::services::run;
use code::CodeForm;
use runner::{FnConfig, Outcome, Runners, Version, VersionKey};

/// Invocations may ask for this many attempts at most.
pub const MAX_ATTEMPTS: i64 = 10;
pub const DEFAULT_ATTEMPTS: i64 = 3;

/// The functions service: deploys, invokes, the queue's state and the warm sandboxes.
pub struct Functions {
    cfg: PlatformConfig,
    sandboxes: Arc<Sandboxes>,
    /// Functions, versions and invocations; `None`: functions are off.
    store: Option<Store>,
    runners: Runners,
    loaded: Mutex<HashMap<VersionKey, Arc<Version>>>,
    /// Wakes the queue's dispatcher when this server enqueues.
    pub(crate) enqueued: tokio::sync::Notify,
    pub(crate) cancel: CancellationToken,
    /// This server's name in queue leases.
    pub(crate) owner: String,
    records: tokio::sync::mpsc::UnboundedSender<InvocationRecord>,
    records_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<InvocationRecord>>>,
}

impl Functions {
    pub fn new(cfg: PlatformConfig, sandboxes: Arc<Sandboxes>, store: Option<Store>) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Functions {
            runners: Runners::new(sandboxes.metrics.clone()),
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

/// What an invoke answered.
pub enum Invoked {
    Done(Box<InvocationInfo>),
    Queued(InvocationAccepted),
}

/// Function names: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid function name {name:?}: 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn is_ident(s: &str, extra: &[char]) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || extra.contains(&c))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

/// For python and node: `module.function`. Returns the module's file path candidates (relative
/// to the code dir) and the file name a single-file deploy gets.
fn handler_files(runtime: FunctionRuntime, handler: &str) -> Result<(Vec<String>, String)> {
    let bad = |why: &str| {
        Error::InvalidRequest(format!(
            "invalid handler {handler:?} for {}: {why}",
            runtime.as_str()
        ))
    };
    let (module, func) = handler
        .rsplit_once('.')
        .ok_or_else(|| bad("expected module.function"))?;
    match runtime {
        FunctionRuntime::Python => {
            if !is_ident(func, &[]) || !module.split('.').all(|m| is_ident(m, &[])) {
                return Err(bad("module and function must be Python identifiers"));
            }
            let path = module.replace('.', "/");
            Ok((
                vec![format!("{path}.py"), format!("{path}/__init__.py")],
                format!("{path}.py"),
            ))
        }
        FunctionRuntime::Node => {
            if !is_ident(func, &['$']) || module.split('/').any(|m| !is_ident(m, &['-', '.'])) {
                return Err(bad("expected a module path and a JavaScript function name"));
            }
            if module.split('/').any(|m| m.starts_with('.')) {
                return Err(bad("module path parts may not start with '.'"));
            }
            Ok((
                ["", ".js", ".cjs", ".mjs"]
                    .iter()
                    .map(|e| format!("{module}{e}"))
                    .collect(),
                format!("{module}.js"),
            ))
        }
        _ => Err(bad("only python and node handlers are module.function")),
    }
}

/// Whether a single JavaScript file is an ES module (it then needs the `.mjs` name).
fn looks_like_esm(code: &[u8]) -> bool {
    String::from_utf8_lossy(code).lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("export ") || (l.starts_with("import ") && l.contains(" from "))
    })
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
            code_sha256: v.code_sha256.clone(),
            code_size: cfg.code_size,
            versions: Vec::new(),
            warm: self.runners.warm(&(name.to_string(), v.version)),
            created_ms,
            updated_ms,
        })
    }

    /// Deploys function `name`: a new function (version 1) or, with `update`, the next
    /// version of an existing one, taking what the request leaves out from the latest version.
    /// A plain deploy of an existing name is also a new version.
    pub async fn function_deploy(
        self: &Arc<Self>,
        path_name: Option<&str>,
        req: DeployRequest,
    ) -> Result<(bool, FunctionInfo)> {
        let store = self.fn_store()?;
        let name = match (path_name, req.name.as_deref()) {
            (Some(p), Some(b)) if p != b => {
                return Err(Error::InvalidRequest(format!(
                    "the body names function {b:?} but the path {p:?}"
                )))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b.to_string(),
            (None, None) => return Err(Error::InvalidRequest("name is required".into())),
        };
        check_name(&name)?;
        let update = path_name.is_some();
        let prev = store.get_function(&name).await?;
        if update && prev.is_none() {
            return Err(Error::NotFound(format!("function {name} not found")));
        }
        // An update inherits; a deploy starts from nothing.
        let base: Option<(FnConfig, VersionRecord)> = match (&prev, update) {
            (Some(p), true) => {
                let v = store
                    .get_version(&name, p.latest.version)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
                let cfg = serde_json::from_value(v.config.clone())
                    .map_err(|e| Error::Internal(format!("stored config of {name}: {e}")))?;
                Some((cfg, v))
            }
            _ => None,
        };
        let (cfg, code) = self.version_config(&name, req, base).await?;
        let new = NewVersion {
            config: serde_json::to_value(&cfg)
                .map_err(|e| Error::Internal(format!("config: {e}")))?,
            code_sha256: code::sha256(&code),
            code,
        };
        let rec = store
            .add_version(&name, &new, true)
            .await
            .map_err(|e| match e {
                faas_store::StoreError::Conflict(m) => Error::Conflict(m),
                e => e.into(),
            })?
            .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
        let now = rec.created_ms;
        let created = prev.as_ref().map_or(now, |p| p.created_ms);
        let info = self.function_info(&name, &rec, created, now)?;
        if cfg.min_warm > 0 {
            let me = self.clone();
            let rec = rec.clone();
            self.sandboxes.tasks.spawn(async move {
                if let Ok(l) = me.load_version(&rec).await {
                    me.runners.top_up(&l).await;
                }
            });
        }
        Ok((prev.is_none(), info))
    }

    /// Checks a deploy request (against the version it updates, if any) and returns the
    /// version's settings and code bytes. The code is unpacked into the code store here, so a
    /// bad archive or a missing handler file is refused at deploy.
    async fn version_config(
        &self,
        name: &str,
        req: DeployRequest,
        base: Option<(FnConfig, VersionRecord)>,
    ) -> Result<(FnConfig, Vec<u8>)> {
        let (base_cfg, base_code) = match base {
            Some((c, v)) => (Some(c), Some(v.code)),
            None => (None, None),
        };
        let runtime = req
            .runtime
            .or(base_cfg.as_ref().map(|c| c.runtime))
            .ok_or_else(|| {
                Error::InvalidRequest(
                    "runtime is required: python, node, shell, binary or image".into(),
                )
            })?;
        let b64 = |field: &str, v: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|e| Error::InvalidRequest(format!("{field} is not valid base64: {e}")))
        };
        let (code, archive) = match (&req.code_b64, &req.archive_b64) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidRequest(
                    "give code_b64 or archive_b64, not both".into(),
                ))
            }
            (Some(c), None) => (b64("code_b64", c)?, false),
            (None, Some(a)) => (b64("archive_b64", a)?, true),
            (None, None) => match (&base_cfg, base_code) {
                (Some(c), Some(code)) if c.runtime == runtime => (code, c.code_form == "archive"),
                _ if runtime == FunctionRuntime::Image => (Vec::new(), true),
                _ => {
                    return Err(Error::InvalidRequest(
                        "code_b64 (one file) or archive_b64 (zip or tar.gz) is required".into(),
                    ))
                }
            },
        };
        let inherited = |f: fn(&FnConfig) -> Option<String>| base_cfg.as_ref().and_then(f);
        let handler = req
            .handler
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| inherited(|c| c.handler.clone()));
        // Where the code goes and what runs.
        let (file_name, handler, command, expected): (
            Option<String>,
            Option<String>,
            Option<Vec<String>>,
            Vec<String>,
        ) = match runtime {
            FunctionRuntime::Python | FunctionRuntime::Node => {
                let h = handler.ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "handler is required for {} (module.function, e.g. main.handler)",
                        runtime.as_str()
                    ))
                })?;
                let (candidates, mut single) = handler_files(runtime, &h)?;
                if runtime == FunctionRuntime::Node && !archive && looks_like_esm(&code) {
                    single = single.trim_end_matches(".js").to_string() + ".mjs";
                }
                if !archive && single.contains('/') {
                    return Err(Error::InvalidRequest(format!(
                        "handler {h:?} names a module in a directory: deploy an archive"
                    )));
                }
                let expected = if archive {
                    candidates
                } else {
                    vec![single.clone()]
                };
                ((!archive).then_some(single), Some(h), None, expected)
            }
            FunctionRuntime::Shell | FunctionRuntime::Binary => {
                let file = handler.unwrap_or_else(|| {
                    if runtime == FunctionRuntime::Shell {
                        "handler.sh".into()
                    } else {
                        "handler".into()
                    }
                });
                code::check_file_name(&file)?;
                let path = format!("{}/{file}", code::GUEST_CODE_DIR);
                let argv = if runtime == FunctionRuntime::Shell {
                    vec!["/bin/sh".into(), path]
                } else {
                    vec![path]
                };
                (
                    (!archive).then(|| file.clone()),
                    Some(file.clone()),
                    Some(argv),
                    vec![file],
                )
            }
            FunctionRuntime::Image => {
                let command = match &req.command {
                    Some(c) if !c.is_empty() => c.to_argv(),
                    Some(_) => return Err(Error::InvalidRequest("command is empty".into())),
                    None => base_cfg
                        .as_ref()
                        .and_then(|c| c.command.clone())
                        .ok_or_else(|| {
                            Error::InvalidRequest(
                                "command is required for the image runtime".into(),
                            )
                        })?,
                };
                if !archive {
                    return Err(Error::InvalidRequest(
                        "the image runtime takes code only as archive_b64".into(),
                    ));
                }
                (None, None, Some(command), Vec::new())
            }
        };
        let image = req
            .image
            .clone()
            .or_else(|| inherited(|c| Some(c.image.clone())))
            .unwrap_or_else(|| match runtime {
                FunctionRuntime::Python | FunctionRuntime::Node => self.cfg.function_image.clone(),
                FunctionRuntime::Image => String::new(),
                _ => self.cfg.default_image.clone(),
            });
        if image.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "image is required for the image runtime".into(),
            ));
        }
        let pick = |asked: Option<u64>, base: Option<u64>| asked.or(base);
        let memory = pick(req.memory_mb, base_cfg.as_ref().map(|c| c.memory_mb));
        let cpu = req.cpu_cores.or(base_cfg.as_ref().map(|c| c.cpu_cores));
        let isolation = req.isolation.or(base_cfg.as_ref().map(|c| c.isolation));
        let spec = run::spec(&self.cfg, Some(&image), memory, cpu, isolation)?;
        let timeout_ms = pick(req.timeout_ms, base_cfg.as_ref().map(|c| c.timeout_ms))
            .unwrap_or(self.cfg.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > self.cfg.max_timeout_ms {
            return Err(Error::InvalidRequest(format!(
                "timeout_ms must be between 1 and {}, got {timeout_ms}",
                self.cfg.max_timeout_ms
            )));
        }
        let max_concurrency = req
            .max_concurrency
            .or(base_cfg.as_ref().map(|c| c.max_concurrency))
            .unwrap_or(self.cfg.function_concurrency);
        if max_concurrency == 0 || max_concurrency > self.cfg.max_function_concurrency {
            return Err(Error::InvalidRequest(format!(
                "max_concurrency must be between 1 and {}, got {max_concurrency}",
                self.cfg.max_function_concurrency
            )));
        }
        let min_warm = req
            .min_warm
            .or(base_cfg.as_ref().map(|c| c.min_warm))
            .unwrap_or(0);
        if min_warm > max_concurrency {
            return Err(Error::InvalidRequest(format!(
                "min_warm ({min_warm}) may not exceed max_concurrency ({max_concurrency})"
            )));
        }
        let env = match &req.env_vars {
            Some(e) => e.0.clone(),
            None => base_cfg.as_ref().map(|c| c.env.clone()).unwrap_or_default(),
        };
        let backend = req
            .backend
            .or(base_cfg.as_ref().map(|c| c.backend))
            .unwrap_or_default();
        let b = self.sandboxes.resolve(backend)?;
        b.check_image(&spec.image).await?;
        let cfg = FnConfig {
            runtime,
            handler,
            image: spec.image.clone(),
            command,
            env,
            memory_mb: spec.limits.memory_mb,
            cpu_cores: spec.limits.cpu_cores,
            timeout_ms,
            min_warm,
            max_concurrency,
            backend,
            isolation: spec.isolation,
            code_form: if archive { "archive" } else { "file" }.into(),
            file_name,
            code_size: code.len() as u64,
        };
        // Unpack now: refuses a bad archive, and the handler's file must be there.
        let dir = self.code_dir(&cfg, code.clone()).await?;
        if !expected.is_empty() && !expected.iter().any(|f| dir.join(f).is_file()) {
            return Err(Error::InvalidRequest(format!(
                "function {name}: the code has no {} for handler {:?}",
                expected.join(" or "),
                cfg.handler.as_deref().unwrap_or_default()
            )));
        }
        Ok((cfg, code))
    }

    async fn code_dir(&self, cfg: &FnConfig, code: Vec<u8>) -> Result<std::path::PathBuf> {
        let form = match cfg.code_form.as_str() {
            "archive" => CodeForm::Archive,
            _ => CodeForm::File {
                name: cfg.file_name.clone().unwrap_or_default(),
            },
        };
        let root = self.cfg.functions_dir.join("code");
        tokio::task::spawn_blocking(move || code::materialize(&root, &form, &code))
            .await
            .map_err(|e| Error::Internal(format!("unpacking code: {e}")))?
    }

    /// A version's record (without its code): the latest, or the one asked for.
    async fn version_meta(&self, name: &str, version: Option<i64>) -> Result<VersionRecord> {
        let store = self.fn_store()?;
        match version {
            None => Ok(store
                .get_function(name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?
                .latest),
            Some(n) => store
                .version_meta(name, n)
                .await?
                .ok_or_else(|| Error::NotFound(format!("function {name} has no version {n}"))),
        }
    }

    /// The version `meta` names, ready to run. Cached: versions never change, but a deleted
    /// and re-made function reuses numbers, so the cache is checked against `meta`'s time.
    async fn load_version(&self, meta: &VersionRecord) -> Result<Arc<Version>> {
        let store = self.fn_store()?;
        let (name, version) = (meta.name.as_str(), meta.version);
        let key = (name.to_string(), version);
        if let Some(l) = self.loaded().get(&key) {
            if l.created_ms == meta.created_ms {
                return Ok(l.clone());
            }
        }
        let v = store
            .get_version(name, version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} has no version {version}")))?;
        let cfg: FnConfig = serde_json::from_value(v.config.clone())
            .map_err(|e| Error::Internal(format!("stored config of {name} v{version}: {e}")))?;
        let dir = self.code_dir(&cfg, v.code).await?;
        let mut spec = run::spec(
            &self.cfg,
            Some(&cfg.image),
            Some(cfg.memory_mb),
            Some(cfg.cpu_cores),
            Some(cfg.isolation),
        )?;
        spec.env = cfg.env.clone();
        spec.mounts = vec![ReadOnlyMount {
            host: dir,
            guest: code::GUEST_CODE_DIR.into(),
        }];
        let backend = self.sandboxes.resolve(cfg.backend)?;
        let l = Arc::new(Version {
            key: key.clone(),
            created_ms: v.created_ms,
            cfg,
            spec,
            backend,
        });
        self.loaded().insert(key, l.clone());
        Ok(l)
    }

    pub async fn function_get(&self, name: &str, version: Option<i64>) -> Result<FunctionInfo> {
        let store = self.fn_store()?;
        let f = store
            .get_function(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
        let v = match version {
            None => f.latest.clone(),
            Some(_) => self.version_meta(name, version).await?,
        };
        let mut info = self.function_info(name, &v, f.created_ms, f.updated_ms)?;
        info.versions = store
            .list_versions(name)
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        Ok(info)
    }

    pub async fn function_list(&self) -> Result<Vec<FunctionInfo>> {
        let store = self.fn_store()?;
        store
            .list_functions()
            .await?
            .iter()
            .map(|f| self.function_info(&f.name, &f.latest, f.created_ms, f.updated_ms))
            .collect()
    }

    /// Deletes a function with all its versions, destroys its sandboxes, and fails its queued
    /// invocations with `function_deleted`.
    pub async fn function_delete(&self, name: &str) -> Result<FunctionDeleted> {
        let store = self.fn_store()?;
        let err = error_value(&InvocationError {
            kind: "function_deleted".into(),
            message: format!("function {name} was deleted before this invocation ran"),
            traceback: None,
        });
        let failed = store
            .delete_function(name, &err)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
        self.loaded().retain(|k, _| k.0 != name);
        self.runners.remove(name, |_| true).await;
        Ok(FunctionDeleted {
            name: name.to_string(),
            failed_invocations: failed,
        })
    }

    /// Invokes a function with `payload` (JSON bytes; empty means `null`).
    pub async fn function_invoke(
        self: &Arc<Self>,
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
        let meta = self.version_meta(name, q.version).await?;
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
            if let Some(r) = store.invocation_by_key(name, k).await? {
                return Ok(Invoked::Done(Box::new(info_of(&r))));
            }
        }
        // Its own task: a client that goes away does not cut the invocation short, so its
        // sandbox is always given back or destroyed.
        let me = self.clone();
        let wait = Duration::from_millis(loaded.cfg.timeout_ms);
        let run = self.sandboxes.tasks.spawn(async move {
            let lease = me.runners.lease(&loaded, Some(wait)).await?;
            rec.started_ms = Some(ms_now());
            let outcome = me
                .runners
                .invoke(lease, &loaded, &rec.id, &value, &rec.payload)
                .await;
            finish(&mut rec, &outcome);
            rec.attempts = 1;
            let _ = me.records.send(rec.clone());
            Ok::<_, Error>(info_of(&rec))
        });
        let info = run
            .await
            .map_err(|e| Error::Internal(format!("invocation task: {e}")))??;
        Ok(Invoked::Done(Box::new(info)))
    }

    pub async fn invocation_get(&self, id: &str) -> Result<InvocationInfo> {
        let store = self.fn_store()?;
        match store.get_invocation(id).await? {
            Some(r) => Ok(info_of(&r)),
            None => {
                // A sync invocation is written shortly after it answers.
                tokio::time::sleep(Duration::from_millis(50)).await;
                store
                    .get_invocation(id)
                    .await?
                    .map(|r| info_of(&r))
                    .ok_or_else(|| Error::NotFound(format!("invocation {id} not found")))
            }
        }
    }

    pub async fn invocation_list(&self, q: InvocationsQuery) -> Result<Vec<InvocationInfo>> {
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
                Ok(s) => match s.list_functions().await {
                    Ok(fs) => fs
                        .into_iter()
                        .map(|f| {
                            let w = f.latest.config["min_warm"].as_u64().unwrap_or(0) as u32;
                            (f.name, (f.latest, w))
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
    mut rx: tokio::sync::mpsc::UnboundedReceiver<InvocationRecord>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = cancel.cancelled() => None,
        };
        let mut batch: Vec<InvocationRecord> = first.into_iter().collect();
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
