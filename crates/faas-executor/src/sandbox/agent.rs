//! Host side of the agent protocol (see the `faas-agent` crate for the frames).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use faas_agent::{
    decode_header, encode_header, ErrorKind, Event, ExecRequest, ExitInfo, FileEntry, FrameKind,
    ProcessInfo, Request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// How long a request's first answer may take (one-shot requests, the acknowledgement of a
/// subscription or a watch). A listing or a move of a big tree is the slowest of them.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to the agent of one sandbox through the unix socket its backend exposed on the host.
#[derive(Debug, Clone)]
pub struct AgentClient {
    sandbox: String,
    socket: PathBuf,
}

/// What one exec produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitInfo,
    /// Set when the process could not be started (`exit.exit_code` is then 126 or 127).
    pub spawn_error: Option<String>,
    /// Set when the whole sandbox died under the process (see `Sandbox::death_cause`).
    pub sandbox_error: Option<String>,
}

impl AgentClient {
    pub fn new(sandbox: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        AgentClient {
            sandbox: sandbox.into(),
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Agent {
            sandbox: self.sandbox.clone(),
            message: message.into(),
        }
    }

    /// Waits until the agent answers a ping, polling the socket.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Err(e) = self
                .wait_listening(timeout.saturating_sub(start.elapsed()))
                .await
            {
                last = e;
                break;
            }
            match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(self.err(format!("did not answer within {timeout:?} ({last})")))
    }

