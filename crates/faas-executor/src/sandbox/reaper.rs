//! Prompt reaping of orphaned sandbox processes.
//!
//! `crun/runc/runsc run --detach` exit and leave the box's processes behind; they are
//! re-parented to the nearest "child subreaper", or to PID 1. When PID 1 reaps slowly (on our
//! machines it takes seconds), a killed box stays a zombie and `delete --force`, which polls
//! until the process is gone, waits with it. So the server makes itself a subreaper and reaps
//! the orphans itself.
//!
//! The server also waits for its own children (runtime commands) through tokio. Those are
//! spawned through [`spawn`], which records their pids under a lock; the reaper takes the same
//! lock and never touches a recorded pid, so it cannot steal an exit status tokio waits for.

use std::collections::HashSet;
use std::sync::{Mutex, Once};

static OURS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn ours() -> std::sync::MutexGuard<'static, Option<HashSet<u32>>> {
    OURS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a child's pid recorded (left to tokio) until dropped, after its wait.
pub struct PidGuard {
    pid: Option<u32>,
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            ours().get_or_insert_with(HashSet::new).remove(&pid);
        }
    }
}

/// Spawns `cmd` with its pid recorded, so the reaper leaves it to tokio. Keep the guard until
/// the child has been waited for.
pub fn spawn(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, PidGuard)> {
    let mut set = ours();
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(p) = pid {
        set.get_or_insert_with(HashSet::new).insert(p);
    }
    Ok((child, PidGuard { pid }))
}

/// Makes this process a child subreaper and starts reaping orphans (once per process). Needs a
/// tokio runtime.
pub fn start() {
    static START: Once = Once::new();
    START.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans are left to PID 1");
            return;
        }
        tracing::debug!("reaping orphaned sandbox processes as a child subreaper");
        tokio::spawn(async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut sigchld) = signal(SignalKind::child()) else { return };
            loop {
                // A signal, or a slow tick in case signals were coalesced.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sigchld.recv()).await;
                reap_orphans();
            }
        });
    });
}

/// Reaps every zombie child of this process that was not spawned through [`spawn`].
///
/// The kernel is asked which child is a zombie (`waitid` without reaping), so the cost does
/// not grow with the children alive: every box's first process is one, and a server with
/// 1,000 instances used to read 1,000 `/proc/<pid>/stat` files on each runtime command's exit.
/// Only when the first zombie is one of ours (tokio reaps it in a moment) are the children
/// looked at one by one.
pub fn reap_orphans() {
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
    loop {
        let set = ours();
        let seen = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let Some(pid) = seen.ok().and_then(|s| s.pid()) else {
            return;
        };
        if set
            .as_ref()
            .is_some_and(|s| s.contains(&(pid.as_raw() as u32)))
        {
            break;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
    reap_orphans_one_by_one();
}

fn reap_orphans_one_by_one() {
    let me = std::process::id();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{me}/task")) else {
        return;
    };
    let mut children = Vec::new();
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    let set = ours();
    for pid in children {
        if set.as_ref().is_some_and(|s| s.contains(&(pid as u32))) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if zombie {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}
