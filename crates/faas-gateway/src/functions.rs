//! Handlers of `/api/v1/functions` and `/api/v1/invocations`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use faas_common::{
    DeployRequest, FunctionDeleted, FunctionInfo, FunctionsResponse, InvocationInfo,
    InvocationsQuery, InvocationsResponse, InvokeQuery,
};
use faas_executor::functions::Invoked;

use crate::extract::{ApiJson, ApiQuery, RawBody};
use crate::{ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/functions", post(deploy).get(list))
        .route(
            "/api/v1/functions/{name}",
            get(get_one).put(update).delete(delete),
        )
        .route("/api/v1/functions/{name}/invoke", post(invoke))
        .route("/api/v1/invocations", get(invocations))
        .route("/api/v1/invocations/{id}", get(invocation))
}

async fn deploy(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<(StatusCode, Json<FunctionInfo>)> {
    let (created, info) = s.executor.function_deploy(None, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(s.executor.function_deploy(Some(&name), req).await?.1))
}

async fn list(State(s): State<AppState>) -> ApiResult<Json<FunctionsResponse>> {
    Ok(Json(FunctionsResponse {
        functions: s.executor.function_list().await?,
    }))
}

#[derive(serde::Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(s.executor.function_get(&name, q.version).await?))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionDeleted>> {
    Ok(Json(s.executor.function_delete(&name).await?))
}

/// The body is the payload itself. `?async=true` answers `202 {invocation_id}`; an
/// `Idempotency-Key` header makes a repeated call return the first invocation.
async fn invoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<InvokeQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(
        match s.executor.function_invoke(&name, q, &body, key).await? {
            Invoked::Done(info) => Json(info).into_response(),
            Invoked::Queued(acc) => (StatusCode::ACCEPTED, Json(acc)).into_response(),
        },
    )
}

async fn invocation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InvocationInfo>> {
    Ok(Json(s.executor.invocation_get(&id).await?))
}

async fn invocations(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<InvocationsQuery>,
) -> ApiResult<Json<InvocationsResponse>> {
    Ok(Json(InvocationsResponse {
        invocations: s.executor.invocation_list(q).await?,
    }))
}