    /// Waits until the socket accepts connections. A blocking thread probes it every 100 µs
    /// for the first 20 ms, then every millisecond: the async timer's resolution (1 ms) is as
    /// long as the agent's whole start-up.
    async fn wait_listening(&self, within: Duration) -> std::result::Result<(), String> {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            loop {
                match std::os::unix::net::UnixStream::connect(&socket) {
                    Ok(_) => return Ok(()),
                    Err(e) if start.elapsed() >= within => {
                        return Err(format!("connect {}: {e}", socket.display()))
                    }
                    Err(_) if start.elapsed() < Duration::from_millis(20) => {
                        std::thread::sleep(Duration::from_micros(100))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
        .await
        .map_err(|e| format!("socket probe: {e}"))?
    }

    /// Asks the agent to stop listening before a memory checkpoint (see
    /// `faas_agent::Request::Quiesce`); it listens again once the host makes the resume file.
    pub async fn quiesce(&self) -> Result<()> {
        let mut conn = self.connect().await?;
        send_json(&mut conn, &Request::Quiesce)
            .await
            .map_err(|e| self.err(e.to_string()))?;
        match self.read_event(&mut conn).await? {
            Some((FrameKind::Json, Some(Event::Quiesced), _)) => Ok(()),
            Some((FrameKind::Json, Some(Event::Error { message, .. }), _)) => Err(Error::Conflict(
                format!("cannot snapshot memory now: {message}"),
            )),
            other => Err(self.err(format!("unexpected answer to quiesce: {other:?}"))),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        match self.call(&Request::Ping).await? {
            Event::Pong { .. } => Ok(()),
            ev => Err(self.unexpected("ping", ev)),
        }
    }

    fn unreachable(&self, message: impl Into<String>) -> Error {
        Error::AgentUnreachable {
            sandbox: self.sandbox.clone(),
            message: message.into(),
        }
    }

    async fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(format!("connect {}: {e}", self.socket.display())))
    }

    /// Runs one process and collects its output. `on_output` sees each chunk as it arrives
    /// (for streaming); the collected output is returned either way.
    pub async fn exec(
        &self,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
        mut on_output: impl FnMut(FrameKind, &[u8]) + Send,
    ) -> Result<ExecOutcome> {
        let mut conn = self.connect().await?;
        let req = ExecRequest {
            stdin: stdin.is_some(),
            ..req
        };
        // The agent caps output, but the box is untrusted: the host enforces the cap too.
        let limit = match req.output_limit {
            0 => faas_agent::DEFAULT_OUTPUT_LIMIT,
            n => n,
        };
        let mut room = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut over = false;
        send_json(&mut conn, &Request::Exec(req))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (mut rd, mut wr) = conn.into_split();
        // Stdin goes in its own task so a process that does not read it cannot stall us. The
        // write half lives until the end either way: its shutdown would end the process.
        let (feeder, _kept) = match stdin {
            Some(data) => (
                Feeder(Some(tokio::spawn(async move {
                    for chunk in data.chunks(256 * 1024) {
                        if send_frame(&mut wr, FrameKind::Stdin, chunk).await.is_err() {
                            return wr;
                        }
                    }
                    let _ = send_frame(&mut wr, FrameKind::Stdin, &[]).await;
                    wr
                }))),
                None,
            ),
            None => (Feeder(None), Some(wr)),
        };
        let mut out = ExecOutcome::default();
        let mut started = false;
        loop {
            let next = match self.read_event(&mut rd).await {
                // Until the agent says the process started, nothing ran: the box is gone.
                Err(e) if !started => Err(self.unreachable(e.to_string())),
                other => other,
            };
            let Some((kind, event, payload)) = next? else {
                feeder.abort();
                if !started {
                    return Err(self.unreachable("connection closed before the process started"));
                }
                return Err(self.err("connection closed before the process exited"));
            };
            match (kind, event) {
                (FrameKind::Stdout | FrameKind::Stderr, _) => {
                    let take = payload.len().min(room);
                    over |= take < payload.len();
                    room -= take;
                    let data = &payload[..take];
                    on_output(kind, data);
                    let buf = if kind == FrameKind::Stdout {
                        &mut out.stdout
                    } else {
                        &mut out.stderr
                    };
                    buf.extend_from_slice(data);
                }
                (_, Some(Event::Started { .. })) => started = true,
                (_, Some(Event::Exited(info))) => {
                    out.exit = info;
                    break;
                }
                (_, Some(Event::SpawnFailed { message, exit_code })) => {
                    out.exit.exit_code = exit_code;
                    out.spawn_error = Some(message);
                    break;
                }
                (_, Some(Event::Error { message, .. })) => {
                    feeder.abort();
                    return Err(self.err(message));
                }
                (k, e) => {
                    feeder.abort();
                    return Err(self.err(format!("unexpected frame {k:?} {e:?}")));
                }
            }
        }
        feeder.abort();
        out.exit.truncated |= over;
        Ok(out)
    }

    /// Starts a long-lived process with its stdin open (a function runtime's shim): its
    /// input is written and its output read piece by piece through the returned handle.
    pub async fn spawn(&self, req: ExecRequest) -> Result<AgentProcess> {
        let mut conn = self.connect().await?;
        let req = ExecRequest {
            stdin: true,
            // The process lives for many requests: the per-exec output cap does not apply.
            output_limit: u64::MAX,
            ..req
        };
        send_json(&mut conn, &Request::Exec(req))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (rd, wr) = conn.into_split();
        let mut p = AgentProcess {
            client: self.clone(),
            rd,
            wr,
        };
        match self.read_event(&mut p.rd).await {
            Ok(Some((_, Some(Event::Started { .. }), _))) => Ok(p),
            Ok(Some((_, Some(Event::SpawnFailed { message, .. }), _))) => {
                Err(self.err(format!("cannot start: {message}")))
            }
            Ok(other) => Err(self.unreachable(format!("unexpected answer to spawn: {other:?}"))),
            Err(e) => Err(self.unreachable(e.to_string())),
        }
    }

    /// Sends one request and reads its one answer; an agent error becomes the error of its
    /// kind (`not_found`, `conflict`, `invalid_request`).
    async fn call(&self, req: &Request) -> Result<Event> {
        self.request(req).await.map(|(_, ev)| ev)
    }

    /// Sends one request and reads its first answer, within [`ANSWER_TIMEOUT`] (the box is
    /// untrusted: an agent that accepts and never answers must not hold a caller for ever);
    /// the connection stays open for what follows (a subscription's frames, a watch's events).
    async fn request(&self, req: &Request) -> Result<(UnixStream, Event)> {
        let exchange = async {
            let mut conn = self.connect().await?;
            send_json(&mut conn, req)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let ev = self.answer(&mut conn).await?;
            Ok((conn, ev))
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(self.err(format!("did not answer within {ANSWER_TIMEOUT:?}"))),
        }
    }

    async fn answer(&self, conn: &mut UnixStream) -> Result<Event> {
        match self.read_event(conn).await? {
            Some((FrameKind::Json, Some(Event::Error { message, kind }), _)) => {
                Err(self.refused(kind, message))
            }
            Some((FrameKind::Json, Some(ev), _)) => Ok(ev),
            None => Err(self.err("connection closed before an answer")),
            Some(other) => Err(self.err(format!("unexpected answer {other:?}"))),
        }
    }

    fn refused(&self, kind: ErrorKind, message: String) -> Error {
        match kind {
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::Exists | ErrorKind::NotDir | ErrorKind::IsDir | ErrorKind::Denied => {
                Error::Conflict(message)
            }
            ErrorKind::Invalid => Error::InvalidRequest(message),
            ErrorKind::Refused => Error::PortClosed(message),
            ErrorKind::Other => self.err(message),
        }
    }

    fn unexpected(&self, what: &str, ev: Event) -> Error {
        self.err(format!("unexpected answer to {what}: {ev:?}"))
    }

    /// Starts a process that outlives this call (its output is kept by the agent for
    /// [`AgentClient::subscribe`]); its pid in the box.
    pub async fn start(&self, req: ExecRequest) -> Result<u32> {
        let req = ExecRequest {
            detach: true,
            ..req
        };
        match self.call(&Request::Exec(req)).await? {
            Event::Started { pid } => Ok(pid),
            Event::SpawnFailed { message, .. } => {
                Err(Error::InvalidRequest(format!("cannot start: {message}")))
            }
            ev => Err(self.unexpected("start", ev)),
        }
    }

    /// [`AgentClient::start`] and [`AgentClient::subscribe`] in one round trip: the new
    /// process's pid and its output from the first byte.
    pub async fn start_subscribed(&self, req: ExecRequest) -> Result<(u32, Subscription)> {
        let req = ExecRequest {
            detach: true,
            subscribe: true,
            ..req
        };
        match self.request(&Request::Exec(req)).await? {
            (conn, Event::Started { pid }) => Ok((
                pid,
                Subscription {
                    client: self.clone(),
                    conn,
                    done: false,
                },
            )),
            (_, Event::SpawnFailed { message, .. }) => {
                Err(Error::InvalidRequest(format!("cannot start: {message}")))
            }
            (_, ev) => Err(self.unexpected("start", ev)),
        }
    }

    /// A process's kept output, then its live output, then its exit.
    pub async fn subscribe(&self, pid: u32) -> Result<Subscription> {
        // The agent says at once whether the process exists (`started{pid}`, or an error),
        // before its output, which may be a long time coming.
        match self.request(&Request::Connect { pid }).await? {
            (conn, Event::Started { .. }) => Ok(Subscription {
                client: self.clone(),
                conn,
                done: false,
            }),
            (_, ev) => Err(self.unexpected("connect", ev)),
        }
    }

    /// Writes to a process's stdin (or its terminal).
    pub async fn send_input(&self, pid: u32, data: &[u8]) -> Result<()> {
        let data_b64 = base64::engine::general_purpose::STANDARD.encode(data);
        self.done("send input", &Request::SendInput { pid, data_b64 })
            .await
    }

    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        self.done("close stdin", &Request::CloseStdin { pid }).await
    }

    /// Sends `signal` to the process's group.
    pub async fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        self.done("signal", &Request::Signal { pid, signal }).await
    }

