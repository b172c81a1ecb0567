//! The E2B control plane: sandboxes, their timeouts, pause and resume, snapshots, forks and
//! metrics, and the template table.
//!
//! A sandbox is one of our instances made here: it has an envd access token (made at its
//! creation, kept across pause and resume), its template's name, and a deadline (`timeout`
//! seconds from its creation, moved by `set_timeout` and `connect`) at which the executor
//! deletes it, or with `autoPause` stops it (files kept). Our other instances are not
//! sandboxes here: this surface neither lists nor finds them.
//!
//! Requests are authenticated by `X-API-KEY` (one of our API keys) and see their tenant's
//! sandboxes only. Every error is E2B's `{"code": <status>, "message"}` with that status:
//! [`e2b_errors`] turns any other error answer (our own shape, axum's rejections, an empty
//! body) into it.
//!
//! A template is `base` (the server's function image: it has `/bin/bash`, which the SDKs run
//! commands with), a name of the table (`faas serve --template NAME=IMAGE`, which may also
//! name `base`), or one of the tenant's snapshot ids (a new sandbox from that snapshot).

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use faas_common::{
    Caller, DeadlineAction, EgressDefault, EgressRules, EnvVars, InstanceCreateRequest,
    InstanceDeadline, InstanceInfo, InstanceStatus, NetworkRequest, SnapshotCreateRequest,
    SnapshotInfo,
};
use faas_executor::services::instances::{CreateOptions, RestoreOptions, TRANSIENT_TAG};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{E2bError, ENVD_VERSION};
use crate::{AppState, OptionalJson};

/// What a sandbox's `clientID` says (deprecated in E2B, still required by the SDKs).
pub const CLIENT_ID: &str = "faas";

/// The default template.
pub const BASE_TEMPLATE: &str = "base";

/// A sandbox's timeout when its request names none, seconds.
pub const DEFAULT_TIMEOUT_S: i64 = 300;

/// Items per page of a list when the request names no `limit`, and the most it may name.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/sandboxes/{id}/snapshots", post(snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/snapshots", get(snapshots))
        .route("/templates", get(templates))
        .route("/templates/{id}", delete(delete_snapshot))
        .fallback(|| async { E2bError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            E2bError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn(e2b_errors))
}

// ---- authentication and errors ----

/// The caller of a request's `X-API-KEY`.
struct Tenant(Caller);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        match crate::auth::key_caller(s, &parts.headers).await {
            Ok(Some(c)) => Ok(Tenant(c)),
            Ok(None) => Err(E2bError::new(
                StatusCode::UNAUTHORIZED,
                "this needs an API key: send it in the X-API-KEY header",
            )
            .into_response()),
            // Our error's shape: `e2b_errors` makes it E2B's.
            Err(resp) => Err(resp),
        }
    }
}

/// Makes every error answer E2B's `{"code": <status>, "message"}`, with its status and its
/// headers (`Retry-After`...): our own `{"error": {"code", "message"}}`, axum's plain-text
/// rejections and empty bodies alike.
pub async fn e2b_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let message = error_message(status, &bytes);
    let body = json!({"code": status.as_u16(), "message": message}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The message of an error answer's body, whatever its shape.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v["message"].as_str() {
            return m.to_string();
        }
        if let Some(m) = v["error"]["message"].as_str() {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    }
}

