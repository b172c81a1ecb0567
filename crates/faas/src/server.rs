//! Wiring: config → backends → platform → gateway; and `faas doctor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use faas_executor::sandbox::agent::check_static_agent;
use faas_executor::sandbox::backends::docker::{DockerBackend, DockerConfig};
use faas_executor::sandbox::backends::native::{NativeBackend, NativeConfig};
use faas_executor::sandbox::images::ImageStore;
use faas_executor::sandbox::net::{Cidr, Net, NetConfig};
use faas_executor::sandbox::sandboxes::BackendEntry;
use faas_executor::{Platform, PlatformConfig};
use faas_gateway::AppState;
use tokio::net::TcpListener;

use crate::{AuthMode, BackendChoice, HostArgs, NetArgs, ServeArgs};

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

/// Probes every backend, `preferred` first (that is what `auto` resolves to when it works).
/// Returns the entries and the native backend's image store, when it has one.
pub async fn backends(
    data_dir: &Path,
    host: &HostArgs,
    preferred: BackendChoice,
    net: Option<Arc<Net>>,
) -> (Vec<BackendEntry>, Option<Arc<ImageStore>>) {
    let unavailable = |name, detail: String| BackendEntry {
        name,
        backend: None,
        detail,
    };
    let agent = find_agent(host);
    let (docker, client) = match &agent {
        Err(e) => (unavailable("docker", format!("{e:#}")), None),
        Ok(agent_path) => {
            let cfg = DockerConfig {
                agent_path: agent_path.clone(),
                run_dir: data_dir.join("sandboxes/docker"),
                owner: data_dir.display().to_string(),
                persist_root: data_dir.join("docker"),
                ready_timeout: Duration::from_secs(10),
                net: net.clone(),
            };
            match DockerBackend::connect(cfg).await {
                Ok(b) => {
                    let client = b.client();
                    let entry = BackendEntry {
                        name: "docker",
                        detail: b.describe().await,
                        backend: Some(Arc::new(b)),
                    };
                    (entry, Some(client))
                }
                Err(e) => (unavailable("docker", e.to_string()), None),
            }
        }
    };
    let mut store = None;
    let native = match &agent {
        Err(e) => unavailable("native", format!("{e:#}")),
        Ok(agent_path) => match ImageStore::open(data_dir.join("images")) {
            Err(e) => unavailable("native", format!("image store: {e}")),
            Ok(s) => {
                let s = Arc::new(s);
                store = Some(s.clone());
                let cfg = NativeConfig {
                    agent_path: agent_path.clone(),
                    root: data_dir.join("native"),
                    runtime: host.native_runtime.kind(),
                    runtime_path: host.native_runtime_path.clone(),
                    runsc_path: None,
                    owner: data_dir.display().to_string(),
                    persist_root: data_dir.to_path_buf(),
                    ready_timeout: Duration::from_secs(10),
                    net: net.clone(),
                };
                match NativeBackend::new(cfg, s, client).await {
                    Ok(b) => BackendEntry {
                        name: "native",
                        detail: b.describe().await,
                        backend: Some(Arc::new(b)),
                    },
                    Err(e) => unavailable("native", e.to_string()),
                }
            }
        },
    };
    let entries = match preferred {
        BackendChoice::Docker => vec![docker, native],
        BackendChoice::Auto | BackendChoice::Native => vec![native, docker],
    };
    (entries, store)
}

/// The sandboxes' egress, unless turned off. A host where it cannot be set up (no `nft`, no
/// default route) still serves, without it: networked requests answer `unsupported`.
async fn start_net(data_dir: &Path, a: &NetArgs) -> anyhow::Result<Option<Arc<Net>>> {
    if a.no_network {
        return Ok(None);
    }
    let subnet =
        Cidr::parse(&a.sandbox_subnet).map_err(|e| anyhow::anyhow!("--sandbox-subnet: {e}"))?;
    let dns_upstream = match &a.dns_upstream {
        None => None,
        Some(u) => Some(match u.parse::<std::net::SocketAddr>() {
            Ok(s) => s,
            Err(_) => std::net::SocketAddr::new(
                u.parse()
                    .with_context(|| format!("--dns-upstream {u:?} is not IP or IP:PORT"))?,
                53,
            ),
        }),
    };
    let tag = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            data_dir.display().to_string().as_bytes(),
        ))[..6]
            .to_string()
    };
    let cfg = NetConfig {
        tag,
        subnet,
        egress_interface: a.egress_interface.clone(),
        dns_upstream,
        max_connections: a.egress_max_connections,
        rate_kib: a.egress_rate_kib,
        dir: data_dir.join("net"),
    };
    match Net::start(cfg).await {
        Ok(n) => Ok(Some(n)),
        Err(e) if a.egress_interface.is_some() || a.dns_upstream.is_some() => {
            Err(anyhow::anyhow!("sandbox networking: {}", e.chain()))
        }
        Err(e) => {
            tracing::warn!(error = %e.chain(), "sandbox networking is not available: only network \"none\" is offered");
            Ok(None)
        }
    }
}

