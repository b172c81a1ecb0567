//! envd's files: the `filesystem.Filesystem` Connect service (stat, list, make, move, remove,
//! a watch as a server stream, and the polled watchers of the Python SDK's sync `watch_dir`)
//! over the instance's agent, and the plain HTTP `GET`/`POST /files` ([`files`]).
//!
//! Paths are the SDK's: absolute, or relative to the user's home (`~` is the home too). The
//! user is `Authorization: Basic base64("<user>:")` on the RPCs and `?username=` on `/files`;
//! everything runs as root in the box, so the user only picks the home: [`home_of`].
//!
//! Entries are envd's `EntryInfo` in ProtoJSON ([`entry_json`]); watch events name what
//! changed relative to the watched directory, as envd does.

mod files;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use faas_common::{Caller, FileEntry, FileType, InstanceStatus};
use faas_executor::services::instances::processes::fs_op_name;
use futures::StreamExt;
use serde_json::{json, Value};

use super::connect::{self, ConnectError};
use super::Envd;
use crate::AppState;

/// Most polled watchers one sandbox may have.
const MAX_WATCHERS_PER_SANDBOX: usize = 64;
/// Most polled watchers of all sandboxes together.
const MAX_WATCHERS: usize = 4096;
/// Most events a polled watcher keeps between two polls; past that it fails (events lost).
const MAX_QUEUED: usize = 10_000;
/// A polled watcher nobody asked about for this long is removed.
const WATCHER_IDLE: Duration = Duration::from_secs(30 * 60);
/// How often a polled watcher checks whether it is idle.
const WATCHER_SWEEP: Duration = Duration::from_secs(30);
/// Deepest listing: deeper `depth`s list this deep (the agent's own cap).
const MAX_DEPTH: u32 = 32;

pub fn routes() -> Router<AppState> {
    let svc = |m: &str| format!("/filesystem.Filesystem/{m}");
    Router::new()
        .route(&svc("Stat"), post(stat))
        .route(&svc("MakeDir"), post(make_dir))
        .route(&svc("Move"), post(move_entry))
        .route(&svc("ListDir"), post(list_dir))
        .route(&svc("Remove"), post(remove))
        .route(&svc("WatchDir"), post(watch_dir))
        .route(&svc("CreateWatcher"), post(create_watcher))
        .route(&svc("GetWatcherEvents"), post(get_watcher_events))
        .route(&svc("RemoveWatcher"), post(remove_watcher))
        .layer(Extension(Arc::new(Watchers::default())))
        .merge(files::routes())
}

// ---- paths and users ----

/// The home of `user` in the box: `/root` for root (or no user given), `/home/<user>` for
/// another. Relative paths are relative to it.
pub fn home_of(user: Option<&str>) -> Result<String, String> {
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        None | Some("root") => Ok("/root".into()),
        Some(u) if u.contains(['/', '\0']) || u == "." || u == ".." => {
            Err(format!("{u:?} is not a user name"))
        }
        Some(u) => Ok(format!("/home/{u}")),
    }
}

/// The user of an RPC: `Authorization: Basic base64("<user>:")`.
pub fn user_of(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split_once(':').map_or(s.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_string())
}

/// `path` as an absolute, clean path in the box: `~` and relative paths are under `user`'s
/// home; `.` and `..` are resolved by name. Empty paths and NUL bytes are refused.
pub fn resolve(path: &str, user: Option<&str>) -> Result<String, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let full = if path.starts_with('/') {
        path.to_string()
    } else if path == "~" || path.starts_with("~/") {
        format!("{}/{}", home_of(user)?, &path[1..])
    } else if path.starts_with('~') {
        return Err(format!(
            "{path:?}: another user's home (~name) is not expanded"
        ));
    } else {
        format!("{}/{path}", home_of(user)?)
    };
    Ok(clean(&full))
}