    pub async fn resize(&self, pid: u32, cols: u16, rows: u16) -> Result<()> {
        self.done("resize", &Request::Resize { pid, cols, rows })
            .await
    }

    /// The box's process table: running processes, then recently ended ones.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        match self.call(&Request::List).await? {
            Event::Processes { processes } => Ok(processes),
            ev => Err(self.unexpected("list", ev)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileEntry> {
        let path = path.to_string();
        match self.call(&Request::Stat { path }).await? {
            Event::Entry { entry } => Ok(entry),
            ev => Err(self.unexpected("stat", ev)),
        }
    }

    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<FileEntry>> {
        let path = path.to_string();
        match self.call(&Request::ListDir { path, depth }).await? {
            Event::Entries { entries } => Ok(entries),
            ev => Err(self.unexpected("list", ev)),
        }
    }

    pub async fn make_dir(&self, path: &str) -> Result<()> {
        let path = path.to_string();
        self.done("make dir", &Request::MakeDir { path }).await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<FileEntry> {
        let (from, to) = (from.to_string(), to.to_string());
        match self.call(&Request::Move { from, to }).await? {
            Event::Entry { entry } => Ok(entry),
            ev => Err(self.unexpected("move", ev)),
        }
    }

    pub async fn remove(&self, path: &str) -> Result<()> {
        let path = path.to_string();
        self.done("remove", &Request::Remove { path }).await
    }

    /// Changes under directory `path`, from the moment this returns, until the
    /// [`Watch`] is dropped.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<Watch> {
        let path = path.to_string();
        match self.request(&Request::Watch { path, recursive }).await? {
            (conn, Event::Done) => Ok(Watch {
                client: self.clone(),
                conn,
            }),
            (_, ev) => Err(self.unexpected("watch", ev)),
        }
    }

    /// Kills every process of the box but the agent and forgets them (see `Sandbox::reset`).
    pub async fn reset(&self) -> Result<()> {
        self.done("reset", &Request::Reset).await
    }

    /// Whether the agent is as it was when the box started, alone in it.
    pub async fn check_clean(&self) -> Result<()> {
        self.done("check clean", &Request::CheckClean).await
    }

    /// A connection to TCP port `port` of the box's loopback, made by the agent inside it:
    /// the stream carries the connection's bytes (a shut-down write half is passed on).
    /// Nothing listening there: [`Error::PortClosed`].
    pub async fn tunnel(&self, port: u16) -> Result<UnixStream> {
        match self.request(&Request::Tunnel { port }).await? {
            (conn, Event::Tunneled) => Ok(conn),
            (_, ev) => Err(self.unexpected("tunnel", ev)),
        }
    }

    /// The box's listening TCP sockets.
    pub async fn listening_ports(&self) -> Result<Vec<faas_agent::ListeningPort>> {
        match self.call(&Request::Ports).await? {
            Event::Ports { ports } => Ok(ports),
            ev => Err(self.unexpected("ports", ev)),
        }
    }

    async fn done(&self, what: &str, req: &Request) -> Result<()> {
        match self.call(req).await? {
            Event::Done => Ok(()),
            ev => Err(self.unexpected(what, ev)),
        }
    }

    async fn read_event(
        &self,
        r: &mut (impl AsyncReadExt + Unpin),
    ) -> Result<Option<(FrameKind, Option<Event>, Vec<u8>)>> {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(self.err(format!("read: {e}"))),
        }
        let (kind, len) = decode_header(h).map_err(|e| self.err(e.to_string()))?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .await
            .map_err(|e| self.err(format!("read: {e}")))?;
        if kind == FrameKind::Json {
            let ev: Event = serde_json::from_slice(&payload)
                .map_err(|e| self.err(format!("bad event: {e}")))?;
            return Ok(Some((kind, Some(ev), Vec::new())));
        }
        Ok(Some((kind, None, payload)))
    }
}

