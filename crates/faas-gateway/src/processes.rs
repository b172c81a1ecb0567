//! Handlers of `/api/v1/instances/{id}/processes` and the terminal WebSocket
//! (`/api/v1/instances/{id}/terminal`): thin translations onto the instances service's
//! processes.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use faas_common::{
    Caller, CommandSpec, ErrorCode, ProcessData, ProcessStartRequest, ProcessStarted,
    ProcessesResponse, PtySize, SignalRequest,
};
use faas_executor::sandbox::agent::{ProcessEvent, Subscription};
use faas_executor::services::instances::processes::process_exit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{ApiJson, ApiQuery, RawBody};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start, list))
        .routes(routes!(events))
        .routes(routes!(stdin))
        .routes(routes!(stdin_close))
        .routes(routes!(signal))
        .routes(routes!(resize))
        .routes(routes!(terminal))
}

/// A pid in a path: a number, or no such process.
fn pid_of(pid: &str) -> ApiResult<u32> {
    pid.parse()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("no process {pid:?}")))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/processes", tag = "processes", summary = "Start a process in an instance; answers at once with its pid", params(("id" = String, Path, description = "instance id")), request_body = faas_common::ProcessStartRequest, responses((status = 201, body = faas_common::ProcessStarted), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn start(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ProcessStartRequest>,
) -> ApiResult<(StatusCode, Json<ProcessStarted>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.platform
                .instances
                .process_start(&caller, &id, req)
                .await?,
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/processes", tag = "processes", summary = "List an instance's processes (running, then recently ended)", params(("id" = String, Path, description = "instance id")), responses((status = 200, body = faas_common::ProcessesResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProcessesResponse>> {
    Ok(Json(ProcessesResponse {
        processes: s.platform.instances.process_list(&caller, &id).await?,
    }))
}

/// The SSE event of one piece of a process's stream.
fn sse_event(ev: &ProcessEvent) -> SseEvent {
    let b64 = |d: &[u8]| {
        serde_json::to_string(&ProcessData {
            data: base64::engine::general_purpose::STANDARD.encode(d),
        })
        .unwrap_or_default()
    };
    match ev {
        ProcessEvent::Stdout(d) => SseEvent::default().event("stdout").data(b64(d)),
        ProcessEvent::Stderr(d) => SseEvent::default().event("stderr").data(b64(d)),
        ProcessEvent::Pty(d) => SseEvent::default().event("pty").data(b64(d)),
        ProcessEvent::Exited(x) => SseEvent::default()
            .event("exit")
            .data(serde_json::to_string(&process_exit(x)).unwrap_or_default()),
    }
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/processes/{pid}/events", tag = "processes", summary = "Server-Sent Events of a process: the output kept so far, then live `stdout`/`stderr`/`pty` data (base64), then one `exit`", params(("id" = String, Path, description = "instance id"), ("pid" = u32, Path, description = "process id")), responses((status = 200, content_type = "text/event-stream", body = String), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn events(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let sub = s
        .platform
        .instances
        .process_subscribe(&caller, &id, pid_of(&pid)?)
        .await?;
    let events = futures::stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        match sub.next().await {
            Ok(Some(ev)) => Some((Ok::<_, std::convert::Infallible>(sse_event(&ev)), Some(sub))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "process stream ended early");
                let data = serde_json::json!({ "message": e.to_string() }).to_string();
                Some((Ok(SseEvent::default().event("error").data(data)), None))
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/processes/{pid}/stdin", tag = "processes", summary = "Write the body's bytes to a process's stdin (or terminal)", params(("id" = String, Path, description = "instance id"), ("pid" = u32, Path, description = "process id")), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn stdin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, pid)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> ApiResult<StatusCode> {
    s.platform
        .instances
        .process_input(&caller, &id, pid_of(&pid)?, &body)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/processes/{pid}/stdin/close", tag = "processes", summary = "Close a process's stdin", params(("id" = String, Path, description = "instance id"), ("pid" = u32, Path, description = "process id")), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn stdin_close(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, pid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.platform
        .instances
        .process_close_stdin(&caller, &id, pid_of(&pid)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/processes/{pid}/signal", tag = "processes", summary = "Send a signal to a process's group", params(("id" = String, Path, description = "instance id"), ("pid" = u32, Path, description = "process id")), request_body = faas_common::SignalRequest, responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn signal(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> ApiResult<StatusCode> {
    let pid = pid_of(&pid)?;
    let sig = req
        .number()
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    s.platform
        .instances
        .process_signal(&caller, &id, pid, sig)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/processes/{pid}/resize", tag = "processes", summary = "Resize a PTY process's terminal", params(("id" = String, Path, description = "instance id"), ("pid" = u32, Path, description = "process id")), request_body = faas_common::PtySize, responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn resize(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(size): ApiJson<PtySize>,
) -> ApiResult<StatusCode> {
    s.platform
        .instances
        .process_resize(&caller, &id, pid_of(&pid)?, size)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
struct TerminalQuery {
    #[serde(default = "default_cols")]
    cols: u16,
    #[serde(default = "default_rows")]
    rows: u16,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

/// The shell of a terminal: bash when the image has it.
const TERMINAL_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi";

#[utoipa::path(get, path = "/api/v1/instances/{id}/terminal", tag = "processes", summary = "A WebSocket carrying a PTY shell: binary frames both ways; a text frame `{\"resize\": {\"cols\", \"rows\"}}` resizes it; at the shell's end a text frame `{\"exit\": {\"exit_code\", \"signal\"}}`, then close", params(("id" = String, Path, description = "instance id"), ("cols" = Option<u16>, Query, description = "columns (80)"), ("rows" = Option<u16>, Query, description = "rows (24)")), responses((status = 101, description = "switching to the WebSocket protocol"), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn terminal(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TerminalQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => {
            // An unknown instance is a 404 whatever the request; otherwise say what is missing.
            s.platform.instances.instance_get(&caller, &id).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("this route is a WebSocket: {}", rej.body_text()),
            ));
        }
    };
    // The shell starts before the upgrade, so a bad request gets its JSON error.
    let (started, sub) = s
        .platform
        .instances
        .process_start_subscribed(
            &caller,
            &id,
            ProcessStartRequest {
                command: CommandSpec::Shell(TERMINAL_SHELL.into()),
                env_vars: Default::default(),
                working_dir: None,
                stdin: true,
                pty: Some(PtySize {
                    cols: q.cols,
                    rows: q.rows,
                }),
                tag: Some("terminal".into()),
                timeout_ms: None,
            },
        )
        .await?;
    // From here on the shell is hung up on whatever happens (an upgrade that never completes,
    // a dropped handler), unless it ended by itself.
    let shell = Shell {
        s: s.clone(),
        caller: caller.clone(),
        id: id.clone(),
        pid: started.pid,
        ended: false,
    };
    Ok(ws.on_upgrade(move |socket| run_terminal(shell, sub, socket)))
}

