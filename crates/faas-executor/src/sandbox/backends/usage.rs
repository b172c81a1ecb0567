//! What a box has used ([`BoxUsage`]), read from the files of its cgroup: the host kernel's own
//! accounting, never an estimate. CPU time from cgroup v1's `cpuacct.usage` or v2's `cpu.stat`
//! (`usage_usec`), peak memory from v1's `memory.max_usage_in_bytes` or v2's `memory.peak`,
//! memory now from v1's `memory.usage_in_bytes` or v2's `memory.current` and its page cache
//! from `memory.stat` (`cache`, `file`). The files are found once per box; a read is then a
//! few small reads of cgroupfs (microseconds), and works as long as the cgroup exists, after
//! every process in it has exited too.
//!
//! [`CgroupUsage::reset`] starts the figures again for a box that is reset and reused. v1
//! counters are zeroed by writing 0. v2's `usage_usec` cannot be: its value at the reset is
//! kept and subtracted. v2's `memory.peak` restarts for the open file it is written to (Linux
//! 6.12 and later), so it is read through a file held open; where it cannot restart, the peak
//! after a reset is unknown and reads 0.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::sandbox::BoxUsage;

const ROOT: &str = "/sys/fs/cgroup";

/// Where a cgroup's CPU time is counted.
#[derive(Debug)]
enum Cpu {
    /// v1 `cpuacct.usage`, nanoseconds.
    V1(PathBuf),
    /// v2 `cpu.stat`, whose `usage_usec` is microseconds.
    V2(PathBuf),
}

/// Where a cgroup's peak memory is kept.
#[derive(Debug)]
enum Peak {
    /// v1 `memory.max_usage_in_bytes`.
    V1(PathBuf),
    /// v2 `memory.peak`, held open; `resettable` when it could be opened for writing.
    V2 {
        path: PathBuf,
        file: std::fs::File,
        resettable: bool,
    },
    /// The box is in no memory cgroup we can see.
    Unknown,
}

/// Where a cgroup's memory now is counted: its total and its `memory.stat`, whose page cache
/// line is `cache` (v1) or `file` (v2).
#[derive(Debug)]
struct Current {
    total: PathBuf,
    stat: PathBuf,
    cache_key: &'static str,
}

/// The usage files of one box's cgroup.
#[derive(Debug)]
pub(crate) struct CgroupUsage {
    cpu: Cpu,
    peak: Peak,
    current: Option<Current>,
    /// v2: `usage_usec` at the last reset, in nanoseconds.
    cpu_base: AtomicU64,
    /// v2: the peak was reset where it cannot restart; it is unknown since.
    peak_lost: AtomicBool,
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one.
fn v2_root(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|r| r.join("cgroup.controllers").is_file())
}

/// The cgroup paths of one process, from its `/proc/<pid>/cgroup`: its v1 `cpuacct` and
/// `memory` cgroups and its v2 one. Root cgroups (`/`, the whole host) and paths outside our
/// cgroup namespace (`/..`) are left out: they are not the box's.
#[derive(Debug, Default, PartialEq)]
struct ProcessCgroups {
    cpuacct: Option<String>,
    memory: Option<String>,
    unified: Option<String>,
}

fn parse_proc_cgroup(text: &str) -> ProcessCgroups {
    let mut found = ProcessCgroups::default();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let rel = Some(rel.to_string());
        if controllers.is_empty() {
            found.unified = rel;
            continue;
        }
        for c in controllers.split(',') {
            match c {
                "cpuacct" => found.cpuacct = rel.clone(),
                "memory" => found.memory = rel.clone(),
                _ => {}
            }
        }
    }
    found
}

/// `usage_usec` of a v2 `cpu.stat`, in nanoseconds.
fn parse_cpu_stat(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some("usage_usec"))
            .then(|| it.next()?.parse::<u64>().ok()?.checked_mul(1000))
            .flatten()
    })
}

