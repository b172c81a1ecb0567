//! `faas bench density N`: N idle instances on native-crun, one after another, through HTTP.
//! Prints the host memory each takes (the drop of `MemAvailable`: every process it started,
//! its tmpfs and kernel memory), the memory its cgroup is charged, the time to create the
//! first and the last (and the means of the first and last tenth), and the exec latency into
//! a random one at the end beside the same with one instance. Then deletes them all and checks
//! nothing of them is left.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::bench::{delete_instance, post};
use crate::benchkit::Stats;

pub(crate) async fn run(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<()> {
    let create = || async {
        let body = json!({"image": image, "runtime": "native"});
        let (v, ms) = post(http, &format!("{url}/api/v1/instances"), body).await?;
        let id = v["id"]
            .as_str()
            .with_context(|| format!("create an instance: {v}"))?
            .to_string();
        anyhow::Ok((id, ms))
    };
    let exec = |id: String| async move {
        let body = json!({"command": ["echo", "hello"]});
        let (v, ms) = post(http, &format!("{url}/api/v1/instances/{id}/exec"), body).await?;
        if v["stdout"] != "hello\n" {
            bail!("exec into {id}: {v}");
        }
        anyhow::Ok(ms)
    };
    // Exec latency with one instance, the reference.
    let (one, _) = create().await?;
    for _ in 0..20 {
        exec(one.clone()).await?;
    }
    let mut alone = Stats::new("exec, 1 instance");
    for _ in 0..200 {
        alone.samples.push(exec(one.clone()).await?);
    }
    delete_instance(http, url, &one).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("bench: density, {n} idle instances (native-crun)");
    let before = crate::bench::mem_available_kib()?;
    let mut ids = Vec::with_capacity(n);
    let mut created = Stats::new("create");
    let tenth = (n / 10).max(1);
    let mut first_steps = Vec::new();
    for i in 0..n {
        // The server's step timings of the first and the last tenth, side by side.
        if i == 0 || i == n - tenth {
            faas_executor::sandbox::steps::start();
        }
        let (id, ms) = create().await?;
        if i == tenth - 1 {
            first_steps = faas_executor::sandbox::steps::stop();
        }
        ids.push(id);
        created.samples.push(ms);
        if (i + 1) % 100 == 0 {
            eprintln!("bench: {} instances", i + 1);
        }
    }
    let last_steps = faas_executor::sandbox::steps::stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = crate::bench::mem_available_kib()?;
    let per = before.saturating_sub(after) as f64 / n as f64 / 1024.0;
    let charged = cgroup_charge_kib();
    let mut random = Stats::new(format!("exec, random one of {n}"));
    for _ in 0..20 {
        exec(ids[pick(ids.len())].clone()).await?;
    }
    for _ in 0..200 {
        let id = ids[pick(ids.len())].clone();
        random.samples.push(exec(id).await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let first = mean(&created.samples[..tenth]);
    let last = mean(&created.samples[n - tenth..]);
    println!("\ndensity: {n} idle instances (native-crun, {image})");
    println!("  host memory per instance (MemAvailable drop / {n}): {per:.2} MiB");
    if let Some((sum, count)) = charged {
        println!(
            "  charged to their cgroups (memory.usage_in_bytes, kernel memory included): {:.2} MiB each over {count}",
            sum as f64 / count.max(1) as f64 / 1024.0
        );
    }
    println!(
        "  create: first {:.1} ms, last {:.1} ms; mean of the first {tenth} {first:.1} ms, of the last {tenth} {last:.1} ms ({:.2}x)",
        created.samples[0],
        created.samples[n - 1],
        last / first
    );
    println!("  create, step by step (server side, p50 ms): first {tenth} / last {tenth}");
    for (step, v) in &first_steps {
        let last = last_steps.iter().find(|(s, _)| s == step).map(|(_, v)| v);
        let p50 = |v: &Vec<f64>| {
            Stats {
                name: String::new(),
                samples: v.clone(),
                note: String::new(),
            }
            .pct(50.0)
        };
        println!(
            "    {:<26} {:>8.3} {:>8.3}",
            step.name(),
            p50(v),
            last.map(p50).unwrap_or(f64::NAN)
        );
    }
    println!(
        "  exec p50: {:.2} ms into a random one of {n}, {:.2} ms with one instance (p95 {:.2} / {:.2})",
        random.pct(50.0),
        alone.pct(50.0),
        random.pct(95.0),
        alone.pct(95.0)
    );
    let t = Instant::now();
    for id in &ids {
        delete_instance(http, url, id).await?;
    }
    println!("  deleted all in {:.1} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = crate::bench::mem_available_kib()?;
    println!(
        "  MemAvailable after the delete: {:.1} MiB below the level before the first",
        before.saturating_sub(back) as f64 / 1024.0
    );
    Ok(())
}

/// A pseudo-random index below `n` (xorshift; spread is all a benchmark needs).
fn pick(n: usize) -> usize {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x % n as u64) as usize
}

/// The memory charged to the deployment's per-instance cgroups (v1 memory hierarchy): the sum
/// in KiB and how many.
fn cgroup_charge_kib() -> Option<(u64, usize)> {
    let root = std::path::Path::new("/sys/fs/cgroup/memory/faas");
    let mut sum = 0;
    let mut count = 0;
    for dep in std::fs::read_dir(root).ok()?.flatten() {
        for cg in std::fs::read_dir(dep.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let usage = std::fs::read_to_string(cg.path().join("memory.usage_in_bytes"));
            if let Ok(u) = usage {
                if let Ok(b) = u.trim().parse::<u64>() {
                    sum += b / 1024;
                    count += 1;
                }
            }
        }
    }
    Some((sum, count))
}
