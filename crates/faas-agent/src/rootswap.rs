//! `faas-agent --reset-root PID LOWER UPPER WORK`: run by the host (as root, single-threaded:
//! joining a mount namespace needs that) to give a used box a fresh root file system once every
//! process of it but its agent is gone (`reset.rs`).
//!
//! 1. A new overlay (the image's layers `LOWER`, top first and `:`-separated, under the empty
//!    `UPPER`) is made as a detached mount with the new mount API, its paths resolved on the
//!    host.
//! 2. The helper joins the mount namespace of the box's agent (`PID`, a host pid), attaches the
//!    new overlay at `/.faas-reset` of the old root, and moves every mount of the old root
//!    (`/proc`, `/dev`, `/sys`, the agent's binary and socket directory, read-only code mounts)
//!    into it, with what is mounted below them.
//! 3. `pivot_root(".", ".")` in the new root moves the root and working directory of every
//!    process of the namespace (the agent alone) there; the old root, stacked on top, is
//!    detached. The old root's writes (the old upper dir) are now in no mount of the box.
//! 4. `/dev` is made as the runtime made it (the device nodes and links, nothing else),
//!    `/dev/shm` and `/dev/mqueue` are emptied, and, in the box's IPC namespace, every System V
//!    shared memory segment, message queue and semaphore set is removed.
//!
//! Exit status 0 when all is done; otherwise 1 with the reason on stderr, and the host destroys
//! the box instead of reusing it.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, Gid, Uid};

/// Where the new root is attached in the old one, for the moves.
const STAGE: &str = "/.faas-reset";

pub fn main(args: Vec<String>) {
    if let Err(e) = run(&args) {
        eprintln!("faas-agent: reset-root: {e}");
        std::process::exit(1);
    }
}

/// The swap, with `PID LOWER UPPER WORK` as arguments. Changes the calling process's
/// namespaces: call it in a process of its own (the zygote forks one).
pub fn run(args: &[String]) -> Result<(), String> {
    let [pid, lower, upper, work] = args else {
        return Err("usage: faas-agent --reset-root PID LOWER UPPER WORK".into());
    };
    swap(pid, lower, upper, work)
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn swap(pid: &str, lower: &str, upper: &str, work: &str) -> Result<(), String> {
    let pid: u32 = pid.parse().map_err(|e| err("pid", e))?;
    let overlay = new_overlay(lower, upper, work)?;
    let ns = |kind: &str| -> Result<OwnedFd, String> {
        let path = format!("/proc/{pid}/ns/{kind}");
        let fd = open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(&path, e))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let (mnt, ipc) = (ns("mnt")?, ns("ipc")?);
    setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(|e| err("join the mount namespace", e))?;
    // Mounts moved below must not propagate anywhere.
    make_private().map_err(|e| err("make / private", e))?;
    // The namespace's procfs shows the box's processes; the agent is PID 1 there.
    let mounts =
        top_mounts(&fs::read_to_string("/proc/1/mountinfo").map_err(|e| err("mountinfo", e))?);
    match fs::create_dir(STAGE) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(STAGE, e)),
    }
    attach(&overlay, STAGE)?;
    for m in &mounts {
        let to = PathBuf::from(format!("{STAGE}{m}"));
        make_mount_point(Path::new(m), &to)?;
        mount(
            Some(m.as_str()),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| err(format!("move {m}"), e))?;
    }
    chdir(STAGE).map_err(|e| err("enter the new root", e))?;
    pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach the old root", e))?;
    chdir("/").map_err(|e| err("chdir /", e))?;
    if mounts.iter().any(|m| m == "/dev") {
        fresh_dev()?;
    }
    setns(&ipc, CloneFlags::CLONE_NEWIPC).map_err(|e| err("join the IPC namespace", e))?;
    remove_sysv_ipc()
}

/// Makes every mount of the calling process's mount namespace private: nothing mounted or
/// unmounted in it from now on propagates to another namespace.
pub fn make_private() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// The mount points right under the root mount, in `mountinfo` order (parents first), but the
/// stage.
fn top_mounts(info: &str) -> Vec<String> {
    let rows: Vec<(String, String, String)> = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                unescape(f.get(4)?),
            ))
        })
        .collect();
    let Some(root) = rows.iter().find(|r| r.2 == "/").map(|r| r.0.clone()) else {
        return Vec::new();
    };
    rows.into_iter()
        .filter(|r| r.1 == root && r.2 != "/" && r.2 != STAGE)
        .map(|r| r.2)
        .collect()
}

/// `mountinfo` writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `to` like `from` (a directory, or an empty file for a file bind mount), with its
/// missing parents, as the runtime did in the first root.
fn make_mount_point(from: &Path, to: &Path) -> Result<(), String> {
    if to.exists() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| err(parent.display(), e))?;
    }
    let made = match fs::metadata(from) {
        Ok(m) if !m.is_dir() => fs::File::create(to).map(drop),
        _ => fs::create_dir(to),
    };
    made.map_err(|e| err(to.display(), e))
}

/// Devices the runtime makes in a box's `/dev` (`c major:minor`, mode 0666).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// Its links.
const LINKS: [(&str, &str); 6] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];
/// Its mounts, emptied rather than removed.
const DEV_MOUNTS: [&str; 3] = ["pts", "shm", "mqueue"];

