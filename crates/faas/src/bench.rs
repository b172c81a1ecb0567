//! `faas bench`: execute latency through HTTP, side by side with `docker run` in the same run.
//!
//! Starts its own server (docker backend, temporary data dir) unless `--server` is given, then
//! times, `--runs` times each:
//! - `ephemeral`: `POST /api/v1/execute` of `echo hello` (create, run, destroy);
//! - `cached`: the same with `mode: cached`, each request timed once the pool has a ready
//!   sandbox (the refill in between is not timed: this is the latency of a warm hit);
//! - `docker run --rm --network none IMAGE echo hello`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use faas_common::{ExecuteResponse, PoolsResponse};
use serde_json::json;

use crate::{BackendChoice, HostArgs, ServeArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Benchmark a running server instead of starting one.
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long, default_value = "faas/busybox:latest")]
    pub image: String,
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Skip the `docker run` baseline.
    #[arg(long)]
    pub no_baseline: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

struct Stats {
    name: String,
    samples: Vec<f64>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
        s[i.min(s.len() - 1)]
    }
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mut local = None;
    let base = match &a.server {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => {
            let (url, handle) = start_local(&a).await?;
            local = Some(handle);
            url
        }
    };
    let http = reqwest::Client::new();
    let mut results = Vec::new();

    // Warm up caches (image layers, the agent binary) before measuring.
    for _ in 0..3 {
        execute(&http, &base, &a.image, "ephemeral").await?;
    }

    eprintln!("bench: ephemeral x{}", a.runs);
    let mut s = Stats {
        name: "faas ephemeral (docker)".into(),
        samples: vec![],
    };
    for _ in 0..a.runs {
        let t = Instant::now();
        let r = execute(&http, &base, &a.image, "ephemeral").await?;
        s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        check(&r)?;
    }
    results.push(s);

    eprintln!("bench: cached x{}", a.runs);
    let pool = http
        .post(format!("{base}/api/v1/prewarm"))
        .json(&json!({"image": a.image, "count": 4, "runtime": "docker"}))
        .send()
        .await?;
    if !pool.status().is_success() {
        bail!("prewarm failed: {}", pool.text().await?);
    }
    let mut s = Stats {
        name: "faas cached (docker, warm hit)".into(),
        samples: vec![],
    };
    let mut cold = 0;
    for _ in 0..a.runs {
        wait_for_ready(&http, &base, &a.image).await?;
        let t = Instant::now();
        let r = execute(&http, &base, &a.image, "cached").await?;
        s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        check(&r)?;
        if !r.warm {
            cold += 1;
        }
    }
    if cold > 0 {
        eprintln!("bench: {cold} cached requests found the pool empty");
    }
    results.push(s);

    if !a.no_baseline {
        eprintln!("bench: docker run x{}", a.runs);
        let mut s = Stats {
            name: "docker run --rm --network none".into(),
            samples: vec![],
        };
        for _ in 0..a.runs {
            let t = Instant::now();
            let out = tokio::process::Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    &a.image,
                    "echo",
                    "hello",
                ])
                .output()
                .await
                .context("run docker")?;
            s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() || out.stdout != b"hello\n" {
                bail!(
                    "docker run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        results.push(s);
    }

    println!(
        "\n{:<34} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "case", "runs", "p50 ms", "p95 ms", "p99 ms", "mean ms", "min ms"
    );
    for s in &results {
        println!(
            "{:<34} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            s.name,
            s.samples.len(),
            s.pct(50.0),
            s.pct(95.0),
            s.pct(99.0),
            s.mean(),
            s.pct(0.0)
        );
    }
    if let Some(baseline) = results.iter().find(|s| s.name.starts_with("docker run")) {
        for s in results.iter().filter(|s| !s.name.starts_with("docker run")) {
            println!(
                "{:<34} p50 = {:.2}x of docker run",
                s.name,
                s.pct(50.0) / baseline.pct(50.0)
            );
        }
    }
    if let Some((stop, task)) = local {
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}

async fn execute(
    http: &reqwest::Client,
    base: &str,
    image: &str,
    mode: &str,
) -> anyhow::Result<ExecuteResponse> {
    let r = http
        .post(format!("{base}/api/v1/execute"))
        .json(&json!({"command": ["echo", "hello"], "image": image, "mode": mode, "runtime": "docker"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("execute failed: {}", r.text().await?);
    }
    Ok(r.json().await?)
}

fn check(r: &ExecuteResponse) -> anyhow::Result<()> {
    if r.exit_code != 0 || r.stdout != "hello\n" {
        bail!("unexpected result: {r:?}");
    }
    Ok(())
}

async fn wait_for_ready(http: &reqwest::Client, base: &str, image: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let pools: PoolsResponse = http
            .get(format!("{base}/api/v1/pools"))
            .send()
            .await?
            .json()
            .await?;
        if pools
            .pools
            .iter()
            .any(|p| p.image == image && p.backend == "docker" && p.ready > 0)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("the warm pool for {image} did not refill within 30s")
}

type LocalServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

async fn start_local(a: &BenchArgs) -> anyhow::Result<(String, LocalServer)> {
    let data_dir = std::env::temp_dir().join(format!("faas-bench-{}", std::process::id()));
    let args = ServeArgs {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        backend: BackendChoice::Docker,
        default_image: a.image.clone(),
        max_timeout_ms: 600_000,
        body_limit: faas_gateway::DEFAULT_BODY_LIMIT,
        shutdown_on_stdin_eof: false,
        host: a.host.clone(),
    };
    let executor = crate::server::build_executor(&args).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let state = faas_gateway::AppState::new(executor.clone());
        faas_gateway::serve(listener, state, async {
            let _ = rx.await;
        })
        .await?;
        executor.shutdown().await;
        let _ = std::fs::remove_dir_all(&data_dir);
        Ok(())
    });
    Ok((url, (tx, task)))
}
