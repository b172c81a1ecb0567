//! What a box used (`Sandbox::usage`), as the host kernel counted it in the box's cgroup, on
//! the backend under test, driven directly (no server): a process that spins until it has had
//! a second of CPU shows as about a second, what the box wrote to its files shows in its peak
//! memory, and a reset box counts again from zero.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_executor::sandbox::agent::ExecOutcome;
use faas_executor::sandbox::backends::docker::{DockerBackend, DockerConfig, DockerSandbox};
use faas_executor::sandbox::backends::native::runtime::RuntimeKind;
use faas_executor::sandbox::backends::native::{NativeBackend, NativeConfig};
use faas_executor::sandbox::images::ImageStore;
use faas_executor::sandbox::{BoxUsage, Isolation, Network};
use faas_executor::{Backend, Limits, Sandbox, SandboxSpec};
use serde_json::json;

use crate::require_docker;
use crate::support::{backend, native_runtime, new_data_dir, IMAGE};

const MIB: u64 = 1024 * 1024;

/// The static agent: `FAAS_AGENT_PATH`, else where `scripts/lib.sh`'s `build_agent` puts it.
fn agent_path() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/faas-agent");
    std::env::var_os("FAAS_AGENT_PATH")
        .map(PathBuf::from)
        .or(Some(built))
        .filter(|p| p.is_file())
}

