//! The process table: every process the agent starts, attached or detached, with its newest
//! output (for late subscribers), its subscribers and its stdin.
//!
//! One pump ([`pump`]) per process moves its output (pipes, or a PTY's master) to the host
//! connection of an attached exec (written directly, the hot path), to the entry's replay
//! buffer and to its subscribers, each of which has a writer thread of its own fed by a
//! channel (a slow subscriber stalls nobody but itself).

// An error here is the request's answer, made once per request: its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faas_agent::{
    write_frame, write_json, ErrorKind, Event, ExecRequest, ExitInfo, FrameKind, ProcessInfo,
    PtySize, DEFAULT_OUTPUT_LIMIT, ENDED_KEPT, LISTED_ARGS_BYTES, REPLAY_BYTES,
};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::{nonblocking, read_ready, thread, ExitSlot, Reaper, DEFAULT_PATH};

mod pump;

pub(crate) use pump::exec;

/// A subscriber with more than this queued (it does not read fast enough) is dropped.
const SUBSCRIBER_QUEUE: usize = 16 * 1024 * 1024;
/// What a queued message costs beyond its bytes (its channel node, its `Arc`).
const MSG_COST: usize = 64;
/// Consecutive output of one kind is kept as one replayed frame up to this size.
const REPLAY_CHUNK: usize = 64 * 1024;
/// How often an idle subscriber's writer checks whether its host went away.
const SUBSCRIBER_CHECK: Duration = Duration::from_secs(1);

type Chunk = (FrameKind, Arc<[u8]>);

/// One process of the table.
pub(crate) struct Entry {
    /// Its description; `running` and `exit` are filled in from `state` when listed.
    info: ProcessInfo,
    state: Mutex<State>,
    io: Mutex<Io>,
}

struct State {
    exit: Option<ExitInfo>,
    /// The newest output, and where its frames start and end (kind, length), oldest first.
    /// One buffer rather than a chunk per read: on the hot path of an attached exec (no
    /// subscribers) keeping output is a copy into warm memory, no allocation.
    replay: VecDeque<u8>,
    chunks: VecDeque<(FrameKind, usize)>,
    subs: Vec<Sub>,
}

/// A subscriber: its writer's channel, what is queued for it, and its connection (a
/// duplicate, to shut it down when it is dropped, which unblocks its writer).
struct Sub {
    id: u64,
    tx: Sender<Msg>,
    queued: Arc<AtomicUsize>,
    conn: UnixStream,
}

enum Msg {
    Frame(Chunk),
    Exit(ExitInfo),
}

impl Sub {
    /// Queues `msg` (of `len` bytes of output); false when the subscriber is to be dropped.
    /// Each message counts [`MSG_COST`] more than its bytes, so a flood of tiny ones drops a
    /// slow subscriber too.
    fn offer(&self, msg: Msg, len: usize) -> bool {
        let cost = len + MSG_COST;
        if self.queued.load(Ordering::Relaxed) + cost > SUBSCRIBER_QUEUE {
            let _ = self.conn.shutdown(std::net::Shutdown::Both);
            return false;
        }
        self.queued.fetch_add(cost, Ordering::Relaxed);
        self.tx.send(msg).is_ok()
    }
}

struct Io {
    stdin: Stdin,
    /// A PTY's master (for resizes; its feeder has its own reference).
    master: Option<Arc<OwnedFd>>,
}

enum Stdin {
    /// Started without stdin.
    Absent,
    /// The feeder (a pipe's or the PTY master's).
    Open(Feeder),
    Closed,
}

/// Most input queued to a process (sent, not yet written to its stdin): beyond it,
/// `SendInput` is refused, and an attached exec's connection is not read.
pub(crate) const STDIN_QUEUE: usize = 16 * 1024 * 1024;

