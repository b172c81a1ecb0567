//! Deploys: a request is checked (name, runtime, handler, limits, image; against the version
//! it updates, if any), its code unpacked into the code store (a bad archive or a missing
//! handler file is refused here), and the store adds the version.

use std::sync::Arc;

use base64::Engine;
use faas_common::{Caller, DeployRequest, FunctionInfo, FunctionRuntime};
use faas_store::{NewVersion, VersionRecord};

use super::code;
use super::runner::FnConfig;
use super::Functions;
use crate::error::{Error, Result};
use crate::services::run;
use crate::services::tenants::Counted;

/// Function names: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
fn check_name(name: &str) -> Result<()> {
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

impl Functions {
    /// Deploys function `name`: a new function (version 1) or, with `update`, the next
    /// version of an existing one, taking what the request leaves out from the latest version.
    /// A plain deploy of an existing name is also a new version.
    pub async fn function_deploy(
        self: &Arc<Self>,
        caller: &Caller,
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
        let tenant = caller.tenant.as_str();
        let prev = store.get_function(tenant, &name).await?;
        if update && prev.is_none() {
            return Err(Error::NotFound(format!("function {name} not found")));
        }
        if prev.is_none() {
            let have = store.count_functions(tenant).await?;
            self.tenants
                .check_count(tenant, Counted::Functions, have.max(0) as u64, 1)
                .await?;
        }
        // An update inherits; a deploy starts from nothing.
        let base: Option<(FnConfig, VersionRecord)> = match (&prev, update) {
            (Some(p), true) => {
                let v = store
                    .get_version(tenant, &name, p.latest.version)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("function {name} not found")))?;
                let cfg = serde_json::from_value(v.config.clone())
                    .map_err(|e| Error::Internal(format!("stored config of {name}: {e}")))?;
                Some((cfg, v))
            }
            _ => None,
        };
        let (cfg, code) = self.version_config(tenant, &name, req, base).await?;
        let new = NewVersion {
            config: serde_json::to_value(&cfg)
                .map_err(|e| Error::Internal(format!("config: {e}")))?,
            code_sha256: code::sha256(&code),
            code,
        };
        let rec = store
            .add_version(tenant, &name, &new, true)
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
        tenant: &str,
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
        let network = match &req.network {
            Some(n) => Some(n.clone()),
            None => base_cfg.as_ref().and_then(|c| c.network.clone()),
        }
        .filter(|n| !n.is_none());
        run::network(&self.tenants, tenant, network.as_ref()).await?;
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
            network,
            code_form: if archive { "archive" } else { "file" }.into(),
            file_name,
            code_size: code.len() as u64,
        };
        // Unpack now: refuses a bad archive, and the handler's file must be there.
        let dir = self.code_dir(tenant, &cfg, code.clone()).await?;
        if !expected.is_empty() && !expected.iter().any(|f| dir.join(f).is_file()) {
            return Err(Error::InvalidRequest(format!(
                "function {name}: the code has no {} for handler {:?}",
                expected.join(" or "),
                cfg.handler.as_deref().unwrap_or_default()
            )));
        }
        Ok((cfg, code))
    }
}
