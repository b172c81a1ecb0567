//! `faas-agent`: PID 1 inside every sandbox.
//!
//! Listens on a unix socket (default `/run/faas/agent.sock`), serves one request per connection
//! (see the crate docs for the frame format), and reaps every zombie in the box. Each exec runs in
//! its own process group so a timeout kills the command and everything it started.
//!
//! Built as a static binary (`scripts/build-agent.sh`) so it runs in any image, with or
//! without a libc.

mod files;
mod procs;
mod reset;
mod rootswap;
mod tunnel;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use faas_agent::{
    read_frame, write_json, ErrorKind, Event, FrameKind, Request, GUEST_SOCKET_DIR,
    PROTOCOL_VERSION, SOCKET_NAME,
};
use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() {
    let mut socket = format!("{GUEST_SOCKET_DIR}/{SOCKET_NAME}");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => {
                socket = args
                    .next()
                    .unwrap_or_else(|| usage("--socket needs a path"))
            }
            "--zygote" => return zygote(),
            "--reset-root" => return rootswap::main(args.collect()),
            "--version" => {
                println!(
                    "faas-agent {} (protocol {PROTOCOL_VERSION})",
                    env!("CARGO_PKG_VERSION")
                );
                return;
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Err(e) = serve(&socket) {
        eprintln!("faas-agent: {e}");
        std::process::exit(1);
    }
}

/// `--zygote`: a process the host starts once per cgroup slot and moves into the slot's
/// cgroups (moving a process into a v1 cgroup is slow: it waits for an RCU grace period and
/// stalls every fork on the host meanwhile). It then starts runtime commands as its children,
/// which are born in the slot: no migration per sandbox.
///
/// Requests on stdin, one after another: a big-endian u32 length, then a log file path, a
/// newline, `hide-unified`, `reset-root` or nothing, a newline, and the command's arguments
/// separated by NUL bytes (for `reset-root`, the arguments of `--reset-root`, done in a forked
/// child without an exec). The command runs with stdout and stderr going to the log (and, with `hide-unified`,
/// in a private mount namespace without `/sys/fs/cgroup/unified`, made for it alone so it sees
/// the mounts of the moment). Its exit status goes back on stdout as a big-endian i32 (128 +
/// signal when a signal ended it; 125 when it could not start). EOF on stdin: exit.
fn zygote() {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            std::process::exit(0);
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 20 {
            std::process::exit(2);
        }
        let mut req = vec![0u8; len];
        if input.read_exact(&mut req).is_err() {
            std::process::exit(0);
        }
        let status = match zygote_run(&req) {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
            Err(e) => {
                eprintln!("faas-agent: zygote: {e}");
                125
            }
        };
        if output
            .write_all(&status.to_be_bytes())
            .and_then(|()| output.flush())
            .is_err()
        {
            std::process::exit(0);
        }
    }
}

#[allow(unsafe_code)]
fn zygote_run(req: &[u8]) -> io::Result<std::process::ExitStatus> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed zygote request");
    let mut parts = req.splitn(3, |&b| b == b'\n');
    let (Some(log), Some(flags), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let args: Vec<String> = rest
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let out = std::fs::File::create(String::from_utf8_lossy(log).as_ref())?;
    if flags == b"reset-root" {
        return zygote_reset_root(args, out);
    }
    let (prog, rest) = args.split_first().ok_or_else(bad)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(prog);
    cmd.args(rest).stdin(Stdio::null()).stdout(out).stderr(err);
    if flags == b"hide-unified" {
        // SAFETY: runs in the forked child before exec. The zygote has a single thread, so
        // no lock (the allocator's included) can be held by another thread at the fork, and
        // the mount calls below are plain system calls.
        unsafe {
            cmd.pre_exec(|| hide_unified().map_err(io::Error::from));
        }
    }
    if flags == b"hide-sysnet" {
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(|| hide_sysnet().map_err(io::Error::from));
        }
    }
    cmd.status()
}

/// A zygote's `reset-root` request: [`rootswap`] in a forked child (joining a mount
/// namespace changes the process), its errors in `log`; no exec, so cheaper than running
/// `faas-agent --reset-root`.
#[allow(unsafe_code)]
fn zygote_reset_root(
    args: Vec<String>,
    log: std::fs::File,
) -> io::Result<std::process::ExitStatus> {
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the zygote has a single thread, so the child starts with no lock held by a
    // thread that does not exist in it; it ends with `_exit`, running no destructor of the
    // parent's state.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
            let code = match rootswap::run(&args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("faas-agent: reset-root: {e}");
                    1
                }
            };
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, code) => Ok(std::process::ExitStatus::from_raw(code << 8)),
            WaitStatus::Signaled(_, sig, _) => Ok(std::process::ExitStatus::from_raw(sig as i32)),
            _ => Ok(std::process::ExitStatus::from_raw(1 << 8)),
        },
    }
}

/// A private mount namespace where the hybrid host's cgroup2 mount is gone (crun refuses
/// hybrid hosts otherwise; see the executor's `runtime.rs`).
fn hide_unified() -> nix::Result<()> {
    use nix::mount::{umount2, MntFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    rootswap::make_private()?;
    umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH)
}