/// A process started by [`AgentClient::spawn`]. Dropping it closes the connection, which makes
/// the agent kill the process's group.
pub struct AgentProcess {
    client: AgentClient,
    rd: tokio::net::unix::OwnedReadHalf,
    wr: tokio::net::unix::OwnedWriteHalf,
}

/// The task writing an exec's stdin, when it has one.
struct Feeder(Option<tokio::task::JoinHandle<tokio::net::unix::OwnedWriteHalf>>);

impl Feeder {
    fn abort(&self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// What a process did next.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Output of a process under a terminal.
    Pty(Vec<u8>),
    Exited(ExitInfo),
}

/// A frame of a process's stream as an event.
fn frame_event(
    frame: (FrameKind, Option<Event>, Vec<u8>),
) -> std::result::Result<ProcessEvent, String> {
    match frame {
        (FrameKind::Stdout, _, data) => Ok(ProcessEvent::Stdout(data)),
        (FrameKind::Stderr, _, data) => Ok(ProcessEvent::Stderr(data)),
        (FrameKind::Pty, _, data) => Ok(ProcessEvent::Pty(data)),
        (_, Some(Event::Exited(info)), _) => Ok(ProcessEvent::Exited(info)),
        (_, Some(Event::Error { message, .. }), _) => Err(message),
        other => Err(format!("unexpected frame {other:?}")),
    }
}

/// A subscription to a process ([`AgentClient::subscribe`]); dropping it leaves the process
/// running.
pub struct Subscription {
    client: AgentClient,
    conn: UnixStream,
    done: bool,
}

impl Subscription {
    /// The next piece of output, or the exit; `None` after the exit.
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>> {
        if self.done {
            return Ok(None);
        }
        let ev = match self.client.read_event(&mut self.conn).await? {
            Some(frame) => frame_event(frame).map_err(|e| self.client.err(e))?,
            None => {
                return Err(self
                    .client
                    .err("connection closed before the process exited"))
            }
        };
        self.done = matches!(ev, ProcessEvent::Exited(_));
        Ok(Some(ev))
    }
}

/// A watch of a directory ([`AgentClient::watch`]); dropping it ends the watch.
pub struct Watch {
    client: AgentClient,
    conn: UnixStream,
}

impl Watch {
    /// The next change: its operation and absolute path; `None` when the watch ended (its
    /// directory was removed).
    pub async fn next(&mut self) -> Result<Option<(faas_agent::FsOp, String)>> {
        match self.client.read_event(&mut self.conn).await? {
            Some((FrameKind::Json, Some(Event::Fs { op, path }), _)) => Ok(Some((op, path))),
            None => Ok(None),
            Some((FrameKind::Json, Some(Event::Error { message, kind }), _)) => {
                Err(self.client.refused(kind, message))
            }
            Some(other) => Err(self.client.err(format!("unexpected frame {other:?}"))),
        }
    }
}

impl AgentProcess {
    /// Writes to the process's stdin.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        send_frame(&mut self.wr, FrameKind::Stdin, data)
            .await
            .map_err(|e| self.client.err(format!("write: {e}")))
    }