pub async fn build_platform(a: &ServeArgs) -> anyhow::Result<Arc<Platform>> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create data dir {}", a.data_dir.display()))?;
    let data_dir = a.data_dir.canonicalize()?;
    let net = start_net(&data_dir, &a.net).await?;
    let (entries, store) = backends(&data_dir, &a.host, a.backend, net.clone()).await;
    let why = || {
        entries
            .iter()
            .map(|b| format!("{}: {}", b.name, b.detail))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match a.backend {
        BackendChoice::Auto if entries.iter().all(|b| b.backend.is_none()) => {
            bail!(
                "no backend works on this host ({}); `faas doctor` says more",
                why()
            )
        }
        BackendChoice::Docker | BackendChoice::Native if entries[0].backend.is_none() => {
            bail!(
                "backend {} is not available: {}",
                entries[0].name,
                entries[0].detail
            )
        }
        _ => {}
    }
    let cfg = PlatformConfig {
        default_image: a.default_image.clone(),
        max_timeout_ms: a.max_timeout_ms,
        functions_dir: data_dir.join("functions"),
        function_image: a.function_image.clone(),
        queue_workers: a.queue_workers,
        queue_lease_ms: a.queue_lease_ms.max(1_000),
        retry_base_ms: a.retry_base_ms,
        function_idle_ms: a.function_idle_ms,
        default_quotas: a.quotas.quotas(),
        ..PlatformConfig::default()
    };
    let records = match &a.database_url {
        Some(url) => faas_store::Store::open(url)
            .await
            .with_context(|| format!("open the store {}", faas_store::url_without_password(url)))?,
        None => {
            let db = data_dir.join("faas.db");
            faas_store::Store::open_sqlite(&db)
                .await
                .with_context(|| format!("open the store {}", db.display()))?
        }
    };
    let platform = Platform::new(cfg, entries, store, Some(records));
    if let Some(n) = net {
        platform.sandboxes.set_net(n);
    }
    let removed = platform
        .recover()
        .await
        .context("remove sandboxes left by an earlier run")?;
    if removed > 0 {
        tracing::info!(removed, "removed sandboxes left by an earlier run");
    }
    Ok(platform)
}

/// Writes the first admin key where the operator (and the CLI) finds it: `<data-dir>/admin.key`,
/// readable by its owner only.
fn write_admin_key(data_dir: &Path, secret: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin.key");
    let tmp = data_dir.join(".admin.key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    if a.auth == AuthMode::None && !a.listen.ip().is_loopback() {
        bail!(
            "--auth none is for local development: it needs a loopback listen address, not {}",
            a.listen
        );
    }
    // The certificate and key are read first: a bad one stops the start before anything runs.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let platform = build_platform(&a).await?;
    if let Some(secret) = platform
        .tenants
        .bootstrap_admin_key()
        .await
        .context("make the first admin key")?
    {
        let path = write_admin_key(&a.data_dir.canonicalize()?, &secret)?;
        tracing::info!(path = %path.display(), "made the first admin API key (the store had none); it is in this file, readable by its owner only");
        eprintln!("faas: the first admin API key is in {}", path.display());
    }
    if a.auth == AuthMode::None {
        tracing::warn!(
            "--auth none: every request is an admin, without a key (local development only)"
        );
    }
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = ?platform.sandboxes.default_backend(), "listening");
    // The one line on stdout: tests and scripts read the address from it.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("faas listening on {scheme}://{addr}");
    let mut state = AppState::new(platform.clone());
    state.body_limit = a.body_limit;
    state.auth = match a.auth {
        AuthMode::Key => faas_gateway::auth::AuthMode::Key,
        AuthMode::None => faas_gateway::auth::AuthMode::None,
    };
    state.metrics_public = a.metrics_public;
    state.sandbox_domain = a.sandbox_domain.clone();
    state.tls = tls.is_some();
    state.templates = Arc::new(a.templates.iter().cloned().collect());
    let shutdown = shutdown_signal(a.shutdown_on_stdin_eof);
    match tls {
        Some(tls) => {
            crate::tls::serve_tls(listener, faas_gateway::router(state), tls, shutdown).await?
        }
        None => faas_gateway::serve(listener, state, shutdown).await?,
    }
    tracing::info!("shutting down: destroying warm pools");
    platform.shutdown().await;
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
    let (entries, _) = backends(&tmp, &host, BackendChoice::Auto, None).await;
    // What the backends set up to be probed (the native scratch tmpfs and its network
    // namespaces) goes before the directory does.
    for b in entries.iter().filter_map(|b| b.backend.as_ref()) {
        b.shutdown().await;
    }
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
        "firecracker",
        "unsupported",
        faas_executor::sandbox::sandboxes::FIRECRACKER_UNSUPPORTED,
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
