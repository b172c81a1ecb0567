//! The HTTP API: `router(state) -> Router` and `serve(listener, state, shutdown)`.
//!
//! - [`error`]: [`ApiError`], the one place where executor errors become codes and statuses.
//! - [`extract`]: [`ApiJson`], a JSON body extractor whose rejections are JSON errors too.
//! - [`auth`]: the API key of every request becomes its [`faas_common::Caller`]; request rates.
//! - [`observe`]: latency histograms and per-tenant counters for Prometheus.
//! - handlers below: health, execute, prewarm, pools, metrics; [`admin`]: keys, tenants,
//!   usage, audit.

mod admin;
pub mod auth;
pub mod e2b;
pub mod error;
pub mod extract;
mod files;
mod functions;
mod listener;
pub mod observe;
pub mod ports;
mod processes;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Extension;
use axum::{Json, Router};
use faas_common::Caller;
use faas_common::{
    BranchRequest, BranchResponse, ErrorCode, ExecuteRequest, ExecuteResponse, HealthResponse,
    ImagesResponse, InstanceCreateRequest, InstanceExecRequest, InstanceInfo, InstancesResponse,
    MetricsResponse, PoolInfo, PoolsResponse, PrewarmRequest, SnapshotCreateRequest, SnapshotInfo,
    SnapshotsResponse,
};
use faas_executor::Platform;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use extract::{ApiJson, OptionalJson};

/// Default limit on request bodies.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub started: Instant,
    pub body_limit: usize,
    pub auth: auth::AuthMode,
    /// `/metrics` without a key.
    pub metrics_public: bool,
    pub observe: Arc<observe::Observe>,
    /// `--sandbox-domain D`: `{port}-{id}.D` is the port proxy.
    pub sandbox_domain: Option<String>,
    /// Served over TLS (what the port proxy tells the box's servers in `X-Forwarded-Proto`).
    pub tls: bool,
    /// The E2B surface's templates (`--template NAME=IMAGE`): name → image. `base`, unless
    /// named here, is the function image.
    pub templates: Arc<std::collections::BTreeMap<String, String>>,
}

impl AppState {
    /// Keys required, `/metrics` behind them.
    pub fn new(platform: Arc<Platform>) -> Self {
        AppState {
            platform,
            started: Instant::now(),
            body_limit: DEFAULT_BODY_LIMIT,
            auth: auth::AuthMode::Key,
            metrics_public: false,
            observe: Default::default(),
            sandbox_domain: None,
            tls: false,
            templates: Default::default(),
        }
    }
}

/// The OpenAPI document's frame; the paths come from the handlers' `#[utoipa::path]`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "faas",
        description = "Serverless execution platform: run code in isolated sandboxes. Errors are `{\"error\": {\"code\", \"message\"}}` with a fitting status."
    ),
    components(schemas(faas_common::ErrorBody, faas_common::ErrorCode)),
    tags(
        (name = "execute", description = "One-shot executions in five modes, warm pools, output streams"),
        (name = "instances", description = "Long-lived sandboxes"),
        (name = "processes", description = "Processes and terminals inside an instance"),
        (name = "files", description = "Files inside an instance, as it sees them"),
        (name = "snapshots", description = "Snapshots, restores and branches"),
        (name = "functions", description = "Deployed functions and their invocations"),
        (name = "invocations", description = "Sync and async invocations"),
        (name = "tenants", description = "API keys, tenants and their quotas, usage, the audit trail"),
        (name = "system", description = "Health, images, metrics"),
    )
)]
struct ApiDoc;

