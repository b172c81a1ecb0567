//! The in-sandbox agent's wire protocol.
//!
//! The agent (`src/main.rs`) is a static binary that runs as PID 1 inside every sandbox and
//! listens on a unix socket in a directory the host bind-mounts into the box. Every connection
//! carries one request. The host and the agent exchange *frames*:
//!
//! ```text
//! +------+----------------+-----------------+
//! | kind | length (u32 BE)| payload (length)|
//! +------+----------------+-----------------+
//! ```
//!
//! - [`FrameKind::Json`] carries a [`Request`] (host → agent) or an [`Event`] (agent → host).
//! - [`FrameKind::Stdout`] / [`FrameKind::Stderr`] carry raw output bytes (agent → host).
//! - [`FrameKind::Stdin`] carries raw input bytes (host → agent); an empty one closes stdin.
//! - [`FrameKind::Pty`] carries a terminal's output (agent → host), for processes with a PTY.
//!
//! Output is streamed as it is produced, so the same protocol serves one-shot execution,
//! streaming logs and long-running processes.
//!
//! **Processes.** Every process the agent starts is an entry of its process table, keyed by its
//! pid in the box: an attached [`Request::Exec`] (the connection streams its output and its
//! end kills the process: one-shot execution) and a detached one (answered with
//! [`Event::Started`], then the connection ends; the process outlives it) alike. Each entry
//! keeps its last [`REPLAY_BYTES`] of output; [`Request::Connect`] answers [`Event::Started`]
//! at once, replays them and then
//! streams the live output and the [`Event::Exited`] event, for any number of clients at any
//! time. [`Request::SendInput`], [`Request::CloseStdin`], [`Request::Signal`],
//! [`Request::Resize`] and [`Request::List`] are one-shot requests naming the pid.
//!
//! **Files.** [`Request::Stat`], [`Request::ListDir`], [`Request::MakeDir`], [`Request::Move`]
//! and [`Request::Remove`] work on the box's own view of its files (the agent is inside it);
//! [`Request::Watch`] streams [`Event::Fs`] events until the host closes the connection.
//! Paths must be absolute; failures are [`Event::Error`] with an [`ErrorKind`].
//!
//! **Ports.** [`Request::Tunnel`] connects to a TCP port of the box's loopback and, once
//! answered with [`Event::Tunneled`], turns the connection into a raw byte pipe to it (no more
//! frames); [`Request::Ports`] lists the box's listening TCP sockets. No network namespace is
//! entered on the host: the bytes go through the agent's socket.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest payload a frame may carry; bigger frames are a protocol error.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Default cap on captured output (stdout and stderr together) per execution.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 10 * 1024 * 1024;

/// Where the agent listens inside the sandbox.
pub const GUEST_SOCKET_DIR: &str = "/run/faas";
/// The socket's file name inside [`GUEST_SOCKET_DIR`] (and the host directory bound to it).
pub const SOCKET_NAME: &str = "agent.sock";
/// Where the agent binary is mounted (read-only) inside the sandbox.
pub const GUEST_AGENT_PATH: &str = "/.faas/agent";

/// The protocol version the agent speaks; reported by [`Event::Pong`]. 3 added
/// [`Request::Tunnel`] and [`Request::Ports`].
pub const PROTOCOL_VERSION: u32 = 3;

/// Output kept per process for clients that connect late (at least this much of the newest).
pub const REPLAY_BYTES: usize = 1024 * 1024;

/// Ended processes kept in the table (for `List` and late `Connect`); older ones are dropped.
/// Their output is kept up to 16 MiB in all: past that the oldest ones' output goes first
/// (their entries and exits stay).
pub const ENDED_KEPT: usize = 256;

/// Most bytes of argv and env (together) an entry of the process table keeps; see
/// [`Request::List`].
pub const LISTED_ARGS_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Json = 0,
    Stdout = 1,
    Stderr = 2,
    Stdin = 3,
    Pty = 4,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            0 => FrameKind::Json,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Stdin,
            4 => FrameKind::Pty,
            _ => return None,
        })
    }
}

