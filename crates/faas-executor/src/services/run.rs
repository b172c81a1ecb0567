//! What the execute and instances services share of running a command: checking a request's
//! image, limits and timeout against the config, what the agent is asked to run, where its
//! output goes while it runs, and the [`ExecuteResponse`] made of what it reported.

use std::time::Instant;

use faas_agent::{ExecRequest, FrameKind};
use faas_common::{EgressDefault, ExecuteResponse, Mode, NetworkRequest};

use crate::config::PlatformConfig;
use crate::error::{Error, Result};
use crate::metrics::{inc, Metrics};
use crate::sandbox::agent::ExecOutcome;
use crate::sandbox::net::EgressPolicy;
use crate::sandbox::{Isolation, Network, SandboxSpec};
use crate::services::streams::{OutputEvent, Streams};
use crate::services::tenants::Tenants;

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
    /// What the box used for the command, when its backend measures it.
    pub usage: Option<crate::sandbox::BoxUsage>,
}

/// A request's box: its image (or the default) and limits, checked against the config.
pub(crate) fn spec(
    cfg: &PlatformConfig,
    image: Option<&str>,
    memory_mb: Option<u64>,
    cpu_cores: Option<f64>,
    isolation: Option<Isolation>,
) -> Result<SandboxSpec> {
    let image = image
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .unwrap_or(&cfg.default_image);
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidRequest(format!(
            "invalid image name {image:?}"
        )));
    }
    let mut limits = cfg.default_limits;
    if let Some(m) = memory_mb {
        if !(16..=cfg.max_memory_mb).contains(&m) {
            return Err(Error::InvalidRequest(format!(
                "memory_mb must be between 16 and {}, got {m}",
                cfg.max_memory_mb
            )));
        }
        limits.memory_mb = m;
    }
    if let Some(c) = cpu_cores {
        if !(c >= 0.01 && c <= cfg.max_cpu_cores) {
            return Err(Error::InvalidRequest(format!(
                "cpu_cores must be between 0.01 and {}, got {c}",
                cfg.max_cpu_cores
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

/// The network a request asks for, checked: its rules, and whether its tenant may reach the
/// private ranges (asked of the tenant's settings only when a network is asked for).
pub(crate) async fn network(
    tenants: &Tenants,
    tenant: &str,
    asked: Option<&NetworkRequest>,
) -> Result<Network> {
    let policy = match asked {
        None => return Ok(Network::None),
        Some(NetworkRequest::Named(n)) => match n.as_str() {
            "none" => return Ok(Network::None),
            "internet" => EgressPolicy::internet(),
            other => {
                return Err(Error::InvalidRequest(format!(
                    "network {other:?} is not one: give \"none\", \"internet\" or {{\"egress\": \"allow\"|\"deny\", \"allow\": [...], \"deny\": [...]}}"
                )))
            }
        },
        Some(NetworkRequest::Rules(r)) => {
            EgressPolicy::rules(r.egress == EgressDefault::Allow, &r.allow, &r.deny)
                .map_err(|e| Error::InvalidRequest(format!("network: {e}")))?
        }
    };
    let private = tenants
        .effective(tenant)
        .await?
        .private_egress
        .unwrap_or(false);
    Ok(Network::Egress(std::sync::Arc::new(
        policy.with_private(private),
    )))
}

/// The timeout asked for (or the default), within the config's maximum.
pub(crate) fn timeout(cfg: &PlatformConfig, asked: Option<u64>) -> Result<u64> {
    let timeout_ms = asked.unwrap_or(cfg.default_timeout_ms);
    if timeout_ms == 0 || timeout_ms > cfg.max_timeout_ms {
        return Err(Error::InvalidRequest(format!(
            "timeout_ms must be between 1 and {}, got {timeout_ms}",
            cfg.max_timeout_ms
        )));
    }
    Ok(timeout_ms)
}

/// What the agent is asked to run.
pub(crate) fn exec_request(
    cfg: &PlatformConfig,
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
        output_limit: cfg.output_limit,
        ..Default::default()
    }
}

/// Where a command's output goes as it comes: the stream of execution `id`, when there is one.
pub(crate) fn to_stream<'a>(
    stream: Option<(&'a Streams, &'a str)>,
) -> impl FnMut(FrameKind, &[u8]) + Send + 'a {
    move |kind: FrameKind, chunk: &[u8]| {
        if let Some((streams, id)) = stream {
            let data = String::from_utf8_lossy(chunk).into_owned();
            let ev = match kind {
                FrameKind::Stderr => OutputEvent::Stderr { data },
                _ => OutputEvent::Stdout { data },
            };
            streams.push(id, ev);
        }
    }
}

/// The answer made of what the agent reported (timeouts and OOM kills counted).
pub(crate) fn response(metrics: &Metrics, out: ExecOutcome, run: RunInfo) -> ExecuteResponse {
    let x = &out.exit;
    if x.timed_out {
        inc(&metrics.timeouts);
    }
    if x.oom_killed {
        inc(&metrics.oom_kills);
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
        cpu_ms: run.usage.map(|u| u.cpu_ns as f64 / 1e6),
        peak_memory_mb: run
            .usage
            .filter(|u| u.memory_peak_bytes > 0)
            .map(|u| u.memory_peak_bytes as f64 / (1024.0 * 1024.0)),
        memory_mb: run.memory_mb,
    }
}