/// An absolute path without empty, `.` and `..` components (`..` of the root is the root).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The path of `path` relative to the directory `root` (both clean), as envd names a watch
/// event's file (`.` for the directory itself).
fn relative(root: &str, path: &str) -> String {
    if path == root {
        return ".".into();
    }
    let prefix = if root.ends_with('/') {
        root.to_string()
    } else {
        format!("{root}/")
    };
    path.strip_prefix(&prefix).unwrap_or(path).to_string()
}

// ---- messages ----

/// A request message (ProtoJSON): fields by their JSON (lowerCamelCase) or proto name.
struct Msg(Value);

impl Msg {
    fn parse(body: &[u8]) -> Result<Msg, ConnectError> {
        let v: Value = connect::parse_unary(body)?;
        if !v.is_object() {
            return Err(ConnectError::invalid("the request is not a JSON object"));
        }
        Ok(Msg(v))
    }

    fn get(&self, json: &str, proto: &str) -> Option<&Value> {
        self.0
            .get(json)
            .or_else(|| self.0.get(proto))
            .filter(|v| !v.is_null())
    }

    fn string(&self, json: &str, proto: &str) -> Result<String, ConnectError> {
        match self.get(json, proto) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ConnectError::invalid(format!("{json} is not a string"))),
        }
    }

    fn bool(&self, json: &str, proto: &str) -> Result<bool, ConnectError> {
        match self.get(json, proto) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ConnectError::invalid(format!("{json} is not a boolean"))),
        }
    }

    fn u32(&self, json: &str, proto: &str) -> Result<u32, ConnectError> {
        match self.get(json, proto) {
            None => Ok(0),
            Some(v) => connect::int_of(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ConnectError::invalid(format!("{json} is not a uint32"))),
        }
    }

    /// A path field, resolved for `user`.
    fn path(&self, json: &str, user: Option<&str>) -> Result<String, ConnectError> {
        let p = self.string(json, json)?;
        resolve(&p, user).map_err(|e| ConnectError::invalid(format!("{json}: {e}")))
    }
}

/// RFC 3339 (UTC, milliseconds) of a time in milliseconds since the epoch.
fn rfc3339_ms(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = faas_common::time::civil_from_days(days);
    let (h, mi, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// envd's `FileType` of an entry (`None`: a device, fifo or socket, which listings skip).
fn file_type(t: FileType) -> Option<&'static str> {
    match t {
        FileType::File => Some("FILE_TYPE_FILE"),
        FileType::Dir => Some("FILE_TYPE_DIRECTORY"),
        FileType::Symlink => Some("FILE_TYPE_SYMLINK"),
        FileType::Other => None,
    }
}

/// envd's `EntryInfo` of an entry, in ProtoJSON (`size` as a string, as int64 is).
pub fn entry_json(e: &FileEntry) -> Value {
    let mut v = json!({
        "name": e.name,
        "type": file_type(e.file_type).unwrap_or("FILE_TYPE_UNSPECIFIED"),
        "path": e.path,
        "size": e.size.to_string(),
        "mode": e.mode,
        "permissions": e.permissions,
        "owner": e.owner,
        "group": e.group,
        "modifiedTime": rfc3339_ms(e.mtime_ms),
    });
    if let Some(t) = &e.symlink_target {
        v["symlinkTarget"] = json!(t);
    }
    if e.file_type == FileType::Symlink {
        v["isSymlink"] = json!(true);
    }
    v
}

/// envd's `EventType` of one of our watch operations (by its name, [`fs_op_name`]).
fn event_type(op: &str) -> &'static str {
    match op {
        "create" => "EVENT_TYPE_CREATE",
        "write" => "EVENT_TYPE_WRITE",
        "remove" => "EVENT_TYPE_REMOVE",
        "rename" => "EVENT_TYPE_RENAME",
        _ => "EVENT_TYPE_CHMOD",
    }
}

fn fs_event(root: &str, op: &str, path: &str) -> Value {
    json!({"name": relative(root, path), "type": event_type(op)})
}