fn not_found(id: &str) -> E2bError {
    E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

fn bad_request(message: impl Into<String>) -> E2bError {
    E2bError::new(StatusCode::BAD_REQUEST, message)
}

/// The caller's sandbox `id`: one of its instances made on this surface.
async fn sandbox(s: &AppState, caller: &Caller, id: &str) -> Result<InstanceInfo, E2bError> {
    match s.platform.instances.instance_get(caller, id).await {
        Ok(i) if i.access_token.is_some() => Ok(i),
        Ok(_) | Err(faas_executor::Error::NotFound(_)) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

// ---- what the SDKs read ----

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ms` since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = faas_common::time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn template_of(i: &InstanceInfo) -> String {
    i.template
        .clone()
        .or_else(|| i.source_snapshot.clone())
        .unwrap_or_else(|| BASE_TEMPLATE.to_string())
}

/// The template's alias: its name, unless it is a snapshot.
fn alias_of(i: &InstanceInfo) -> Option<String> {
    let t = template_of(i);
    (i.source_snapshot.as_deref() != Some(t.as_str())).then_some(t)
}

/// The `Sandbox` object: the answer to create and connect.
fn sandbox_json(s: &AppState, i: &InstanceInfo) -> Value {
    let mut v = json!({
        "templateID": template_of(i),
        "sandboxID": i.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": i.access_token,
        // `--sandbox-domain`: what `get_host(port)` builds `{port}-{id}.{domain}` from (null:
        // the SDK's own E2B_DOMAIN).
        "domain": s.sandbox_domain,
        "trafficAccessToken": null,
    });
    if let Some(a) = alias_of(i) {
        v["alias"] = json!(a);
    }
    v
}

fn state_of(i: &InstanceInfo) -> &'static str {
    match i.status {
        InstanceStatus::Running => "running",
        InstanceStatus::Stopped | InstanceStatus::Lost => "paused",
    }
}

/// `SandboxDetail` (get) and `ListedSandbox` (list): the same fields.
fn detail_json(s: &AppState, i: &InstanceInfo) -> Value {
    let on_timeout = match i.deadline.map(|d| d.then) {
        Some(DeadlineAction::Stop) => "pause",
        _ => "kill",
    };
    let mut v = json!({
        "templateID": template_of(i),
        "sandboxID": i.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(i.created_at_ms),
        "endAt": rfc3339(i.deadline.map_or(i.created_at_ms, |d| d.at_ms)),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": i.access_token,
        "cpuCount": (i.cpu_cores.ceil() as u64).max(1),
        "memoryMB": i.memory_mb,
        // Not limited, so not known: none of our backends gives a box a disk size.
        "diskSizeMB": 0,
        "state": state_of(i),
        "metadata": i.metadata,
        "domain": s.sandbox_domain,
        "allowInternetAccess": !i.network.is_none(),
        "lifecycle": {"autoResume": false, "onTimeout": on_timeout},
    });
    if let Some(a) = alias_of(i) {
        v["alias"] = json!(a);
    }
    v
}

/// A list's answer: the items, and `x-next-token` when a page follows.
fn page(items: Vec<Value>, next: Option<String>) -> Response {
    let mut resp = Json(items).into_response();
    if let Some(v) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    resp
}

/// The page after cursor `token` of `items` (in `(created, id)` order), at most `limit`
/// long, and the cursor of the next page when there is one. A cursor is `created-id` of the
/// last item given, so items deleted meanwhile do not shift the pages.
fn paginate<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> (i64, String),
    token: Option<&str>,
    limit: usize,
) -> Result<(Vec<T>, Option<String>), E2bError> {
    items.sort_by_key(|i| key(i));
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        let (created, id) = t
            .split_once('-')
            .and_then(|(c, id)| Some((c.parse::<i64>().ok()?, id.to_string())))
            .ok_or_else(|| bad_request(format!("nextToken {t:?} is not a token of this list")))?;
        items.retain(|i| key(i) > (created, id.clone()));
    }
    let next = (items.len() > limit).then(|| {
        let (c, id) = key(&items[limit - 1]);
        format!("{c}-{id}")
    });
    items.truncate(limit);
    Ok((items, next))
}

fn limit_of(limit: Option<&str>) -> Result<usize, E2bError> {
    match limit {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(bad_request(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {l:?}"
            ))),
        },
    }
}

// ---- create ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID", default)]
    template_id: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auto_pause: Option<bool>,
    #[serde(rename = "allow_internet_access", default)]
    allow_internet_access: Option<bool>,
    #[serde(default)]
    network: Option<NetworkConfig>,
}

/// E2B's egress settings (the others it has are not ours: ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    #[serde(default)]
    allow_out: Option<Vec<String>>,
    #[serde(default)]
    deny_out: Option<Vec<String>>,
    /// Its ports answer without a token (E2B's default: true).
    #[serde(default)]
    allow_public_traffic: Option<bool>,
}

/// What a sandbox may reach: nothing unless `allow_internet_access` is true or `network`
/// has rules. `denyOut` naming `0.0.0.0/0` (or internet access false) denies all but
/// `allowOut`; otherwise everything but `denyOut` is allowed. `allowOut` wins over
/// `denyOut`, as in E2B.
fn network_of(internet: Option<bool>, net: Option<&NetworkConfig>) -> Option<NetworkRequest> {
    let allow = net.and_then(|n| n.allow_out.clone()).unwrap_or_default();
    let deny = net.and_then(|n| n.deny_out.clone()).unwrap_or_default();
    if allow.is_empty() && deny.is_empty() {
        return (internet == Some(true)).then(NetworkRequest::internet);
    }
    let all = |e: &String| e == "0.0.0.0/0";
    let deny_all = deny.iter().any(all) || internet == Some(false);
    let deny: Vec<String> = deny
        .into_iter()
        .filter(|e| !all(e) && !allow.contains(e))
        .collect();
    Some(NetworkRequest::Rules(if deny_all {
        EgressRules {
            egress: EgressDefault::Deny,
            allow,
            deny,
        }
    } else {
        EgressRules {
            egress: EgressDefault::Allow,
            allow: Vec::new(),
            deny,
        }
    }))
}

fn timeout_s(t: Option<i64>) -> Result<i64, E2bError> {
    match t {
        None => Ok(DEFAULT_TIMEOUT_S),
        Some(t) if t >= 0 => Ok(t),
        Some(t) => Err(bad_request(format!(
            "timeout must be seconds, 0 or more, got {t}"
        ))),
    }
}

fn deadline_in(seconds: i64, then: DeadlineAction) -> InstanceDeadline {
    InstanceDeadline {
        at_ms: now_ms().saturating_add(seconds.saturating_mul(1000)),
        then,
    }
}

fn env_of(vars: Option<BTreeMap<String, String>>) -> Result<Vec<(String, String)>, E2bError> {
    let vars: Vec<(String, String)> = vars.unwrap_or_default().into_iter().collect();
    if let Some((k, _)) = vars
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(bad_request(format!("envVars: invalid name {k:?}")));
    }
    Ok(vars)
}

/// The image of template `name`, when it is not a snapshot's id.
pub fn template_image(s: &AppState, name: &str) -> Option<String> {
    s.templates
        .get(name)
        .cloned()
        .or_else(|| (name == BASE_TEMPLATE).then(|| s.platform.config().function_image.clone()))
}

async fn create(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    OptionalJson(body): OptionalJson<NewSandbox>,
) -> Result<(StatusCode, Json<Value>), E2bError> {
    let req = body.unwrap_or_default();
    let template = req
        .template_id
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| BASE_TEMPLATE.to_string());
    let then = if req.auto_pause == Some(true) {
        DeadlineAction::Stop
    } else {
        DeadlineAction::Delete
    };
    let timeout = timeout_s(req.timeout)?;
    let env = env_of(req.env_vars)?;
    let metadata = req.metadata.unwrap_or_default();
    let opts = CreateOptions {
        access_token: true,
        timeout: Some((std::time::Duration::from_secs(timeout as u64), then)),
        template: Some(template.clone()),
        open_ports: req
            .network
            .as_ref()
            .and_then(|n| n.allow_public_traffic)
            .unwrap_or(true),
    };
    let instances = &s.platform.instances;
    let info = match template_image(&s, &template) {
        Some(image) => {
            let create = InstanceCreateRequest {
                image: Some(image),
                env_vars: EnvVars(env),
                network: network_of(req.allow_internet_access, req.network.as_ref()),
                metadata,
                ..Default::default()
            };
            instances
                .instance_create_with(&caller, create, opts)
                .await?
        }
        None => {
            let restore = RestoreOptions {
                create: opts,
                metadata,
                env,
            };
            match instances
                .snapshot_restore_with(&caller, &template, restore)
                .await
            {
                Err(faas_executor::Error::NotFound(_)) => {
                    return Err(E2bError::new(
                        StatusCode::NOT_FOUND,
                        format!("template {template} not found: not a template of this server, nor a snapshot of yours"),
                    ))
                }
                r => r?,
            }
        }
    };
    Ok((StatusCode::CREATED, Json(sandbox_json(&s, &info))))
}

// ---- list, get, kill ----

/// The `metadata` filter of a list: `k=v&k2=v2`, each key and value percent-encoded again
/// by the SDKs (so decoded twice: as a form, then each part).
pub fn parse_metadata_query(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (percent_decode(&k), percent_decode(&v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list's query: `metadata`, `state` (comma-separated, or repeated), `limit`, `nextToken`.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub metadata: Vec<(String, String)>,
    /// Empty: both.
    pub states: Vec<String>,
    pub limit: Option<String>,
    pub next_token: Option<String>,
}

pub fn parse_list_query(q: &str) -> ListQuery {
    let mut out = ListQuery::default();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match &*k {
            "metadata" => out.metadata.extend(parse_metadata_query(&v)),
            "state" => out.states.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "limit" => out.limit = Some(v.into_owned()),
            "nextToken" => out.next_token = Some(v.into_owned()),
            _ => {}
        }
    }
    out
}

async fn list(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Response, E2bError> {
    let q = parse_list_query(q.as_deref().unwrap_or(""));
    if let Some(bad) = q.states.iter().find(|s| *s != "running" && *s != "paused") {
        return Err(bad_request(format!(
            "state must be running or paused, got {bad:?}"
        )));
    }
    let limit = limit_of(q.limit.as_deref())?;
    let all: Vec<InstanceInfo> = s
        .platform
        .instances
        .instance_list(&caller, &q.metadata)
        .await?
        .into_iter()
        .filter(|i| i.access_token.is_some())
        .filter(|i| q.states.is_empty() || q.states.iter().any(|s| s == state_of(i)))
        .collect();
    let (items, next) = paginate(
        all,
        |i| (i.created_at_ms, i.id.clone()),
        q.next_token.as_deref(),
        limit,
    )?;
    Ok(page(
        items.iter().map(|i| detail_json(&s, i)).collect(),
        next,
    ))
}

async fn detail(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, E2bError> {
    Ok(Json(detail_json(&s, &sandbox(&s, &caller, &id).await?)))
}

async fn kill(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    sandbox(&s, &caller, &id).await?;
    match s.platform.instances.instance_delete(&caller, &id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(faas_executor::Error::NotFound(_)) => Err(not_found(&id)),
        Err(e) => Err(e.into()),
    }
}

// ---- timeouts, pause, connect ----

#[derive(Debug, Default, Deserialize)]
struct TimeoutBody {
    #[serde(default)]
    timeout: Option<i64>,
}

async fn set_timeout(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<TimeoutBody>,
) -> Result<StatusCode, E2bError> {
    let seconds = body
        .and_then(|b| b.timeout)
        .ok_or_else(|| bad_request("timeout (seconds) is required"))?;
    let seconds = timeout_s(Some(seconds))?;
    let i = sandbox(&s, &caller, &id).await?;
    let then = i.deadline.map_or(DeadlineAction::Delete, |d| d.then);
    s.platform
        .instances
        .set_deadline(&caller, &id, Some(deadline_in(seconds, then)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    // `memory: true` asks for the processes' memory too: a pause here keeps the files only
    // (the processes start again at resume).
    let i = sandbox(&s, &caller, &id).await?;
    if i.status != InstanceStatus::Running {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    s.platform.instances.instance_stop(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect (and the older resume): a running sandbox answers 200, its timeout moved to
/// `timeout` from now if that is later; a paused one is started, with that timeout (the
/// default when absent), and answers 201. Its id and access token stay.
async fn connect(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<TimeoutBody>,
) -> Result<(StatusCode, Json<Value>), E2bError> {
    let timeout = body.and_then(|b| b.timeout);
    let i = sandbox(&s, &caller, &id).await?;
    let then = i.deadline.map_or(DeadlineAction::Delete, |d| d.then);
    let instances = &s.platform.instances;
    if i.status == InstanceStatus::Running {
        let mut i = i;
        if let Some(t) = timeout {
            let want = deadline_in(timeout_s(Some(t))?, then);
            if i.deadline.is_none_or(|d| d.at_ms < want.at_ms) {
                i = instances.set_deadline(&caller, &id, Some(want)).await?;
            }
        }
        return Ok((StatusCode::OK, Json(sandbox_json(&s, &i))));
    }
    // The deadline first: a start never sees the one that paused it.
    let want = deadline_in(timeout_s(timeout)?, then);
    instances.set_deadline(&caller, &id, Some(want)).await?;
    let i = instances.instance_start(&caller, &id).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&s, &i))))
}

// ---- snapshots and forks ----

#[derive(Debug, Default, Deserialize)]
struct SnapshotBody {
    #[serde(default)]
    name: Option<String>,
}

fn snapshot_json(i: &SnapshotInfo) -> Value {
    json!({"snapshotID": i.id, "names": i.name.iter().collect::<Vec<_>>()})
}

/// A filesystem snapshot of the sandbox (`memory: true` is not kept: restores start its
/// processes afresh). Its id is a template.
async fn snapshot(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<SnapshotBody>,
) -> Result<(StatusCode, Json<Value>), E2bError> {
    sandbox(&s, &caller, &id).await?;
    let name = body.and_then(|b| b.name).filter(|n| !n.is_empty());
    let snap = s
        .platform
        .instances
        .snapshot_create(
            &caller,
            SnapshotCreateRequest {
                instance_id: Some(id),
                name,
                tags: vec!["e2b".into()],
                memory: false,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&snap))))
}

async fn snapshots(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Response, E2bError> {
    let (mut sandbox_id, mut name, mut limit, mut token) = (None, None, None, None);
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        let v = Some(v.into_owned()).filter(|v| !v.is_empty());
        match &*k {
            "sandboxID" => sandbox_id = v,
            "name" => name = v,
            "limit" => limit = v,
            "nextToken" => token = v,
            _ => {}
        }
    }
    let limit = limit_of(limit.as_deref())?;
    let all: Vec<SnapshotInfo> = s
        .platform
        .instances
        .snapshot_list(&caller)
        .await?
        .into_iter()
        .filter(|i| !i.tags.iter().any(|t| t == TRANSIENT_TAG))
        .filter(|i| sandbox_id.is_none() || i.instance_id == sandbox_id)
        .filter(|i| name.is_none() || i.name == name || name.as_ref() == Some(&i.id))
        .collect();
    let (items, next) = paginate(
        all,
        |i| (i.created_at_ms, i.id.clone()),
        token.as_deref(),
        limit,
    )?;
    Ok(page(items.iter().map(snapshot_json).collect(), next))
}

async fn delete_snapshot(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    match s.platform.instances.snapshot_delete(&caller, &id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(faas_executor::Error::NotFound(_)) => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("snapshot {id} not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ForkBody {
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    timeout: Option<i64>,
}

/// `count` new sandboxes with the sandbox's files (a snapshot of it, then its restores),
/// each with its own access token and `timeout` (the default when absent). The snapshot is
/// theirs alone: not listed, and deleted with the last of them.
async fn fork(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ForkBody>,
) -> Result<(StatusCode, Json<Value>), E2bError> {
    let body = body.unwrap_or_default();
    let seconds = timeout_s(body.timeout)?;
    let i = sandbox(&s, &caller, &id).await?;
    let then = i.deadline.map_or(DeadlineAction::Delete, |d| d.then);
    let instances = &s.platform.instances;
    let forked = instances
        .instance_fork_with(&caller, &id, body.count.unwrap_or(1), true)
        .await?;
    let mut out = Vec::new();
    for f in forked.instances {
        let set = instances
            .set_deadline(&caller, &f.id, Some(deadline_in(seconds, then)))
            .await;
        out.push(match set {
            Ok(f) => json!({"sandbox": sandbox_json(&s, &f)}),
            Err(e) => {
                let e = E2bError::from(e);
                json!({"error": {"code": e.status.as_u16(), "message": e.message}})
            }
        });
    }
    Ok((StatusCode::CREATED, Json(Value::Array(out))))
}

// ---- metrics ----

/// One sample, now, of a running sandbox (a paused one has none), from its cgroup: CPU use
/// averaged since its box started (CPU time over wall time and cores); memory now without
/// its page cache (`memUsed`, as E2B counts it: the peak where the backend has no figure of
/// the moment) and the page cache (`memCache`); its memory limit is `memTotal`. A box has no
/// disk of its own size: `diskUsed` and `diskTotal` are 0.
async fn metrics(
    State(s): State<AppState>,
    Tenant(caller): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, E2bError> {
    let i = sandbox(&s, &caller, &id).await?;
    if i.status != InstanceStatus::Running {
        return Ok(Json(json!([])));
    }
    let (used, started_ms) = match s.platform.instances.instance_usage(&caller, &id).await {
        Ok(u) => u,
        Err(faas_executor::Error::Unsupported(_)) => Default::default(),
        Err(e) => return Err(e.into()),
    };
    let now = now_ms();
    let cpus = (i.cpu_cores.ceil() as u64).max(1);
    let wall_ns = ((now - started_ms).max(1) as f64) * 1e6;
    let pct = if started_ms > 0 {
        (used.cpu_ns as f64 / (wall_ns * i.cpu_cores.max(0.01)) * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    Ok(Json(json!([{
        "timestamp": rfc3339(now),
        "timestampUnix": now / 1000,
        "cpuCount": cpus,
        "cpuUsedPct": (pct * 100.0).round() / 100.0,
        "memUsed": if used.memory_bytes > 0 {
            used.memory_bytes.saturating_sub(used.memory_cache_bytes)
        } else {
            used.memory_peak_bytes
        },
        "memTotal": i.memory_mb * 1024 * 1024,
        "memCache": used.memory_cache_bytes,
        "diskUsed": 0,
        "diskTotal": 0,
    }])))
}

// ---- templates ----

/// The server's templates: `base` and the table's, each with its image.
pub fn template_table(s: &AppState) -> BTreeMap<String, String> {
    let mut t = (*s.templates).clone();
    t.entry(BASE_TEMPLATE.to_string())
        .or_insert_with(|| s.platform.config().function_image.clone());
    t
}

async fn templates(State(s): State<AppState>, Tenant(_): Tenant) -> Json<Value> {
    Json(Value::Array(
        template_table(&s)
            .into_iter()
            .map(|(name, image)| {
                json!({
                    "templateID": name,
                    "aliases": [name],
                    "names": [name],
                    "image": image,
                    "public": false,
                    "buildStatus": "ready",
                    "envdVersion": ENVD_VERSION,
                })
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_decoded_twice() {
        // Python: urlencode({quote(k): quote(v)}); JS: URLSearchParams of encodeURIComponent.
        assert_eq!(
            parse_metadata_query("a%2520b=c%2526d&x=1"),
            vec![("a b".into(), "c&d".into()), ("x".into(), "1".into())]
        );
        assert_eq!(parse_metadata_query(""), vec![]);
        // As the query arrives: the parameter's value encoded once more.
        let q = parse_list_query("metadata=a%252520b%3Dc%252526d%26x%3D1&state=running,paused&state=running&limit=5&nextToken=1-x");
        assert_eq!(
            q.metadata,
            vec![("a b".into(), "c&d".into()), ("x".into(), "1".into())]
        );
        assert_eq!(q.states, vec!["running", "paused", "running"]);
        assert_eq!(q.limit.as_deref(), Some("5"));
        assert_eq!(q.next_token.as_deref(), Some("1-x"));
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn pages_follow_their_cursor() {
        let items: Vec<(i64, String)> = (0..5).map(|n| (n / 2, format!("id{n}"))).collect();
        let key = |i: &(i64, String)| i.clone();
        let (p1, t1) = paginate(items.clone(), key, None, 2).unwrap();
        assert_eq!(p1.len(), 2);
        let (p2, t2) = paginate(items.clone(), key, t1.as_deref(), 2).unwrap();
        assert_eq!(p2, vec![(1, "id2".into()), (1, "id3".into())]);
        let (p3, t3) = paginate(items.clone(), key, t2.as_deref(), 2).unwrap();
        assert_eq!(p3, vec![(2, "id4".into())]);
        assert_eq!(t3, None);
        assert!(paginate(items, key, Some("nope"), 2).is_err());
        assert!(limit_of(Some("0")).is_err());
        assert_eq!(limit_of(None).unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn network_settings_become_rules() {
        assert_eq!(network_of(None, None), None);
        assert_eq!(network_of(Some(false), None), None);
        assert_eq!(
            network_of(Some(true), None),
            Some(NetworkRequest::internet())
        );
        let only = NetworkConfig {
            allow_out: Some(vec!["1.1.1.1".into()]),
            deny_out: Some(vec!["0.0.0.0/0".into()]),
            allow_public_traffic: None,
        };
        assert_eq!(
            network_of(None, Some(&only)),
            Some(NetworkRequest::Rules(EgressRules {
                egress: EgressDefault::Deny,
                allow: vec!["1.1.1.1".into()],
                deny: vec![],
            }))
        );
        let but = NetworkConfig {
            allow_out: None,
            deny_out: Some(vec!["8.8.8.8".into()]),
            allow_public_traffic: Some(false),
        };
        assert_eq!(
            network_of(Some(true), Some(&but)),
            Some(NetworkRequest::Rules(EgressRules {
                egress: EgressDefault::Allow,
                allow: vec![],
                deny: vec!["8.8.8.8".into()],
            }))
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn the_create_body_is_e2bs() {
        let b: NewSandbox = serde_json::from_value(json!({
            "templateID": "base", "timeout": 10, "metadata": {"a": "1"}, "envVars": {"K": "v"},
            "autoPause": true, "allow_internet_access": false, "secure": true, "mcp": null,
            "network": {"allowOut": ["x.com"], "denyOut": ["0.0.0.0/0"], "allowPublicTraffic": true}
        }))
        .unwrap();
        assert_eq!(b.template_id.as_deref(), Some("base"));
        assert_eq!(b.timeout, Some(10));
        assert_eq!(b.auto_pause, Some(true));
        assert_eq!(b.allow_internet_access, Some(false));
        assert_eq!(b.env_vars.unwrap()["K"], "v");
        assert!(env_of(Some(BTreeMap::from([("A=B".into(), "x".into())]))).is_err());
        assert!(timeout_s(Some(-1)).is_err());
        assert_eq!(timeout_s(None).unwrap(), DEFAULT_TIMEOUT_S);
    }

    fn state(auth: crate::auth::AuthMode) -> AppState {
        let platform = faas_executor::Platform::new(
            faas_executor::PlatformConfig::default(),
            Vec::new(),
            None,
            None,
        );
        let mut s = AppState::new(platform);
        s.auth = auth;
        s
    }

    #[test]
    fn templates_are_the_table_and_base() {
        let mut s = state(crate::auth::AuthMode::None);
        let function_image = s.platform.config().function_image.clone();
        assert_eq!(template_image(&s, "base"), Some(function_image.clone()));
        assert_eq!(template_image(&s, "0123456789abcdef"), None);
        s.templates = std::sync::Arc::new(BTreeMap::from([
            ("py".to_string(), "img/py:1".to_string()),
            ("base".to_string(), "img/base:2".to_string()),
        ]));
        assert_eq!(template_image(&s, "py").as_deref(), Some("img/py:1"));
        assert_eq!(template_image(&s, "base").as_deref(), Some("img/base:2"));
        assert_eq!(template_table(&s).len(), 2);
    }

    async fn call(s: AppState, req: axum::http::Request<axum::body::Body>) -> (u16, Value) {
        use tower::ServiceExt;
        let resp = routes().with_state(s).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn every_error_is_e2bs_shape() {
        use axum::body::Body;
        use axum::http::Request as R;
        let keyed = || state(crate::auth::AuthMode::Key);
        let open = || state(crate::auth::AuthMode::None);
        let cases = [
            // No key.
            (
                keyed(),
                R::get("/v2/sandboxes").body(Body::empty()).unwrap(),
                401,
            ),
            // Malformed JSON.
            (
                open(),
                R::post("/v2/sandboxes").body(Body::from("{nope")).unwrap(),
                400,
            ),
            // A route that is not E2B's, a method that is not the route's.
            (
                open(),
                R::get("/sandboxes/x/nothing").body(Body::empty()).unwrap(),
                404,
            ),
            (
                open(),
                R::put("/snapshots").body(Body::empty()).unwrap(),
                405,
            ),
            // A bad page size.
            (
                open(),
                R::get("/v2/sandboxes?limit=0").body(Body::empty()).unwrap(),
                400,
            ),
            // No store: our own error, in E2B's shape.
            (
                open(),
                R::get("/sandboxes/x").body(Body::empty()).unwrap(),
                501,
            ),
        ];
        for (s, req, want) in cases {
            let what = format!("{} {}", req.method(), req.uri());
            let (status, body) = call(s, req).await;
            assert_eq!(status, want, "{what}: {body}");
            assert_eq!(body["code"], want, "{what}: {body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
            assert_eq!(body.as_object().unwrap().len(), 2, "{what}: {body}");
        }
    }

    #[test]
    fn error_bodies_of_any_shape_give_a_message() {
        let s = StatusCode::NOT_FOUND;
        assert_eq!(
            error_message(s, br#"{"error":{"code":"not_found","message":"no x"}}"#),
            "no x"
        );
        assert_eq!(error_message(s, br#"{"code":404,"message":"m"}"#), "m");
        assert_eq!(error_message(s, b"plain words"), "plain words");
        assert_eq!(error_message(s, b""), "Not Found");
    }
}
