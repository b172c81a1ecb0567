//! Starting a process and moving its I/O: the command (argv, env, working dir, its own
//! process group or, under a terminal, its own session), its pipes or PTY, the feeders of its
//! stdin, and [`pump`], the one loop per process that moves its output to an attached exec's
//! host connection, to the entry's replay and to its subscribers, until its exit.

use super::*;

/// The same when no process of its group is left (the readers only need to be scheduled).
const EMPTY_GROUP_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading output after the process exited, for data still in flight from
/// children that hold the pipes open.
const EXIT_GRACE: Duration = Duration::from_millis(100);
pub(crate) fn build_command(req: &ExecRequest) -> Result<Command, Event> {
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
    if req.pty.is_some() && !req.env.iter().any(|(k, _)| k == "TERM") {
        cmd.env("TERM", "xterm-256color");
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
    // A PTY process makes its own session (and so its group) in `pre_exec`; setsid fails
    // for a group leader.
    if req.pty.is_none() {
        cmd.process_group(0);
    }
    Ok(cmd)
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
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // The frames so far are handed on first (a host sending without pause
                    // does not grow the buffer).
                    if self.buf.len() >= 1024 * 1024 {
                        break;
                    }
                }
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

/// Feeds stdin to the process from a thread of its own (a process that does not read its
/// stdin must not stall anything); only made for processes that take stdin.
fn stdin_feeder(mut w: std::io::PipeWriter) -> io::Result<Feeder> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let left = queued.clone();
    thread("stdin", move || {
        while let Ok(data) = rx.recv() {
            if data.is_empty() {
                return;
            }
            // In pieces, so the count goes down as the process reads.
            for piece in data.chunks(64 * 1024) {
                if w.write_all(piece).is_err() {
                    return;
                }
                left.fetch_sub(piece.len(), Ordering::Relaxed);
            }
        }
    })?;
    Ok(Feeder { tx, queued })
}

/// The same for a PTY's master, which is non-blocking (the pump polls it).
fn pty_feeder(master: Arc<OwnedFd>) -> io::Result<Feeder> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let left = queued.clone();
    thread("pty-in", move || {
        while let Ok(data) = rx.recv() {
            let mut rest = &data[..];
            while !rest.is_empty() {
                match nix::unistd::write(&master, rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        left.fetch_sub(n, Ordering::Relaxed);
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => {
                        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                        let _ = poll(&mut fds, PollTimeout::from(1000u16));
                    }
                    // EIO: the terminal is gone.
                    Err(_) => return,
                }
            }
        }
    })?;
    Ok(Feeder { tx, queued })
}

/// What the pump reads: an output pipe, or a PTY's master.
enum Out {
    Pipe(std::io::PipeReader),
    Pty(Arc<OwnedFd>),
}

impl AsFd for Out {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Out::Pipe(p) => p.as_fd(),
            Out::Pty(m) => m.as_fd(),
        }
    }
}

