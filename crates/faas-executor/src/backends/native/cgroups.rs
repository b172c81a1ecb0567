//! Reusable cgroup v1 "slots" for crun sandboxes.
//!
//! Letting crun create and remove a cgroup in every v1 hierarchy for each sandbox costs about
//! 15 ms per sandbox on our hosts, more than everything else in a cold start together. Instead
//! crun runs with `--cgroup-manager=disabled` and the sandbox is started *inside* a slot we
//! prepared: `<controller>/faas/<deployment>/s<N>` in the memory, cpu, pids and devices
//! hierarchies, with the limits written when the slot is taken. The runtime child joins the
//! slot (writes to `cgroup.procs`) between fork and exec, so the box and everything in it is
//! limited from its first instruction, and its cgroup namespace is rooted at the slot.
//!
//! A slot goes back to the free list only when its tear-down is complete and it holds no
//! process; the server's shutdown removes them all.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backend::Limits;
use crate::error::{Error, Result};

const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "devices"];
const ROOT: &str = "/sys/fs/cgroup";

/// Devices a box may use, besides nothing: null, zero, full, random, urandom, tty, console,
/// ptmx and the pty slaves (what runc and crun allow by default).
const ALLOWED_DEVICES: [&str; 9] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

pub struct CgroupSlots {
    /// `faas/<deployment>`, relative to each controller's root.
    parent: String,
    free: Mutex<Vec<u32>>,
    next: Mutex<u32>,
}

/// One taken slot.
#[derive(Debug, Clone)]
pub struct Slot {
    pub n: u32,
    rel: String,
    /// OOM kills and refused forks recorded before this box, to tell its own apart.
    oom_before: u64,
    pids_max_before: u64,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::io(format!("write {value:?} to {}", path.display()), e))
}

pub(crate) fn counter(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

impl CgroupSlots {
    /// Slots are used on cgroup v1 hosts (including hybrid ones) where every needed controller
    /// is mounted; `None` elsewhere, and the runtime manages cgroups itself.
    pub fn new(parent: &str) -> Option<CgroupSlots> {
        let all = CONTROLLERS
            .iter()
            .all(|c| Path::new(ROOT).join(c).join("cgroup.procs").is_file());
        all.then(|| CgroupSlots {
            parent: parent.trim_start_matches('/').to_string(),
            free: Mutex::new(Vec::new()),
            next: Mutex::new(0),
        })
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        Path::new(ROOT).join(controller).join(rel)
    }

    /// Takes a free slot (or makes one) and writes `limits` into it.
    pub fn acquire(&self, limits: &Limits) -> Result<Slot> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let n = match reused {
            Some(n) => n,
            None => {
                let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
                *next += 1;
                *next
            }
        };
        let rel = format!("{}/s{n}", self.parent);
        if reused.is_none() {
            for c in CONTROLLERS {
                let d = self.dir(c, &rel);
                std::fs::create_dir_all(&d)
                    .map_err(|e| Error::io(format!("create cgroup {}", d.display()), e))?;
            }
            let dev = self.dir("devices", &rel);
            write(&dev.join("devices.deny"), "a")?;
            for d in ALLOWED_DEVICES {
                write(&dev.join("devices.allow"), d)?;
            }
        }
        let mem = self.dir("memory", &rel);
        let bytes = (limits.memory_mb * 1024 * 1024).to_string();
        // memsw must stay >= the memory limit: lower memory first when shrinking.
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let _ = write(&mem.join("memory.limit_in_bytes"), &bytes);
        if memsw.exists() {
            write(&memsw, &bytes)?;
        }
        write(&mem.join("memory.limit_in_bytes"), &bytes)?;
        let cpu = self.dir("cpu", &rel);
        write(&cpu.join("cpu.cfs_period_us"), "100000")?;
        write(
            &cpu.join("cpu.cfs_quota_us"),
            &((limits.cpu_cores * 100_000.0) as i64).to_string(),
        )?;
        write(
            &self.dir("pids", &rel).join("pids.max"),
            &limits.pids.to_string(),
        )?;
        Ok(Slot {
            n,
            oom_before: counter(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            pids_max_before: counter(&self.dir("pids", &rel).join("pids.events"), "max")
                .unwrap_or(0),
            rel,
        })
    }

    /// The `cgroup.procs` files the runtime's child writes itself into.
    pub fn procs_files(&self, slot: &Slot) -> Vec<CString> {
        CONTROLLERS
            .iter()
            .filter_map(|c| {
                CString::new(
                    self.dir(c, &slot.rel)
                        .join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .ok()
            })
            .collect()
    }

    /// Whether the box in `slot` was OOM-killed or hit its process limit.
    pub fn oom_killed(&self, slot: &Slot) -> bool {
        counter(
            &self.dir("memory", &slot.rel).join("memory.oom_control"),
            "oom_kill",
        )
        .unwrap_or(0)
            > slot.oom_before
    }

    pub fn fork_refused(&self, slot: &Slot) -> bool {
        counter(&self.dir("pids", &slot.rel).join("pids.events"), "max").unwrap_or(0)
            > slot.pids_max_before
    }

    /// Returns a slot whose box is torn down; one that still holds a process is removed later.
    pub fn release(&self, slot: Slot) {
        let busy = CONTROLLERS.iter().any(|c| {
            std::fs::read_to_string(self.dir(c, &slot.rel).join("cgroup.procs"))
                .map(|p| !p.trim().is_empty())
                .unwrap_or(false)
        });
        if busy {
            tracing::warn!(slot = %slot.rel, "cgroup slot still holds processes; not reused");
            return;
        }
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.n);
    }

    /// Removes every (empty) slot and the parent, in every controller.
    pub fn remove_all(&self) {
        for c in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
            let parent = c.path().join(&self.parent);
            for s in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if s.path().is_dir() {
                    let _ = std::fs::remove_dir(s.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
