//! `faas bench network N`: what `network: "internet"` costs a cold start. N ephemeral
//! executes with `network: "none"` and N with `"internet"`, interleaved (the order
//! alternating) so the machine's noise falls on both alike, on native-crun and on gVisor
//! (`isolation: "gvisor"`), in the same run.

use std::time::Instant;

use serde_json::json;

use crate::bench::{check, execute};
use crate::benchkit::Stats;

pub(crate) async fn run(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    let mut table = Vec::new();
    for isolation in ["container", "gvisor"] {
        eprintln!("bench: ephemeral execute, isolation {isolation}, network none and internet x{n}, interleaved");
        let label = match isolation {
            "gvisor" => "native-runsc",
            _ => "native-crun",
        };
        let mut none = Stats::new(format!("ephemeral {label}, network none"));
        let mut internet = Stats::new(format!("ephemeral {label}, network internet"));
        for i in 0..n + 10 {
            let order = if i % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for networked in order {
                let extra = json!({
                    "runtime": "native",
                    "isolation": isolation,
                    "network": if networked { "internet" } else { "none" },
                });
                let t = Instant::now();
                let r = execute(http, url, image, "ephemeral", &extra).await?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                check(&r)?;
                if i < 10 {
                    continue; // warm-up
                }
                match networked {
                    true => internet.samples.push(ms),
                    false => none.samples.push(ms),
                }
            }
        }
        internet.note = format!(
            "p50 {:+.2} ms over network none",
            internet.pct(50.0) - none.pct(50.0)
        );
        table.push(none);
        table.push(internet);
    }
    Ok(table)
}
