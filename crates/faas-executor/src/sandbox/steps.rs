//! How long each step of a sandbox's life took: made, started, answered, reset, torn down.
//!
//! Off by default (a relaxed load per step); `faas bench` turns it on and reads the samples to
//! print where a cold start's time goes, so every change shows what it bought.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One timed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// A cgroup slot taken and its limits written (native).
    Cgroup,
    /// The bundle: directories, the overlay mount, `config.json` (native).
    Rootfs,
    /// A networked box's veth, addresses and rules (native: beside the bundle's making).
    Network,
    /// The runtime's create and start, until it has detached (native), or the container's
    /// create and start (docker).
    Runtime,
    /// From the runtime's return to the agent's first answer.
    AgentReady,
    /// The command's round trip to the agent, from the request to its last event.
    Exec,
    /// A used box made clean again for its next request (see `Sandbox::reset`).
    Reset,
    /// The box's tear-down, from the kill to the last of it removed (off the request's path).
    Teardown,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Cgroup,
        Step::Rootfs,
        Step::Network,
        Step::Runtime,
        Step::AgentReady,
        Step::Exec,
        Step::Reset,
        Step::Teardown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Cgroup => "cgroup",
            Step::Rootfs => "rootfs/overlay",
            Step::Network => "network (veth, rules)",
            Step::Runtime => "runtime create+start",
            Step::AgentReady => "agent ready",
            Step::Exec => "exec",
            Step::Reset => "reset for reuse",
            Step::Teardown => "teardown (background)",
        }
    }
}

/// Samples kept per step at most; later ones are dropped.
const MAX_SAMPLES: usize = 1 << 16;

static ON: AtomicBool = AtomicBool::new(false);
static SAMPLES: Mutex<Vec<(Step, Duration)>> = Mutex::new(Vec::new());

/// Records `took` for `step`, when recording is on.
pub fn record(step: Step, took: Duration) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut s = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    if s.len() < MAX_SAMPLES * Step::ALL.len() {
        s.push((step, took));
    }
}

/// Starts recording, from no samples.
pub fn start() {
    SAMPLES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording and returns what was recorded, in milliseconds, per step (steps with no
/// sample left out).
pub fn stop() -> Vec<(Step, Vec<f64>)> {
    ON.store(false, Ordering::Relaxed);
    let taken = std::mem::take(&mut *SAMPLES.lock().unwrap_or_else(|e| e.into_inner()));
    Step::ALL
        .into_iter()
        .map(|step| {
            let v: Vec<f64> = taken
                .iter()
                .filter(|(s, _)| *s == step)
                .map(|(_, d)| d.as_secs_f64() * 1000.0)
                .collect();
            (step, v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_on() {
        // Other tests of this binary may record while it is on: look for these samples only.
        let mine = |v: &[(Step, Vec<f64>)], step: Step, ms: f64| {
            v.iter()
                .any(|(s, d)| *s == step && d.iter().any(|x| (x - ms).abs() < 1e-9))
        };
        record(Step::Exec, Duration::from_micros(5_123));
        start();
        record(Step::Exec, Duration::from_micros(2_345));
        record(Step::Cgroup, Duration::from_micros(517));
        let got = stop();
        record(Step::Exec, Duration::from_micros(9_871));
        assert!(mine(&got, Step::Exec, 2.345), "{got:?}");
        assert!(mine(&got, Step::Cgroup, 0.517), "{got:?}");
        assert!(!mine(&got, Step::Exec, 5.123), "{got:?}");
        start();
        assert!(!mine(&stop(), Step::Exec, 9.871));
    }
}
