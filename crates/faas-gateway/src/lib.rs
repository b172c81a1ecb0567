//! The HTTP API: `router(state) -> Router` and `serve(listener, state, shutdown)`.
//!
//! - [`error`]: [`ApiError`], the one place where executor errors become codes and statuses.
//! - [`extract`]: [`ApiJson`], a JSON body extractor whose rejections are JSON errors too.
//! - handlers below: health, execute, prewarm, pools, metrics.

pub mod error;
pub mod extract;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use faas_common::{
    ErrorCode, ExecuteRequest, ExecuteResponse, HealthResponse, ImagesResponse, MetricsResponse,
    PoolInfo, PoolsResponse, PrewarmRequest,
};
use faas_executor::Executor;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use extract::ApiJson;

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