/// A private mount namespace with an empty `/proc/sys/net`: runsc (20221219) takes any
/// network namespace where `/proc/sys/net/core/rmem_default` exists for the host's own, and
/// refuses to give a box its interfaces; on kernels where every namespace has the file, that
/// is every namespace (see the executor's `runtime.rs`).
fn hide_sysnet() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    rootswap::make_private()?;
    mount(
        Some("none"),
        "/proc/sys/net",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k"),
    )
}

fn usage(msg: &str) -> ! {
    eprintln!("faas-agent: {msg}\nusage: faas-agent [--socket PATH] [--version]");
    std::process::exit(2)
}

fn serve(socket: &str) -> io::Result<()> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("remove stale {socket}: {e}"),
            ))
        }
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {socket}: {e}")))?;
    *SOCKET_PATH.lock().unwrap_or_else(|e| e.into_inner()) = socket.to_string();
    // Nothing in the box may ptrace the agent or open its memory (see `reset.rs`).
    let _ = nix::sys::prctl::set_dumpable(false);
    prestart_workers();
    let reaper = Arc::new(Reaper::default());
    {
        let reaper = reaper.clone();
        std::thread::spawn(move || reaper.run());
    }
    reset::record_baseline();
    let mut listener = listener;
    loop {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        if QUIESCE.load(Ordering::SeqCst) == QUIESCING {
            // The quiescing connection's wake-up: stop listening until the host says resume.
            drop(conn);
            drop(listener);
            listener = quiesced(socket)?;
            continue;
        }
        let reaper = reaper.clone();
        OPEN.fetch_add(1, Ordering::SeqCst);
        // Out of processes (a fork bomb in the box): drop the connection, keep serving.
        let spawned = thread("conn", move || {
            let r = handle(conn, &reaper);
            OPEN.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = r {
                eprintln!("faas-agent: connection: {e}");
            }
            // A quiesce answered: wake the accept loop once this connection is gone.
            if QUIESCE
                .compare_exchange(ASKED, QUIESCING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let _ =
                    UnixStream::connect(&*SOCKET_PATH.lock().unwrap_or_else(|e| e.into_inner()));
            }
        });
        if spawned.is_err() {
            OPEN.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Connections being served (a quiesce needs to be the only one).
pub(crate) static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Quiesce state: listening, asked (answer sent, connection still open), quiescing.
static QUIESCE: AtomicUsize = AtomicUsize::new(LISTENING);
const LISTENING: usize = 0;
const ASKED: usize = 1;
const QUIESCING: usize = 2;
static SOCKET_PATH: Mutex<String> = Mutex::new(String::new());

/// Not listening: removes the socket, then waits for the host's resume file and listens again.
fn quiesced(socket: &str) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(socket);
    let resume = std::path::Path::new(socket)
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join(faas_agent::RESUME_FILE);
    while !resume.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&resume);
    let listener = UnixListener::bind(socket)?;
    QUIESCE.store(LISTENING, Ordering::SeqCst);
    Ok(listener)
}

/// Where the reaper leaves an exec's exit status, and the pipe it writes a byte to so the
/// exec's poll loop wakes.
struct ExitSlot {
    status: Mutex<Option<WaitStatus>>,
    wake: std::os::fd::OwnedFd,
}

/// Reaps every child (and, as PID 1, every orphan) and hands exit statuses to the exec that
/// waits for them. Spawning happens under the same lock, so a fast child's exit is never
/// reaped before its waiter is registered, and std's own reaping of a child whose `exec`
/// failed is never raced.
#[derive(Default)]
struct Reaper {
    state: Mutex<ReaperState>,
    spawned: Condvar,
}

#[derive(Default)]
struct ReaperState {
    waiting: HashMap<i32, Arc<ExitSlot>>,
    generation: u64,
}