/// A PTY (master, slave) pair, both close-on-exec. Opened under the reaper's lock, which
/// every fork of the agent holds, so no child started meanwhile inherits them (a stray copy
/// of the slave would keep the terminal open after its process ended).
fn open_pty(reaper: &Reaper, size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _forks = reaper.lock();
    let pty = nix::pty::openpty(Some(&winsize(size)), None).map_err(io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    Ok((pty.master, pty.slave))
}

#[allow(unsafe_code)]
fn make_controlling_terminal(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec, and only makes system calls (setsid, and
    // ioctl on fd 0, the PTY's slave by then): no allocation, no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Everything the pump of one process needs.
struct Pump {
    entry: Arc<Entry>,
    outputs: [Option<(FrameKind, Out)>; 2],
    wake_r: OwnedFd,
    slot: Arc<ExitSlot>,
    start: Instant,
    deadline: Option<Instant>,
    /// The output cap (attached execs only).
    limit: Option<u64>,
    oom_before: Option<u64>,
}

/// Most bytes of a caller's tag an entry keeps.
const MAX_TAG: usize = 4096;

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The argv and env an entry keeps (and `List` shows): all of them up to
/// [`LISTED_ARGS_BYTES`] together; beyond, no env and the argv cut to that size.
pub(crate) fn listed_args(
    argv: &[String],
    env: &[(String, String)],
) -> (Vec<String>, Vec<(String, String)>) {
    let size: usize = argv.iter().map(String::len).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size <= LISTED_ARGS_BYTES {
        return (argv.to_vec(), env.to_vec());
    }
    let mut left = LISTED_ARGS_BYTES;
    let mut kept = Vec::new();
    for a in argv {
        if left == 0 {
            break;
        }
        let a = truncated(a, left);
        left -= a.len();
        kept.push(a.to_string());
    }
    (kept, Vec::new())
}

/// [`Request::Exec`](faas_agent::Request::Exec), attached or detached.
pub(crate) fn exec(mut conn: UnixStream, req: ExecRequest, reaper: &Reaper) -> io::Result<()> {
    let mut cmd = match build_command(&req) {
        Ok(c) => c,
        Err(ev) => return write_json(&mut conn, &ev),
    };
    let prepared = (|| -> io::Result<_> {
        let (outputs, stdin, master) = match req.pty {
            Some(size) => {
                let (master, slave) = open_pty(reaper, size)?;
                nonblocking(&master)?;
                cmd.stdin(Stdio::from(slave.try_clone()?));
                cmd.stdout(Stdio::from(slave.try_clone()?));
                cmd.stderr(Stdio::from(slave));
                make_controlling_terminal(&mut cmd);
                let master = Arc::new(master);
                let feeder = pty_feeder(master.clone())?;
                (
                    [Some((FrameKind::Pty, Out::Pty(master.clone()))), None],
                    Stdin::Open(feeder),
                    Some(master),
                )
            }
            None => {
                let (out_r, out_w) = std::io::pipe()?;
                let (err_r, err_w) = std::io::pipe()?;
                nonblocking(&out_r)?;
                nonblocking(&err_r)?;
                cmd.stdout(out_w);
                cmd.stderr(err_w);
                let stdin = if req.stdin {
                    let (r, w) = std::io::pipe()?;
                    cmd.stdin(r);
                    Stdin::Open(stdin_feeder(w)?)
                } else {
                    cmd.stdin(Stdio::null());
                    Stdin::Absent
                };
                (
                    [
                        Some((FrameKind::Stdout, Out::Pipe(out_r))),
                        Some((FrameKind::Stderr, Out::Pipe(err_r))),
                    ],
                    stdin,
                    None,
                )
            }
        };
        let (wake_r, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let slot = Arc::new(ExitSlot {
            status: Mutex::new(None),
            wake: wake_w,
        });
        Ok((outputs, Io { stdin, master }, wake_r, slot))
    })();
    let (outputs, entry_io, wake_r, slot) = match prepared {
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
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (argv, env) = listed_args(&req.argv, &req.env);
    let mut entry_io = Some(entry_io);
    let mut entry = None;
    let spawned = reaper.spawn(&mut cmd, slot.clone(), |pid| {
        // Registered before the process can be reaped (so before its pid can be reused).
        let e = Arc::new(Entry {
            info: ProcessInfo {
                pid,
                tag: req.tag.as_ref().map(|t| truncated(t, MAX_TAG).to_string()),
                argv,
                env,
                cwd: req.cwd.clone(),
                pty: req.pty.is_some(),
                running: true,
                exit: None,
                started_at_ms,
            },
            state: Mutex::new(State {
                exit: None,
                replay: VecDeque::new(),
                chunks: VecDeque::new(),
                subs: Vec::new(),
            }),
            io: Mutex::new(entry_io.take().expect("registered once")),
        });
        insert(e.clone());
        entry = Some(e);
    });
    // Our copies of the child's ends go now, so the reads see EOF when the child exits.
    drop(cmd);
    if let Err(e) = spawned {
        let exit_code = if e.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let message = format!("{}: {e}", req.argv[0]);
        return write_json(&mut conn, &Event::SpawnFailed { message, exit_code });
    }
    let entry = entry.expect("registered at the spawn");
    let pid = entry.pid();
    let p = Pump {
        entry: entry.clone(),
        outputs,
        wake_r,
        slot,
        start,
        deadline: (req.timeout_ms > 0).then(|| start + Duration::from_millis(req.timeout_ms)),
        limit: (!req.detach).then_some(if req.output_limit == 0 {
            DEFAULT_OUTPUT_LIMIT
        } else {
            req.output_limit
        }),
        oom_before,
    };
    if req.detach {
        if let Err(e) = thread("pump", move || {
            if let Err(e) = pump(p, None) {
                eprintln!("faas-agent: process {pid}: {e}");
            }
        }) {
            // Nobody could watch it: it does not run.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            finish(
                &entry,
                ExitInfo {
                    exit_code: 137,
                    signal: Some(9),
                    ..Default::default()
                },
            );
            let message = format!("process {pid} killed: no thread to watch it: {e}");
            return write_json(&mut conn, &Event::error(ErrorKind::Other, message));
        }
        if req.subscribe {
            // This thread becomes its subscriber's writer.
            return super::connect(conn, pid);
        }
        return write_json(&mut conn, &Event::Started { pid });
    }
    write_json(&mut conn, &Event::Started { pid })?;
    pump(p, Some(conn))
}

/// One process's I/O until it ended: its outputs, the host connection (attached execs) and
/// the reaper's wake-up pipe are all watched by this one thread with `poll` (no reader
/// threads, so no hand-offs between threads on the way from the process to the host).
fn pump(p: Pump, mut conn: Option<UnixStream>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    let Pump {
        entry,
        mut outputs,
        wake_r,
        slot,
        start,
        deadline,
        limit,
        oom_before,
    } = p;
    let pid = entry.pid();
    let pgid = Pid::from_raw(pid as i32);
    let mut info = ExitInfo::default();
    let mut status: Option<WaitStatus> = None;
    let mut grace_until = None;
    let mut captured: u64 = 0;
    let mut input = Input::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut failure = None;
    loop {
        if status.is_some() && outputs.iter().all(Option::is_none) {
            break;
        }
        let wait_until = if status.is_some() {
            grace_until
        } else if info.timed_out || (limit.is_some() && conn.is_none()) {
            // Killed already (timed out, or its host went away).
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
        // What is watched: the open outputs, the host (until it is gone), the exit wake-up
        // (until the status came).
        let mut fds: Vec<PollFd> = Vec::with_capacity(4);
        let mut who: Vec<usize> = Vec::with_capacity(4);
        for (i, o) in outputs.iter().enumerate() {
            if let Some((_, r)) = o {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                who.push(i);
            }
        }
        // Input the process does not read is not taken from the host beyond the queue's
        // bound (the host's writes block instead); only its hang-up is watched meanwhile.
        let stdin_full = conn.is_some() && entry.stdin_full();
        if let Some(c) = &conn {
            let events = if stdin_full {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(c.as_fd(), events));
            who.push(2);
        }
        let timeout = if stdin_full {
            // Checked again soon: the feeder gives no wake-up when it drains.
            let soon = PollTimeout::from(10u8);
            if timeout == PollTimeout::NONE {
                soon
            } else {
                timeout.min(soon)
            }
        } else {
            timeout
        };
        if status.is_none() {
            fds.push(PollFd::new(wake_r.as_fd(), PollFlags::POLLIN));
            who.push(3);
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                failure = Some(format!("process {pid}: poll: {e}"));
                break;
            }
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
                    let Some((kind, r)) = outputs[w].as_ref() else {
                        continue;
                    };
                    let kind = *kind;
                    // Drain what is there; an output at EOF (or broken: EIO on a PTY's master
                    // once its slave side is closed) is closed.
                    let closed = loop {
                        match read_ready(r, &mut buf) {
                            Ok(0) => break true,
                            Ok(n) => {
                                let take = match limit {
                                    Some(limit) => {
                                        let room = limit.saturating_sub(captured) as usize;
                                        n.min(room)
                                    }
                                    None => n,
                                };
                                if take < n {
                                    info.truncated = true;
                                }
                                if take == 0 {
                                    continue;
                                }
                                captured += take as u64;
                                let data = &buf[..take];
                                if let Some(c) = conn.as_mut() {
                                    if write_frame(c, kind, data).is_err() {
                                        conn = None;
                                        let _ = killpg(pgid, Signal::SIGKILL);
                                    }
                                }
                                entry.output(kind, data);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                            Err(_) => break true,
                        }
                    };
                    if closed {
                        outputs[w] = None;
                    }
                }
                2 => {
                    let Some(c) = conn.as_ref() else { continue };
                    for ev in input.pump(c) {
                        match ev {
                            InputEvent::Stdin(data) if data.is_empty() => entry.close_stdin(),
                            InputEvent::Stdin(data) => {
                                let _ = entry.send_input(data, false);
                            }
                            InputEvent::Gone => {
                                if status.is_none() && conn.is_some() {
                                    let _ = killpg(pgid, Signal::SIGKILL);
                                }
                                conn = None;
                                entry.close_stdin();
                            }
                        }
                    }
                }
                _ => {
                    let mut byte = [0u8; 8];
                    let _ = read_ready(&wake_r, &mut byte);
                    let got = lock(&slot.status).take();
                    if let Some(s) = got {
                        info.duration_us = start.elapsed().as_micros() as u64;
                        status = Some(s);
                        // With nothing left in its process group, nobody in the group holds
                        // the outputs: their end comes at once, unless this box is too busy,
                        // so wait for it (bounded). With children left (`cmd &`), which may
                        // hold them for ever, only a short grace.
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
    drop(outputs);
    drop(wake_r);
    match status {
        Some(WaitStatus::Exited(_, code)) => info.exit_code = code,
        Some(WaitStatus::Signaled(_, sig, _)) => {
            info.signal = Some(sig as i32);
            info.exit_code = 128 + sig as i32;
        }
        other => {
            let message = failure.unwrap_or_else(|| {
                format!("process {pid} ended without an exit status ({other:?})")
            });
            info.exit_code = -1;
            finish(&entry, info);
            return match conn {
                Some(mut c) => write_json(&mut c, &Event::error(ErrorKind::Other, message)),
                None => Err(io::Error::other(message)),
            };
        }
    }
    // Any OOM kill in the box while the command ran: the victim may be the command itself or
    // one of its children (a shell then reports 137 for it).
    info.oom_killed = matches!((oom_before, oom_kills()), (Some(a), Some(b)) if b > a);
    finish(&entry, info.clone());
    let r = match conn {
        Some(mut conn) => write_json(&mut conn, &Event::Exited(info)).and_then(|()| conn.flush()),
        None => Ok(()),
    };
    entry.shrink();
    r
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