/// Every route, each registered with its OpenAPI operation (so the two cannot drift apart).
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(execute))
        .routes(routes!(execute_advanced))
        .routes(routes!(prewarm))
        .routes(routes!(pools))
        .routes(routes!(images))
        .routes(routes!(instance_create, instance_list))
        .routes(routes!(instance_get, instance_delete))
        .routes(routes!(instance_exec))
        .routes(routes!(logs_stream))
        .routes(routes!(instance_stop))
        .routes(routes!(instance_start))
        .routes(routes!(instance_file_get, instance_file_put))
        .routes(routes!(instance_snapshot))
        .routes(routes!(instance_fork))
        .routes(routes!(snapshot_create, snapshot_list))
        .routes(routes!(snapshot_get, snapshot_delete))
        .routes(routes!(snapshot_restore))
        .routes(routes!(snapshot_branch))
        .merge(functions::routes())
        .merge(processes::routes())
        .merge(ports::routes())
        .merge(files::routes())
        .merge(admin::routes())
        .routes(routes!(metrics_json))
        .routes(routes!(metrics_prometheus))
        .routes(routes!(openapi_json))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", summary = "This OpenAPI 3 document", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> Json<Arc<utoipa::openapi::OpenApi>> {
    static DOC: std::sync::OnceLock<Arc<utoipa::openapi::OpenApi>> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(|| Arc::new(openapi())).clone())
}

/// The OpenAPI 3 document of the API (also served at `GET /api/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    routes()
        .split_for_parts()
        .0
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ports::sandbox_host,
        ))
        .layer(axum::middleware::from_fn_with_state(
            e2b::E2b::new(state.clone()),
            e2b::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::measure,
        ))
        .layer(
            // One span per request with its id and (once authenticated) tenant. Errors are
            // logged where they are made (ApiError); a 4xx/5xx is not a fault here.
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id,
                        tenant = tracing::field::Empty,
                    )
                })
                .on_failure(()),
        )
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener::ApiListener(listener), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

type ApiResult<T> = Result<T, ApiError>;

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", summary = "Create an instance", request_body(content = Option<faas_common::InstanceCreateRequest>, description = "optional"), responses((status = 201, body = faas_common::InstanceInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    OptionalJson(body): OptionalJson<InstanceCreateRequest>,
) -> ApiResult<(StatusCode, Json<InstanceInfo>)> {
    let req = body.unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(s.platform.instances.instance_create(&caller, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", summary = "List instances", params(("metadata.KEY" = Option<String>, Query, description = "only instances whose metadata has KEY = this value (any number of them)")), responses((status = 200, body = faas_common::InstancesResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ApiResult<Json<InstancesResponse>> {
    // `?metadata.KEY=VALUE`, any number of them: instances whose metadata has them all.
    let filter: Vec<(String, String)> =
        form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.into_owned())))
            .collect();
    Ok(Json(InstancesResponse {
        instances: s.platform.instances.instance_list(&caller, &filter).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", summary = "Get an instance", params(("id" = String, Path, description = "instance id")), responses((status = 200, body = faas_common::InstanceInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(s.platform.instances.instance_get(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances", summary = "Delete an instance and its files", params(("id" = String, Path, description = "instance id")), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.platform.instances.instance_delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    #[serde(default)]
    stream: bool,
}

/// `?stream=true`: Server-Sent Events of the output as it comes (`stdout`, `stderr`, then
/// `exit`), the execution id in the `x-request-id` header.
#[utoipa::path(post, path = "/api/v1/instances/{id}/exec", tag = "instances", summary = "Run a command in an instance; `?stream=true` answers with Server-Sent Events", params(("id" = String, Path, description = "instance id"), ("stream" = Option<bool>, Query, description = "stream stdout/stderr/exit events")), request_body = faas_common::InstanceExecRequest, responses((status = 200, body = faas_common::ExecuteResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_exec(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ApiJson(req): ApiJson<InstanceExecRequest>,
) -> ApiResult<axum::response::Response> {
    if q.stream {
        let (rid, rx) = s
            .platform
            .instances
            .instance_exec_stream(&caller, &id, req)
            .await?;
        let mut resp = sse(rx).into_response();
        if let Ok(v) = header::HeaderValue::from_str(&rid) {
            resp.headers_mut().insert("x-request-id", v);
        }
        return Ok(resp);
    }
    let resp = s
        .platform
        .instances
        .instance_exec(&caller, &id, req)
        .await?;
    s.observe.cpu(&caller.tenant, resp.cpu_ms);
    Ok(Json(resp).into_response())
}

#[utoipa::path(get, path = "/api/v1/logs/{id}/stream", tag = "execute", summary = "Server-Sent Events of an execution's output (`stdout`, `stderr`, then `exit`)", params(("id" = String, Path, description = "execution (request) id")), responses((status = 200, content_type = "text/event-stream", body = String), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn logs_stream(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(sse(s.platform.streams.stream_logs(&caller, &id).await?))
}

