//! What a box used (`Sandbox::usage`), as the host kernel counted it in the box's cgroup, on
//! the backend under test, driven directly (no server): a process that spins until it has had
//! a second of CPU shows as about a second, what the box wrote to its files shows in its peak
//! memory, and a reset box counts again from zero.

use std::panic::AssertUnwindSafe;
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
use futures::FutureExt;
use serde_json::json;

// Its own test binary: the backends driven here make this process a child subreaper that reaps
// every orphan, which would take the exits of the other tests' servers and commands.
#[allow(dead_code)]
#[path = "all/support.rs"]
mod support;

use support::{backend, gvisor, native_runtime, new_data_dir, IMAGE};

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
        net: None,
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
        net: None,
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
/// sets RLIMIT_CPU's soft and hard limits: SIGXCPU or SIGKILL), and returns how long that took.
/// CPU time, not wall time: a loaded host gives the box less than its core.
async fn spin_a_cpu_second(sb: &dyn Sandbox) -> Duration {
    const SIGKILL: i32 = 9;
    const SIGXCPU: i32 = 24;
    let out = run(sb, "ulimit -t 1; while :; do :; done", 60_000).await;
    let by_rlimit = matches!(out.exit.signal, Some(SIGKILL | SIGXCPU));
    assert!(
        by_rlimit && !out.exit.timed_out && !out.exit.oom_killed,
        "{out:?}"
    );
    Duration::from_micros(out.exit.duration_us)
}

/// Checks that `cpu_ns` is what a spin of one CPU second that took `wall` should show: about a
/// second, and no more than one core for `wall`. gVisor's kernel counts a process's CPU time
/// in ticks of its own clock while the process is meant to run, whether the host ran it or
/// not: on a loaded host it ends the spin early, and the host's cgroup rightly shows less.
fn check_a_cpu_second(cpu_ns: u64, wall: Duration, what: &str) {
    let cpu = secs(cpu_ns);
    let low = if gvisor() { 0.5 } else { 0.8 };
    assert!(
        (low..=1.2).contains(&cpu),
        "{what}: a spin of one CPU second counted as {cpu:.3} s"
    );
    let one_core = wall.as_secs_f64() + 0.15;
    assert!(
        cpu <= one_core,
        "{what}: {cpu:.3} s of CPU in {wall:?} in a one-core box"
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

/// Runs `test` on a new box of `b`, then destroys the box and shuts `b` down, a failed test's
/// too (its panic goes on after): nothing of it is left running on the host.
async fn on_a_box<F, Fut>(b: Arc<dyn Backend>, test: F)
where
    F: FnOnce(Arc<dyn Sandbox>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sb: Arc<dyn Sandbox> = b.create(&spec()).await.expect("create").into();
    let ran = AssertUnwindSafe(test(sb.clone())).catch_unwind().await;
    let destroyed = sb.destroy().await;
    b.shutdown().await;
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
    destroyed.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_of_spinning_is_a_second_of_cpu() {
    let b = require_backend!();
    on_a_box(b, |sb| async move {
        let (start, _) = usage(&*sb).await;
        let wall = spin_a_cpu_second(&*sb).await;
        // The loop has exited: its CPU time stays counted in the cgroup.
        let (spun, took) = usage(&*sb).await;
        let burned = spun.cpu_ns - start.cpu_ns;
        let wrote = run(&*sb, WRITE_64_MIB, 0).await;
        assert_eq!(wrote.exit.exit_code, 0, "{wrote:?}");
        let (after_dd, _) = usage(&*sb).await;
        eprintln!(
            "{}: at start {:.3} s; a CPU second's spin {:.3} s (read in {took:?}); peak after \
             writing 64 MiB {} MiB",
            under_test(),
            secs(start.cpu_ns),
            secs(burned),
            after_dd.memory_peak_bytes / MIB
        );
        check_a_cpu_second(burned, wall, "a new box");
        assert!(
            after_dd.memory_peak_bytes >= 64 * MIB,
            "64 MiB written, peak {after_dd:?}"
        );
        assert!(after_dd.cpu_ns >= spun.cpu_ns);
        if let Some(d) = sb.as_any().downcast_ref::<DockerSandbox>() {
            // The daemon reads the same counters.
            let stats = d.usage_from_stats().await.expect("stats");
            let (files, _) = usage(&*sb).await;
            let apart = stats.cpu_ns.abs_diff(files.cpu_ns);
            assert!(apart < 50_000_000, "stats {stats:?}, files {files:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_box_counts_from_zero() {
    let b = require_backend!();
    on_a_box(b, |sb| async move {
        let (start, _) = usage(&*sb).await;
        let wall = spin_a_cpu_second(&*sb).await;
        let (spun, _) = usage(&*sb).await;
        let wrote = run(&*sb, WRITE_64_MIB, 0).await;
        assert_eq!(wrote.exit.exit_code, 0, "{wrote:?}");
        let (used, _) = usage(&*sb).await;
        match sb.reset().await {
            Ok(()) => {}
            Err(faas_executor::Error::Unsupported(why)) => {
                eprintln!("skipped: {why}");
                return;
            }
            Err(e) => panic!("reset: {e}"),
        }
        let (fresh, _) = usage(&*sb).await;
        let wall_again = spin_a_cpu_second(&*sb).await;
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
        check_a_cpu_second(spun.cpu_ns - start.cpu_ns, wall, "before the reset");
        assert!(secs(fresh.cpu_ns) < 0.05, "after a reset: {fresh:?}");
        assert!(used.memory_peak_bytes >= 64 * MIB, "{used:?}");
        assert!(
            fresh.memory_peak_bytes < 32 * MIB,
            "the peak starts again at the reset: {fresh:?} after {used:?}"
        );
        check_a_cpu_second(again.cpu_ns, wall_again, "after the reset");
    })
    .await;
}