/// The backend under test, on a fresh data dir; `Err` says why it cannot be made here.
async fn backend_under_test() -> Result<Arc<dyn Backend>, String> {
    let agent_path = agent_path().ok_or("no static faas-agent (scripts/lib.sh build_agent)")?;
    let data = new_data_dir().canonicalize().unwrap();
    let docker = DockerBackend::connect(DockerConfig {
        agent_path: agent_path.clone(),
        run_dir: data.join("sandboxes/docker"),
        owner: data.display().to_string(),
        persist_root: data.join("docker"),
        ready_timeout: Duration::from_secs(10),
    })
    .await
    .map_err(|e| e.to_string())?;
    if backend() == "docker" {
        return Ok(Arc::new(docker));
    }
    let runtime = RuntimeKind::parse(native_runtime()).ok_or("unknown native runtime")?;
    let store = Arc::new(ImageStore::open(data.join("images")).map_err(|e| e.to_string())?);
    let cfg = NativeConfig {
        agent_path,
        root: data.join("native"),
        runtime,
        runtime_path: None,
        runsc_path: None,
        owner: data.display().to_string(),
        persist_root: data.clone(),
        ready_timeout: Duration::from_secs(10),
    };
    let native = NativeBackend::new(cfg, store, Some(docker.client()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(native))
}

macro_rules! require_backend {
    () => {{
        require_docker!();
        match backend_under_test().await {
            Ok(b) => b,
            Err(why) => {
                eprintln!("skipped: the {} backend cannot run here: {why}", backend());
                return;
            }
        }
    }};
}

fn spec() -> SandboxSpec {
    SandboxSpec {
        image: IMAGE.to_string(),
        env: Vec::new(),
        // One core; the default pids limit (gVisor's own threads count against it).
        limits: Limits {
            cpu_cores: 1.0,
            ..Limits::default()
        },
        network: Network::None,
        isolation: Isolation::Container,
        mounts: Vec::new(),
    }
}

/// Runs `sh -c script` in the box, killed after `timeout_ms` (0: none).
async fn run(sb: &dyn Sandbox, script: &str, timeout_ms: u64) -> ExecOutcome {
    // The agent's exec request by its wire form: this crate does not name the agent's types.
    let req = serde_json::from_value(json!({
        "argv": ["sh", "-c", script],
        "timeout_ms": timeout_ms,
    }))
    .unwrap();
    match sb.agent().exec(req, None, |_, _| {}).await {
        Ok(out) => out,
        Err(e) => panic!("{script}: {e}; the box: {:?}", sb.death_cause().await),
    }
}

/// Spins until the process has had one second of CPU, when the kernel ends it (`ulimit -t 1`
/// sets RLIMIT_CPU's soft and hard limits: SIGXCPU or SIGKILL). CPU time, not wall time: a
/// loaded host gives the box less than its core.
async fn spin_a_cpu_second(sb: &dyn Sandbox) {
    const SIGKILL: i32 = 9;
    const SIGXCPU: i32 = 24;
    let out = run(sb, "ulimit -t 1; while :; do :; done", 60_000).await;
    let by_rlimit = matches!(out.exit.signal, Some(SIGKILL | SIGXCPU));
    assert!(
        by_rlimit && !out.exit.timed_out && !out.exit.oom_killed,
        "{out:?}"
    );
}

/// Writes 64 MiB to a file of the box and removes it: the box's memory, charged while the file
/// lived (its writes are in memory on every backend here), is back, but its peak stays.
const WRITE_64_MIB: &str = "dd if=/dev/zero of=/tmp/big bs=1M count=64 2>&1 && rm /tmp/big";

/// `usage`, and how long reading it took.
async fn usage(sb: &dyn Sandbox) -> (BoxUsage, Duration) {
    let t = Instant::now();
    let u = sb.usage().await.expect("usage");
    (u, t.elapsed())
}

/// `docker`, or `native/<runtime>`.
fn under_test() -> String {
    match backend() {
        "native" => format!("native/{}", native_runtime()),
        b => b.to_string(),
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_of_spinning_is_a_second_of_cpu() {
    let b = require_backend!();
    let sb = b.create(&spec()).await.expect("create");
    let (start, _) = usage(&*sb).await;
    spin_a_cpu_second(&*sb).await;
    // The loop has exited: its CPU time stays counted in the cgroup.
    let (spun, took) = usage(&*sb).await;
    let burned = spun.cpu_ns - start.cpu_ns;
    let wrote = run(&*sb, WRITE_64_MIB, 0).await;
    assert_eq!(wrote.exit.exit_code, 0, "{wrote:?}");
    let (after_dd, _) = usage(&*sb).await;
    if let Some(d) = sb.as_any().downcast_ref::<DockerSandbox>() {
        // The daemon reads the same counters.
        let stats = d.usage_from_stats().await.expect("stats");
        let (files, _) = usage(&*sb).await;
        let apart = stats.cpu_ns.abs_diff(files.cpu_ns);
        assert!(apart < 50_000_000, "stats {stats:?}, files {files:?}");
    }
    eprintln!(
        "{}: at start {:.3} s; a CPU second's spin {:.3} s (read in {took:?}); peak after \
         writing 64 MiB {} MiB",
        under_test(),
        secs(start.cpu_ns),
        secs(burned),
        after_dd.memory_peak_bytes / MIB
    );
    sb.destroy().await.unwrap();
    b.shutdown().await;
    assert!(
        (0.8..=1.2).contains(&secs(burned)),
        "a spin of one CPU second counted as {:.3} s",
        secs(burned)
    );
    assert!(
        after_dd.memory_peak_bytes >= 64 * MIB,
        "64 MiB written, peak {after_dd:?}"
    );
    assert!(spun.cpu_ns >= start.cpu_ns && after_dd.cpu_ns >= spun.cpu_ns);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_box_counts_from_zero() {
    let b = require_backend!();
    let sb = b.create(&spec()).await.expect("create");
    spin_a_cpu_second(&*sb).await;
    let wrote = run(&*sb, WRITE_64_MIB, 0).await;
    assert_eq!(wrote.exit.exit_code, 0, "{wrote:?}");
    let (used, _) = usage(&*sb).await;
    match sb.reset().await {
        Ok(()) => {}
        Err(faas_executor::Error::Unsupported(why)) => {
            eprintln!("skipped: {why}");
            sb.destroy().await.unwrap();
            b.shutdown().await;
            return;
        }
        Err(e) => panic!("reset: {e}"),
    }
    let (fresh, _) = usage(&*sb).await;
    spin_a_cpu_second(&*sb).await;
    let (again, _) = usage(&*sb).await;
    eprintln!(
        "{}: before the reset {:.3} s, peak {} MiB; after it {:.3} s, peak {} MiB; after a \
         CPU second's spin {:.3} s",
        under_test(),
        secs(used.cpu_ns),
        used.memory_peak_bytes / MIB,
        secs(fresh.cpu_ns),
        fresh.memory_peak_bytes / MIB,
        secs(again.cpu_ns)
    );
    sb.destroy().await.unwrap();
    b.shutdown().await;
    assert!(secs(used.cpu_ns) >= 0.8, "{used:?}");
    assert!(secs(fresh.cpu_ns) < 0.05, "after a reset: {fresh:?}");
    assert!(used.memory_peak_bytes >= 64 * MIB, "{used:?}");
    assert!(
        fresh.memory_peak_bytes < 32 * MIB,
        "the peak starts again at the reset: {fresh:?} after {used:?}"
    );
    assert!((0.8..=1.2).contains(&secs(again.cpu_ns)), "{again:?}");
}
