//! `faas-agent`: PID 1 inside every sandbox.
//!
//! Listens on a unix socket (default `/run/faas/agent.sock`), serves one request per connection
//! (see the crate docs for the frame format), and reaps every zombie in the box. Each exec runs in
//! its own process group so a timeout kills the command and everything it started.
//!
//! Built as a static binary (`scripts/build-agent.sh`) so it runs in any image, with or
//! without a libc.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faas_agent::{
    read_frame, write_frame, write_json, ErrorKind, Event, ExecRequest, ExitInfo, FrameKind,
    Request, DEFAULT_OUTPUT_LIMIT, GUEST_SOCKET_DIR, PROTOCOL_VERSION, SOCKET_NAME,
};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long to keep reading output after the process exited, for data still in flight from
/// children that hold the pipes open.
const EXIT_GRACE: Duration = Duration::from_millis(100);
/// The same when no process of its group is left (the readers only need to be scheduled).
const EMPTY_GROUP_GRACE: Duration = Duration::from_secs(5);
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
/// newline, `hide-unified` or nothing, a newline, and the command's arguments separated by NUL
/// bytes. The command runs with stdout and stderr going to the log (and, with `hide-unified`,
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
    let (prog, rest) = args.split_first().ok_or_else(bad)?;
    let out = std::fs::File::create(String::from_utf8_lossy(log).as_ref())?;
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
    cmd.status()
}

/// A private mount namespace where the hybrid host's cgroup2 mount is gone (crun refuses
/// hybrid hosts otherwise; see the executor's `runtime.rs`).
fn hide_unified() -> nix::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH)
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
    prestart_workers();
    let reaper = Arc::new(Reaper::default());
    {
        let reaper = reaper.clone();
        std::thread::spawn(move || reaper.run());
    }
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
static OPEN: AtomicUsize = AtomicUsize::new(0);
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
    fn spawn(&self, cmd: &mut Command, slot: Arc<ExitSlot>) -> io::Result<std::process::Child> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        st.waiting.insert(child.id() as i32, slot);
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
        Request::Exec(req) => exec(conn, req, reaper),
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
        _ => write_json(
            &mut conn,
            &Event::error(ErrorKind::Invalid, "not implemented yet"),
        ),
    }
}

fn build_command(req: &ExecRequest) -> Result<Command, Event> {
    let Some((prog, args)) = req.argv.split_first() else {
        return Err(Event::SpawnFailed {
            message: "empty command".into(),
            exit_code: 127,
        });
    };
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if std::env::var_os("PATH").is_none() && !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if std::env::var_os("HOME").is_none() {
        cmd.env("HOME", "/root");
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &req.cwd {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Err(Event::SpawnFailed {
                message: format!("working directory {dir}: {e}"),
                exit_code: 126,
            });
        }
        cmd.current_dir(dir);
    }
    cmd.process_group(0);
    Ok(cmd)
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

/// Frames from the host while a process runs: stdin data, parsed from what arrives.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
}

enum InputEvent {
    Stdin(Vec<u8>),
    /// The connection ended or sent garbage.
    Gone,
}

impl Input {
    /// Takes what the socket has (without blocking) and returns the complete frames.
    fn pump(&mut self, conn: &UnixStream) -> Vec<InputEvent> {
        use nix::sys::socket::{recv, MsgFlags};
        let mut chunk = [0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            match recv(conn.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    out.push(InputEvent::Gone);
                    return out;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    out.push(InputEvent::Gone);
                    return out;
                }
            }
        }
        while self.buf.len() >= 5 {
            let header: [u8; 5] = self.buf[..5].try_into().expect("5 bytes");
            let Ok((kind, len)) = faas_agent::decode_header(header) else {
                out.push(InputEvent::Gone);
                return out;
            };
            if self.buf.len() < 5 + len {
                break;
            }
            let payload = self.buf[5..5 + len].to_vec();
            self.buf.drain(..5 + len);
            if kind == FrameKind::Stdin {
                out.push(InputEvent::Stdin(payload));
            }
        }
        out
    }
}

/// Feeds stdin frames to the process from a thread of its own (a process that does not read
/// its stdin must not stall the exec's loop); only made for execs that take stdin.
fn stdin_feeder(mut w: std::io::PipeWriter) -> io::Result<Sender<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    thread("stdin", move || {
        while let Ok(data) = rx.recv() {
            if data.is_empty() || w.write_all(&data).is_err() {
                return;
            }
        }
    })?;
    Ok(tx)
}