type RpcResult = Result<Response, ConnectError>;

// ---- unary calls ----

async fn stat(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let path = m.path("path", user_of(&headers).as_deref())?;
    let e = s
        .platform
        .instances
        .fs_stat(&envd.caller, &envd.id, &path)
        .await?;
    Ok(connect::unary(&json!({"entry": entry_json(&e)})))
}

async fn make_dir(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let path = m.path("path", user_of(&headers).as_deref())?;
    let inst = &s.platform.instances;
    match inst.fs_mkdir(&envd.caller, &envd.id, &path).await {
        Ok(e) => Ok(connect::unary(&json!({"entry": entry_json(&e)}))),
        // The agent refuses a path that exists: is it a directory?
        Err(err @ faas_executor::Error::Conflict(_)) => {
            match inst.fs_stat(&envd.caller, &envd.id, &path).await {
                Ok(e) if e.file_type == FileType::Dir => Err(ConnectError::new(
                    "already_exists",
                    format!("directory already exists: {path}"),
                )),
                Ok(_) => Err(ConnectError::invalid(format!(
                    "path already exists but it is not a directory: {path}"
                ))),
                Err(_) => Err(err.into()),
            }
        }
        Err(err) => Err(err.into()),
    }
}

async fn move_entry(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let user = user_of(&headers);
    let from = m.path("source", user.as_deref())?;
    let to = m.path("destination", user.as_deref())?;
    let inst = &s.platform.instances;
    let e = match inst.fs_move(&envd.caller, &envd.id, &from, &to).await {
        Err(faas_executor::Error::NotFound(_)) if to != "/" => {
            // envd makes the destination's parents: make them, then try once more.
            let parent = to.rsplit_once('/').map_or("/", |(p, _)| p);
            if !parent.is_empty() {
                let _ = inst.fs_mkdir(&envd.caller, &envd.id, parent).await;
            }
            inst.fs_move(&envd.caller, &envd.id, &from, &to).await?
        }
        r => r?,
    };
    Ok(connect::unary(&json!({"entry": entry_json(&e)})))
}

async fn list_dir(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let path = m.path("path", user_of(&headers).as_deref())?;
    let depth = m.u32("depth", "depth")?.clamp(1, MAX_DEPTH);
    let inst = &s.platform.instances;
    check_dir(&s, &envd, &path).await?;
    let entries = inst.fs_list(&envd.caller, &envd.id, &path, depth).await?;
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| file_type(e.file_type).is_some())
        .map(entry_json)
        .collect();
    Ok(connect::unary(&json!({ "entries": entries })))
}

/// `path` is a directory (or a link, followed by the agent): `not_found` when missing,
/// `invalid_argument` when it is something else, as envd answers.
async fn check_dir(s: &AppState, envd: &Envd, path: &str) -> Result<(), ConnectError> {
    let e = s
        .platform
        .instances
        .fs_stat(&envd.caller, &envd.id, path)
        .await
        .map_err(|e| match e {
            faas_executor::Error::NotFound(_) => {
                ConnectError::new("not_found", format!("path {path} not found"))
            }
            e => e.into(),
        })?;
    match e.file_type {
        FileType::Dir | FileType::Symlink => Ok(()),
        _ => Err(ConnectError::invalid(format!(
            "path {path} is not a directory"
        ))),
    }
}

async fn remove(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let path = m.path("path", user_of(&headers).as_deref())?;
    match s
        .platform
        .instances
        .fs_remove(&envd.caller, &envd.id, &path)
        .await
    {
        // As envd's `os.RemoveAll`: what is not there is removed.
        Ok(()) | Err(faas_executor::Error::NotFound(_)) => Ok(connect::unary(&json!({}))),
        Err(e) => Err(e.into()),
    }
}

// ---- the watch stream ----