/// Host → agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Event::Pong`].
    Ping,
    /// Run a process. Stdin frames may follow; an empty stdin frame closes its stdin.
    Exec(ExecRequest),
    /// Before a memory checkpoint (gVisor cannot save a socket bound to a host path): stop
    /// listening once this connection closes, and listen again when the file
    /// [`RESUME_FILE`] appears next to the socket. Answered with [`Event::Quiesced`], or
    /// [`Event::Error`] while other connections are open.
    Quiesce,
    /// Subscribe to a process: answered first with [`Event::Started`] `{pid}` (at once, before
    /// any output), then its kept output, then live output, then [`Event::Exited`] (at once
    /// for a process that already ended). Unknown pid: [`Event::Error`] `not_found`.
    /// A subscriber that falls more than 16 MiB behind is disconnected (without the exit
    /// event, possibly mid-frame).
    Connect { pid: u32 },
    /// Write to a process's stdin (or its terminal). Answered with [`Event::Done`] once the
    /// bytes are queued (not when the process read them); `invalid` for a process started
    /// without stdin, whose stdin was closed, or that ended, and when 16 MiB are queued
    /// already ("stdin is full": the process does not read it). An attached exec's stdin
    /// frames are not read from its connection meanwhile.
    SendInput {
        pid: u32,
        /// The bytes, base64 (standard alphabet, padded).
        data_b64: String,
    },
    /// Close a process's stdin (for a PTY: sends end-of-file, `^D`). Answered with
    /// [`Event::Done`], also when stdin is closed already or the process ended.
    CloseStdin { pid: u32 },
    /// Send a signal (a number) to a process's group. Answered with [`Event::Done`] (a no-op
    /// for a process that ended); `invalid` for a number that is not a standard signal.
    Signal { pid: u32, signal: i32 },
    /// Resize a PTY process's terminal. `invalid` for a process without one; a no-op for one
    /// that ended.
    Resize { pid: u32, cols: u16, rows: u16 },
    /// The process table: answered with [`Event::Processes`]. An entry whose argv and env
    /// are over [`LISTED_ARGS_BYTES`] together is listed (and kept) with no env and its argv
    /// cut to that size (its last argument truncated), so the answer stays a few MiB: at most
    /// [`ENDED_KEPT`] ended processes, and as many running ones as the box can run.
    List,
    /// Answered with [`Event::Entry`].
    Stat { path: String },
    /// The entries under `path`, `depth` levels down (1 = its children), sorted by path;
    /// answered with [`Event::Entries`]. Symlinked directories are listed, not entered;
    /// unreadable subdirectories are skipped. More than 100,000 entries (or an answer over
    /// [`MAX_FRAME`]): `invalid`.
    ListDir { path: String, depth: u32 },
    /// Makes `path` and any missing parents. `exists` when `path` already exists. Answered with
    /// [`Event::Done`].
    MakeDir { path: String },
    /// Renames (or, across file systems, copies then removes) `from` to `to`. Answered with
    /// [`Event::Entry`] of `to`. A copy of a tree over 256 levels deep is refused (`invalid`);
    /// a copy that fails leaves nothing of itself behind.
    Move { from: String, to: String },
    /// Removes a file, a link (not what it points to, even with a trailing `/`) or a whole
    /// directory. Answered with [`Event::Done`]. `invalid` for a path whose last component
    /// is `.` or `..`, or that is `/`, as `rm` refuses them.
    Remove { path: String },
    /// Streams [`Event::Fs`] for changes under directory `path` (and its subdirectories, with
    /// `recursive`, down to 256 levels below `path`) after one [`Event::Done`] saying the
    /// watch is set, until the host closes the connection. When the kernel's queue of
    /// changes overflows (changes were lost) the stream ends with [`Event::Error`] `other`:
    /// watch again.
    Watch { path: String, recursive: bool },
    /// Before a used box is reused: kill every other process of the box (daemons included),
    /// wait until they and every other connection are gone, and forget all processes.
    /// Answered with [`Event::Done`], or [`Event::Error`] when something would not go within
    /// 2 s. The host then gives the box a new root file system and asks [`Request::CheckClean`].
    Reset,
    /// Whether the agent is as it was when the box started: its resource limits, priority,
    /// CPU affinity, OOM score, mounts and open files, with no other process or connection.
    /// Answered with [`Event::Done`], or [`Event::Error`] `other` naming what differs.
    CheckClean,
    /// Connect to `127.0.0.1:port` (then `[::1]:port`) inside the box. Answered with
    /// [`Event::Tunneled`], after which the connection carries raw bytes both ways until
    /// either side closes it (a shut-down write half is passed on as one); or with
    /// [`Event::Error`] `refused` when nothing listens there, `invalid` for port 0.
    Tunnel { port: u16 },
    /// The box's listening TCP sockets (`/proc/net/tcp` and `tcp6`), answered with
    /// [`Event::Ports`].
    Ports,
}

