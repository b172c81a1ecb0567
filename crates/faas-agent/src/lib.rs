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
//!
//! Output is streamed as it is produced, so the same protocol serves one-shot execution,
//! streaming logs and (later) long-running processes.

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

/// The protocol version the agent speaks; reported by [`Event::Pong`].
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Json = 0,
    Stdout = 1,
    Stderr = 2,
    Stdin = 3,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            0 => FrameKind::Json,
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Stdin,
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
    /// Whether the host will send stdin frames. When false, stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
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
    },
    /// The agent stops listening when this connection closes (see [`Request::Quiesce`]).
    Quiesced,
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