/// How often a terminal's client is pinged, and how long it may stay silent (no message, no
/// pong) before it counts as gone.
const TERMINAL_PING: Duration = Duration::from_secs(20);
const TERMINAL_SILENCE: Duration = Duration::from_secs(60);

/// A terminal's shell: hung up on (SIGHUP, then SIGKILL) when dropped, unless it ended.
struct Shell {
    s: AppState,
    caller: Caller,
    id: String,
    pid: u32,
    ended: bool,
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (s, caller, id, pid) = (
            self.s.clone(),
            self.caller.clone(),
            std::mem::take(&mut self.id),
            self.pid,
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _ = s
                .platform
                .instances
                .process_signal(&caller, &id, pid, 1)
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = s
                .platform
                .instances
                .process_signal(&caller, &id, pid, 9)
                .await;
        });
    }
}

/// Carries one terminal until its shell ends or the client goes (closes, or stays silent past
/// [`TERMINAL_SILENCE`] while pinged); a shell whose client went is hung up on.
async fn run_terminal(mut shell: Shell, mut sub: Subscription, ws: WebSocket) {
    use futures::{SinkExt, StreamExt};
    let (mut tx, mut rx) = ws.split();
    let heard = std::sync::Mutex::new(std::time::Instant::now());
    let output = async {
        let mut ping = tokio::time::interval(TERMINAL_PING);
        ping.tick().await;
        loop {
            let ev = tokio::select! {
                ev = sub.next() => ev,
                _ = ping.tick() => {
                    let silent = heard.lock().map(|t| t.elapsed()).unwrap_or_default();
                    if silent > TERMINAL_SILENCE
                        || tx.send(Message::Ping(Default::default())).await.is_err()
                    {
                        return false;
                    }
                    continue;
                }
            };
            match ev {
                Ok(Some(ProcessEvent::Exited(x))) => {
                    let exit = serde_json::json!({
                        "exit": { "exit_code": x.exit_code, "signal": x.signal }
                    });
                    let _ = tx.send(Message::Text(exit.to_string().into())).await;
                    let _ = tx.send(Message::Close(None)).await;
                    return true;
                }
                Ok(Some(
                    ProcessEvent::Pty(d) | ProcessEvent::Stdout(d) | ProcessEvent::Stderr(d),
                )) => {
                    if tx.send(Message::Binary(d.into())).await.is_err() {
                        return false;
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
    };
    let (s, caller, id, pid) = (
        shell.s.clone(),
        shell.caller.clone(),
        shell.id.clone(),
        shell.pid,
    );
    let input = async {
        while let Some(Ok(msg)) = rx.next().await {
            if let Ok(mut t) = heard.lock() {
                *t = std::time::Instant::now();
            }
            let r = match msg {
                Message::Binary(d) => {
                    s.platform
                        .instances
                        .process_input(&caller, &id, pid, &d)
                        .await
                }
                Message::Text(t) => match resize_of(&t) {
                    Some(size) => {
                        s.platform
                            .instances
                            .process_resize(&caller, &id, pid, size)
                            .await
                    }
                    // Text that is not a resize is typed, as terminals attach addons send it.
                    None => {
                        s.platform
                            .instances
                            .process_input(&caller, &id, pid, t.as_bytes())
                            .await
                    }
                },
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!(instance = %id, pid, error = %e, "terminal input");
            }
        }
    };
    shell.ended = tokio::select! {
        ended = output => ended,
        () = input => false,
    };
}

fn resize_of(text: &str) -> Option<PtySize> {
    #[derive(serde::Deserialize)]
    struct Resize {
        resize: PtySize,
    }
    serde_json::from_str::<Resize>(text).ok().map(|r| r.resize)
}
