//! envd's `process.Process` over Connect JSON ([`super::connect`]): a sandbox's processes are
//! its instance's (the instances service's `process_*` calls, as the sandbox's tenant).
//!
//! - `Start` (server stream) starts `cmd` + `args` and streams `start{pid}`, its output
//!   (`data{stdout|stderr|pty}`, base64), `keepalive{}` when idle, and `end{exitCode, exited,
//!   status, error?}` as envd words them (Go's `ProcessState`: `exit status 3`, or
//!   `signal: killed` with exit code -1). `Connect-Timeout-Ms` is the process's lifetime: it
//!   is killed when it passes and the stream ends `deadline_exceeded`. A client that goes away
//!   leaves the process running (a background command, reached again with `Connect`).
//! - `Connect` (server stream): the same events for a process chosen by pid or tag; the
//!   agent replays the output it kept (so a process that just ended can still be read).
//! - `List` (running processes), `SendInput`, `StreamInput` (client stream), `CloseStdin`,
//!   `SendSignal`, `Update` (a terminal's size): unary; an unknown or ended process is
//!   `not_found` (the SDKs' `kill` then answers false).
//!
//! Requests are ProtoJSON: lowerCamelCase or proto field names, integers as numbers or
//! strings, `null` as the default, bytes in base64, enums by name or number.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine;
use faas_common::{CommandSpec, EnvVars, ProcessExit, ProcessInfo, ProcessStartRequest, PtySize};
use faas_executor::sandbox::agent::{ProcessEvent, Subscription};
use faas_executor::services::instances::processes::process_exit;
use futures::{Stream, StreamExt};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::connect::{self, ConnectError, Envelopes};
use super::Envd;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_process))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/Update", post(update))
}

/// envd's keepalive interval when the client asks for none.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);
/// A terminal asked for without a size.
const DEFAULT_PTY: PtySize = PtySize { cols: 80, rows: 24 };
/// The home directory `~` and relative working directories are taken from when the request
/// sets no `HOME` (the agent's default).
const DEFAULT_HOME: &str = "/root";

// ---------------------------------------------------------------------------------------
// Request messages (`spec/envd/process/process.proto`).

/// A present field whose value is `null` is its default, as ProtoJSON has it.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A `uint32`: a number or a decimal string.
fn uint32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => connect::int_of(&v)
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a uint32, got {v}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProcessConfig {
    #[serde(deserialize_with = "nullable")]
    cmd: String,
    #[serde(deserialize_with = "nullable")]
    args: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    #[serde(deserialize_with = "uint32")]
    cols: Option<u32>,
    #[serde(deserialize_with = "uint32")]
    rows: Option<u32>,
}