/// One exec: the process's output pipes, the host connection and the reaper's wake-up pipe
/// are all watched by this one thread with `poll` (no reader threads, so no hand-offs between
/// threads on the way from the process to the host).
fn exec(mut conn: UnixStream, req: ExecRequest, reaper: &Reaper) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let mut cmd = match build_command(&req) {
        Ok(c) => c,
        Err(ev) => return write_json(&mut conn, &ev),
    };
    let prepared = (|| -> io::Result<_> {
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        nonblocking(&out_r)?;
        nonblocking(&err_r)?;
        cmd.stdout(out_w);
        cmd.stderr(err_w);
        let feeder = if req.stdin {
            let (r, w) = std::io::pipe()?;
            cmd.stdin(r);
            Some(stdin_feeder(w)?)
        } else {
            cmd.stdin(Stdio::null());
            None
        };
        let (wake_r, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let slot = Arc::new(ExitSlot {
            status: Mutex::new(None),
            wake: wake_w,
        });
        Ok((out_r, err_r, feeder, wake_r, slot))
    })();
    let (out_r, err_r, mut feeder, wake_r, slot) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let message = format!("cannot set up the command's I/O: {e}");
            return write_json(
                &mut conn,
                &Event::SpawnFailed {
                    message,
                    exit_code: 126,
                },
            );
        }
    };

    let oom_before = oom_kills();
    let start = Instant::now();
    let spawned = reaper.spawn(&mut cmd, slot.clone());
    // Our copies of the pipes' child ends go now, so the reads see EOF when the child exits.
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let exit_code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("{}: {e}", req.argv[0]);
            return write_json(&mut conn, &Event::SpawnFailed { message, exit_code });
        }
    };
    let pid = child.id();
    let pgid = Pid::from_raw(pid as i32);
    write_json(&mut conn, &Event::Started { pid })?;

    let limit = if req.output_limit == 0 {
        DEFAULT_OUTPUT_LIMIT
    } else {
        req.output_limit
    };
    let deadline = (req.timeout_ms > 0).then(|| start + Duration::from_millis(req.timeout_ms));
    let mut info = ExitInfo::default();
    let mut status: Option<WaitStatus> = None;
    let mut pipes: [Option<(FrameKind, std::io::PipeReader)>; 2] = [
        Some((FrameKind::Stdout, out_r)),
        Some((FrameKind::Stderr, err_r)),
    ];
    let mut grace_until = None;
    let mut captured: u64 = 0;
    let mut host_gone = false;
    let mut input = Input::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_some() && pipes.iter().all(Option::is_none) {
            break;
        }
        let wait_until = if status.is_some() {
            grace_until
        } else if info.timed_out || host_gone {
            None
        } else {
            deadline
        };
        let timeout = match wait_until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if status.is_some() {
                        break;
                    }
                    info.timed_out = true;
                    let _ = killpg(pgid, Signal::SIGKILL);
                    continue;
                }
                // Rounded up, so a wait never ends before its time.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        // What is watched: the open pipes, the host (until it is gone), the exit wake-up
        // (until the status came).
        let mut fds: Vec<PollFd> = Vec::with_capacity(4);
        let mut who: Vec<usize> = Vec::with_capacity(4);
        for (i, p) in pipes.iter().enumerate() {
            if let Some((_, r)) = p {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                who.push(i);
            }
        }
        if !host_gone {
            fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
            who.push(2);
        }
        if status.is_none() {
            fds.push(PollFd::new(wake_r.as_fd(), PollFlags::POLLIN));
            who.push(3);
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
        let ready: Vec<usize> = fds
            .iter()
            .zip(&who)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, w)| *w)
            .collect();
        drop(fds);
        for w in ready {
            match w {
                0 | 1 => {
                    let Some((kind, r)) = pipes[w].as_ref() else {
                        continue;
                    };
                    let kind = *kind;
                    // Drain what is there; a pipe at EOF (or broken) is closed.
                    let closed = loop {
                        match read_ready(r, &mut buf) {
                            Ok(0) => break true,
                            Ok(n) => {
                                let room = limit.saturating_sub(captured) as usize;
                                let take = n.min(room);
                                if take < n {
                                    info.truncated = true;
                                }
                                if take > 0 && !host_gone {
                                    captured += take as u64;
                                    if write_frame(&mut conn, kind, &buf[..take]).is_err() {
                                        host_gone = true;
                                        let _ = killpg(pgid, Signal::SIGKILL);
                                    }
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                            Err(_) => break true,
                        }
                    };
                    if closed {
                        pipes[w] = None;
                    }
                }
                2 => {
                    for ev in input.pump(&conn) {
                        match ev {
                            InputEvent::Stdin(data) => {
                                let close = data.is_empty();
                                if let Some(f) = feeder.as_ref() {
                                    if f.send(data).is_err() {
                                        feeder = None;
                                    }
                                }
                                if close {
                                    feeder = None;
                                }
                            }
                            InputEvent::Gone => {
                                if status.is_none() && !host_gone {
                                    let _ = killpg(pgid, Signal::SIGKILL);
                                }
                                host_gone = true;
                                feeder = None;
                            }
                        }
                    }
                }
                _ => {
                    let mut byte = [0u8; 8];
                    let _ = read_ready(&wake_r, &mut byte);
                    let got = slot.status.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(s) = got {
                        info.duration_us = start.elapsed().as_micros() as u64;
                        status = Some(s);
                        // With nothing left in its process group, nobody in the group holds
                        // the pipes: their end comes at once, unless this box is too busy,
                        // so wait for it (bounded). With children left (`cmd &`), which may
                        // hold the pipes for ever, only a short grace.
                        let group_empty = killpg(pgid, None) == Err(Errno::ESRCH);
                        let grace = if group_empty {
                            EMPTY_GROUP_GRACE
                        } else {
                            EXIT_GRACE
                        };
                        grace_until = Some(Instant::now() + grace);
                    }
                }
            }
        }
    }
    drop(feeder);
    if host_gone {
        return Ok(());
    }
    match status {
        Some(WaitStatus::Exited(_, code)) => info.exit_code = code,
        Some(WaitStatus::Signaled(_, sig, _)) => {
            info.signal = Some(sig as i32);
            info.exit_code = 128 + sig as i32;
        }
        other => {
            let message = format!("process {pid} ended without an exit status ({other:?})");
            return write_json(&mut conn, &Event::error(ErrorKind::Other, message));
        }
    }
    // Any OOM kill in the box while the command ran: the victim may be the command itself or
    // one of its children (a shell then reports 137 for it).
    info.oom_killed = matches!((oom_before, oom_kills()), (Some(a), Some(b)) if b > a);
    write_json(&mut conn, &Event::Exited(info))?;
    conn.flush()
}

/// The sandbox's OOM-kill counter, from its memory cgroup (v2, then v1).
fn oom_kills() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let mut it = line.split_whitespace();
                if it.next() == Some("oom_kill") {
                    return it.next().and_then(|v| v.parse().ok());
                }
            }
        }
    }
    None
}