fn sse(
    rx: tokio::sync::mpsc::UnboundedReceiver<faas_executor::services::streams::OutputEvent>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let data = serde_json::to_string(&ev).unwrap_or_default();
        Some((Ok(SseEvent::default().event(ev.name()).data(data)), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/stop", tag = "instances", summary = "Stop an instance (its files are kept)", params(("id" = String, Path, description = "instance id")), responses((status = 200, body = faas_common::InstanceInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_stop(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(
        s.platform.instances.instance_stop(&caller, &id).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/start", tag = "instances", summary = "Start a stopped instance", params(("id" = String, Path, description = "instance id")), responses((status = 200, body = faas_common::InstanceInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_start(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(
        s.platform.instances.instance_start(&caller, &id).await?,
    ))
}

#[derive(serde::Deserialize)]
struct FileQuery {
    path: Option<String>,
}

fn file_path(q: FileQuery) -> ApiResult<String> {
    q.path.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the query parameter path is required",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/files", tag = "instances", summary = "Download a file of an instance", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path in the instance")), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_file_get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<impl IntoResponse> {
    let path = file_path(q)?;
    let data = s
        .platform
        .instances
        .instance_read_file(&caller, &id, &path)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data))
}

#[utoipa::path(put, path = "/api/v1/instances/{id}/files", tag = "instances", summary = "Upload a file into an instance", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path in the instance")), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_file_put(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let path = file_path(q)?;
    s.platform
        .instances
        .instance_write_file(&caller, &id, &path, body.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/snapshot", tag = "snapshots", summary = "Snapshot an instance", params(("id" = String, Path, description = "instance id")), request_body(content = Option<faas_common::SnapshotCreateRequest>, description = "optional"), responses((status = 201, body = faas_common::SnapshotInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_snapshot(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<SnapshotCreateRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    let mut req = body.unwrap_or_default();
    req.instance_id = Some(id);
    Ok((
        StatusCode::CREATED,
        Json(s.platform.instances.snapshot_create(&caller, req).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/fork", tag = "instances", summary = "Fork an instance into N new ones", params(("id" = String, Path, description = "instance id")), request_body(content = Option<faas_common::BranchRequest>, description = "optional; count defaults to 1"), responses((status = 201, body = faas_common::BranchResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn instance_fork(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<BranchRequest>,
) -> ApiResult<(StatusCode, Json<BranchResponse>)> {
    let count = body.map_or(1, |b| b.count);
    Ok((
        StatusCode::CREATED,
        Json(
            s.platform
                .instances
                .instance_fork(&caller, &id, count)
                .await?,
        ),
    ))
}

#[utoipa::path(post, path = "/api/v1/snapshots", tag = "snapshots", summary = "Snapshot an instance", request_body = faas_common::SnapshotCreateRequest, responses((status = 201, body = faas_common::SnapshotInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<SnapshotCreateRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.platform.instances.snapshot_create(&caller, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", summary = "List snapshots", responses((status = 200, body = faas_common::SnapshotsResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SnapshotsResponse>> {
    Ok(Json(SnapshotsResponse {
        snapshots: s.platform.instances.snapshot_list(&caller).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{id}", tag = "snapshots", summary = "Get a snapshot", params(("id" = String, Path, description = "snapshot id")), responses((status = 200, body = faas_common::SnapshotInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotInfo>> {
    Ok(Json(s.platform.instances.snapshot_get(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/snapshots/{id}", tag = "snapshots", summary = "Delete a snapshot (409 while something depends on it)", params(("id" = String, Path, description = "snapshot id")), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.platform.instances.snapshot_delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/snapshots/{id}/restore", tag = "snapshots", summary = "Restore a snapshot into a new instance", params(("id" = String, Path, description = "snapshot id")), responses((status = 201, body = faas_common::InstanceInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_restore(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<InstanceInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.platform.instances.snapshot_restore(&caller, &id).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/snapshots/{id}/branch", tag = "snapshots", summary = "Branch a snapshot into N new instances", params(("id" = String, Path, description = "snapshot id")), request_body(content = Option<faas_common::BranchRequest>, description = "optional; count defaults to 1"), responses((status = 201, body = faas_common::BranchResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn snapshot_branch(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<BranchRequest>,
) -> ApiResult<(StatusCode, Json<BranchResponse>)> {
    let count = body.map_or(1, |b| b.count);
    Ok((
        StatusCode::CREATED,
        Json(
            s.platform
                .instances
                .snapshot_branch(&caller, &id, count)
                .await?,
        ),
    ))
}

#[utoipa::path(get, path = "/health", tag = "system", summary = "Status, version, uptime and each backend's availability", responses((status = 200, body = faas_common::HealthResponse)))]
async fn health(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Json<HealthResponse> {
    let default_backend = s.platform.sandboxes.default_backend().map(str::to_string);
    // Without a key: whether it is up, not what it runs on.
    if caller.is_none() {
        return Json(HealthResponse {
            status: if default_backend.is_some() {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: s.started.elapsed().as_secs_f64(),
            default_backend: None,
            default_image: String::new(),
            backends: Vec::new(),
        });
    }
    Json(HealthResponse {
        status: if default_backend.is_some() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: s.started.elapsed().as_secs_f64(),
        default_backend,
        default_image: s.platform.config().default_image.clone(),
        backends: s.platform.sandboxes.backend_statuses(),
    })
}

#[utoipa::path(post, path = "/api/v1/execute", tag = "execute", summary = "Run a command in a sandbox", request_body = faas_common::ExecuteRequest, responses((status = 200, body = faas_common::ExecuteResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn execute(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let resp = s.platform.execute.execute(&caller, req).await?;
    s.observe.cpu(&caller.tenant, resp.cpu_ms);
    Ok(Json(resp))
}

#[utoipa::path(post, path = "/api/v1/execute/advanced", tag = "execute", summary = "Run a command; `mode` is required", request_body = faas_common::ExecuteRequest, responses((status = 200, body = faas_common::ExecuteResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn execute_advanced(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    if req.mode.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "mode is required here: one of ephemeral, cached, checkpointed, branched, persistent",
        ));
    }
    let resp = s.platform.execute.execute(&caller, req).await?;
    s.observe.cpu(&caller.tenant, resp.cpu_ms);
    Ok(Json(resp))
}

#[utoipa::path(post, path = "/api/v1/prewarm", tag = "execute", summary = "Set a warm pool's size and fill it", request_body = faas_common::PrewarmRequest, responses((status = 200, body = faas_common::PoolInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn prewarm(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PrewarmRequest>,
) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(s.platform.execute.prewarm(&caller, req).await?))
}

#[utoipa::path(get, path = "/api/v1/pools", tag = "execute", summary = "Warm pools", responses((status = 200, body = faas_common::PoolsResponse)))]
async fn pools(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<PoolsResponse> {
    Json(PoolsResponse {
        pools: s.platform.execute.pools(&caller),
    })
}

#[utoipa::path(get, path = "/api/v1/images", tag = "system", summary = "Images of the native backend's store", responses((status = 200, body = faas_common::ImagesResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn images(State(s): State<AppState>) -> Result<Json<ImagesResponse>, ApiError> {
    Ok(Json(ImagesResponse {
        images: s.platform.sandboxes.images()?,
    }))
}

#[utoipa::path(get, path = "/api/v1/metrics", tag = "system", summary = "Counters as JSON", responses((status = 200, body = faas_common::MetricsResponse)))]
async fn metrics_json(State(s): State<AppState>) -> Json<MetricsResponse> {
    Json(s.platform.metrics())
}

#[utoipa::path(get, path = "/metrics", tag = "system", summary = "Counters in the Prometheus text format", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_prometheus(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = prometheus_text(&s.platform.metrics(), &s.platform.sandboxes.pools(None));
        s.observe.prometheus(&mut text);
        text
    })
}

/// The JSON counters in Prometheus' text format.
pub fn prometheus_text(m: &MetricsResponse, pools: &[PoolInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let mut execs = Vec::new();
    for (backend, modes) in &m.executions {
        for (mode, n) in modes {
            execs.push((format!("{{backend=\"{backend}\",mode=\"{mode}\"}}"), *n));
        }
    }
    metric(
        "faas_executions_total",
        "counter",
        "Commands run, by backend and mode.",
        execs,
    );
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "faas_warm_hits_total",
        "counter",
        "Cached executions served from a warm pool.",
        one(m.warm_hits),
    );
    metric(
        "faas_warm_misses_total",
        "counter",
        "Cached executions that found the pool empty.",
        one(m.warm_misses),
    );
    metric(
        "faas_failures_total",
        "counter",
        "Requests that ended in an error.",
        one(m.failures),
    );
    metric(
        "faas_timeouts_total",
        "counter",
        "Commands killed by their timeout.",
        one(m.timeouts),
    );
    metric(
        "faas_oom_kills_total",
        "counter",
        "Commands killed for exceeding their memory limit.",
        one(m.oom_kills),
    );
    metric(
        "faas_sandboxes_created_total",
        "counter",
        "Sandboxes created.",
        one(m.sandboxes_created),
    );
    metric(
        "faas_sandboxes_destroyed_total",
        "counter",
        "Sandboxes destroyed.",
        one(m.sandboxes_destroyed),
    );
    metric(
        "faas_sandboxes_reset_total",
        "counter",
        "Used sandboxes reset to a clean state and reused.",
        one(m.sandboxes_reset),
    );
    metric(
        "faas_sandboxes_live",
        "gauge",
        "Sandboxes that exist now.",
        one(m.sandboxes_live),
    );
    let ready = pools
        .iter()
        .map(|p| {
            (
                format!(
                    "{{backend=\"{}\",image=\"{}\"}}",
                    p.backend,
                    p.image.replace('"', "\\\"")
                ),
                p.ready as u64,
            )
        })
        .collect();
    metric(
        "faas_pool_ready",
        "gauge",
        "Warm sandboxes ready, by pool.",
        ready,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> Router {
        let platform = Platform::new(
            faas_executor::PlatformConfig::default(),
            Vec::new(),
            None,
            None,
        );
        // Without keys: these tests are about the routes, not about authentication.
        let mut state = AppState::new(platform);
        state.auth = auth::AuthMode::None;
        router(state)
    }

    /// Every operation of the document is served by its handler: none falls through to the
    /// "no such route" or "method not allowed" answers. Routes are only ever added with their
    /// operation (`routes!`), so none exists outside the document either.
    #[tokio::test]
    async fn the_document_and_the_routes_agree() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                operations += 1;
                let uri = path.replace("{id}", "x").replace("{name}", "x");
                let req = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap();
                let resp = app().oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&body);
                assert!(
                    !(status == 404 && text.contains("no such route")) && status != 405,
                    "{method} {path}: {status} {text}"
                );
            }
        }
        assert!(operations >= 35, "{operations} operations");
        // Not in the document: not served.
        let resp = app()
            .oneshot(Request::get("/api/v1/nothing").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        for src in [
            include_str!("lib.rs"),
            include_str!("functions.rs"),
            include_str!("admin.rs"),
            include_str!("processes.rs"),
            include_str!("files.rs"),
            include_str!("ports.rs"),
        ] {
            assert!(
                !src.contains(&[".route", "(\""].concat()),
                "a route added without its OpenAPI operation"
            );
        }
    }

    #[tokio::test]
    async fn the_document_is_served_and_names_the_schemas() {
        let resp = app()
            .oneshot(
                Request::get("/api/v1/openapi.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for schema in [
            "ExecuteRequest",
            "ExecuteResponse",
            "InstanceInfo",
            "SnapshotInfo",
            "FunctionInfo",
            "InvocationInfo",
            "ErrorBody",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{schema} missing"
            );
        }
        let exec = &doc["paths"]["/api/v1/execute"]["post"];
        assert_eq!(
            exec["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ExecuteRequest"
        );
    }
}