/// Made by the host next to the agent's socket when a quiesced agent may listen again.
pub const RESUME_FILE: &str = "resume";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's own environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; created when missing, as `docker run -w` does.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the whole process group after this long; 0 means no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Cap on captured stdout+stderr bytes; 0 means [`DEFAULT_OUTPUT_LIMIT`].
    #[serde(default)]
    pub output_limit: u64,
    /// Whether the process takes input (stdin frames on an attached exec's connection, or
    /// [`Request::SendInput`]). When false, stdin is `/dev/null`. A PTY always takes input.
    #[serde(default)]
    pub stdin: bool,
    /// Answer [`Event::Started`] and end the connection; the process outlives it and its
    /// output is kept for [`Request::Connect`]. The output cap does not apply.
    #[serde(default)]
    pub detach: bool,
    /// With `detach`: after [`Event::Started`] the connection stays open as a
    /// [`Request::Connect`] subscription to the new process (one round trip instead of two).
    #[serde(default)]
    pub subscribe: bool,
    /// Run under a new terminal of this size (stdin, stdout and stderr are its slave side;
    /// output comes as [`FrameKind::Pty`] frames).
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// A caller's label, shown by [`Request::List`].
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// One entry of the process table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub pty: bool,
    pub running: bool,
    /// Set once it ended.
    pub exit: Option<ExitInfo>,
    /// Unix time of its start, in milliseconds.
    pub started_at_ms: u64,
}

/// Why a request failed; the host turns it into an HTTP status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such process, file or directory.
    NotFound,
    /// The target already exists.
    Exists,
    /// A path component (or the target) is not a directory where one is needed.
    NotDir,
    /// A directory where a file is needed.
    IsDir,
    /// The request is malformed (a relative path, a name too long, a loop of links, a move of
    /// a directory into itself, a resize of a process without a PTY...).
    Invalid,
    /// The box refused it: permissions, or its state (a read-only or full file system, a
    /// busy file, a device that cannot be copied).
    Denied,
    /// Nothing listens on the port asked for ([`Request::Tunnel`]).
    Refused,
    #[default]
    Other,
}

/// A TCP socket listening in the box.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListeningPort {
    pub port: u16,
    /// The address it is bound to: `0.0.0.0`, `::`, `127.0.0.1`...
    pub address: String,
}

/// What a file is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    #[default]
    File,
    Dir,
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// A file as the box sees it (links are not followed: a symlink is described, with its
/// target).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FileEntry {
    /// The last component of `path`.
    pub name: String,
    /// Absolute, as asked (not resolved).
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    /// Like `ls -l`: `-rw-r--r--`, `drwxr-xr-x`, `lrwxrwxrwx`.
    pub permissions: String,
    pub uid: u32,
    pub gid: u32,
    /// From the box's `/etc/passwd` and `/etc/group`; the number when not listed there.
    pub owner: String,
    pub group: String,
    /// Modification time, Unix milliseconds.
    pub mtime_ms: i64,
    pub symlink_target: Option<String>,
}

