//! `faas bench --processes N`: an instance's processes through HTTP, back to back, on one
//! backend: an exec into a running instance (`echo hello`), and starting a background process
//! until its first output event arrives on its event stream.

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::benchkit::Stats;

/// Times `n` instance execs and `n` background starts (each to its first output event) in
/// one instance made with `create` (its image, runtime, isolation).
pub(crate) async fn run(
    http: &reqwest::Client,
    url: &str,
    label: &str,
    create: Value,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    let (v, _) = crate::bench::post(http, &format!("{url}/api/v1/instances"), create).await?;
    let id = v["id"]
        .as_str()
        .with_context(|| format!("create an instance: {v}"))?
        .to_string();
    let out = cases(http, url, label, &id, n).await;
    crate::bench::delete_instance(http, url, &id).await?;
    out
}

async fn cases(
    http: &reqwest::Client,
    url: &str,
    label: &str,
    id: &str,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    let exec_url = format!("{url}/api/v1/instances/{id}/exec");
    let exec = || async {
        let t = Instant::now();
        let r = http
            .post(&exec_url)
            .json(&json!({"command": ["echo", "hello"]}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if v["stdout"] != "hello\n" {
            bail!("instance exec answered {v}");
        }
        anyhow::Ok(ms)
    };
    for _ in 0..20 {
        exec().await?;
    }
    eprintln!("bench: {label} instance exec x{n}");
    let mut execs = Stats::new(format!("{label} instance exec"));
    for _ in 0..n {
        execs.samples.push(exec().await?);
    }

    let procs_url = format!("{url}/api/v1/instances/{id}/processes");
    let first_output = || async {
        let t = Instant::now();
        let r = http
            .post(&procs_url)
            .json(&json!({"command": ["echo", "hello"]}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let pid = v["pid"]
            .as_u64()
            .with_context(|| format!("start a process: {v}"))?;
        let mut events = http.get(format!("{procs_url}/{pid}/events")).send().await?;
        let mut text = String::new();
        let mut first = None;
        while let Some(chunk) = events.chunk().await? {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if first.is_none() && text.contains("event: stdout") {
                first = Some(t.elapsed().as_secs_f64() * 1000.0);
            }
            if text.contains("event: exit") {
                break;
            }
        }
        first.with_context(|| format!("no output event in {text:?}"))
    };
    for _ in 0..20 {
        first_output().await?;
    }
    eprintln!("bench: {label} process start to first output x{n}");
    let mut starts = Stats::new(format!("{label} process start→first output"));
    for _ in 0..n {
        starts.samples.push(first_output().await?);
    }
    Ok(vec![execs, starts])
}