    /// The next piece of output, or the exit.
    pub async fn next(&mut self) -> Result<ProcessEvent> {
        match self.client.read_event(&mut self.rd).await? {
            Some((FrameKind::Stdout, _, data)) => Ok(ProcessEvent::Stdout(data)),
            Some((FrameKind::Stderr, _, data)) => Ok(ProcessEvent::Stderr(data)),
            Some((_, Some(Event::Exited(info)), _)) => Ok(ProcessEvent::Exited(info)),
            Some((_, Some(Event::Error { message, .. }), _)) => Err(self.client.err(message)),
            None => Err(self
                .client
                .err("connection closed before the process exited")),
            Some(other) => Err(self.client.err(format!("unexpected frame {other:?}"))),
        }
    }
}

async fn send_frame(
    w: &mut (impl AsyncWriteExt + Unpin),
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = encode_header(kind, payload.len())?;
    w.write_all(&h).await?;
    w.write_all(payload).await
}

async fn send_json(w: &mut (impl AsyncWriteExt + Unpin), value: &Request) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    send_frame(w, FrameKind::Json, &body).await
}

/// Checks that `path` is an x86-64 ELF executable without an interpreter, i.e. one that runs in
/// any image whatever libc it has (or none).
pub fn check_static_agent(path: &Path) -> std::result::Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("agent binary {}: {e}", path.display()))?;
    let bad = |why: &str| format!("agent binary {}: {why}", path.display());
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(t) = data.get(o..o + 4) else {
            return Err(bad("truncated program headers"));
        };
        if u32::from_le_bytes(t.try_into().expect("4 bytes")) == 3 {
            return Err(bad(
                "dynamically linked (has an ELF interpreter); build it with scripts/build-agent.sh",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_not_taken_as_agents() {
        // /bin/sh on the host is dynamically linked.
        let err = check_static_agent(Path::new("/bin/sh")).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = check_static_agent(Path::new("/etc/hostname")).unwrap_err();
        assert!(err.contains("not a 64-bit"), "{err}");
        assert!(check_static_agent(Path::new("/nonexistent")).is_err());
    }
}