/// A feeder thread's channel, and the bytes queued on it (the feeder counts down what it
/// wrote).
pub(crate) struct Feeder {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl Feeder {
    /// Queues `data` (whatever is queued already); false when the feeder is gone.
    fn send(&self, data: Vec<u8>) -> bool {
        let len = data.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(data).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn full(&self, more: usize) -> bool {
        self.queued.load(Ordering::Relaxed) + more > STDIN_QUEUE
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    fn pid(&self) -> u32 {
        self.info.pid
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn running(&self) -> bool {
        self.state().exit.is_none()
    }

    fn process_info(&self) -> ProcessInfo {
        let exit = self.state().exit.clone();
        ProcessInfo {
            running: exit.is_none(),
            exit,
            ..self.info.clone()
        }
    }

    /// Output read from the process: kept for replay and queued for the subscribers.
    fn output(&self, kind: FrameKind, data: &[u8]) {
        let len = data.len();
        let mut st = self.state();
        if !st.subs.is_empty() {
            let chunk: Arc<[u8]> = Arc::from(data);
            st.subs
                .retain(|s| s.offer(Msg::Frame((kind, chunk.clone())), len));
        }
        st.replay.extend(data);
        // A process writing byte by byte keeps few records: small writes of one kind merge.
        match st.chunks.back_mut() {
            Some((k, n)) if *k == kind && *n + len <= REPLAY_CHUNK => *n += len,
            _ => st.chunks.push_back((kind, len)),
        }
        // Keep at least REPLAY_BYTES of the newest output.
        while let Some(&(_, n)) = st.chunks.front() {
            if st.replay.len() - n < REPLAY_BYTES {
                break;
            }
            st.replay.drain(..n);
            st.chunks.pop_front();
        }
    }

    /// Registers a subscriber after queueing the kept output (and, for an ended process, the
    /// exit), atomically with respect to new output.
    fn subscribe(&self, sub: Sub) {
        let mut st = self.state();
        let mut at = 0;
        for &(kind, n) in &st.chunks {
            let data: Arc<[u8]> = st.replay.range(at..at + n).copied().collect();
            at += n;
            if !sub.offer(Msg::Frame((kind, data)), n) {
                return;
            }
        }
        match &st.exit {
            Some(info) => {
                let _ = sub.offer(Msg::Exit(info.clone()), 0);
            }
            None => st.subs.push(sub),
        }
    }

    /// An ended process is kept a while (up to ENDED_KEPT of them): its output takes no more
    /// memory than its size. Done after the exit was reported (it may copy a megabyte).
    fn shrink(&self) {
        let mut st = self.state();
        if st.replay.capacity() > st.replay.len() + st.replay.len() / 4 {
            st.replay.shrink_to_fit();
        }
        st.chunks.shrink_to_fit();
    }

    fn unsubscribe(&self, id: u64) {
        self.state().subs.retain(|s| s.id != id);
    }

    /// Queues input for the process; `bounded`: refused beyond [`STDIN_QUEUE`] queued
    /// (an attached exec's input is bounded by not reading its connection instead).
    fn send_input(&self, data: Vec<u8>, bounded: bool) -> Result<(), Event> {
        let pid = self.pid();
        let io = lock(&self.io);
        match &io.stdin {
            Stdin::Open(f) if bounded && f.full(data.len()) => Err(Event::error(
                ErrorKind::Invalid,
                format!("process {pid}: stdin is full: the process is not reading it"),
            )),
            Stdin::Open(f) => f.send(data).then_some(()).ok_or_else(|| {
                Event::error(
                    ErrorKind::Invalid,
                    format!("process {pid}: stdin is closed"),
                )
            }),
            Stdin::Absent => Err(Event::error(
                ErrorKind::Invalid,
                format!("process {pid} was started without stdin"),
            )),
            Stdin::Closed if !self.running() => Err(Event::error(
                ErrorKind::Invalid,
                format!("process {pid} has ended"),
            )),
            Stdin::Closed => Err(Event::error(
                ErrorKind::Invalid,
                format!("process {pid}: stdin is closed"),
            )),
        }
    }

    /// Whether input queued to the process is at [`STDIN_QUEUE`] (it does not read it).
    fn stdin_full(&self) -> bool {
        matches!(&lock(&self.io).stdin, Stdin::Open(f) if f.full(0))
    }

    /// Closes stdin (a PTY gets `^D` instead); a no-op when it is closed already.
    fn close_stdin(&self) {
        let mut io = lock(&self.io);
        if self.info.pty {
            if let Stdin::Open(f) = &io.stdin {
                let _ = f.send(vec![4]);
            }
        } else if matches!(io.stdin, Stdin::Open(_)) {
            io.stdin = Stdin::Closed;
        }
    }
}

/// The table: entries by pid, and the ended ones' pids (with the output each keeps), oldest
/// first.
#[derive(Default)]
struct Table {
    procs: HashMap<u32, Arc<Entry>>,
    ended: VecDeque<(u32, usize)>,
    /// Output kept by ended processes, at most [`ENDED_OUTPUT_BYTES`]: beyond it the oldest
    /// ones' output goes (their entries and exit stay), so ended processes cannot fill a small
    /// box's memory.
    ended_bytes: usize,
}

/// Output kept by all ended processes together.
const ENDED_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);

fn table() -> MutexGuard<'static, Table> {
    lock(&TABLE)
}

/// Forgets every process (see `reset.rs`: all of them were killed).
pub(crate) fn clear() {
    let mut t = table();
    t.procs.clear();
    t.ended.clear();
    t.ended_bytes = 0;
}

fn get(pid: u32) -> Option<Arc<Entry>> {
    table().procs.get(&pid).cloned()
}

fn insert(entry: Arc<Entry>) {
    let pid = entry.pid();
    let mut t = table();
    // A new process with the pid of an ended one replaces it.
    if t.procs.insert(pid, entry).is_some() {
        let mut freed = 0;
        t.ended.retain(|&(p, n)| {
            if p == pid {
                freed += n;
            }
            p != pid
        });
        t.ended_bytes -= freed;
    }
}

/// The process ended: recorded as such (in the table, atomically with respect to `list`),
/// then its subscribers are told and its input is closed.
fn finish(entry: &Arc<Entry>, info: ExitInfo) {
    let pid = entry.pid();
    let subs = {
        let mut t = table();
        let (subs, kept) = {
            let mut st = entry.state();
            st.exit = Some(info.clone());
            (std::mem::take(&mut st.subs), st.replay.len())
        };
        if t.procs.get(&pid).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            t.ended.push_back((pid, kept));
            t.ended_bytes += kept;
            while t.ended.len() > ENDED_KEPT {
                if let Some((old, n)) = t.ended.pop_front() {
                    t.procs.remove(&old);
                    t.ended_bytes -= n;
                }
            }
            // Over the cap: the oldest ended ones' output goes first.
            let mut i = 0;
            while t.ended_bytes > ENDED_OUTPUT_BYTES && i < t.ended.len() {
                let (old, n) = t.ended[i];
                if n > 0 {
                    if let Some(e) = t.procs.get(&old) {
                        let mut st = e.state();
                        st.replay.clear();
                        st.replay.shrink_to_fit();
                        st.chunks.clear();
                        st.chunks.shrink_to_fit();
                    }
                    t.ended[i].1 = 0;
                    t.ended_bytes -= n;
                }
                i += 1;
            }
        }
        subs
    };
    for s in subs {
        let _ = s.offer(Msg::Exit(info.clone()), 0);
    }
    let mut io = lock(&entry.io);
    if matches!(io.stdin, Stdin::Open(_)) {
        io.stdin = Stdin::Closed;
    }
    io.master = None;
}

/// [`Request::List`](faas_agent::Request::List): running processes (by start), then ended
/// ones (newest last).
pub(crate) fn list() -> Event {
    let (mut running, ended): (Vec<Arc<Entry>>, Vec<Arc<Entry>>) = {
        let t = table();
        let ended = t
            .ended
            .iter()
            .filter_map(|(p, _)| t.procs.get(p).cloned())
            .collect();
        let running = t.procs.values().filter(|e| e.running()).cloned().collect();
        (running, ended)
    };
    running.sort_by_key(|e| (e.info.started_at_ms, e.pid()));
    let processes = running
        .iter()
        .chain(&ended)
        .map(|e| e.process_info())
        .collect();
    Event::Processes { processes }
}

fn not_found(pid: u32) -> Event {
    Event::error(ErrorKind::NotFound, format!("no process {pid}"))
}

/// [`Request::Connect`](faas_agent::Request::Connect): this connection's thread is the
/// subscriber's writer.
pub(crate) fn connect(mut conn: UnixStream, pid: u32) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(entry) = get(pid) else {
        return write_json(&mut conn, &not_found(pid));
    };
    // The acknowledgement comes first, before any replayed or live frame (this thread is the
    // subscriber's only writer).
    match write_json(&mut conn, &Event::Started { pid }) {
        Ok(()) => {}
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    entry.subscribe(Sub {
        id,
        tx,
        queued: queued.clone(),
        conn: conn.try_clone()?,
    });
    let r = (|| loop {
        match rx.recv_timeout(SUBSCRIBER_CHECK) {
            Ok(Msg::Frame((kind, data))) => {
                write_frame(&mut conn, kind, &data)?;
                queued.fetch_sub(data.len() + MSG_COST, Ordering::Relaxed);
            }
            Ok(Msg::Exit(info)) => {
                write_json(&mut conn, &Event::Exited(info))?;
                return conn.flush();
            }
            Err(RecvTimeoutError::Timeout) => {
                if !peer_alive(&conn) {
                    return Ok(());
                }
            }
            // Dropped (too slow).
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    })();
    entry.unsubscribe(id);
    drop(entry);
    match r {
        // The host went away.
        Err(e) if gone(&e) => Ok(()),
        r => r,
    }
}

/// A write failed because the host went away (not an error of the agent's).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Whether the host is still there (reads and drops whatever it sent).
pub(crate) fn peer_alive(conn: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut scratch = [0u8; 4096];
    loop {
        match recv(conn.as_raw_fd(), &mut scratch, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

pub(crate) fn send_input(pid: u32, data_b64: &str) -> Event {
    let Some(entry) = get(pid) else {
        return not_found(pid);
    };
    let Some(data) = base64_decode(data_b64) else {
        return Event::error(ErrorKind::Invalid, "data_b64 is not valid base64");
    };
    if data.is_empty() {
        return Event::Done;
    }
    match entry.send_input(data, true) {
        Ok(()) => Event::Done,
        Err(ev) => ev,
    }
}

pub(crate) fn close_stdin(pid: u32) -> Event {
    let Some(entry) = get(pid) else {
        return not_found(pid);
    };
    entry.close_stdin();
    Event::Done
}

pub(crate) fn signal(pid: u32, signal: i32) -> Event {
    let Ok(sig) = Signal::try_from(signal) else {
        return Event::error(ErrorKind::Invalid, format!("invalid signal {signal}"));
    };
    let Some(entry) = get(pid) else {
        return not_found(pid);
    };
    if !entry.running() {
        return Event::Done;
    }
    // Every process runs in a group of its own (a PTY's is a session leader): its pid.
    match killpg(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(Errno::ESRCH) => Event::Done,
        Err(e @ Errno::EPERM) => Event::error(ErrorKind::Denied, format!("process {pid}: {e}")),
        Err(e) => Event::error(ErrorKind::Other, format!("process {pid}: {e}")),
    }
}

pub(crate) fn resize(pid: u32, cols: u16, rows: u16) -> Event {
    let Some(entry) = get(pid) else {
        return not_found(pid);
    };
    if !entry.info.pty {
        return Event::error(ErrorKind::Invalid, format!("process {pid} has no terminal"));
    }
    let Some(master) = lock(&entry.io).master.clone() else {
        // Ended: nothing to resize.
        return Event::Done;
    };
    match set_winsize(&master, PtySize { cols, rows }) {
        Ok(()) => Event::Done,
        Err(e) => Event::error(ErrorKind::Other, format!("process {pid}: resize: {e}")),
    }
}

fn winsize(size: PtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

#[allow(unsafe_code)]
fn set_winsize(master: &OwnedFd, size: PtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to a live,
    // initialized one; the fd is a PTY master we own.
    let r = unsafe {
        nix::libc::ioctl(
            master.as_raw_fd(),
            nix::libc::TIOCSWINSZ as _,
            &ws as *const nix::pty::Winsize,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Standard alphabet; padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end();
    let body = s
        .strip_suffix("==")
        .or_else(|| s.strip_suffix('='))
        .unwrap_or(s);
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // One character left over (length 1 mod 4) cannot be.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;
    use super::pump::listed_args;

    #[test]
    fn big_argv_and_env_are_cut_for_the_table() {
        let small = (
            vec!["a".to_string()],
            vec![("K".to_string(), "V".to_string())],
        );
        assert_eq!(listed_args(&small.0, &small.1), small);
        let argv = vec!["sh".to_string(), "é".repeat(20_000), "tail".to_string()];
        let (kept, env) = listed_args(&argv, &small.1);
        assert!(env.is_empty());
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0], "sh");
        let total: usize = kept.iter().map(String::len).sum();
        assert!(total <= super::LISTED_ARGS_BYTES && total > super::LISTED_ARGS_BYTES - 2);
        // Env alone over the size: argv kept whole, env gone.
        let env = vec![("BIG".to_string(), "x".repeat(20_000))];
        assert_eq!(listed_args(&small.0, &env), (small.0.clone(), vec![]));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }
}
