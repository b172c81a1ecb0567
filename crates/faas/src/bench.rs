//! `faas bench`: execute latency through HTTP on every backend, side by side with `docker run`
//! in the same run, and the host memory of idle warm sandboxes.
//!
//! It starts its own servers (temporary data dirs): one whose native backend runs crun (also
//! serving `isolation: gvisor` with runsc, and the docker backend), one whose native backend
//! runs runc. Each case runs `echo hello` `--runs` times:
//! - ephemeral on native-crun, native-runc, native-runsc (gVisor), docker: a new box each time;
//! - cached on native-crun and docker: each request timed once the pool is full again and the
//!   previous box is torn down (the refill in between is not timed): the latency of a warm hit
//!   on a quiet server;
//! - `docker run --rm --network none IMAGE echo hello`;
//! - processes (`--processes`, see `procbench.rs`) in one instance on native-crun,
//!   native-runsc and docker: an exec into it, and a background start to its first output.
//!
//! Then `--pool` idle warm sandboxes (native-crun) are started at once and the host memory they
//! take is measured (`MemAvailable` before and after), next to the agents' own memory.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use faas_common::{ExecuteResponse, PoolsResponse};
use serde_json::{json, Value};

use crate::benchkit::{docker_run, print_table, Stats};
use crate::http::{Api, ApiKey};
use crate::{BackendChoice, HostArgs, NativeRuntime, ServeArgs};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCase {
    /// N idle instances on native-crun: host memory per instance, the time to create the
    /// first and the last, exec latency into a random one (see `densitybench.rs`).
    Density {
        #[arg(default_value_t = 1000)]
        n: usize,
    },
    /// N cached executes with an API key and N without (`--auth none` on the same platform),
    /// interleaved: what authentication and the quota checks cost (see `authbench.rs`).
    Auth {
        #[arg(default_value_t = 1000)]
        n: usize,
    },
    /// N ephemeral executes with `network: "internet"` and N with `"none"`, interleaved, on
    /// native-crun and gVisor: what a network costs a cold start (see `netbench.rs`).
    Network {
        #[arg(default_value_t = 200)]
        n: usize,
    },
    /// N GETs through the port proxy to a server in an instance, and the same N sent from
    /// inside the box (see `netbench.rs`).
    Ports {
        #[arg(default_value_t = 500)]
        n: usize,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// One case alone instead of the whole run.
    #[command(subcommand)]
    pub case: Option<BenchCase>,
    #[arg(long, default_value = "faas/busybox:latest")]
    pub image: String,
    /// Requests per latency case (0 skips the latency cases).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Idle warm sandboxes to measure memory with (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub pool: usize,
    /// Ephemeral executions of the soak check on native-crun (0 skips it): afterwards no
    /// mount, runtime state, bundle dir or per-box cgroup may remain, and the server's memory
    /// is compared with its idle level.
    #[arg(long, default_value_t = 1000)]
    pub soak: usize,
    /// Skip the `docker run` baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Rounds of the snapshot cases on native-crun and docker (0 skips them): snapshot of an
    /// instance with 10 MiB changed, restore, branch x10.
    #[arg(long, default_value_t = 10)]
    pub snapshots: usize,
    /// The image of the function cases (python).
    #[arg(long, default_value = "faas/bookworm-python3.11-node18:latest")]
    pub function_image: String,
    /// Invocations per function case (0 skips them): warm sync p50, throughput at
    /// concurrency 16, cold invoke against `docker run ... python3 -c`, async throughput.
    #[arg(long, default_value_t = 1000)]
    pub functions: usize,
    /// Ephemeral executions of the cold-start breakdown (the server's step timings) on
    /// native-crun, back to back (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub breakdown: usize,
    /// Cached executions back to back on native-crun (0 skips the cached load cases).
    #[arg(long, default_value_t = 1000)]
    pub stream: usize,
    /// Seconds of cached executions at concurrency 8 on native-crun.
    #[arg(long, default_value_t = 30)]
    pub sustain_secs: u64,
    /// Ephemeral executions at concurrency 32 on native-crun (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub throughput: usize,
    /// Requests per processes case (0 skips them), in one instance on native-crun,
    /// native-runsc and docker: an exec into it, and a background start until its first
    /// output event.
    #[arg(long, default_value_t = 200)]
    pub processes: usize,
    #[command(flatten)]
    pub host: HostArgs,
}

struct Local {
    url: String,
    /// The same platform without authentication (`--auth none`), for the auth case.
    open_url: String,
    /// Sends this server's admin key.
    http: reqwest::Client,
    data_dir: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let crun = start_local(&a, NativeRuntime::Crun).await?;
    if let Some(BenchCase::Density { n }) = a.case {
        let measured = crate::densitybench::run(&crun.http, &crun.url, &a.image, n.max(1)).await;
        let stopped = stop(crun).await;
        return measured.and(stopped);
    }
    if let Some(BenchCase::Network { n }) = a.case {
        let measured = crate::netbench::run(&crun.http, &crun.url, &a.image, n.max(1)).await;
        let stopped = stop(crun).await;
        print_table(&measured?);
        return stopped;
    }
    if let Some(BenchCase::Ports { n }) = a.case {
        let measured =
            crate::netbench::ports(&crun.http, &crun.url, &a.function_image, n.max(1)).await;
        let stopped = stop(crun).await;
        print_table(&measured?);
        return stopped;
    }
    if let Some(BenchCase::Auth { n }) = a.case {
        let measured =
            crate::authbench::run(&crun.http, &crun.url, &crun.open_url, &a.image, n.max(1)).await;
        let stopped = stop(crun).await;
        print_table(&measured?);
        return stopped;
    }
    let runc = match start_local(&a, NativeRuntime::Runc).await {
        Ok(r) => r,
        Err(e) => {
            stop(crun).await?;
            return Err(e);
        }
    };
    // Whatever happens, the servers shut down and destroy what they made.
    let measured = measure(&a, &crun, &runc).await;
    let stopped = (stop(crun).await, stop(runc).await);
    measured?;
    stopped.0?;
    stopped.1
}

async fn stop(l: Local) -> anyhow::Result<()> {
    let _ = l.stop.send(());
    l.task.await?
}

async fn measure(a: &BenchArgs, crun: &Local, runc: &Local) -> anyhow::Result<()> {
    let http = &crun.http;
    let mut results = Vec::new();

    let ephemeral = [
        ("native-crun ephemeral", crun, json!({"runtime": "native"})),
        ("native-runc ephemeral", runc, json!({"runtime": "native"})),
        (
            "native-runsc (gVisor) ephemeral",
            crun,
            json!({"runtime": "native", "isolation": "gvisor"}),
        ),
        ("docker ephemeral", crun, json!({"runtime": "docker"})),
    ];
    // The warm-hit cases first, on a quiet machine: the ephemeral cases and `docker run` leave
    // the Docker daemon removing containers in the background for a while, which would compete
    // with them on these 2 cores.
    let cached_cases = if a.runs > 0 { 2 } else { 0 };
    for (name, backend) in [
        ("native-crun cached (warm hit)", "native"),
        ("docker cached (warm hit)", "docker"),
    ]
    .into_iter()
    .take(cached_cases)
    {
        eprintln!("bench: {name} x{}", a.runs);
        let extra = json!({"runtime": backend});
        let pool = http
            .post(format!("{}/api/v1/prewarm", crun.url))
            .json(&json!({"image": a.image, "count": 4, "runtime": backend}))
            .send()
            .await?;
        if !pool.status().is_success() {
            bail!("prewarm failed: {}", pool.text().await?);
        }
        let mut s = Stats::new(name);
        let mut cold = 0;
        for _ in 0..a.runs {
            // Timed on a quiet server: the pool refilled and the last box torn down.
            wait_for_ready(http, &crun.url, &a.image, backend, 4).await?;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t = Instant::now();
            let r = execute(http, &crun.url, &a.image, "cached", &extra).await?;
            s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
            check(&r)?;
            cold += usize::from(!r.warm);
        }
        if cold > 0 {
            s.note = format!("{cold} found the pool empty");
        }
        http.post(format!("{}/api/v1/prewarm", crun.url))
            .json(&json!({"image": a.image, "count": 0, "runtime": backend}))
            .send()
            .await?;
        results.push(s);
    }

    if a.breakdown > 0 {
        let s = crate::loadbench::breakdown(http, &crun.url, &a.image, a.breakdown).await?;
        results.push(s);
    }
    if a.stream > 0 {
        let cases =
            crate::loadbench::cached(http, &crun.url, &a.image, a.stream, a.sustain_secs).await?;
        results.extend(cases);
    }
    if a.throughput > 0 {
        let s = crate::loadbench::throughput(http, &crun.url, &a.image, a.throughput).await?;
        results.push(s);
    }

    for (name, server, extra) in ephemeral.iter().filter(|_| a.runs > 0) {
        let (http, url) = (&server.http, &server.url);
        // Warm up caches (image import, page cache) before measuring.
        for _ in 0..3 {
            execute(http, url, &a.image, "ephemeral", extra).await?;
        }
        eprintln!("bench: {name} x{}", a.runs);
        let mut s = Stats::new(*name);
        for _ in 0..a.runs {
            let t = Instant::now();
            let r = execute(http, url, &a.image, "ephemeral", extra).await?;
            s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
            check(&r)?;
        }
        results.push(s);
    }

    if a.processes > 0 {
        for (label, extra) in [
            ("native-crun", json!({"runtime": "native"})),
            (
                "native-runsc",
                json!({"runtime": "native", "isolation": "gvisor"}),
            ),
            ("docker", json!({"runtime": "docker"})),
        ] {
            let mut create = extra;
            create["image"] = json!(a.image);
            let cases = crate::procbench::run(http, &crun.url, label, create, a.processes);
            results.extend(cases.await?);
        }
    }

    // Before `docker run`, whose 200 `--rm` containers the daemon goes on removing in the
    // background for a while.
    if a.snapshots > 0 {
        snapshots(http, &crun.url, &a.image, a.snapshots).await?;
    }

    if !a.no_baseline && a.runs > 0 {
        eprintln!("bench: docker run x{}", a.runs);
        let mut s = Stats::new("docker run --rm --network none");
        for _ in 0..a.runs {
            let (ms, out) = docker_run(&[&a.image, "echo", "hello"]).await?;
            s.samples.push(ms);
            if out != b"hello\n" {
                bail!("docker run printed {:?}", String::from_utf8_lossy(&out));
            }
        }
        results.push(s);
    }

    print_table(&results);
    if let Some(baseline) = results.iter().find(|s| s.name.starts_with("docker run")) {
        println!();
        for s in results.iter().filter(|s| !s.name.starts_with("docker run")) {
            println!(
                "{:<36} p50 {:>7.2}x faster than docker run",
                s.name,
                baseline.pct(50.0) / s.pct(50.0)
            );
        }
    }

    if a.pool > 0 {
        pool_memory(http, &crun.url, &a.image, a.pool).await?;
    }
    if a.functions > 0 {
        crate::fnbench::run(
            http,
            &crun.url,
            &a.function_image,
            a.functions,
            !a.no_baseline,
        )
        .await?;
    }
    if a.soak > 0 {
        soak(http, crun, &a.image, a.soak).await?;
    }

    Ok(())
}

/// POSTs JSON and returns the answer, failing on anything but 2xx; with the time it took.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Value,
) -> anyhow::Result<(Value, f64)> {
    let t = Instant::now();
    let r = http.post(url).json(&body).send().await?;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {v}");
    }
    Ok((v, took))
}

