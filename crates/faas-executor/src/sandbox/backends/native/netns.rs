//! Fresh network namespaces made ahead of need.
//!
//! Creating a network namespace is the largest single cost inside `crun run` here (about
//! 0.6 ms: the kernel registers a loopback device and its sysctl tables, under the global
//! networking lock), and it is the same work for every box. A background thread makes a few
//! ahead: each is new, has only loopback (up), is bind-mounted on a file in `<root>/netns/`,
//! and is handed to exactly one box, whose `config.json` names it as the namespace to join.
//! Nothing ever ran in it before. A box's namespace file is unmounted at its tear-down, and the
//! namespace ends with its last process. When the pool is empty the runtime makes the
//! namespace itself, as before.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// How many are kept ready: enough for a burst on two cores, each costs a few KiB.
const READY: usize = 4;

pub struct NetnsPool {
    dir: PathBuf,
    ready: Mutex<Vec<PathBuf>>,
    wake: Condvar,
    closed: AtomicBool,
    next: AtomicU64,
}

impl NetnsPool {
    /// Starts the maker thread; `dir` is emptied of what an earlier run left first.
    pub fn start(dir: PathBuf) -> std::io::Result<Arc<NetnsPool>> {
        remove_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pool = Arc::new(NetnsPool {
            dir,
            ready: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            next: AtomicU64::new(0),
        });
        let maker = pool.clone();
        std::thread::Builder::new()
            .name("faas-netns".into())
            .spawn(move || maker.run())?;
        Ok(pool)
    }

    /// A fresh namespace's file, if one is ready; the caller owns it from now on and gives it
    /// back to [`NetnsPool::release`] when its box is gone.
    pub fn take(&self) -> Option<PathBuf> {
        let taken = self.lock().pop();
        self.wake.notify_one();
        taken
    }

    /// A fresh namespace's file: a ready one, or one made now (on a thread of its own, as
    /// making it moves the making thread into it).
    pub fn take_or_make(&self) -> std::io::Result<PathBuf> {
        if let Some(p) = self.take() {
            return Ok(p);
        }
        let path = self
            .dir
            .join(format!("n{}", self.next.fetch_add(1, Ordering::SeqCst)));
        let p = path.clone();
        let made = std::thread::spawn(move || make(&p))
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace maker panicked")));
        match made {
            Ok(()) => Ok(path),
            Err(e) => {
                release(&path);
                Err(e)
            }
        }
    }

    /// Unmounts and removes a namespace file handed out by [`NetnsPool::take`].
    pub fn release(&self, path: &Path) {
        release(path);
    }

    /// Stops the maker and removes the namespaces not handed out.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        for p in self.lock().drain(..) {
            release(&p);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            {
                let mut ready = self.lock();
                while ready.len() >= READY && !self.closed.load(Ordering::SeqCst) {
                    ready = self.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
                }
            }
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let path = self
                .dir
                .join(format!("n{}", self.next.fetch_add(1, Ordering::SeqCst)));
            match make(&path) {
                Ok(()) => {
                    let mut ready = self.lock();
                    if self.closed.load(Ordering::SeqCst) {
                        drop(ready);
                        release(&path);
                        return;
                    }
                    ready.push(path);
                }
                Err(e) => {
                    // The runtime makes the namespace itself meanwhile; try again later.
                    tracing::warn!(error = %e, "could not make a network namespace ahead");
                    release(&path);
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}

/// Moves this thread into a new network namespace, brings its loopback up and bind-mounts the
/// namespace on `path`. Only this thread changes namespace (it is the maker's own).
fn make(path: &Path) -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    loopback_up()?;
    std::fs::File::create(path)?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

fn release(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Unmounts and removes every namespace file in `dir`.
pub fn remove_all(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        release(&e.path());
    }
}

/// `ip link set lo up` in the calling thread's network namespace.
#[allow(unsafe_code)]
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) returns a new descriptor or -1; a valid one is owned here only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data for which all-zero is valid; the name fits its array with
    // the terminating NUL; SIOCGIFFLAGS / SIOCSIFFLAGS read and write only `ifr_ifru.ifru_flags`
    // of the struct passed, which lives across both calls.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