async fn watch_dir(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let keepalive = connect::keepalive_of(&headers);
    let deadline = connect::timeout_of(&headers).map(|t| tokio::time::Instant::now() + t);
    let started = async {
        let m = Msg(connect::parse_stream_request::<Value>(body).await?);
        let root = m.path("path", user_of(&headers).as_deref())?;
        let recursive = m.bool("recursive", "recursive")?;
        check_dir(&s, &envd, &root).await?;
        let w = s
            .platform
            .instances
            .fs_watch(&envd.caller, &envd.id, &root, recursive)
            .await?;
        Ok::<_, ConnectError>((root, w))
    }
    .await;
    let (root, watch) = match started {
        Ok(x) => x,
        Err(e) => {
            let once = futures::stream::once(async move { Err(e) });
            return connect::stream_response(once, None, Value::Null);
        }
    };
    let start = futures::stream::once(async { Ok(json!({"start": {}})) });
    let changes = futures::stream::unfold(Some((watch, root)), move |st| async move {
        let (mut w, root) = st?;
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, w.next()).await {
                Ok(n) => n,
                Err(_) => {
                    let e = ConnectError::new("deadline_exceeded", "the watch's deadline passed");
                    return Some((Err(e), None));
                }
            },
            None => w.next().await,
        };
        match next {
            Ok(Some((op, path))) => {
                let ev = json!({"filesystem": fs_event(&root, fs_op_name(op), &path)});
                Some((Ok(ev), Some((w, root))))
            }
            // The directory went away (or the box did): the stream ends.
            Ok(None) => None,
            Err(e) => Some((Err(ConnectError::from(e)), None)),
        }
    });
    connect::stream_response(start.chain(changes), keepalive, json!({"keepalive": {}}))
}

// ---- polled watchers ----

/// The polled watchers (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`), by id.
#[derive(Default)]
struct Watchers {
    map: Mutex<HashMap<String, Arc<Watcher>>>,
}

struct Watcher {
    sandbox: String,
    tenant: String,
    state: Mutex<Queue>,
    /// Told when the watcher is removed: its watch ends.
    stop: tokio::sync::Notify,
}

struct Queue {
    events: VecDeque<Value>,
    /// Why it stopped watching (answered once its events are taken).
    error: Option<ConnectError>,
    last_poll: Instant,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watcher `id` of the sandbox the request is for.
    fn get(&self, envd: &Envd, id: &str) -> Result<Arc<Watcher>, ConnectError> {
        self.lock()
            .get(id)
            .filter(|w| w.sandbox == envd.id && w.tenant == envd.caller.tenant)
            .cloned()
            .ok_or_else(|| ConnectError::new("not_found", format!("watcher {id} not found")))
    }

    /// Forgets watcher `id` if it is still `w`.
    fn forget(&self, id: &str, w: &Arc<Watcher>) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|now| Arc::ptr_eq(now, w)) {
            map.remove(id);
        }
    }
}