impl Pty {
    /// The terminal's size; a missing (zero) dimension is the default's.
    fn size(&self) -> PtySize {
        let dim = |v: Option<u32>, default: u16| match v {
            None | Some(0) => default,
            Some(n) => u16::try_from(n).unwrap_or(u16::MAX),
        };
        let size = self.size.as_ref();
        PtySize {
            cols: dim(size.and_then(|s| s.cols), DEFAULT_PTY.cols),
            rows: dim(size.and_then(|s| s.rows), DEFAULT_PTY.rows),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// `ProcessSelector`: a oneof of `pid` and `tag`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SelectorMsg {
    #[serde(deserialize_with = "uint32")]
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Pid(u32),
    Tag(String),
}

impl Selector {
    fn of(msg: Option<SelectorMsg>) -> Result<Selector, ConnectError> {
        match msg {
            Some(SelectorMsg { pid: Some(pid), .. }) => Ok(Selector::Pid(pid)),
            Some(SelectorMsg { tag: Some(tag), .. }) => Ok(Selector::Tag(tag)),
            _ => Err(ConnectError::invalid("process: a pid or a tag is required")),
        }
    }

    fn not_found(&self) -> ConnectError {
        let message = match self {
            Selector::Pid(pid) => format!("process with pid {pid} not found"),
            Selector::Tag(tag) => format!("process with tag {tag} not found"),
        };
        ConnectError::new("not_found", message)
    }

    fn matches(&self, p: &ProcessInfo) -> bool {
        match self {
            Selector::Pid(pid) => p.pid == *pid,
            Selector::Tag(tag) => p.tag.as_deref() == Some(tag.as_str()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConnectRequest {
    process: Option<SelectorMsg>,
}

/// `ProcessInput`: a oneof of `stdin` and `pty` bytes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InputMsg {
    stdin: Option<String>,
    pty: Option<String>,
}

impl InputMsg {
    /// The bytes to write (to the process's stdin or its terminal: the agent knows which).
    fn bytes(msg: Option<InputMsg>) -> Result<Vec<u8>, ConnectError> {
        let (field, b64) = match msg {
            Some(InputMsg { stdin: Some(s), .. }) => ("input.stdin", s),
            Some(InputMsg { pty: Some(s), .. }) => ("input.pty", s),
            _ => return Err(ConnectError::invalid("input: stdin or pty is required")),
        };
        decode_bytes(&b64).ok_or_else(|| ConnectError::invalid(format!("{field} is not base64")))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Option<SelectorMsg>,
    input: Option<InputMsg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputRequest {
    start: Option<StreamStart>,
    data: Option<StreamData>,
    keepalive: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamStart {
    process: Option<SelectorMsg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamData {
    input: Option<InputMsg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CloseStdinRequest {
    process: Option<SelectorMsg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Option<SelectorMsg>,
    signal: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Option<SelectorMsg>,
    pty: Option<Pty>,
}

/// ProtoJSON bytes: standard or URL-safe base64, padded or not.
fn decode_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::alphabet;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if s.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(s.trim()).ok()
}

/// `process.Signal` by name (`SIGNAL_SIGKILL`, or any name our API takes) or number.
fn signal_of(v: Option<&Value>) -> Result<i32, ConnectError> {
    let unspecified = || ConnectError::invalid("signal is required");
    let v = match v {
        None | Some(Value::Null) => return Err(unspecified()),
        Some(Value::String(s)) => {
            let up = s.trim().to_ascii_uppercase();
            if up == "SIGNAL_UNSPECIFIED" {
                return Err(unspecified());
            }
            Value::String(up.strip_prefix("SIGNAL_").unwrap_or(&up).to_string())
        }
        Some(Value::Number(n)) if n.as_i64() == Some(0) => return Err(unspecified()),
        Some(v) => v.clone(),
    };
    faas_common::SignalRequest { signal: v }
        .number()
        .map_err(ConnectError::invalid)
}

/// envd resolves `~` and relative working directories against the user's home.
fn working_dir(cwd: Option<String>, envs: &BTreeMap<String, String>) -> Option<String> {
    let cwd = cwd.filter(|c| !c.is_empty())?;
    if cwd.starts_with('/') {
        return Some(cwd);
    }
    let home = envs
        .get("HOME")
        .filter(|h| h.starts_with('/'))
        .map_or(DEFAULT_HOME, String::as_str)
        .trim_end_matches('/');
    let rest = match cwd.strip_prefix('~') {
        Some("") => return Some(if home.is_empty() { "/" } else { home }.to_string()),
        Some(r) if r.starts_with('/') => r.trim_start_matches('/'),
        _ => cwd.as_str(),
    };
    Some(format!("{home}/{rest}"))
}

impl StartRequest {
    /// Our start request; `timeout_ms` is set by the caller.
    fn into_ours(self) -> Result<ProcessStartRequest, ConnectError> {
        let process = self.process.unwrap_or_default();
        if process.cmd.is_empty() {
            return Err(ConnectError::invalid("process.cmd is required"));
        }
        let mut argv = vec![process.cmd];
        argv.extend(process.args);
        let working_dir = working_dir(process.cwd, &process.envs);
        Ok(ProcessStartRequest {
            command: CommandSpec::Argv(argv),
            env_vars: EnvVars(process.envs.into_iter().collect()),
            working_dir,
            // envd keeps stdin open unless told not to.
            stdin: self.stdin.unwrap_or(true),
            pty: self.pty.as_ref().map(Pty::size),
            tag: self.tag,
            timeout_ms: None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Events.

fn start_event(pid: u32) -> Value {
    json!({"event": {"start": {"pid": pid}}})
}

fn keepalive_event() -> Value {
    json!({"event": {"keepalive": {}}})
}

fn data_event(kind: &str, data: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    json!({"event": {"data": {kind: b64}}})
}

/// What Go's `syscall.Signal.String()` says (envd's status is `signal: <that>`).
fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        n => return format!("signal {n}"),
    };
    name.to_string()
}

/// The `end` event, as envd builds it from Go's `ProcessState`: a signal's end has exit
/// code -1 and `exited` false; `error` is set unless the process exited 0.
fn end_event(x: &ProcessExit) -> Value {
    let (code, exited, status) = match x.signal {
        Some(sig) => (-1, false, format!("signal: {}", signal_name(sig))),
        None => (x.exit_code, true, format!("exit status {}", x.exit_code)),
    };
    let mut end = json!({"exitCode": code, "exited": exited, "status": status});
    if code != 0 {
        end["error"] = Value::String(status);
    }
    json!({"event": {"end": end}})
}

fn deadline_exceeded() -> ConnectError {
    ConnectError::new("deadline_exceeded", "the request's deadline passed")
}

/// The events of a process after its `start`: its output, then its `end`. The stream ends
/// `deadline_exceeded` at `deadline`; `timed_out_is_deadline` says the process's own timeout
/// is this stream's deadline (`Start`), so its kill ends the stream the same way.
fn process_events(
    sandbox: String,
    sub: Subscription,
    deadline: Option<Instant>,
    timed_out_is_deadline: bool,
) -> impl Stream<Item = Result<Value, ConnectError>> + Send {
    futures::stream::unfold(Some(sub), move |sub| {
        let sandbox = sandbox.clone();
        async move {
            let mut sub = sub?;
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, sub.next()).await {
                    Ok(next) => next,
                    Err(_) => return Some((Err(deadline_exceeded()), None)),
                },
                None => sub.next().await,
            };
            match next {
                Ok(Some(ProcessEvent::Exited(x))) if x.timed_out && timed_out_is_deadline => {
                    Some((Err(deadline_exceeded()), None))
                }
                Ok(Some(ProcessEvent::Exited(x))) => Some((Ok(end_event(&process_exit(&x))), None)),
                Ok(Some(ProcessEvent::Stdout(d))) => {
                    Some((Ok(data_event("stdout", &d)), Some(sub)))
                }
                Ok(Some(ProcessEvent::Stderr(d))) => {
                    Some((Ok(data_event("stderr", &d)), Some(sub)))
                }
                Ok(Some(ProcessEvent::Pty(d))) => Some((Ok(data_event("pty", &d)), Some(sub))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox, error = %e.chain(), "process stream ended early");
                    let message = format!(
                        "the connection to sandbox {sandbox} ended before the stream completed"
                    );
                    Some((Err(ConnectError::new("unavailable", message)), None))
                }
            }
        }
    })
}

/// A server stream: `start{pid}`, then the process's events.
fn stream_of(
    headers: &HeaderMap,
    pid: u32,
    events: impl Stream<Item = Result<Value, ConnectError>> + Send + 'static,
) -> Response {
    let all = futures::stream::once(async move { Ok(start_event(pid)) }).chain(events);
    let keepalive = connect::keepalive_of(headers).or(Some(DEFAULT_KEEPALIVE));
    connect::stream_response(all, keepalive, keepalive_event())
}

/// A server stream that ends with `e` at once.
fn stream_error(e: ConnectError) -> Response {
    connect::stream_response(
        futures::stream::once(async move { Err(e) }),
        None,
        Value::Null,
    )
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// A unary request's message, read within the server's body limit.
async fn unary_request<T: DeserializeOwned>(s: &AppState, body: Body) -> Result<T, ConnectError> {
    let bytes = axum::body::to_bytes(body, s.body_limit)
        .await
        .map_err(|_| {
            ConnectError::new(
                "resource_exhausted",
                format!("the request is over {} bytes", s.body_limit),
            )
        })?;
    connect::parse_unary(&bytes)
}

async fn processes(s: &AppState, envd: &Envd) -> Result<Vec<ProcessInfo>, ConnectError> {
    let instances = &s.platform.instances;
    instances
        .process_list(&envd.caller, &envd.id)
        .await
        .map_err(Into::into)
}

/// The pid of the running process `sel` names (`not_found` when none does, as envd, which
/// forgets a process once it ended).
async fn running_pid(s: &AppState, envd: &Envd, sel: &Selector) -> Result<u32, ConnectError> {
    processes(s, envd)
        .await?
        .iter()
        .find(|p| p.running && sel.matches(p))
        .map(|p| p.pid)
        .ok_or_else(|| sel.not_found())
}

async fn start(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let timeout = connect::timeout_of(&headers);
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let req = match connect::parse_stream_request::<StartRequest>(body)
        .await
        .and_then(StartRequest::into_ours)
    {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    // The process's lifetime: the agent's timeout when the platform allows it, else ours.
    let max = s.platform.config().max_timeout_ms;
    let agent_timeout = timeout
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
        .filter(|ms| *ms <= max);
    let req = ProcessStartRequest {
        timeout_ms: agent_timeout,
        ..req
    };
    let instances = &s.platform.instances;
    // One round trip to the box: the process and its output from the first byte.
    let (pid, sub) = match instances
        .process_start_subscribed(&envd.caller, &envd.id, req)
        .await
    {
        Ok((started, sub)) => (started.pid, sub),
        Err(e) => return stream_error(e.into()),
    };
    if let (Some(t), None) = (timeout, agent_timeout) {
        kill_later(s.clone(), envd.clone(), pid, t);
    }
    let events = process_events(envd.id, sub, deadline, true);
    stream_of(&headers, pid, events)
}

/// Kills process `pid` after `after` (a lifetime longer than the agent's timeouts may be),
/// unless it ended, or its pid is another process's by then.
fn kill_later(s: AppState, envd: Envd, pid: u32, after: Duration) {
    tokio::spawn(async move {
        let started_at = |list: Vec<ProcessInfo>| {
            list.into_iter()
                .find(|p| p.pid == pid && p.running)
                .map(|p| p.started_at_ms)
        };
        let Some(at) = processes(&s, &envd).await.ok().and_then(started_at) else {
            return;
        };
        tokio::time::sleep(after).await;
        if processes(&s, &envd).await.ok().and_then(started_at) == Some(at) {
            let r = s
                .platform
                .instances
                .process_signal(&envd.caller, &envd.id, pid, 9)
                .await;
            if let Err(e) = r {
                tracing::debug!(sandbox = %envd.id, pid, error = %e, "killing a timed-out process");
            }
        }
    });
}

async fn connect_process(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let deadline = connect::timeout_of(&headers).and_then(|t| Instant::now().checked_add(t));
    let sel = match connect::parse_stream_request::<ConnectRequest>(body)
        .await
        .and_then(|r| Selector::of(r.process))
    {
        Ok(sel) => sel,
        Err(e) => return stream_error(e),
    };
    // A pid is taken as is (an ended process's kept output and end are replayed); a tag names
    // a running process.
    let pid = match &sel {
        Selector::Pid(pid) => *pid,
        Selector::Tag(_) => match running_pid(&s, &envd, &sel).await {
            Ok(pid) => pid,
            Err(e) => return stream_error(e),
        },
    };
    let sub = s
        .platform
        .instances
        .process_subscribe(&envd.caller, &envd.id, pid)
        .await;
    match sub {
        Ok(sub) => stream_of(&headers, pid, process_events(envd.id, sub, deadline, false)),
        Err(faas_executor::Error::NotFound(_)) => stream_error(sel.not_found()),
        Err(e) => stream_error(e.into()),
    }
}

async fn list(State(s): State<AppState>, Extension(envd): Extension<Envd>, body: Body) -> Response {
    let r = async {
        unary_request::<Value>(&s, body).await?;
        Ok::<_, ConnectError>(list_response(&processes(&s, &envd).await?))
    };
    match r.await {
        Ok(v) => connect::unary(&v),
        Err(e) => e.into_response(),
    }
}

/// `ListResponse`: the running processes, with the config they were started with.
fn list_response(list: &[ProcessInfo]) -> Value {
    let processes: Vec<Value> = list
        .iter()
        .filter(|p| p.running)
        .map(|p| {
            let (cmd, args) = match p.command.split_first() {
                Some((cmd, args)) => (cmd.as_str(), args),
                None => ("", &[][..]),
            };
            let mut config = json!({"cmd": cmd, "args": args, "envs": p.env_vars});
            if let Some(cwd) = &p.working_dir {
                config["cwd"] = Value::String(cwd.clone());
            }
            let mut info = json!({"pid": p.pid, "config": config});
            if let Some(tag) = &p.tag {
                info["tag"] = Value::String(tag.clone());
            }
            info
        })
        .collect();
    json!({ "processes": processes })
}

/// A unary answer: `{}`, or the error.
fn empty_answer(r: Result<(), ConnectError>) -> Response {
    match r {
        Ok(()) => connect::unary(&json!({})),
        Err(e) => e.into_response(),
    }
}

async fn write_input(s: &AppState, envd: &Envd, pid: u32, data: &[u8]) -> Result<(), ConnectError> {
    let instances = &s.platform.instances;
    instances
        .process_input(&envd.caller, &envd.id, pid, data)
        .await
        .map_err(Into::into)
}

async fn send_input(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    body: Body,
) -> Response {
    empty_answer(do_send_input(&s, &envd, body).await)
}

async fn do_send_input(s: &AppState, envd: &Envd, body: Body) -> Result<(), ConnectError> {
    let req: SendInputRequest = unary_request(s, body).await?;
    let sel = Selector::of(req.process)?;
    let data = InputMsg::bytes(req.input)?;
    let pid = running_pid(s, envd, &sel).await?;
    write_input(s, envd, pid, &data).await
}

/// A client stream: `start{process}`, then `data{input}` and `keepalive{}`; answered with
/// one `{}` once the client ends it.
async fn stream_input(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    body: Body,
) -> Response {
    let answer = do_stream_input(&s, &envd, body).await.map(|()| json!({}));
    connect::stream_response(
        futures::stream::once(async move { answer }),
        None,
        Value::Null,
    )
}

async fn do_stream_input(s: &AppState, envd: &Envd, body: Body) -> Result<(), ConnectError> {
    let mut msgs = Envelopes::new(body);
    let mut pid = None;
    while let Some(msg) = msgs.next::<StreamInputRequest>().await? {
        if let Some(start) = msg.start {
            let sel = Selector::of(start.process)?;
            pid = Some(running_pid(s, envd, &sel).await?);
        } else if let Some(data) = msg.data {
            let Some(pid) = pid else {
                return Err(ConnectError::invalid(
                    "the stream's first message must be start",
                ));
            };
            write_input(s, envd, pid, &InputMsg::bytes(data.input)?).await?;
        } else if msg.keepalive.is_none() {
            return Err(ConnectError::invalid(
                "a message is start, data or keepalive",
            ));
        }
    }
    Ok(())
}

async fn close_stdin(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    body: Body,
) -> Response {
    empty_answer(do_close_stdin(&s, &envd, body).await)
}

async fn do_close_stdin(s: &AppState, envd: &Envd, body: Body) -> Result<(), ConnectError> {
    let req: CloseStdinRequest = unary_request(s, body).await?;
    let pid = running_pid(s, envd, &Selector::of(req.process)?).await?;
    let instances = &s.platform.instances;
    instances
        .process_close_stdin(&envd.caller, &envd.id, pid)
        .await
        .map_err(Into::into)
}

async fn send_signal(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    body: Body,
) -> Response {
    empty_answer(do_send_signal(&s, &envd, body).await)
}

async fn do_send_signal(s: &AppState, envd: &Envd, body: Body) -> Result<(), ConnectError> {
    let req: SendSignalRequest = unary_request(s, body).await?;
    let sel = Selector::of(req.process)?;
    let signal = signal_of(req.signal.as_ref())?;
    let pid = running_pid(s, envd, &sel).await?;
    let instances = &s.platform.instances;
    instances
        .process_signal(&envd.caller, &envd.id, pid, signal)
        .await
        .map_err(Into::into)
}

async fn update(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    body: Body,
) -> Response {
    empty_answer(do_update(&s, &envd, body).await)
}

async fn do_update(s: &AppState, envd: &Envd, body: Body) -> Result<(), ConnectError> {
    let req: UpdateRequest = unary_request(s, body).await?;
    let pid = running_pid(s, envd, &Selector::of(req.process)?).await?;
    let Some(pty) = &req.pty else {
        return Ok(());
    };
    let instances = &s.platform.instances;
    instances
        .process_resize(&envd.caller, &envd.id, pid, pty.size())
        .await
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, signal: Option<i32>) -> ProcessExit {
        ProcessExit {
            exit_code: code,
            signal,
            timed_out: false,
            oom_killed: false,
            duration_ms: 1.0,
        }
    }

    #[test]
    fn start_requests_in_either_spelling() {
        let req: StartRequest = connect::parse_unary(
            br#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false,"tag":"t"}"#,
        )
        .unwrap();
        let ours = req.into_ours().unwrap();
        assert_eq!(
            ours.command,
            CommandSpec::Argv(vec![
                "/bin/bash".into(),
                "-l".into(),
                "-c".into(),
                "echo hi".into()
            ])
        );
        assert_eq!(ours.env_vars.0, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(ours.working_dir.as_deref(), Some("/tmp"));
        assert!(!ours.stdin);
        assert_eq!(ours.tag.as_deref(), Some("t"));
        assert_eq!(ours.pty, None);

        // Nulls are defaults, sizes may be strings, stdin defaults to open, a PTY without a
        // size gets the default one.
        let req: StartRequest = connect::parse_unary(
            br#"{"process":{"cmd":"sh","args":null,"envs":null,"cwd":null},"pty":{"size":{"cols":"100","rows":30}}}"#,
        )
        .unwrap();
        let ours = req.into_ours().unwrap();
        assert!(ours.stdin);
        assert_eq!(ours.working_dir, None);
        assert_eq!(
            ours.pty,
            Some(PtySize {
                cols: 100,
                rows: 30
            })
        );
        let req: StartRequest =
            connect::parse_unary(br#"{"process":{"cmd":"sh"},"pty":{}}"#).unwrap();
        assert_eq!(req.into_ours().unwrap().pty, Some(DEFAULT_PTY));

        // Bad input is invalid_argument.
        for bad in [
            &br#"{}"#[..],
            br#"{"process":{"cmd":""}}"#,
            br#"{"process":{"cmd":"sh","args":"x"}}"#,
            br#"{"process":{"cmd":"sh"},"pty":{"size":{"cols":-1}}}"#,
            br#"[1]"#,
        ] {
            let e = connect::parse_unary::<StartRequest>(bad)
                .and_then(StartRequest::into_ours)
                .unwrap_err();
            assert_eq!(
                e.code,
                "invalid_argument",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn working_dirs_resolve_like_envd() {
        let none = BTreeMap::new();
        let home: BTreeMap<String, String> =
            [("HOME".to_string(), "/home/user".to_string())].into();
        assert_eq!(working_dir(None, &none), None);
        assert_eq!(working_dir(Some(String::new()), &none), None);
        assert_eq!(
            working_dir(Some("/srv".into()), &home).as_deref(),
            Some("/srv")
        );
        assert_eq!(
            working_dir(Some("~".into()), &home).as_deref(),
            Some("/home/user")
        );
        assert_eq!(
            working_dir(Some("~/a".into()), &home).as_deref(),
            Some("/home/user/a")
        );
        assert_eq!(
            working_dir(Some("a/b".into()), &none).as_deref(),
            Some("/root/a/b")
        );
    }

    #[test]
    fn selectors_inputs_and_signals() {
        let sel =
            |j: &[u8]| Selector::of(connect::parse_unary::<ConnectRequest>(j).unwrap().process);
        assert_eq!(
            sel(br#"{"process":{"pid":12}}"#).unwrap(),
            Selector::Pid(12)
        );
        assert_eq!(
            sel(br#"{"process":{"pid":"12"}}"#).unwrap(),
            Selector::Pid(12)
        );
        assert_eq!(
            sel(br#"{"process":{"tag":"t"}}"#).unwrap(),
            Selector::Tag("t".into())
        );
        assert_eq!(
            sel(br#"{"process":{}}"#).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(sel(br#"{}"#).unwrap_err().code, "invalid_argument");
        assert!(connect::parse_unary::<ConnectRequest>(br#"{"process":{"pid":-1}}"#).is_err());
        assert_eq!(Selector::Pid(7).not_found().code, "not_found");

        let input =
            |j: &[u8]| InputMsg::bytes(connect::parse_unary::<SendInputRequest>(j).unwrap().input);
        assert_eq!(input(br#"{"input":{"stdin":"aGk="}}"#).unwrap(), b"hi");
        assert_eq!(input(br#"{"input":{"pty":"aGk"}}"#).unwrap(), b"hi");
        assert_eq!(
            input(br#"{"input":{"stdin":"-_8"}}"#).unwrap(),
            [0xfb, 0xff]
        );
        assert_eq!(
            input(br#"{"input":{"stdin":"$$"}}"#).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            input(br#"{"input":{}}"#).unwrap_err().code,
            "invalid_argument"
        );

        let sig = |v: Value| signal_of(Some(&v));
        assert_eq!(sig(json!("SIGNAL_SIGKILL")).unwrap(), 9);
        assert_eq!(sig(json!("SIGNAL_SIGTERM")).unwrap(), 15);
        assert_eq!(sig(json!(9)).unwrap(), 9);
        assert_eq!(sig(json!("SIGINT")).unwrap(), 2);
        for bad in [
            json!("SIGNAL_UNSPECIFIED"),
            json!(0),
            json!("SIGNAL_NOPE"),
            json!(99),
        ] {
            assert_eq!(
                sig(bad.clone()).unwrap_err().code,
                "invalid_argument",
                "{bad}"
            );
        }
        assert!(signal_of(None).is_err());
    }

    #[test]
    fn events_as_envd_sends_them() {
        assert_eq!(start_event(42), json!({"event": {"start": {"pid": 42}}}));
        assert_eq!(
            data_event("stdout", b"hi\n"),
            json!({"event": {"data": {"stdout": "aGkK"}}})
        );
        assert_eq!(
            end_event(&exit(0, None)),
            json!({"event": {"end": {"exitCode": 0, "exited": true, "status": "exit status 0"}}})
        );
        assert_eq!(
            end_event(&exit(3, None)),
            json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"}}})
        );
        assert_eq!(
            end_event(&exit(137, Some(9))),
            json!({"event": {"end": {"exitCode": -1, "exited": false, "status": "signal: killed", "error": "signal: killed"}}})
        );
        assert_eq!(signal_name(15), "terminated");
        assert_eq!(signal_name(40), "signal 40");
    }

    #[test]
    fn lists_show_running_processes_with_their_config() {
        let p = |pid, running, tag: Option<&str>| ProcessInfo {
            pid,
            tag: tag.map(str::to_string),
            command: vec!["/bin/bash".into(), "-c".into(), "sleep 9".into()],
            env_vars: [("A".to_string(), "1".to_string())].into(),
            working_dir: (pid == 1).then(|| "/tmp".to_string()),
            pty: false,
            running,
            exit_code: None,
            signal: None,
            started_at_ms: 0,
        };
        let v = list_response(&[p(1, true, Some("t")), p(2, false, None), p(3, true, None)]);
        assert_eq!(
            v,
            json!({"processes": [
                {"pid": 1, "tag": "t", "config": {"cmd": "/bin/bash", "args": ["-c", "sleep 9"], "envs": {"A": "1"}, "cwd": "/tmp"}},
                {"pid": 3, "config": {"cmd": "/bin/bash", "args": ["-c", "sleep 9"], "envs": {"A": "1"}}},
            ]})
        );
        assert!(Selector::Tag("t".into()).matches(&p(1, true, Some("t"))));
        assert!(!Selector::Tag("t".into()).matches(&p(3, true, None)));
    }
}
