//! The HTTP API: `router(state) -> Router` and `serve(listener, state, shutdown)`.
//!
//! - [`error`]: [`ApiError`], the one place where executor errors become codes and statuses.
//! - [`extract`]: [`ApiJson`], a JSON body extractor whose rejections are JSON errors too.
//! - handlers below: health, execute, prewarm, pools, metrics.

pub mod error;
pub mod extract;
mod functions;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use faas_common::{
    BranchRequest, BranchResponse, ErrorCode, ExecuteRequest, ExecuteResponse, HealthResponse,
    ImagesResponse, InstanceCreateRequest, InstanceExecRequest, InstanceInfo, InstancesResponse,
    MetricsResponse, PoolInfo, PoolsResponse, PrewarmRequest, SnapshotCreateRequest, SnapshotInfo,
    SnapshotsResponse,
};
use faas_executor::Executor;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use extract::{ApiJson, OptionalJson};

/// Default limit on request bodies.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub executor: Arc<Executor>,
    pub started: Instant,
    pub body_limit: usize,
}

impl AppState {
    pub fn new(executor: Arc<Executor>) -> Self {
        AppState {
            executor,
            started: Instant::now(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/execute", post(execute))
        .route("/api/v1/execute/advanced", post(execute_advanced))
        .route("/api/v1/prewarm", post(prewarm))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/images", get(images))
        .route(
            "/api/v1/instances",
            post(instance_create).get(instance_list),
        )
        .route(
            "/api/v1/instances/{id}",
            get(instance_get).delete(instance_delete),
        )
        .route("/api/v1/instances/{id}/exec", post(instance_exec))
        .route("/api/v1/logs/{id}/stream", get(logs_stream))
        .route("/api/v1/instances/{id}/stop", post(instance_stop))
        .route("/api/v1/instances/{id}/start", post(instance_start))
        .route(
            "/api/v1/instances/{id}/files",
            get(instance_file_get).put(instance_file_put),
        )
        .route("/api/v1/instances/{id}/snapshot", post(instance_snapshot))
        .route("/api/v1/instances/{id}/fork", post(instance_fork))
        .route(
            "/api/v1/snapshots",
            post(snapshot_create).get(snapshot_list),
        )
        .route(
            "/api/v1/snapshots/{id}",
            get(snapshot_get).delete(snapshot_delete),
        )
        .route("/api/v1/snapshots/{id}/restore", post(snapshot_restore))
        .route("/api/v1/snapshots/{id}/branch", post(snapshot_branch))
        .merge(functions::routes())
        .route("/api/v1/metrics", get(metrics_json))
        .route("/metrics", get(metrics_prometheus))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(
            // Errors are logged where they are made (ApiError); a 4xx/5xx is not a fault here.
            TraceLayer::new_for_http().on_failure(()),
        )
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

type ApiResult<T> = Result<T, ApiError>;

async fn instance_create(
    State(s): State<AppState>,
    OptionalJson(body): OptionalJson<InstanceCreateRequest>,
) -> ApiResult<(StatusCode, Json<InstanceInfo>)> {
    let req = body.unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(s.executor.instance_create(req).await?),
    ))
}

async fn instance_list(State(s): State<AppState>) -> ApiResult<Json<InstancesResponse>> {
    Ok(Json(InstancesResponse {
        instances: s.executor.instance_list().await?,
    }))
}

async fn instance_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(s.executor.instance_get(&id).await?))
}

async fn instance_delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.executor.instance_delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    #[serde(default)]
    stream: bool,
}

/// `?stream=true`: Server-Sent Events of the output as it comes (`stdout`, `stderr`, then
/// `exit`), the execution id in the `x-request-id` header.
async fn instance_exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ApiJson(req): ApiJson<InstanceExecRequest>,
) -> ApiResult<axum::response::Response> {
    if q.stream {
        let (rid, rx) = s.executor.instance_exec_stream(&id, req).await?;
        let mut resp = sse(rx).into_response();
        if let Ok(v) = header::HeaderValue::from_str(&rid) {
            resp.headers_mut().insert("x-request-id", v);
        }
        return Ok(resp);
    }
    Ok(Json(s.executor.instance_exec(&id, req).await?).into_response())
}

async fn logs_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(sse(s.executor.stream_logs(&id).await?))
}

fn sse(
    rx: tokio::sync::mpsc::UnboundedReceiver<faas_executor::streams::OutputEvent>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let data = serde_json::to_string(&ev).unwrap_or_default();
        Some((Ok(SseEvent::default().event(ev.name()).data(data)), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

async fn instance_stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(s.executor.instance_stop(&id).await?))
}

async fn instance_start(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceInfo>> {
    Ok(Json(s.executor.instance_start(&id).await?))
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

async fn instance_file_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<impl IntoResponse> {
    let path = file_path(q)?;
    let data = s.executor.instance_read_file(&id, &path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data))
}

async fn instance_file_put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let path = file_path(q)?;
    s.executor
        .instance_write_file(&id, &path, body.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn instance_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<SnapshotCreateRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    let mut req = body.unwrap_or_default();
    req.instance_id = Some(id);
    Ok((
        StatusCode::CREATED,
        Json(s.executor.snapshot_create(req).await?),
    ))
}

async fn instance_fork(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<BranchRequest>,
) -> ApiResult<(StatusCode, Json<BranchResponse>)> {
    let count = body.map_or(1, |b| b.count);
    Ok((
        StatusCode::CREATED,
        Json(s.executor.instance_fork(&id, count).await?),
    ))
}

async fn snapshot_create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<SnapshotCreateRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.executor.snapshot_create(req).await?),
    ))
}

async fn snapshot_list(State(s): State<AppState>) -> ApiResult<Json<SnapshotsResponse>> {
    Ok(Json(SnapshotsResponse {
        snapshots: s.executor.snapshot_list().await?,
    }))
}

async fn snapshot_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotInfo>> {
    Ok(Json(s.executor.snapshot_get(&id).await?))
}

async fn snapshot_delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.executor.snapshot_delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot_restore(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<InstanceInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.executor.snapshot_restore(&id).await?),
    ))
}

async fn snapshot_branch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<BranchRequest>,
) -> ApiResult<(StatusCode, Json<BranchResponse>)> {
    let count = body.map_or(1, |b| b.count);
    Ok((
        StatusCode::CREATED,
        Json(s.executor.snapshot_branch(&id, count).await?),
    ))
}

async fn health(State(s): State<AppState>) -> Json<HealthResponse> {
    let default_backend = s.executor.default_backend().map(str::to_string);
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
        default_image: s.executor.config().default_image.clone(),
        backends: s.executor.backend_statuses(),
    })
}

async fn execute(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    Ok(Json(s.executor.execute(req).await?))
}

async fn execute_advanced(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    if req.mode.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "mode is required here: one of ephemeral, cached, checkpointed, branched, persistent",
        ));
    }
    Ok(Json(s.executor.execute(req).await?))
}

async fn prewarm(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PrewarmRequest>,
) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(s.executor.prewarm(req).await?))
}

async fn pools(State(s): State<AppState>) -> Json<PoolsResponse> {
    Json(PoolsResponse {
        pools: s.executor.pools(),
    })
}

async fn images(State(s): State<AppState>) -> Result<Json<ImagesResponse>, ApiError> {
    Ok(Json(ImagesResponse {
        images: s.executor.images()?,
    }))
}

async fn metrics_json(State(s): State<AppState>) -> Json<MetricsResponse> {
    Json(s.executor.metrics())
}

async fn metrics_prometheus(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus_text(&s.executor.metrics(), &s.executor.pools()),
    )
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