impl Watcher {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn create_watcher(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    Extension(watchers): Extension<Arc<Watchers>>,
    headers: HeaderMap,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let root = m.path("path", user_of(&headers).as_deref())?;
    let recursive = m.bool("recursive", "recursive")?;
    {
        let map = watchers.lock();
        let here = map.values().filter(|w| w.sandbox == envd.id).count();
        if here >= MAX_WATCHERS_PER_SANDBOX || map.len() >= MAX_WATCHERS {
            return Err(ConnectError::new(
                "resource_exhausted",
                format!(
                    "too many watchers (at most {MAX_WATCHERS_PER_SANDBOX} per sandbox): remove some first"
                ),
            ));
        }
    }
    check_dir(&s, &envd, &root).await?;
    let watch = s
        .platform
        .instances
        .fs_watch(&envd.caller, &envd.id, &root, recursive)
        .await?;
    let id = format!("w{}", uuid::Uuid::new_v4().simple());
    let w = Arc::new(Watcher {
        sandbox: envd.id.clone(),
        tenant: envd.caller.tenant.clone(),
        state: Mutex::new(Queue {
            events: VecDeque::new(),
            error: None,
            last_poll: Instant::now(),
        }),
        stop: tokio::sync::Notify::new(),
    });
    watchers.lock().insert(id.clone(), w.clone());
    tokio::spawn(supervise(
        s,
        envd.caller.clone(),
        watchers,
        id.clone(),
        w.clone(),
        tokio::spawn(collect(watch, root, w)),
    ));
    Ok(connect::unary(&json!({ "watcherId": id })))
}

/// Queues a watch's events for its watcher until the watch ends or fails (or the queue is
/// full: then it fails).
async fn collect(mut watch: faas_executor::sandbox::agent::Watch, root: String, w: Arc<Watcher>) {
    loop {
        let next = watch.next().await;
        let mut q = w.queue();
        match next {
            Ok(Some((op, path))) => {
                if q.events.len() >= MAX_QUEUED {
                    q.error = Some(ConnectError::new(
                        "resource_exhausted",
                        format!(
                            "over {MAX_QUEUED} events since the last poll: events were lost; watch again"
                        ),
                    ));
                    return;
                }
                q.events.push_back(fs_event(&root, fs_op_name(op), &path));
            }
            Ok(None) => return,
            Err(e) => {
                q.error = Some(e.into());
                return;
            }
        }
    }
}

/// Keeps watcher `id` until it is removed, idle for [`WATCHER_IDLE`], or its sandbox is gone
/// (its watch then ends); its watch ends with it.
async fn supervise(
    s: AppState,
    caller: Caller,
    watchers: Arc<Watchers>,
    id: String,
    w: Arc<Watcher>,
    reader: tokio::task::JoinHandle<()>,
) {
    // Whether the sandbox still runs (it may be mid-way through going when the watch ends).
    let alive = || async {
        s.platform
            .instances
            .instance_get(&caller, &w.sandbox)
            .await
            .is_ok_and(|i| i.status == InstanceStatus::Running)
    };
    let mut reader = Some(reader);
    loop {
        let ended = async {
            match reader.as_mut() {
                Some(r) => {
                    let _ = r.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ended => {
                reader = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !alive().await {
                    break;
                }
            }
            _ = w.stop.notified() => break,
            _ = tokio::time::sleep(WATCHER_SWEEP) => {
                if w.queue().last_poll.elapsed() >= WATCHER_IDLE
                    || (reader.is_none() && !alive().await)
                {
                    break;
                }
            }
        }
    }
    if let Some(r) = reader {
        r.abort();
    }
    watchers.forget(&id, &w);
    tracing::debug!(watcher = %id, sandbox = %w.sandbox, "polled watcher gone");
}

async fn get_watcher_events(
    Extension(envd): Extension<Envd>,
    Extension(watchers): Extension<Arc<Watchers>>,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let id = m.string("watcherId", "watcher_id")?;
    let w = watchers.get(&envd, &id)?;
    let mut q = w.queue();
    q.last_poll = Instant::now();
    if q.events.is_empty() {
        if let Some(e) = q.error.clone() {
            return Err(e);
        }
    }
    let events: Vec<Value> = q.events.drain(..).collect();
    Ok(connect::unary(&json!({ "events": events })))
}

async fn remove_watcher(
    Extension(envd): Extension<Envd>,
    Extension(watchers): Extension<Arc<Watchers>>,
    body: Bytes,
) -> RpcResult {
    let m = Msg::parse(&body)?;
    let id = m.string("watcherId", "watcher_id")?;
    let w = watchers.get(&envd, &id)?;
    watchers.forget(&id, &w);
    w.stop.notify_one();
    Ok(connect::unary(&json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_as_envd_does() {
        assert_eq!(resolve("/tmp/a", None).unwrap(), "/tmp/a");
        assert_eq!(resolve("/tmp/a/", None).unwrap(), "/tmp/a");
        assert_eq!(resolve("/tmp/./a/../b", None).unwrap(), "/tmp/b");
        assert_eq!(resolve("/..", None).unwrap(), "/");
        assert_eq!(resolve("a.txt", None).unwrap(), "/root/a.txt");
        assert_eq!(resolve("a.txt", Some("root")).unwrap(), "/root/a.txt");
        assert_eq!(resolve("a.txt", Some("user")).unwrap(), "/home/user/a.txt");
        assert_eq!(resolve("~", None).unwrap(), "/root");
        assert_eq!(resolve("~/x/y", Some("user")).unwrap(), "/home/user/x/y");
        assert_eq!(resolve("../../etc", Some("user")).unwrap(), "/etc");
        assert!(resolve("", None).is_err());
        assert!(resolve("/a\0b", None).is_err());
        assert!(resolve("~bob/x", None).is_err());
        assert!(resolve("x", Some("a/b")).is_err());
    }

    #[test]
    fn the_user_comes_from_basic_auth() {
        let mut h = HeaderMap::new();
        assert_eq!(user_of(&h), None);
        // base64("user:")
        h.insert(header::AUTHORIZATION, "Basic dXNlcjo=".parse().unwrap());
        assert_eq!(user_of(&h).as_deref(), Some("user"));
        h.insert(header::AUTHORIZATION, "Bearer dXNlcjo=".parse().unwrap());
        assert_eq!(user_of(&h), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(user_of(&h), None);
    }

    #[test]
    fn events_are_named_relative_to_the_watched_directory() {
        assert_eq!(relative("/tmp/w", "/tmp/w/a.txt"), "a.txt");
        assert_eq!(relative("/tmp/w", "/tmp/w/sub/b"), "sub/b");
        assert_eq!(relative("/tmp/w", "/tmp/w"), ".");
        assert_eq!(relative("/", "/etc"), "etc");
        let ev = fs_event("/tmp/w", "rename", "/tmp/w/x");
        assert_eq!(ev, json!({"name": "x", "type": "EVENT_TYPE_RENAME"}));
    }

    #[test]
    fn entries_are_envds_entry_info() {
        let e = FileEntry {
            name: "a.txt".into(),
            path: "/tmp/a.txt".into(),
            file_type: FileType::File,
            size: 12,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
            mtime_ms: 1_700_000_000_123,
            symlink_target: None,
        };
        let v = entry_json(&e);
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "12");
        assert_eq!(v["mode"], 420);
        assert_eq!(v["modifiedTime"], "2023-11-14T22:13:20.123Z");
        assert!(v.get("symlinkTarget").is_none());
        let link = FileEntry {
            file_type: FileType::Symlink,
            symlink_target: Some("/etc".into()),
            ..e.clone()
        };
        let v = entry_json(&link);
        assert_eq!(v["type"], "FILE_TYPE_SYMLINK");
        assert_eq!(v["symlinkTarget"], "/etc");
        assert_eq!(v["isSymlink"], true);
        let dir = FileEntry {
            file_type: FileType::Dir,
            ..e.clone()
        };
        assert_eq!(entry_json(&dir)["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(file_type(FileType::Other), None);
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn request_fields_take_either_name_and_protojson_forms() {
        let m =
            Msg::parse(br#"{"watcher_id":"w1","depth":"3","recursive":true,"path":null}"#).unwrap();
        assert_eq!(m.string("watcherId", "watcher_id").unwrap(), "w1");
        assert_eq!(m.u32("depth", "depth").unwrap(), 3);
        assert!(m.bool("recursive", "recursive").unwrap());
        assert_eq!(m.string("path", "path").unwrap(), "");
        assert_eq!(m.path("path", None).unwrap_err().code, "invalid_argument");
        assert_eq!(Msg::parse(b"").unwrap().u32("depth", "depth").unwrap(), 0);
        assert!(Msg::parse(b"[1]").is_err());
        assert!(Msg::parse(br#"{"depth":-1}"#)
            .unwrap()
            .u32("depth", "depth")
            .is_err());
    }
}
