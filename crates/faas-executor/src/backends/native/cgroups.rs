//! Reusable cgroup v1 "slots" for crun sandboxes, each with a resident zygote.
//!
//! Letting crun create and remove a cgroup in every v1 hierarchy for each sandbox, or moving a
//! process into a v1 cgroup (which waits for an RCU grace period while every fork on the host
//! stalls), costs about 15 ms per cold start on our hosts: more than everything else together.
//! Instead crun runs with `--cgroup-manager=disabled`, started by the slot's *zygote*
//! (`faas-agent --zygote`): a small process moved into the slot once, when the slot is made,
//! whose children are born in the slot. A slot is `<controller>/faas/<deployment>/s<N>` in the
//! memory, cpu, pids and devices hierarchies, with the limits written when it is taken; the box
//! and everything in it is limited from its first instruction, and its cgroup namespace is
//! rooted at the slot. A slot without a live zygote falls back to moving the runtime process in
//! between fork and exec, and gets a new zygote in the background.
//!
//! A slot goes back to the free list only when its tear-down is complete and nothing but its
//! zygote is left in it; the server's shutdown kills the zygotes and removes every slot.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::runtime::{OciRuntime, Zygote};
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
    /// Free slots, most with a zygote already inside (see [`CgroupSlots::prepare`]).
    free: Mutex<Vec<(u32, Option<Zygote>)>>,
    next: Mutex<u32>,
    preparing: AtomicBool,
    closed: AtomicBool,
}

/// Free slots kept ready with a zygote inside.
const SPARE: usize = 2;

/// One taken slot.
pub struct Slot {
    pub n: u32,
    rel: String,
    /// Its resident zygote, when it has a live one.
    pub zygote: Option<Zygote>,
    /// OOM kills and refused forks recorded before this box, to tell its own apart.
    oom_before: u64,
    pids_max_before: u64,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::io(format!("write {value:?} to {}", path.display()), e))
}

/// Removes `parent` (relative to the cgroup root) and the cgroups right under it, in every
/// hierarchy, where they are empty (the kernel refuses the others).
pub(crate) fn remove_empty(parent: &str) {
    let parent = parent.trim_start_matches('/');
    for c in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
        let parent = c.path().join(parent);
        for s in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if s.path().is_dir() {
                let _ = std::fs::remove_dir(s.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
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
            preparing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        Path::new(ROOT).join(controller).join(rel)
    }

    fn rel(&self, n: u32) -> String {
        format!("{}/s{n}", self.parent)
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Option<Zygote>)>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new slot's directories, with the device rules.
    fn make(&self) -> Result<u32> {
        let n = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        let rel = self.rel(n);
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
        Ok(n)
    }

    /// Takes a free slot (or makes one) and writes `limits` into it; its zygote, if it has
    /// one, comes with it.
    pub fn acquire(&self, limits: &Limits) -> Result<Slot> {
        let reused = self.free().pop();
        let (n, zygote) = match reused {
            Some(free) => free,
            None => (self.make()?, None),
        };
        let rel = self.rel(n);
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
        let pids = self.dir("pids", &rel);
        write(&pids.join("pids.max"), &limits.pids.to_string())?;
        let slot = Slot {
            n,
            zygote,
            oom_before: counter(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            pids_max_before: counter(&pids.join("pids.events"), "max").unwrap_or(0),
            rel,
        };
        Ok(slot)
    }

    /// The `cgroup.procs` files a process writes itself into to join the slot.
    pub fn procs_files(&self, slot: &Slot) -> Vec<CString> {
        self.procs_of(&slot.rel)
    }

    fn procs_of(&self, rel: &str) -> Vec<CString> {
        CONTROLLERS
            .iter()
            .filter_map(|c| {
                let p = self.dir(c, rel).join("cgroup.procs");
                CString::new(p.into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Whether the box in `slot` was OOM-killed.
    pub fn oom_killed(&self, slot: &Slot) -> bool {
        let f = self.dir("memory", &slot.rel).join("memory.oom_control");
        counter(&f, "oom_kill").unwrap_or(0) > slot.oom_before
    }

    /// Whether the box in `slot` hit its process limit.
    pub fn fork_refused(&self, slot: &Slot) -> bool {
        let f = self.dir("pids", &slot.rel).join("pids.events");
        counter(&f, "max").unwrap_or(0) > slot.pids_max_before
    }

    /// Whether no process but its zygote is left in the slot.
    pub fn is_empty(&self, slot: &Slot) -> bool {
        let zygote = slot.zygote.as_ref().map(|z| z.pid.to_string());
        CONTROLLERS.iter().all(|c| {
            std::fs::read_to_string(self.dir(c, &slot.rel).join("cgroup.procs"))
                .map(|p| {
                    p.split_whitespace()
                        .all(|pid| Some(pid) == zygote.as_deref())
                })
                .unwrap_or(true)
        })
    }

    /// Returns a slot whose box is torn down; one that still holds a process is not reused.
    pub fn release(&self, slot: Slot) {
        if !self.is_empty(&slot) {
            tracing::warn!(slot = %slot.rel, "cgroup slot still holds processes; not reused");
            return;
        }
        let mut zygote = slot.zygote;
        let zygote = zygote.take().and_then(|mut z| z.alive().then_some(z));
        self.free().push((slot.n, zygote));
    }

    /// Puts a zygote into the free slots that lack one, and makes new slots until
    /// [`SPARE`] are free. Moving a process into a v1 cgroup is slow (it waits for an RCU grace
    /// period, about 10 ms here), so this runs off the hot path, one call at a time.
    pub fn prepare(&self, runtime: &OciRuntime, agent: &Path) {
        if self.preparing.swap(true, Ordering::SeqCst) {
            return;
        }
        while !self.closed.load(Ordering::SeqCst) {
            let todo = {
                let mut free = self.free();
                match free.iter().position(|(_, h)| h.is_none()) {
                    Some(i) => Some(free.remove(i).0),
                    None if free.len() < SPARE => None,
                    None => break,
                }
            };
            let n = match todo {
                Some(n) => n,
                None => match self.make() {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "cannot make a cgroup slot");
                        break;
                    }
                },
            };
            match runtime.spawn_zygote(agent, self.procs_of(&self.rel(n))) {
                Ok(h) => self.free().push((n, Some(h))),
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "cannot start a zygote");
                    self.free().push((n, None));
                    break;
                }
            }
        }
        self.preparing.store(false, Ordering::SeqCst);
    }

    /// Stops making slots and kills (and reaps) the free slots' zygotes, so the slots can be
    /// removed ([`remove_empty`]).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            if !self.preparing.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let free = std::mem::take(&mut *self.free());
        for (_, zygote) in free {
            if let Some(z) = zygote {
                z.kill_and_reap();
            }
        }
    }
}