/// `/dev` as the runtime made it: everything else in it removed; the device nodes kept where
/// they are right (masked paths are bind mounts of `/dev/null`: a new node would leave them on
/// a deleted one) with their mode and owner set back, made again where not; the links made
/// again (`core`, which crun makes and runc does not, only kept); `/dev/shm` and `/dev/mqueue`
/// emptied (removing a queue's file removes the queue).
fn fresh_dev() -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dev = Path::new("/dev");
    for e in fs::read_dir(dev).map_err(|e| err("/dev", e))?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let meta = fs::symlink_metadata(e.path()).map_err(|e| err(name.as_ref(), e))?;
        let device = DEVICES.iter().find(|d| d.0 == name);
        let keep = DEV_MOUNTS.contains(&name.as_ref())
            || device.is_some_and(|d| {
                meta.file_type().is_char_device() && meta.rdev() == makedev(d.1, d.2)
            })
            || LINKS.iter().any(|(n, target)| {
                *n == name
                    && meta.file_type().is_symlink()
                    && fs::read_link(e.path()).is_ok_and(|t| t == Path::new(target))
            });
        if !keep {
            remove(&e.path())?;
        }
    }
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        if !p.exists() {
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .map_err(|e| err(p.display(), e))?;
        }
        chown(&p, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
            .map_err(|e| err(p.display(), e))?;
        // mknod applies the umask; a node may have been chmod-ed.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
            .map_err(|e| err(p.display(), e))?;
    }
    for (name, target) in LINKS {
        let p = dev.join(name);
        if name != "core" && fs::symlink_metadata(&p).is_err() {
            symlink(target, &p).map_err(|e| err(name, e))?;
        }
    }
    for (name, mode) in [("shm", 0o1777), ("mqueue", 0o1777)] {
        let d = dev.join(name);
        if !d.is_dir() {
            continue;
        }
        for e in fs::read_dir(&d).map_err(|e| err(d.display(), e))?.flatten() {
            remove(&e.path())?;
        }
        chown(&d, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
            .map_err(|e| err(d.display(), e))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))
            .map_err(|e| err(d.display(), e))?;
    }
    let _ = fs::set_permissions(dev, fs::Permissions::from_mode(0o755));
    Ok(())
}

fn remove(p: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(p).map_err(|e| err(p.display(), e))?;
    let r = if meta.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    r.map_err(|e| err(format!("remove {}", p.display()), e))
}

/// Removes every System V IPC object of the current IPC namespace.
fn remove_sysv_ipc() -> Result<(), String> {
    for (file, kind) in [("shm", 0), ("msg", 1), ("sem", 2)] {
        let path = format!("/proc/sysvipc/{file}");
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        // The header, then `key id ...` per object.
        for id in text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
        {
            // SAFETY: IPC_RMID with a null buffer: no memory of ours is read or written.
            #[allow(unsafe_code)]
            let r = unsafe {
                match kind {
                    0 => nix::libc::shmctl(id, nix::libc::IPC_RMID, std::ptr::null_mut()),
                    1 => nix::libc::msgctl(id, nix::libc::IPC_RMID, std::ptr::null_mut()),
                    _ => nix::libc::semctl(id, 0, nix::libc::IPC_RMID),
                }
            };
            if r != 0 && Errno::last() != Errno::EINVAL && Errno::last() != Errno::EIDRM {
                return Err(err(format!("remove {file} {id}"), Errno::last()));
            }
        }
    }
    Ok(())
}

// The new mount API (Linux 5.2): a mount made from a file system context, detached until
// `move_mount` attaches it in whichever namespace the caller is in by then.
const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|e| err("a path with a NUL byte", e))
}

/// The overlay of `lower` (top first) under `upper`, as a detached mount.
#[allow(unsafe_code)]
fn new_overlay(lower: &str, upper: &str, work: &str) -> Result<OwnedFd, String> {
    let typ = cstr("overlay")?;
    // SAFETY (all blocks below): the syscalls get C strings that outlive them and integers;
    // each returned descriptor is owned by exactly one OwnedFd.
    let fs = unsafe { nix::libc::syscall(nix::libc::SYS_fsopen, typ.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(err("fsopen overlay", Errno::last()));
    }
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    // `source` as the first root's mount has it.
    for (key, value) in [
        ("source", "overlay"),
        ("lowerdir", lower),
        ("upperdir", upper),
        ("workdir", work),
    ] {
        let (k, v) = (cstr(key)?, cstr(value)?);
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(err(format!("overlay {key}={value}"), Errno::last()));
        }
    }
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        return Err(err("create the overlay", Errno::last()));
    }
    let m =
        unsafe { nix::libc::syscall(nix::libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(err("fsmount", Errno::last()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

/// Attaches the detached mount `m` at `at`.
#[allow(unsafe_code)]
fn attach(m: &OwnedFd, at: &str) -> Result<(), String> {
    let (empty, to) = (cstr("")?, cstr(at)?);
    // SAFETY: C strings that outlive the call, a descriptor we own.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_move_mount,
            m.as_raw_fd(),
            empty.as_ptr(),
            nix::libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(err(format!("attach the new root at {at}"), Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_mounts_are_the_root_mounts_children() {
        let info = "\
100 90 0:50 / / rw - overlay overlay rw,lowerdir=/a
101 100 0:51 / /proc rw - proc proc rw
102 101 0:52 / /proc/kcore ro - tmpfs tmpfs ro
103 100 0:53 / /dev rw - tmpfs tmpfs rw
104 103 0:54 / /dev/pts rw - devpts devpts rw
105 100 0:55 / /run/a\\040b rw - tmpfs tmpfs rw
106 100 0:56 / /.faas-reset rw - overlay overlay rw
";
        assert_eq!(top_mounts(info), vec!["/proc", "/dev", "/run/a b"]);
        assert!(top_mounts("garbage\n").is_empty());
    }

    #[test]
    fn unescape_handles_octal_and_plain_text() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape("/x\\999"), "/x\\999");
    }
}
