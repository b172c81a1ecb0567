//! Handlers of `/api/v1/functions` and `/api/v1/invocations`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use faas_common::{
    Caller, DeployRequest, FunctionDeleted, FunctionInfo, FunctionsResponse, InvocationInfo,
    InvocationsQuery, InvocationsResponse, InvokeQuery,
};
use faas_executor::services::functions::Invoked;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{ApiJson, ApiQuery, RawBody};
use crate::{ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(deploy, list))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(invoke))
        .routes(routes!(invocations))
        .routes(routes!(invocation))
}

#[utoipa::path(post, path = "/api/v1/functions", tag = "functions", summary = "Deploy a function (a new version when the name exists)", request_body = faas_common::DeployRequest, responses((status = 201, description = "a new function", body = faas_common::FunctionInfo), (status = 200, description = "a new version", body = faas_common::FunctionInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn deploy(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<(StatusCode, Json<FunctionInfo>)> {
    let (created, info) = s
        .platform
        .functions
        .function_deploy(&caller, None, req)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

#[utoipa::path(put, path = "/api/v1/functions/{name}", tag = "functions", summary = "Make a new version (what is left out is taken from the latest)", params(("name" = String, Path, description = "function name")), request_body = faas_common::DeployRequest, responses((status = 200, body = faas_common::FunctionInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(
        s.platform
            .functions
            .function_deploy(&caller, Some(&name), req)
            .await?
            .1,
    ))
}

#[utoipa::path(get, path = "/api/v1/functions", tag = "functions", summary = "List functions", responses((status = 200, body = faas_common::FunctionsResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<FunctionsResponse>> {
    Ok(Json(FunctionsResponse {
        functions: s.platform.functions.function_list(&caller).await?,
    }))
}

#[derive(serde::Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/functions/{name}", tag = "functions", summary = "Get a function (its latest version, or `?version=N`)", params(("name" = String, Path, description = "function name"), ("version" = Option<i64>, Query, description = "a version number")), responses((status = 200, body = faas_common::FunctionInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn get_one(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Json<FunctionInfo>> {
    Ok(Json(
        s.platform
            .functions
            .function_get(&caller, &name, q.version)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/functions/{name}", tag = "functions", summary = "Delete a function; its queued invocations fail with `function_deleted`", params(("name" = String, Path, description = "function name")), responses((status = 200, body = faas_common::FunctionDeleted), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<FunctionDeleted>> {
    Ok(Json(
        s.platform.functions.function_delete(&caller, &name).await?,
    ))
}

/// The body is the payload itself. `?async=true` answers `202 {invocation_id}`; an
/// `Idempotency-Key` header makes a repeated call return the first invocation.
#[utoipa::path(post, path = "/api/v1/functions/{name}/invoke", tag = "functions", summary = "Invoke a function; the body is the JSON payload", params(("name" = String, Path, description = "function name"), faas_common::InvokeQuery, ("Idempotency-Key" = Option<String>, Header, description = "the same key returns the same invocation")), request_body(content = serde_json::Value, description = "the payload, any JSON (at most 6 MiB)"), responses((status = 200, body = faas_common::InvocationInfo), (status = 202, description = "queued (`?async=true`)", body = faas_common::InvocationAccepted), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn invoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
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
        match s
            .platform
            .functions
            .function_invoke(&caller, &name, q, &body, key)
            .await?
        {
            Invoked::Done(info) => Json(info).into_response(),
            Invoked::Queued(acc) => (StatusCode::ACCEPTED, Json(acc)).into_response(),
        },
    )
}

#[utoipa::path(get, path = "/api/v1/invocations/{id}", tag = "invocations", summary = "Get an invocation", params(("id" = String, Path, description = "invocation id")), responses((status = 200, body = faas_common::InvocationInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn invocation(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<InvocationInfo>> {
    Ok(Json(
        s.platform.functions.invocation_get(&caller, &id).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/invocations", tag = "invocations", summary = "List invocations, newest first", params(faas_common::InvocationsQuery), responses((status = 200, body = faas_common::InvocationsResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn invocations(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<InvocationsQuery>,
) -> ApiResult<Json<InvocationsResponse>> {
    Ok(Json(InvocationsResponse {
        invocations: s.platform.functions.invocation_list(&caller, q).await?,
    }))
}
