//! `faas bench`'s load cases, on native-crun through HTTP: where a cold start's time goes (the
//! server's own step timings), cached executions back to back and at concurrency 8 for a
//! while, and ephemeral throughput at concurrency 32 with the number of live boxes watched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use faas_executor::sandbox::steps;
use serde_json::json;

use crate::bench::{check, execute};
use crate::benchkit::Stats;

/// Ephemeral executions back to back with the server's step timings recorded; prints the
/// median of each step beside the whole request's.
pub(crate) async fn breakdown(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Stats> {
    eprintln!("bench: cold-start breakdown, {n} ephemeral back to back (native-crun)");
    let extra = json!({"runtime": "native"});
    for _ in 0..5 {
        execute(http, url, image, "ephemeral", &extra).await?;
    }
    // Tear-downs of the warm-up finish before recording starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    steps::start();
    let mut s = Stats::new("native-crun ephemeral, back to back");
    let mut server = Stats::new("server total_ms");
    for _ in 0..n {
        let t = Instant::now();
        let r = execute(http, url, image, "ephemeral", &extra).await?;
        s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        server.samples.push(r.total_ms);
        check(&r)?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded = steps::stop();
    println!(
        "\ncold start, step by step (native-crun, {n} ephemeral back to back; server-side medians)"
    );
    println!("{:<28} {:>9} {:>9} {:>7}", "step", "p50 ms", "p95 ms", "n");
    let mut sum = 0.0;
    for (step, samples) in recorded {
        let st = Stats {
            name: step.name().into(),
            samples,
            note: String::new(),
        };
        if !matches!(step, steps::Step::Teardown | steps::Step::Reset) {
            sum += st.pct(50.0);
        }
        println!(
            "{:<28} {:>9.3} {:>9.3} {:>7}",
            st.name,
            st.pct(50.0),
            st.pct(95.0),
            st.samples.len()
        );
    }
    println!("{:<28} {:>9.3}", "sum of the steps on the path", sum);
    println!(
        "{:<28} {:>9.3}   (HTTP round trip p50 {:.3})",
        "server total_ms",
        server.pct(50.0),
        s.pct(50.0)
    );
    Ok(s)
}

/// Cached executions: `n` back to back, then as many as fit in `secs` seconds from 8 clients
/// at once. Each answer is checked; `warm: false` ones (the pool was empty) are counted.
pub(crate) async fn cached(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
    secs: u64,
) -> anyhow::Result<Vec<Stats>> {
    let extra = json!({"runtime": "native"});
    // The pool a cached request makes (of the server's default size), filled before timing.
    let r = http
        .post(format!("{url}/api/v1/prewarm"))
        .json(&json!({"image": image, "count": 8, "runtime": "native"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("prewarm failed: {}", r.text().await?);
    }
    execute(http, url, image, "cached", &extra).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("bench: cached x{n} back to back (native-crun)");
    steps::start();
    let mut s = Stats::new("native-crun cached, back to back");
    let mut cold = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = execute(http, url, image, "cached", &extra).await?;
        s.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        check(&r)?;
        cold += usize::from(!r.warm);
    }
    let resets = steps::stop();
    s.note = format!("{cold} found the pool empty{}", reset_note(&resets));

    eprintln!("bench: cached at concurrency 8 for {secs}s (native-crun)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut c8, cold8, done) = concurrent(http, url, image, "cached", 8, Some(secs), None).await?;
    c8.name = "native-crun cached, concurrency 8".into();
    c8.note = format!(
        "{done} in {secs}s ({:.0}/s), {cold8} found the pool empty",
        done as f64 / secs as f64
    );
    Ok(vec![s, c8])
}

fn reset_note(recorded: &[(steps::Step, Vec<f64>)]) -> String {
    recorded
        .iter()
        .find(|(s, _)| *s == steps::Step::Reset)
        .map(|(_, v)| {
            let st = Stats {
                name: String::new(),
                samples: v.clone(),
                note: String::new(),
            };
            format!(
                "; {} boxes reset for reuse, reset p50 {:.2} ms",
                v.len(),
                st.pct(50.0)
            )
        })
        .unwrap_or_default()
}

/// Ephemeral executions at concurrency 32: `n` in all, with the throughput, the latency and
/// the most boxes alive at once (the server's `sandboxes_live`, sampled every 5 ms).
pub(crate) async fn throughput(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Stats> {
    eprintln!("bench: ephemeral x{n} at concurrency 32 (native-crun)");
    let extra = json!({"runtime": "native"});
    for _ in 0..5 {
        execute(http, url, image, "ephemeral", &extra).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (http, url, peak, stop) = (http.clone(), url.to_string(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http.get(format!("{url}/api/v1/metrics")).send().await {
                    if let Ok(m) = r.json::<faas_common::MetricsResponse>().await {
                        peak.fetch_max(m.sandboxes_live as usize, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let t = Instant::now();
    let run = concurrent(http, url, image, "ephemeral", 32, None, Some(n)).await;
    let took = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.await;
    let (mut s, _, done) = run?;
    s.name = "native-crun ephemeral, concurrency 32".into();
    s.note = format!(
        "{:.0}/s, at most {} boxes alive at once",
        done as f64 / took,
        peak.load(Ordering::Relaxed)
    );
    Ok(s)
}

/// `clients` loops of `mode` executions, until `secs` have passed or `total` are done; returns
/// their latencies, how many found the pool empty, and how many were done.
async fn concurrent(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    mode: &'static str,
    clients: usize,
    secs: Option<u64>,
    total: Option<usize>,
) -> anyhow::Result<(Stats, usize, usize)> {
    let started = Arc::new(AtomicUsize::new(0));
    let until = secs.map(|s| Instant::now() + Duration::from_secs(s));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, image, started) = (
            http.clone(),
            url.to_string(),
            image.to_string(),
            started.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let extra = json!({"runtime": "native"});
            let mut samples = Vec::new();
            let mut cold = 0;
            loop {
                if until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                if total.is_some_and(|n| started.fetch_add(1, Ordering::Relaxed) >= n) {
                    break;
                }
                let t = Instant::now();
                let r = execute(&http, &url, &image, mode, &extra).await?;
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
                check(&r)?;
                cold += usize::from(!r.warm);
            }
            anyhow::Ok((samples, cold))
        }));
    }
    let mut s = Stats::new(mode);
    let mut cold = 0;
    for t in tasks {
        let (samples, c) = t.await??;
        s.samples.extend(samples);
        cold += c;
    }
    let done = s.samples.len();
    if done == 0 {
        bail!("no {mode} execution finished");
    }
    Ok((s, cold, done))
}
