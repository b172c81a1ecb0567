//! Wiring: config → backends → executor → gateway; and `faas doctor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use faas_executor::agent::check_static_agent;
use faas_executor::backends::docker::{DockerBackend, DockerConfig};
use faas_executor::service::BackendEntry;
use faas_executor::{Executor, ExecutorConfig};
use faas_gateway::AppState;
use tokio::net::TcpListener;

use crate::{BackendChoice, HostArgs, ServeArgs};

/// Finds the static agent: the configured path, else next to this binary, else the workspace's
/// static build output.
pub fn find_agent(host: &HostArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &host.agent_path {
        check_static_agent(p).map_err(anyhow::Error::msg)?;
        return Ok(p.canonicalize()?);
    }
    let exe = std::env::current_exe().context("locate the faas binary")?;
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(4) {
        candidates.push(dir.join("faas-agent"));
        candidates.push(dir.join("x86_64-unknown-linux-gnu/release/faas-agent"));
    }
    for c in candidates {
        if !c.exists() {
            continue;
        }
        match check_static_agent(&c) {
            Ok(()) => return Ok(c.canonicalize()?),
            Err(e) => tried.push(e),
        }
    }
    bail!(
        "no static faas-agent found (build it with scripts/build-agent.sh, or pass --agent-path){}",
        if tried.is_empty() {
            String::new()
        } else {
            format!(": {}", tried.join("; "))
        }
    )
}

/// Probes every backend; `auto` keeps whatever works, a named backend must work.
pub async fn backends(data_dir: &Path, host: &HostArgs) -> Vec<BackendEntry> {
    let docker = match find_agent(host) {
        Err(e) => BackendEntry {
            name: "docker",
            backend: None,
            detail: format!("{e:#}"),
        },
        Ok(agent_path) => {
            let cfg = DockerConfig {
                agent_path,
                run_dir: data_dir.join("sandboxes/docker"),
                owner: data_dir.display().to_string(),
                ready_timeout: Duration::from_secs(10),
            };
            match DockerBackend::connect(cfg).await {
                Ok(b) => BackendEntry {
                    name: "docker",
                    detail: b.describe().await,
                    backend: Some(Arc::new(b)),
                },
                Err(e) => BackendEntry {
                    name: "docker",
                    backend: None,
                    detail: e.to_string(),
                },
            }
        }
    };
    vec![docker]
}

pub async fn build_executor(a: &ServeArgs) -> anyhow::Result<Arc<Executor>> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create data dir {}", a.data_dir.display()))?;
    let data_dir = a.data_dir.canonicalize()?;
    let entries = backends(&data_dir, &a.host).await;
    let usable: Vec<&BackendEntry> = entries.iter().filter(|b| b.backend.is_some()).collect();
    match a.backend {
        BackendChoice::Docker if !usable.iter().any(|b| b.name == "docker") => {
            let detail = entries
                .iter()
                .find(|b| b.name == "docker")
                .map(|b| b.detail.clone());
            bail!(
                "backend docker is not available: {}",
                detail.unwrap_or_default()
            )
        }
        BackendChoice::Auto if usable.is_empty() => {
            let why: Vec<String> = entries
                .iter()
                .map(|b| format!("{}: {}", b.name, b.detail))
                .collect();
            bail!(
                "no backend works on this host ({}); `faas doctor` says more",
                why.join("; ")
            )
        }
        _ => {}
    }
    let cfg = ExecutorConfig {
        default_image: a.default_image.clone(),
        max_timeout_ms: a.max_timeout_ms,
        ..ExecutorConfig::default()
    };
    let executor = Executor::new(cfg, entries);
    let removed = executor
        .recover()
        .await
        .context("remove sandboxes left by an earlier run")?;
    if removed > 0 {
        tracing::info!(removed, "removed sandboxes left by an earlier run");
    }
    Ok(executor)
}

pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let executor = build_executor(&a).await?;
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = ?executor.default_backend(), "listening");
    // The one line on stdout: tests and scripts read the address from it.
    println!("faas listening on http://{addr}");
    let mut state = AppState::new(executor.clone());
    state.body_limit = a.body_limit;
    faas_gateway::serve(listener, state, shutdown_signal(a.shutdown_on_stdin_eof)).await?;
    tracing::info!("shutting down: destroying warm pools");
    executor.shutdown().await;
    Ok(())
}

async fn shutdown_signal(on_stdin_eof: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let stdin_closed = async {
        if on_stdin_eof {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await
        }
    };
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = stdin_closed => {}
    }
}

pub async fn doctor(host: HostArgs) -> anyhow::Result<u8> {
    let tmp = std::env::temp_dir().join(format!("faas-doctor-{}", std::process::id()));
    let entries = backends(&tmp, &host).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let row = |name: &str, state: &str, detail: &str| println!("{name:<12} {state:<12} {detail}");
    let mut ok = false;
    for b in &entries {
        ok |= b.backend.is_some();
        row(
            b.name,
            if b.backend.is_some() {
                "ok"
            } else {
                "unavailable"
            },
            &b.detail,
        );
    }
    row(
        "native",
        "unavailable",
        "the native backend (OCI runtimes: crun, runc, runsc) is not part of this build yet",
    );
    row(
        "firecracker",
        "unsupported",
        faas_executor::service::FIRECRACKER_UNSUPPORTED,
    );
    row(
        "kvm",
        if Path::new("/dev/kvm").exists() {
            "present"
        } else {
            "absent"
        },
        "/dev/kvm",
    );
    match find_agent(&host) {
        Ok(p) => row("agent", "ok", &p.display().to_string()),
        Err(e) => row("agent", "missing", &format!("{e:#}")),
    }
    Ok(if ok { 0 } else { 1 })
}
