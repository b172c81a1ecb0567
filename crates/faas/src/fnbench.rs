//! The functions cases of `faas bench`, on the native (crun) server, through HTTP:
//! - warm sync invoke of a trivial python function: p50/p95/p99, one at a time;
//! - warm sync throughput at concurrency 16 (invocations per second);
//! - cold invoke (a fresh function, so a sandbox and the interpreter start), side by side with
//!   `docker run --rm IMAGE python3 -c ...` in the same run;
//! - async throughput end to end: from the first enqueue to the last `succeeded`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::benchkit::{docker_run, print_table, Stats};

const HANDLER: &str = "def handler(event, context):\n    return event\n";
const CONCURRENCY: usize = 16;

async fn deploy(http: &reqwest::Client, url: &str, name: &str, image: &str) -> anyhow::Result<()> {
    let code = base64::engine::general_purpose::STANDARD.encode(HANDLER);
    let r = http
        .post(format!("{url}/api/v1/functions"))
        .json(
            &json!({"name": name, "runtime": "python", "handler": "main.handler",
                      "code_b64": code, "image": image, "backend": "native",
                      "max_concurrency": CONCURRENCY}),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("deploy {name}: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}

async fn invoke(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    payload: &Value,
) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{url}/api/v1/functions/{name}/invoke"))
        .json(payload)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.context("invoke answer")?;
    if !status.is_success() || v["status"] != "succeeded" {
        bail!("invoke {name}: {status} {v}");
    }
    Ok(v)
}

async fn delete(http: &reqwest::Client, url: &str, name: &str) {
    let _ = http
        .delete(format!("{url}/api/v1/functions/{name}"))
        .send()
        .await;
}

pub async fn run(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
    baseline: bool,
) -> anyhow::Result<()> {
    let name = format!("bench-{}", std::process::id());
    deploy(http, url, &name, image).await?;
    let payload = json!({"x": 1});
    let result = measure(http, url, &name, image, n, baseline, &payload).await;
    delete(http, url, &name).await;
    result
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    image: &str,
    n: usize,
    baseline: bool,
    payload: &Value,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    // Start the sandboxes the concurrent cases use, then measure.
    let warmup = futures::stream::iter(0..CONCURRENCY * 4)
        .map(|_| invoke(http, url, name, payload))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for w in warmup {
        w?;
    }

    eprintln!("bench: function warm sync invoke x{n}");
    let mut warm = Stats::new("python fn warm invoke (sync)");
    let mut server_ms = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let v = invoke(http, url, name, payload).await?;
        warm.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        if v["cold"] == true {
            warm.note = "some were cold".into();
        }
        server_ms.push(v["duration_ms"].as_f64().unwrap_or(0.0));
    }
    server_ms.sort_by(f64::total_cmp);
    warm.note = format!(
        "handler round trip in the sandbox p50 {:.3} ms",
        server_ms[server_ms.len() / 2]
    );
    results.push(warm);

    eprintln!("bench: function warm throughput, concurrency {CONCURRENCY}, x{n}");
    let t = Instant::now();
    let mut lat = Stats::new(format!("python fn warm invoke (c={CONCURRENCY})"));
    let outs = futures::stream::iter(0..n)
        .map(|_| async {
            let t = Instant::now();
            invoke(http, url, name, payload)
                .await
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let took = t.elapsed().as_secs_f64();
    for o in outs {
        lat.samples.push(o?);
    }
    let sync_rate = n as f64 / took;
    lat.note = format!("{sync_rate:.0} invocations/s");
    results.push(lat);

    let cold_runs = (n / 50).clamp(5, 20);
    eprintln!("bench: function cold invoke x{cold_runs}");
    let mut cold = Stats::new("python fn cold invoke (native-crun)");
    for i in 0..cold_runs {
        let fresh = format!("{name}-cold-{i}");
        deploy(http, url, &fresh, image).await?;
        let t = Instant::now();
        let v = invoke(http, url, &fresh, payload).await;
        cold.samples.push(t.elapsed().as_secs_f64() * 1000.0);
        delete(http, url, &fresh).await;
        if v?["cold"] != true {
            bail!("a fresh function's first invoke was not cold");
        }
    }
    results.push(cold);

    if baseline {
        eprintln!("bench: docker run python3 -c x{cold_runs}");
        let mut s = Stats::new("docker run python3 -c (baseline)");
        for _ in 0..cold_runs {
            let code = "import json; print(json.dumps({'x': 1}))";
            let (ms, _) = docker_run(&[image, "python3", "-c", code]).await?;
            s.samples.push(ms);
        }
        results.push(s);
    }

    eprintln!("bench: async invoke x{n}, enqueue to succeeded");
    let t = Instant::now();
    let enq = futures::stream::iter(0..n)
        .map(|_| async {
            let r = http
                .post(format!("{url}/api/v1/functions/{name}/invoke?async=true"))
                .json(payload)
                .send()
                .await?;
            if r.status().as_u16() != 202 {
                bail!("async invoke: {}", r.status());
            }
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    for e in enq {
        e?;
    }
    let enqueued = t.elapsed().as_secs_f64();
    loop {
        let r: Value = http
            .get(format!(
                "{url}/api/v1/invocations?function={name}&status=succeeded&limit=1000"
            ))
            .send()
            .await?
            .json()
            .await?;
        let done = r["invocations"]
            .as_array()
            .map(|a| a.iter().filter(|i| i["async"] == true).count())
            .unwrap_or(0);
        if done >= n.min(1000) {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("async invocations did not finish: {done} of {n}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = t.elapsed().as_secs_f64();
    let async_rate = n as f64 / total;

    print_table(&results);
    if let (Some(c), Some(b)) = (
        results
            .iter()
            .find(|s| s.name.starts_with("python fn cold")),
        results
            .iter()
            .find(|s| s.name.starts_with("docker run python3")),
    ) {
        println!(
            "\npython fn cold invoke p50 {:.2}x faster than docker run python3 -c",
            b.pct(50.0) / c.pct(50.0)
        );
    }
    println!(
        "python fn warm sync throughput at concurrency {CONCURRENCY}: {sync_rate:.0} invocations/s"
    );
    println!(
        "python fn async throughput, enqueue to succeeded: {async_rate:.0} invocations/s ({n} in {total:.2} s; enqueueing took {enqueued:.2} s)"
    );
    Ok(())
}