pub(crate) async fn delete_instance(
    http: &reqwest::Client,
    url: &str,
    id: &str,
) -> anyhow::Result<()> {
    let r = http
        .delete(format!("{url}/api/v1/instances/{id}"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("delete instance {id}: {}", r.status());
    }
    Ok(())
}

/// Snapshot of an instance with 10 MiB changed, restore, and branch x10, through HTTP, on
/// native (crun) and docker, `rounds` times each.
async fn snapshots(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    rounds: usize,
) -> anyhow::Result<()> {
    // gVisor first, on a quiet machine: the docker cases leave the daemon removing containers
    // in the background for a while, which would compete with runsc on these 2 cores.
    let mut results = memory_snapshots(http, url, image, rounds).await?;
    for backend in ["native", "docker"] {
        eprintln!("bench: snapshots on {backend} x{rounds}");
        let (inst, _) = post(
            http,
            &format!("{url}/api/v1/instances"),
            json!({"image": image, "runtime": backend}),
        )
        .await?;
        let id = inst["id"].as_str().unwrap_or_default().to_string();
        let (out, _) = post(
            http,
            &format!("{url}/api/v1/instances/{id}/exec"),
            json!({"command": "mkdir -p /data && head -c 10485760 /dev/urandom > /data/blob && wc -c < /data/blob"}),
        )
        .await?;
        if out["stdout"] != "10485760\n" {
            bail!("writing 10 MiB failed: {out}");
        }
        let mut snap = Stats::new(format!("{backend}: snapshot (10 MiB changed)"));
        let mut restore = Stats::new(format!("{backend}: restore"));
        let mut branch = Stats::new(format!("{backend}: branch x10 (all ten)"));
        let mut size = 0;
        for _ in 0..rounds {
            let (s, took) = post(
                http,
                &format!("{url}/api/v1/instances/{id}/snapshot"),
                json!({}),
            )
            .await?;
            snap.samples.push(took);
            size = s["size_bytes"].as_u64().unwrap_or(0);
            let sid = s["id"].as_str().unwrap_or_default().to_string();
            let (r, took) = post(
                http,
                &format!("{url}/api/v1/snapshots/{sid}/restore"),
                json!({}),
            )
            .await?;
            restore.samples.push(took);
            delete_instance(http, url, r["id"].as_str().unwrap_or_default()).await?;
            let (b, took) = post(
                http,
                &format!("{url}/api/v1/snapshots/{sid}/branch"),
                json!({"count": 10}),
            )
            .await?;
            branch.samples.push(took);
            for i in b["instances"].as_array().into_iter().flatten() {
                delete_instance(http, url, i["id"].as_str().unwrap_or_default()).await?;
            }
            http.delete(format!("{url}/api/v1/snapshots/{sid}"))
                .send()
                .await?;
        }
        snap.note = format!("snapshot size {:.1} MiB", size as f64 / 1048576.0);
        delete_instance(http, url, &id).await?;
        results.extend([snap, restore, branch]);
    }
    println!(
        "\n{:<36} {:>6} {:>9} {:>9} {:>9}",
        "snapshots (through HTTP)", "runs", "p50 ms", "p95 ms", "min ms"
    );
    for s in &results {
        println!(
            "{:<36} {:>6} {:>9.2} {:>9.2} {:>9.2}  {}",
            s.name,
            s.samples.len(),
            s.pct(50.0),
            s.pct(95.0),
            s.pct(0.0),
            s.note
        );
    }
    Ok(())
}

/// gVisor memory snapshots of an instance running a counter: the checkpoint, the whole call
/// (checkpoint, file copy, the instance restored in place), and a restore into a new instance.
async fn memory_snapshots(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    rounds: usize,
) -> anyhow::Result<Vec<Stats>> {
    eprintln!("bench: gVisor memory snapshots x{rounds}");
    let mut ckpt = Stats::new("native-gvisor: memory checkpoint");
    let mut whole = Stats::new("native-gvisor: memory snapshot call");
    let mut restore = Stats::new("native-gvisor: restore from memory");
    let (inst, _) = post(
        http,
        &format!("{url}/api/v1/instances"),
        json!({"image": image, "runtime": "native", "isolation": "gvisor"}),
    )
    .await?;
    let id = inst["id"].as_str().unwrap_or_default().to_string();
    post(
        http,
        &format!("{url}/api/v1/instances/{id}/exec"),
        // A process counting in memory, ten times a second. It waits with `read -t` on a FIFO
        // nobody writes rather than running `sleep`: busybox runs every applet through
        // /proc/self/exe, and runsc 20221219 keeps the /proc entries of every such task, which
        // adds about 2.5 ms per task to each later checkpoint and restore (measured with this
        // loop around `sleep 0.1`: 63 ms fresh, 270 ms after 100 tasks, 2.8 s after 900). A
        // Debian image's bash and coreutils do not grow it.
        json!({"command": "mkfifo /tmp/tick && (exec 3<>/tmp/tick; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; read -t 0.1 x <&3; done) >/dev/null 2>&1 &"}),
    )
    .await?;
    for _ in 0..rounds {
        let (s, took) = post(
            http,
            &format!("{url}/api/v1/instances/{id}/snapshot"),
            json!({"memory": true}),
        )
        .await?;
        whole.samples.push(took);
        ckpt.samples
            .push(s["checkpoint_ms"].as_f64().unwrap_or(f64::NAN));
        let sid = s["id"].as_str().unwrap_or_default().to_string();
        let (r, took) = post(
            http,
            &format!("{url}/api/v1/snapshots/{sid}/restore"),
            json!({}),
        )
        .await?;
        restore.samples.push(took);
        delete_instance(http, url, r["id"].as_str().unwrap_or_default()).await?;
        http.delete(format!("{url}/api/v1/snapshots/{sid}"))
            .send()
            .await?;
    }
    delete_instance(http, url, &id).await?;
    Ok(vec![ckpt, whole, restore])
}

/// `n` ephemeral executions, then a look for anything left behind and at this process's memory
/// (the server runs in it).
async fn soak(http: &reqwest::Client, server: &Local, image: &str, n: usize) -> anyhow::Result<()> {
    eprintln!("bench: soak, {n} ephemeral executions (native-crun)");
    let extra = json!({"runtime": "native"});
    for _ in 0..20 {
        execute(http, &server.url, image, "ephemeral", &extra).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib();
    let t = Instant::now();
    for _ in 0..n {
        check(&execute(http, &server.url, image, "ephemeral", &extra).await?)?;
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let data = &server.data_dir;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .map(std::path::Path::new)
                // The backend's scratch tmpfs and the network namespaces it made ahead for
                // the next boxes live as long as the server.
                .is_some_and(|m| {
                    m.starts_with(data)
                        && m != data.join("native")
                        && !m.starts_with(data.join("native/netns"))
                })
        })
        .count();
    let count = |d: std::path::PathBuf| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let bundles = count(data.join("native/sandboxes"));
    let state = count(data.join("native/state/crun"));
    // Per-box cgroups are reusable slots (`s<N>`) on this backend: count the slot dirs.
    let slots: usize = std::fs::read_dir("/sys/fs/cgroup/memory/faas")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| {
            std::fs::read_dir(d.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .count()
        })
        .sum();
    println!(
        "\nsoak: {n} ephemeral executions on native-crun in {:.1}s ({:.1}/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!("  left behind: {mounts} mounts, {bundles} bundle dirs, {state} runtime state dirs under the data dir");
    println!("  cgroup slots kept for reuse (idle, removed at shutdown): {slots}");
    println!(
        "  server RSS: idle {:.1} MiB, after {:.1} MiB",
        idle as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if mounts + bundles + state > 0 {
        bail!("the soak left sandboxes behind");
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_kib(&s))
        .unwrap_or(0)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Starts `n` idle warm sandboxes and measures the host memory they take.
async fn pool_memory(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<()> {
    eprintln!("bench: {n} idle warm sandboxes (native-crun)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mem_available_kib()?;
    let t = Instant::now();
    let r = http
        .post(format!("{url}/api/v1/prewarm"))
        .json(&json!({"image": image, "count": n, "runtime": "native"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("prewarm failed: {}", r.text().await?);
    }
    wait_for_ready(http, url, image, "native", n).await?;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mem_available_kib()?;
    let agents = agent_memory_kib();
    let per_box = (before.saturating_sub(after)) as f64 / n as f64 / 1024.0;
    let mean = |f: fn(&(u64, u64)) -> u64| {
        agents.iter().map(f).sum::<u64>() as f64 / agents.len().max(1) as f64 / 1024.0
    };
    let (rss, private) = (mean(|a| a.0), mean(|a| a.1));
    println!(
        "\nidle warm sandboxes (native-crun): {n} started in {:.1}s",
        took.as_secs_f64()
    );
    println!("  host memory per sandbox, everything (MemAvailable drop / {n}): {per_box:.2} MiB");
    println!(
        "  agent per sandbox (mean of {} agents): RSS {rss:.2} MiB, of which private {private:.2} MiB (the rest is the shared binary)",
        agents.len()
    );
    println!(
        "  beyond the agent's own private memory: {:.2} MiB",
        per_box - private
    );
    http.post(format!("{url}/api/v1/prewarm"))
        .json(&json!({"image": image, "count": 0, "runtime": "native"}))
        .send()
        .await?;
    Ok(())
}

pub(crate) fn mem_available_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("MemAvailable:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .context("no MemAvailable in /proc/meminfo")
}

/// (RSS, private memory) of every running faas-agent on the host, in KiB.
fn agent_memory_kib() -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if !status
            .lines()
            .next()
            .is_some_and(|l| l.trim_end().ends_with("agent"))
        {
            continue;
        }
        let rollup = std::fs::read_to_string(e.path().join("smaps_rollup")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        if let Some(rss) = vm_rss_kib(&status) {
            v.push((rss, field("Private_Clean:") + field("Private_Dirty:")));
        }
    }
    v
}

pub(crate) async fn execute(
    http: &reqwest::Client,
    base: &str,
    image: &str,
    mode: &str,
    extra: &Value,
) -> anyhow::Result<ExecuteResponse> {
    let mut body = json!({"command": ["echo", "hello"], "image": image, "mode": mode});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = http
        .post(format!("{base}/api/v1/execute"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("execute failed: {}", r.text().await?);
    }
    Ok(r.json().await?)
}

pub(crate) fn check(r: &ExecuteResponse) -> anyhow::Result<()> {
    if r.exit_code != 0 || r.stdout != "hello\n" {
        bail!("unexpected result: {r:?}");
    }
    Ok(())
}

async fn wait_for_ready(
    http: &reqwest::Client,
    base: &str,
    image: &str,
    backend: &str,
    n: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        let pools: PoolsResponse = http
            .get(format!("{base}/api/v1/pools"))
            .send()
            .await?
            .json()
            .await?;
        let ready: usize = pools
            .pools
            .iter()
            .filter(|p| {
                p.image == image && p.backend == backend && p.isolation == Default::default()
            })
            .map(|p| p.ready)
            .sum();
        if ready >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("the {backend} warm pool for {image} did not reach {n} ready")
}

async fn start_local(a: &BenchArgs, runtime: NativeRuntime) -> anyhow::Result<Local> {
    let data_dir =
        std::env::temp_dir().join(format!("faas-bench-{}-{runtime:?}", std::process::id()));
    let mut host = a.host.clone();
    host.native_runtime = runtime;
    let args = ServeArgs {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        backend: BackendChoice::Native,
        default_image: a.image.clone(),
        max_timeout_ms: 600_000,
        body_limit: faas_gateway::DEFAULT_BODY_LIMIT,
        database_url: None,
        function_image: a.function_image.clone(),
        queue_workers: 32,
        queue_lease_ms: 10_000,
        retry_base_ms: 1_000,
        function_idle_ms: 300_000,
        shutdown_on_stdin_eof: false,
        auth: crate::AuthMode::Key,
        metrics_public: false,
        sandbox_domain: None,
        tls_cert: None,
        tls_key: None,
        templates: Vec::new(),
        quotas: crate::QuotaDefaults {
            quota_concurrent_sandboxes: 0,
            quota_instances: 0,
            quota_memory_mb: 0,
            quota_snapshot_bytes: 0,
            quota_functions: 0,
            quota_queued_invocations: 0,
            quota_requests_per_second: 0,
            quota_burst: 0,
        },
        // A subnet of its own, beside a `faas serve` on the default one.
        net: crate::NetArgs {
            no_network: false,
            egress_interface: None,
            sandbox_subnet: format!("10.212.{}.0/22", 4 * (runtime as u8)),
            dns_upstream: None,
            egress_max_connections: 256,
            egress_rate_kib: 12_800,
        },
        host,
    };
    let platform = crate::server::build_platform(&args).await?;
    let data_dir_kept = data_dir.canonicalize()?;
    // The first admin key, made as `faas serve` makes it (the data dir is new); the bench's
    // requests send it as the CLI does.
    let key = match platform
        .tenants
        .bootstrap_admin_key()
        .await
        .context("make the bench server's admin key")?
    {
        Some(secret) => Some(secret.parse::<ApiKey>().map_err(anyhow::Error::msg)?),
        None => ApiKey::in_data_dir(&data_dir_kept),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let open_listener = tokio::net::TcpListener::bind(args.listen).await?;
    let open_url = format!("http://{}", open_listener.local_addr()?);
    let http = Api::connect(&url, key, None)?.http;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let state = faas_gateway::AppState::new(platform.clone());
        let mut open_state = faas_gateway::AppState::new(platform.clone());
        open_state.auth = faas_gateway::auth::AuthMode::None;
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let mut open_stop = stopped_rx.clone();
        let open = tokio::spawn(faas_gateway::serve(open_listener, open_state, async move {
            let _ = open_stop.wait_for(|s| *s).await;
        }));
        faas_gateway::serve(listener, state, async {
            let _ = rx.await;
        })
        .await?;
        let _ = stopped_tx.send(true);
        open.await??;
        platform.shutdown().await;
        let _ = std::fs::remove_dir_all(&data_dir);
        Ok(())
    });
    Ok(Local {
        url,
        open_url,
        http,
        data_dir: data_dir_kept,
        stop,
        task,
    })
}