/// The value of line `key` of a `memory.stat`.
fn parse_stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

fn unreadable(path: &Path, text: &str) -> Error {
    Error::Internal(format!("{}: unexpected content {text:?}", path.display()))
}

impl CgroupUsage {
    /// The files of cgroup `rel`, the same path in every hierarchy (as the native backend and
    /// the runtimes make them).
    pub fn of(rel: &str) -> Result<CgroupUsage> {
        let rel = rel.trim_start_matches('/');
        Self::at(Path::new(ROOT), Some(rel), Some(rel), Some(rel))
    }

    /// The files of the cgroups process `pid` is in.
    pub fn of_process(pid: u32) -> Result<CgroupUsage> {
        let text = read(Path::new(&format!("/proc/{pid}/cgroup")))?;
        let cg = parse_proc_cgroup(&text);
        Self::at(
            Path::new(ROOT),
            cg.cpuacct.as_deref(),
            cg.memory.as_deref(),
            cg.unified.as_deref(),
        )
    }

    /// The files under cgroupfs mounted at `root`: v1 `cpuacct/<cpuacct>` and
    /// `memory/<memory>` where they exist, else v2 `<unified>`.
    fn at(
        root: &Path,
        cpuacct: Option<&str>,
        memory: Option<&str>,
        unified: Option<&str>,
    ) -> Result<CgroupUsage> {
        let v1 = |controller: &str, rel: Option<&str>, file: &str| {
            rel.map(|r| root.join(controller).join(r).join(file))
                .filter(|p| p.is_file())
        };
        let v2 = |file: &str| {
            let dir = v2_root(root)?.join(unified?);
            Some(dir.join(file)).filter(|p| p.is_file())
        };
        let cpu = match (v1("cpuacct", cpuacct, "cpuacct.usage"), v2("cpu.stat")) {
            (Some(p), _) => Cpu::V1(p),
            (None, Some(p)) => Cpu::V2(p),
            (None, None) => {
                return Err(Error::Unsupported(format!(
                    "no CPU accounting for cgroup {}: neither a v1 cpuacct.usage nor a v2 \
                     cpu.stat of it exists",
                    cpuacct.or(unified).unwrap_or("(none)")
                )))
            }
        };
        let peak = match (
            v1("memory", memory, "memory.max_usage_in_bytes"),
            v2("memory.peak"),
        ) {
            (Some(p), _) => Peak::V1(p),
            (None, Some(path)) => {
                let rw = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path);
                let (file, resettable) = match rw {
                    Ok(f) => (f, true),
                    Err(_) => (
                        std::fs::File::open(&path)
                            .map_err(|e| Error::io(format!("open {}", path.display()), e))?,
                        false,
                    ),
                };
                Peak::V2 {
                    path,
                    file,
                    resettable,
                }
            }
            (None, None) => Peak::Unknown,
        };
        let current = match (
            v1("memory", memory, "memory.usage_in_bytes"),
            v2("memory.current"),
        ) {
            (Some(total), _) => Some(Current {
                stat: total.with_file_name("memory.stat"),
                total,
                cache_key: "cache",
            }),
            (None, Some(total)) => Some(Current {
                stat: total.with_file_name("memory.stat"),
                total,
                cache_key: "file",
            }),
            (None, None) => None,
        };
        let usage = CgroupUsage {
            cpu,
            peak,
            current,
            cpu_base: AtomicU64::new(0),
            peak_lost: AtomicBool::new(false),
        };
        Ok(usage)
    }

    /// What the cgroup used since it was made or since the last [`CgroupUsage::reset`].
    pub fn read(&self) -> Result<BoxUsage> {
        let cpu_ns = match &self.cpu {
            Cpu::V1(p) => {
                let text = read(p)?;
                parse_number(&text).ok_or_else(|| unreadable(p, &text))?
            }
            Cpu::V2(p) => {
                let text = read(p)?;
                let now = parse_cpu_stat(&text).ok_or_else(|| unreadable(p, &text))?;
                now.saturating_sub(self.cpu_base.load(Ordering::SeqCst))
            }
        };
        let memory_peak_bytes = match &self.peak {
            Peak::V1(p) => {
                let text = read(p)?;
                parse_number(&text).ok_or_else(|| unreadable(p, &text))?
            }
            Peak::V2 { .. } if self.peak_lost.load(Ordering::SeqCst) => 0,
            Peak::V2 { path, file, .. } => {
                let mut buf = [0u8; 32];
                let n = file
                    .read_at(&mut buf, 0)
                    .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                let text = String::from_utf8_lossy(&buf[..n]);
                parse_number(&text).ok_or_else(|| unreadable(path, &text))?
            }
            Peak::Unknown => 0,
        };
        // Figures of the moment: one that cannot be read is unknown, not an error.
        let (memory_bytes, memory_cache_bytes) = match &self.current {
            Some(c) => (
                read(&c.total)
                    .ok()
                    .and_then(|t| parse_number(&t))
                    .unwrap_or(0),
                read(&c.stat)
                    .ok()
                    .and_then(|t| parse_stat(&t, c.cache_key))
                    .unwrap_or(0),
            ),
            None => (0, 0),
        };
        Ok(BoxUsage {
            cpu_ns,
            memory_peak_bytes,
            memory_bytes,
            memory_cache_bytes,
        })
    }

    /// Starts the figures again from here (see the module's docs).
    pub fn reset(&self) -> Result<()> {
        let zero = |p: &Path| {
            std::fs::write(p, "0").map_err(|e| Error::io(format!("write 0 to {}", p.display()), e))
        };
        match &self.cpu {
            Cpu::V1(p) => zero(p)?,
            Cpu::V2(p) => {
                let text = read(p)?;
                let now = parse_cpu_stat(&text).ok_or_else(|| unreadable(p, &text))?;
                self.cpu_base.store(now, Ordering::SeqCst);
            }
        }
        match &self.peak {
            Peak::V1(p) => zero(p)?,
            Peak::V2 {
                file,
                resettable: true,
                ..
            } => {
                let restarted = (&*file).write_all(b"reset\n").is_ok();
                self.peak_lost.store(!restarted, Ordering::SeqCst);
            }
            Peak::V2 { .. } => self.peak_lost.store(true, Ordering::SeqCst),
            Peak::Unknown => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cgroups_are_found_per_hierarchy() {
        let hybrid = "9:name=systemd:/docker/abc\n\
                      4:memory:/docker/abc\n\
                      2:cpuacct:/docker/abc\n\
                      1:cpu:/docker/abc\n\
                      0::/docker/abc\n";
        let abc = Some("docker/abc".to_string());
        assert_eq!(
            parse_proc_cgroup(hybrid),
            ProcessCgroups {
                cpuacct: abc.clone(),
                memory: abc.clone(),
                unified: abc.clone(),
            }
        );
        let comounted = "3:cpu,cpuacct:/system.slice/docker-abc.scope\n5:memory:/x\n";
        let cg = parse_proc_cgroup(comounted);
        assert_eq!(cg.cpuacct.as_deref(), Some("system.slice/docker-abc.scope"));
        assert_eq!(cg.memory.as_deref(), Some("x"));
        assert_eq!(cg.unified, None);
        let v2 = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_proc_cgroup(v2).unified.as_deref(),
            Some("system.slice/docker-abc.scope")
        );
    }

    #[test]
    fn root_and_foreign_cgroups_are_not_a_box_s() {
        // The host's root cgroup, and one outside our cgroup namespace.
        let text = "4:memory:/\n2:cpuacct:/../../docker/abc\n0::/\n";
        assert_eq!(parse_proc_cgroup(text), ProcessCgroups::default());
    }

    #[test]
    fn cpu_stat_usage_is_read_in_nanoseconds() {
        let text = "usage_usec 50182\nuser_usec 23608\nsystem_usec 26574\nnice_usec 0\n";
        assert_eq!(parse_cpu_stat(text), Some(50_182_000));
        assert_eq!(parse_cpu_stat("user_usec 1\n"), None);
        assert_eq!(parse_cpu_stat("usage_usec x\n"), None);
        assert_eq!(parse_number("50182235\n"), Some(50_182_235));
        assert_eq!(parse_number("max\n"), None);
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_files_are_read_and_zeroed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(&r.join("cpuacct/faas/s1/cpuacct.usage"), "1500000000\n");
        put(
            &r.join("memory/faas/s1/memory.max_usage_in_bytes"),
            "4096\n",
        );
        put(&r.join("memory/faas/s1/memory.usage_in_bytes"), "2048\n");
        put(
            &r.join("memory/faas/s1/memory.stat"),
            "cache 1024\nrss 1024\ntotal_cache 9\n",
        );
        // A hybrid host's unified tree: v1 wins where it has the file.
        put(&r.join("unified/cgroup.controllers"), "hugetlb\n");
        put(&r.join("unified/faas/s1/cpu.stat"), "usage_usec 7\n");
        let s1 = Some("faas/s1");
        let u = CgroupUsage::at(r, s1, s1, s1).unwrap();
        let want = BoxUsage {
            cpu_ns: 1_500_000_000,
            memory_peak_bytes: 4096,
            memory_bytes: 2048,
            memory_cache_bytes: 1024,
        };
        assert_eq!(u.read().unwrap(), want);
        u.reset().unwrap();
        let after = u.read().unwrap();
        assert_eq!((after.cpu_ns, after.memory_peak_bytes), (0, 0));
        // What it holds now is not reset.
        assert_eq!(after.memory_bytes, 2048);
    }

    #[test]
    fn v2_cpu_is_counted_from_the_last_reset() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(&r.join("cgroup.controllers"), "cpu memory pids\n");
        let stat = r.join("faas/b1/cpu.stat");
        put(&stat, "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n");
        let u = CgroupUsage::at(r, Some("faas/b1"), Some("faas/b1"), Some("faas/b1")).unwrap();
        assert_eq!(u.read().unwrap().cpu_ns, 1_000_000);
        assert_eq!(
            u.read().unwrap().memory_peak_bytes,
            0,
            "no memory.peak here"
        );
        u.reset().unwrap();
        put(&stat, "usage_usec 3500\nuser_usec 2000\nsystem_usec 1500\n");
        assert_eq!(u.read().unwrap().cpu_ns, 2_500_000);
    }

    #[test]
    fn v2_peak_is_read_through_the_open_file() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(&r.join("cgroup.controllers"), "cpu memory\n");
        put(&r.join("b/cpu.stat"), "usage_usec 1\n");
        put(&r.join("b/memory.peak"), "8192\n");
        put(&r.join("b/memory.current"), "4096\n");
        put(&r.join("b/memory.stat"), "anon 1024\nfile 3072\n");
        let u = CgroupUsage::at(r, None, None, Some("b")).unwrap();
        assert_eq!(u.read().unwrap().memory_peak_bytes, 8192);
        assert_eq!(u.read().unwrap().memory_bytes, 4096);
        assert_eq!(u.read().unwrap().memory_cache_bytes, 3072);
        assert_eq!(u.read().unwrap().memory_peak_bytes, 8192, "read again at 0");
    }

    #[test]
    fn a_cgroup_without_cpu_accounting_is_unsupported() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        put(&r.join("memory/faas/s1/memory.max_usage_in_bytes"), "1\n");
        let s1 = Some("faas/s1");
        assert!(matches!(
            CgroupUsage::at(r, s1, s1, s1),
            Err(Error::Unsupported(_))
        ));
    }
}
