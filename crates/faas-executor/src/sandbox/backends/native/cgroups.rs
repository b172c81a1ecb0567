//! Reusable cgroup v1 "slots" for crun sandboxes, each with a resident zygote.
//!
//! Letting crun create and remove a cgroup in every v1 hierarchy for each sandbox, or moving a
//! process into a v1 cgroup (which waits for an RCU grace period while every fork on the host
//! stalls), costs about 15 ms per cold start on our hosts: more than everything else together.
//! Instead crun runs with `--cgroup-manager=disabled`, started by the slot's *zygote*
//! (`faas-agent --zygote`): a small process moved into the slot once, when the slot is made,
//! whose children are born in the slot. A slot is `<controller>/faas/<deployment>/s<N>` in the
//! memory, cpu, pids, devices and freezer hierarchies (the freezer pauses a crun box, which
//! crun cannot do without its cgroup manager) and in cpuacct, which counts the box's CPU time
//! (`usage.rs`), with the limits written when it is taken; the box and everything in it is
//! limited and counted from its first instruction, and its cgroup namespace is rooted at the
//! slot. A slot without a live zygote falls back to moving the runtime process in
//! between fork and exec, and gets a new zygote in the background.
//!
//! A slot goes back to the free list only when its tear-down is complete and nothing but its
//! zygote is left in it; the server's shutdown kills the zygotes and removes every slot.
//!
//! An instance's box outlives the server, so its slot is not reused: it is *named* after the
//! instance (renamed to `faas/<deployment>/<instance id>`, which v1 allows within a parent,
//! zygote and limits included), and removed when that box is stopped. A later server finds a
//! running instance's cgroup by that name.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::runtime::{spawn_zygote, Zygote};
use crate::error::{Error, Result};
use crate::sandbox::Limits;

const CONTROLLERS: [&str; 5] = ["memory", "cpu", "pids", "devices", "freezer"];
const ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies a slot is made in: [`CONTROLLERS`], and `cpuacct` where it is mounted apart
/// from `cpu` (where the two share one, `cpuacct/` names the same directories as `cpu/`).
fn hierarchies() -> &'static [&'static str] {
    static FOUND: OnceLock<Vec<&'static str>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let root = Path::new(ROOT);
        let (cpu, cpuacct) = (root.join("cpu"), root.join("cpuacct"));
        let apart = cpuacct.join("cgroup.procs").is_file()
            && std::fs::canonicalize(&cpu).ok() != std::fs::canonicalize(&cpuacct).ok();
        let mut h = CONTROLLERS.to_vec();
        if apart {
            h.push("cpuacct");
        }
        h
    })
}

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
    /// Its path under each hierarchy's root.
    rel: String,
    /// Its resident zygote, when it has a live one.
    pub zygote: Option<Zygote>,
    /// Renamed after an instance ([`CgroupSlots::name`]): removed, not reused, when released.
    named: bool,
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

/// Whether `name` can name a cgroup under the deployment's: one path component of ASCII
/// letters, digits, `-` and `_` (instance ids are hex), so no `..`, `/` or control file (v1
/// control files have a `.` in their name but these two).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !matches!(name, "tasks" | "notify_on_release")
}

/// The `cgroup.procs` files of cgroup `rel` (relative to each controller's root) in the
/// hierarchies slots use, where they exist.
pub(crate) fn procs_files_of(rel: &str) -> Vec<CString> {
    let rel = rel.trim_start_matches('/');
    hierarchies()
        .iter()
        .map(|c| Path::new(ROOT).join(c).join(rel).join("cgroup.procs"))
        .filter(|p| p.is_file())
        .filter_map(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok())
        .collect()
}

