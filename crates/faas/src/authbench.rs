//! `faas bench auth N`: what authentication and the quota checks cost a cached execute. One
//! platform served on two listeners, one with keys (the default) and one with `--auth none`;
//! N cached executes on each, interleaved (the order alternating) so the machine's noise falls
//! on both alike, from the same warm pool (both callers are the default tenant).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::bench::{check, execute};
use crate::benchkit::Stats;

pub(crate) async fn run(
    keyed: &reqwest::Client,
    url: &str,
    open_url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    let open = reqwest::Client::new();
    let r = keyed
        .post(format!("{url}/api/v1/prewarm"))
        .json(&json!({"image": image, "count": 4, "runtime": "native"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("prewarm failed: {}", r.text().await?);
    }
    let extra = json!({"runtime": "native"});
    eprintln!("bench: cached execute with and without auth x{n}, interleaved");
    let mut with = Stats::new("cached, API key (auth + quotas)");
    let mut without = Stats::new("cached, --auth none");
    let mut cold = 0;
    for i in 0..n + 50 {
        let order: [(&reqwest::Client, &str, bool); 2] = if i % 2 == 0 {
            [(keyed, url, true), (&open, open_url, false)]
        } else {
            [(&open, open_url, false), (keyed, url, true)]
        };
        for (http, base, authed) in order {
            // The last box back in the pool before the next request.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            let r = execute(http, base, image, "cached", &extra).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            check(&r)?;
            if i < 50 {
                continue; // warm-up
            }
            cold += usize::from(!r.warm);
            if authed {
                with.samples.push(ms);
            } else {
                without.samples.push(ms);
            }
        }
    }
    keyed
        .post(format!("{url}/api/v1/prewarm"))
        .json(&json!({"image": image, "count": 0, "runtime": "native"}))
        .send()
        .await?;
    // The unauthenticated listener is really open, and the keyed one really is not.
    let r = open.get(format!("{url}/api/v1/pools")).send().await?;
    if r.status() != 401 {
        bail!("the keyed listener answered {} without a key", r.status());
    }
    let (a, b) = (p50(&with.samples), p50(&without.samples));
    with.note = format!("p50 {:+.3} ms over --auth none", a - b);
    if cold > 0 {
        with.note += &format!("; {cold} found the pool empty");
    }
    Ok(vec![with, without])
}

fn p50(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