/// A change seen by [`Request::Watch`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsOp {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// Agent → host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Pong {
        version: u32,
        pid: u32,
    },
    /// The process runs.
    Started {
        pid: u32,
    },
    /// The process could not be started (not found, not executable, bad working dir...).
    SpawnFailed {
        message: String,
        /// 127 when the program was not found, 126 when it could not be executed: the codes a
        /// POSIX shell reports for the same failures.
        exit_code: i32,
    },
    /// The process ended; always the last event of an exec.
    Exited(ExitInfo),
    /// The request could not be served.
    Error {
        message: String,
        #[serde(default)]
        kind: ErrorKind,
    },
    /// The agent stops listening when this connection closes (see [`Request::Quiesce`]).
    Quiesced,
    /// A one-shot request was done.
    Done,
    /// The answer to [`Request::List`]: running processes first, then ended ones, newest last.
    Processes {
        processes: Vec<ProcessInfo>,
    },
    /// The answer to [`Request::Stat`] and [`Request::Move`].
    Entry {
        entry: FileEntry,
    },
    /// The answer to [`Request::ListDir`].
    Entries {
        entries: Vec<FileEntry>,
    },
    /// A change under a watched directory: `path` is absolute; for a rename, `path` is the
    /// old name (op `rename`), followed by a `create` of the new one when it is inside the
    /// watch.
    Fs {
        op: FsOp,
        path: String,
    },
    /// The answer to [`Request::Tunnel`]: from the next byte on, the connection is the TCP
    /// connection's bytes.
    Tunneled,
    /// The answer to [`Request::Ports`], sorted by port and address.
    Ports {
        ports: Vec<ListeningPort>,
    },
}

impl Event {
    /// An [`Event::Error`].
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Event {
        Event::Error {
            message: message.into(),
            kind,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ExitInfo {
    /// The exit status, or 128 + signal when a signal ended it (as shells and Docker report).
    pub exit_code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// The timeout fired and the process group was killed.
    pub timed_out: bool,
    /// Output passed the cap; the rest was read and dropped.
    pub truncated: bool,
    /// The sandbox's memory cgroup recorded an OOM kill (of the process or one of its
    /// children) while the process ran.
    pub oom_killed: bool,
    /// Wall time from spawn to exit, measured by the agent.
    pub duration_us: u64,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.extend_from_slice(&encode_header(kind, payload.len())?);
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// Writes a JSON frame.
pub fn write_json<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, FrameKind::Json, &body)
}

/// The 5-byte header of a frame.
pub fn encode_header(kind: FrameKind, len: usize) -> io::Result<[u8; 5]> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes is over the {MAX_FRAME} byte limit"),
        ));
    }
    let l = (len as u32).to_be_bytes();
    Ok([kind as u8, l[0], l[1], l[2], l[3]])
}

/// Parses a frame header into its kind and payload length.
pub fn decode_header(h: [u8; 5]) -> io::Result<(FrameKind, usize)> {
    let kind = FrameKind::from_u8(h[0]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", h[0]),
        )
    })?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME} byte limit"),
        ));
    }
    Ok((kind, len))
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(FrameKind, Vec<u8>)>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = decode_header(h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Stdout, b"hello").unwrap();
        write_json(&mut buf, &Request::Ping).unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((k, p.as_slice()), (FrameKind::Stdout, &b"hello"[..]));
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(k, FrameKind::Json);
        assert_eq!(
            serde_json::from_slice::<Request>(&p).unwrap(),
            Request::Ping
        );
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversize_and_unknown_frames_are_refused() {
        let mut h = [0u8; 5];
        h[1..].copy_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(decode_header(h).is_err());
        assert!(decode_header([9, 0, 0, 0, 0]).is_err());
        // A header promising more bytes than arrive is an error, not a hang or a short frame.
        let mut r: &[u8] = &[1, 0, 0, 0, 10, b'x'];
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn exec_request_defaults() {
        let r: Request = serde_json::from_str(r#"{"type":"exec","argv":["true"]}"#).unwrap();
        let Request::Exec(e) = r else {
            panic!("not exec")
        };
        assert_eq!(e.argv, vec!["true"]);
        assert_eq!(e.timeout_ms, 0);
        assert!(!e.stdin);
    }
}