/// Freezes (or thaws) every process in cgroup `rel` through the v1 freezer, and waits until
/// the kernel reports it done. Blocks: call it off the async workers.
pub(crate) fn freeze(rel: &str, frozen: bool) -> Result<()> {
    let state = Path::new(ROOT)
        .join("freezer")
        .join(rel.trim_start_matches('/'))
        .join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    write(&state, want)?;
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&state).unwrap_or_default().trim() != want {
        if t.elapsed() > std::time::Duration::from_secs(5) {
            return Err(Error::Internal(format!(
                "{} did not become {want}",
                state.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
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

impl Slot {
    /// Its cgroup's path under each hierarchy's root.
    pub fn rel(&self) -> &str {
        &self.rel
    }
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
        for c in hierarchies() {
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
            named: false,
            oom_before: counter(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            pids_max_before: counter(&pids.join("pids.events"), "max").unwrap_or(0),
            rel,
        };
        Ok(slot)
    }

    /// The `cgroup.procs` files a process writes itself into to join the slot.
    pub fn procs_files(&self, slot: &Slot) -> Vec<CString> {
        procs_files_of(&slot.rel)
    }

    /// Zeroes the slot's resettable counters (CPU time, peak memory use, failed charges) for
    /// a box that is reset and reused, so what it is seen to use starts again. OOM kills and
    /// refused forks cannot be reset; a box with either is not reused, and later ones are told
    /// apart from the values recorded when the slot was taken.
    pub fn reset_counters(&self, slot: &Slot) -> Result<()> {
        let mem = self.dir("memory", &slot.rel);
        let files = [
            mem.join("memory.max_usage_in_bytes"),
            mem.join("memory.failcnt"),
            mem.join("memory.memsw.max_usage_in_bytes"),
            mem.join("memory.memsw.failcnt"),
            self.dir("cpuacct", &slot.rel).join("cpuacct.usage"),
        ];
        for p in files {
            if p.exists() {
                write(&p, "0")?;
            }
        }
        Ok(())
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
        hierarchies().iter().all(|c| {
            std::fs::read_to_string(self.dir(c, &slot.rel).join("cgroup.procs"))
                .map(|p| {
                    p.split_whitespace()
                        .all(|pid| Some(pid) == zygote.as_deref())
                })
                .unwrap_or(true)
        })
    }

    /// Renames `slot` to `<parent>/<name>` in every hierarchy (an empty cgroup of that name,
    /// left by an earlier box, is removed first). On failure the slot keeps its own name.
    pub fn name(&self, slot: &mut Slot, name: &str) -> Result<()> {
        if !is_plain_name(name) {
            return Err(Error::Internal(format!(
                "{name:?} cannot name a cgroup: one path component of letters, digits, - and _"
            )));
        }
        let rel = format!("{}/{name}", self.parent);
        let hierarchies = hierarchies();
        for (i, c) in hierarchies.iter().enumerate() {
            let (from, to) = (self.dir(c, &slot.rel), self.dir(c, &rel));
            let renamed = match std::fs::remove_dir(&to) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(
                    format!("remove the old cgroup {}", to.display()),
                    e,
                )),
            }
            .and_then(|()| {
                std::fs::rename(&from, &to)
                    .map_err(|e| Error::io(format!("rename cgroup {}", from.display()), e))
            });
            if let Err(e) = renamed {
                for c in &hierarchies[..i] {
                    let _ = std::fs::rename(self.dir(c, &rel), self.dir(c, &slot.rel));
                }
                return Err(e);
            }
        }
        slot.rel = rel;
        slot.named = true;
        Ok(())
    }

    /// Removes an instance's cgroup `<parent>/<name>` whose box is gone (and its zygote with
    /// it); one that still holds a process stays. True when none is left.
    pub fn remove_named(&self, name: &str) -> bool {
        if !is_plain_name(name) {
            return true;
        }
        self.remove_cgroup(&format!("{}/{name}", self.parent))
    }

    /// Removes cgroup `rel` in every hierarchy; one that still holds a process stays. True
    /// when none is left.
    fn remove_cgroup(&self, rel: &str) -> bool {
        hierarchies().iter().fold(true, |gone, c| {
            let removed = match std::fs::remove_dir(self.dir(c, rel)) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            gone && removed
        })
    }

    /// Returns a slot whose box is torn down; one that still holds a process is not reused.
    /// A named slot is removed, its zygote killed (blocks for a moment: call it off the async
    /// workers).
    pub fn release(&self, slot: Slot) {
        if slot.named {
            if let Some(z) = slot.zygote {
                z.kill_and_reap();
            }
            // A killed process stays a member until it is reaped, a moment later.
            let t = std::time::Instant::now();
            while !self.remove_cgroup(&slot.rel) {
                if t.elapsed() > std::time::Duration::from_secs(2) {
                    tracing::warn!(slot = %slot.rel, "an instance's cgroup still holds processes; not removed");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return;
        }
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
    pub fn prepare(&self, agent: &Path) {
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
            match spawn_zygote(agent, procs_files_of(&self.rel(n))) {
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

#[cfg(test)]
mod tests {
    use super::is_plain_name;

    #[test]
    fn only_plain_names_can_name_a_cgroup() {
        for good in ["0f3a9c2b7d1e4f60", "s12", "inst-1_a"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "x\0y",
            "with space",
            "tasks",
            "cgroup.procs",
            "notify_on_release",
            &"a".repeat(65),
        ] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
