//! A used box made clean for its next request, from the inside: [`Request::Reset`] ends every
//! other process of the box and forgets them; [`Request::CheckClean`], sent once the host has
//! replaced the box's root file system (`rootswap.rs`), compares the agent with what it was
//! when the box started.
//!
//! The agent is PID 1 of the box's pid namespace, so `kill(-1, SIGKILL)` reaches every other
//! process in it, daemons that left their session or were reparented included, and a fork in
//! flight is refused (the kernel fails a fork whose parent has a fatal signal pending).
//!
//! A process of the box runs as root with the same capabilities as the agent, so it could
//! change some of the agent's own attributes from outside: lower its resource limits (prlimit),
//! its priority (renice) or CPU affinity, raise its OOM score. The agent cannot raise a lowered
//! hard limit back, so it does not try: [`check`] reports any change and the host destroys such
//! a box rather than reuse it. The agent is not dumpable (see `main.rs`), so nothing in the box
//! can ptrace it or read or write its memory.
//!
//! [`Request::Reset`]: faas_agent::Request::Reset
//! [`Request::CheckClean`]: faas_agent::Request::CheckClean

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use faas_agent::{ErrorKind, Event};
use nix::sys::resource::{getrlimit, Resource};

/// What the agent looked like before anything else ran in the box.
#[derive(Debug, Clone, PartialEq)]
struct Baseline {
    rlimits: Vec<(u64, u64)>,
    /// The distinct nice values and allowed CPUs of the agent's threads.
    nice: Vec<String>,
    affinity: Vec<String>,
    oom_score_adj: String,
    /// Mount points with their types and options, sorted (ids differ after a root swap).
    mounts: Vec<String>,
    fds: usize,
}

static BASELINE: OnceLock<Baseline> = OnceLock::new();

const RESOURCES: [Resource; 16] = [
    Resource::RLIMIT_AS,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_STACK,
];

fn now() -> Baseline {
    let rlimits = RESOURCES
        .iter()
        .map(|r| getrlimit(*r).unwrap_or((0, 0)))
        .collect();
    // Priority and affinity are per thread (renice -p 1 changes the main thread only), and
    // a process started by a thread inherits that thread's: every thread's, deduplicated.
    let mut nice = Vec::new();
    let mut affinity = Vec::new();
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Field 19, counted after the `(comm)` field, which may hold spaces.
        let n = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(16))
            .unwrap_or("?")
            .to_string();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap_or("")
            .to_string();
        if !nice.contains(&n) {
            nice.push(n);
        }
        if !affinity.contains(&cpus) {
            affinity.push(cpus);
        }
    }
    let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            // `id parent major:minor root point options [optional...] - type source super`:
            // everything from the mount point on, without the optional (peer group) fields.
            // An overlay's super options name its upper dir, which a root swap changes.
            let fields: Vec<&str> = l.split(' ').collect();
            let tail = l.split(" - ").nth(1).unwrap_or("");
            let tail = match tail.strip_prefix("overlay ") {
                Some(rest) => format!("overlay {}", rest.split(' ').next().unwrap_or("")),
                None => tail.to_string(),
            };
            format!(
                "{} {} {} - {tail}",
                fields.get(3).unwrap_or(&""),
                fields.get(4).unwrap_or(&""),
                fields.get(5).unwrap_or(&"")
            )
        })
        .collect();
    mounts.sort();
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    Baseline {
        rlimits,
        nice,
        affinity,
        oom_score_adj,
        mounts,
        fds,
    }
}

/// Records the baseline: called once at start, before the first request.
pub(crate) fn record_baseline() {
    let _ = BASELINE.set(now());
}

/// Pids of the box other than the agent's.
fn others() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != 1 && p != std::process::id() as i32)
        .collect()
}

/// [`faas_agent::Request::Reset`]: kills every other process of the box, waits until they are
/// gone and every other connection has ended, and forgets the processes.
pub(crate) fn reset() -> Event {
    let t = Instant::now();
    loop {
        // SIGKILL to every process but PID 1 (the agent) of the namespace.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-1),
            nix::sys::signal::Signal::SIGKILL,
        );
        if others().is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(2) {
            return Event::error(
                ErrorKind::Other,
                format!("processes still alive after 2 s: {:?}", others()),
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Connections of the processes just killed end as their peers go (this one stays).
    while crate::OPEN.load(Ordering::SeqCst) > 1 {
        if t.elapsed() > Duration::from_secs(2) {
            return Event::error(ErrorKind::Other, "other connections still open after 2 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    crate::procs::clear();
    Event::Done
}

/// [`faas_agent::Request::CheckClean`]: `Done` when the agent is as it was at the start (and
/// alone in the box), else an error naming what differs.
pub(crate) fn check() -> Event {
    let Some(base) = BASELINE.get() else {
        return Event::error(ErrorKind::Other, "no baseline recorded");
    };
    let mut cur = now();
    // This request's own connection.
    cur.fds = cur.fds.saturating_sub(1);
    let mut diff = Vec::new();
    if cur.rlimits != base.rlimits {
        diff.push("resource limits".to_string());
    }
    if cur.nice != base.nice {
        diff.push(format!("priority {:?} (was {:?})", cur.nice, base.nice));
    }
    if cur.affinity != base.affinity {
        diff.push("CPU affinity".into());
    }
    if cur.oom_score_adj != base.oom_score_adj {
        diff.push("OOM score adjustment".into());
    }
    if cur.mounts != base.mounts {
        let extra: Vec<&String> = cur
            .mounts
            .iter()
            .filter(|m| !base.mounts.contains(m))
            .collect();
        let gone: Vec<&String> = base
            .mounts
            .iter()
            .filter(|m| !cur.mounts.contains(m))
            .collect();
        diff.push(format!("mounts: new {extra:?}, gone {gone:?}"));
    }
    if cur.fds != base.fds {
        diff.push(format!("{} open files (was {})", cur.fds, base.fds));
    }
    let others = others();
    if !others.is_empty() {
        diff.push(format!("processes {others:?}"));
    }
    if crate::OPEN.load(Ordering::SeqCst) > 1 {
        diff.push("other connections".into());
    }
    if diff.is_empty() {
        Event::Done
    } else {
        Event::error(ErrorKind::Other, format!("not clean: {}", diff.join("; ")))
    }
}
