//! What `faas bench`'s cases share ([`crate::bench`] and [`crate::fnbench`]): samples and their
//! percentiles, the table they are printed in, and the timed `docker run` baseline.

use std::time::Instant;

use anyhow::{bail, Context};

pub(crate) struct Stats {
    pub name: String,
    pub samples: Vec<f64>,
    pub note: String,
}

impl Stats {
    pub fn new(name: impl Into<String>) -> Stats {
        Stats {
            name: name.into(),
            samples: vec![],
            note: String::new(),
        }
    }

    pub fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
        s[i.min(s.len() - 1)]
    }
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
}

/// `docker run --rm --network none ARGS...`, timed: its milliseconds and its stdout; an error
/// when it fails.
pub(crate) async fn docker_run(args: &[&str]) -> anyhow::Result<(f64, Vec<u8>)> {
    let t = Instant::now();
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(["run", "--rm", "--network", "none"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Through the reaper's spawn: this process reaps orphans for the native backend.
    let (child, _guard) = faas_executor::sandbox::reaper::spawn(&mut cmd).context("run docker")?;
    let out = child.wait_with_output().await.context("run docker")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((ms, out.stdout))
}

/// Prints medians and percentiles of each case.
pub(crate) fn print_table(results: &[Stats]) {
    println!(
        "\n{:<36} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "case", "runs", "p50 ms", "p95 ms", "p99 ms", "mean ms", "min ms"
    );
    for s in results.iter().filter(|s| !s.samples.is_empty()) {
        println!(
            "{:<36} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            s.name,
            s.samples.len(),
            s.pct(50.0),
            s.pct(95.0),
            s.pct(99.0),
            s.mean(),
            s.pct(0.0),
            s.note
        );
    }
}