impl Reaper {
    fn run(&self) {
        loop {
            let generation = self.lock().generation;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(seen) => {
                    let Some(pid) = seen.pid() else { continue };
                    let mut st = self.lock();
                    // Reap it now that no spawn is in progress; a child whose exec failed was
                    // already reaped by std, which is fine (ECHILD).
                    let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => seen,
                        Ok(s) => s,
                    };
                    if let Some(slot) = st.waiting.remove(&pid.as_raw()) {
                        *slot.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                        let _ = nix::unistd::write(&slot.wake, &[1]);
                    }
                }
                Err(Errno::ECHILD) => {
                    let mut st = self.lock();
                    while st.generation == generation {
                        st = self.spawned.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("faas-agent: waitid: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and registers `slot` for its exit, atomically with respect to reaping.
    /// `register` is called with its pid under the same lock.
    fn spawn(
        &self,
        cmd: &mut Command,
        slot: Arc<ExitSlot>,
        register: impl FnOnce(u32),
    ) -> io::Result<std::process::Child> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        st.waiting.insert(child.id() as i32, slot);
        register(child.id());
        st.generation += 1;
        self.spawned.notify_all();
        Ok(child)
    }
}

fn handle(mut conn: UnixStream, reaper: &Reaper) -> io::Result<()> {
    let Some((kind, payload)) = read_frame(&mut conn)? else {
        return Ok(());
    };
    if kind != FrameKind::Json {
        return write_json(
            &mut conn,
            &Event::error(ErrorKind::Invalid, "expected a request frame"),
        );
    }
    let req: Request = match serde_json::from_slice(&payload) {
        Ok(r) => r,
        Err(e) => {
            return write_json(
                &mut conn,
                &Event::error(ErrorKind::Invalid, format!("bad request: {e}")),
            )
        }
    };
    match req {
        Request::Ping => write_json(
            &mut conn,
            &Event::Pong {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
            },
        ),
        Request::Exec(req) => procs::exec(conn, req, reaper),
        Request::Quiesce => {
            // This connection is one of the open ones.
            if OPEN.load(Ordering::SeqCst) > 1 {
                return write_json(
                    &mut conn,
                    &Event::error(ErrorKind::Other, "other requests are in progress"),
                );
            }
            QUIESCE.store(ASKED, Ordering::SeqCst);
            write_json(&mut conn, &Event::Quiesced)
        }
        Request::Connect { pid } => procs::connect(conn, pid),
        Request::SendInput { pid, data_b64 } => {
            write_json(&mut conn, &procs::send_input(pid, &data_b64))
        }
        Request::CloseStdin { pid } => write_json(&mut conn, &procs::close_stdin(pid)),
        Request::Signal { pid, signal } => write_json(&mut conn, &procs::signal(pid, signal)),
        Request::Resize { pid, cols, rows } => {
            write_json(&mut conn, &procs::resize(pid, cols, rows))
        }
        Request::List => write_json(&mut conn, &procs::list()),
        Request::Stat { path } => write_json(&mut conn, &files::stat(&path)),
        Request::ListDir { path, depth } => write_json(&mut conn, &files::list_dir(&path, depth)),
        Request::MakeDir { path } => write_json(&mut conn, &files::make_dir(&path)),
        Request::Move { from, to } => write_json(&mut conn, &files::rename(&from, &to)),
        Request::Remove { path } => write_json(&mut conn, &files::remove(&path)),
        Request::Watch { path, recursive } => files::watch(conn, &path, recursive),
        Request::Reset => write_json(&mut conn, &reset::reset()),
        Request::CheckClean => write_json(&mut conn, &reset::check()),
        Request::Tunnel { port } => tunnel::tunnel(conn, port),
        Request::Ports => write_json(&mut conn, &tunnel::ports()),
    }
}

/// Runs `f` on a thread of its own, or says why not (the box may be out of processes).
/// Threads are kept when their work is done and reused (starting one costs about 50 µs here,
/// and an exec needs four): an idle one waits for its next job up to [`IDLE_THREAD`].
fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let job: Job = Box::new(f);
    let idle = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
    if let Some((_, worker)) = idle {
        // A popped worker always takes its job (see `worker`).
        if let Err(mpsc::SendError(job)) = worker.send(job) {
            return spawn_worker(name, job);
        }
        return Ok(());
    }
    spawn_worker(name, job)
}

fn spawn_worker(name: &str, job: Job) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(WORKER_STACK)
        .spawn(move || worker(Some(job)))
        .map(drop)
}

/// The agent's threads copy bytes and wait: a small stack is plenty.
const WORKER_STACK: usize = 256 * 1024;

/// Threads started idle when the agent starts: enough for the first exec (one for its
/// connection, three for its I/O), so a box from a warm pool starts none on its first use.
const PRESTARTED: usize = 4;

fn prestart_workers() {
    for _ in 0..PRESTARTED {
        let _ = std::thread::Builder::new()
            .name("idle".into())
            .stack_size(WORKER_STACK)
            .spawn(|| worker(None));
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Idle threads (by number), each waiting for a job on its channel.
static IDLE: Mutex<Vec<(u64, Sender<Job>)>> = Mutex::new(Vec::new());
static WORKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const IDLE_THREAD: Duration = Duration::from_secs(60);

fn worker(first: Option<Job>) {
    let me = WORKERS.fetch_add(1, Ordering::SeqCst);
    if let Some(job) = first {
        job();
    }
    loop {
        let (tx, rx) = mpsc::channel::<Job>();
        IDLE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((me, tx));
        let job = match rx.recv_timeout(IDLE_THREAD) {
            Ok(job) => job,
            Err(_) => {
                let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                match idle.iter().position(|(n, _)| *n == me) {
                    Some(i) => {
                        // Nobody took it: this thread ends.
                        idle.remove(i);
                        return;
                    }
                    // Taken just now: its job is on the way.
                    None => {
                        drop(idle);
                        match rx.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        }
                    }
                }
            }
        };
        job();
    }
}

/// Reads what is there without blocking; `Ok(0)` means end of file.
fn read_ready(fd: &impl std::os::fd::AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_fd().as_raw_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

fn nonblocking(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let raw = fd.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}
