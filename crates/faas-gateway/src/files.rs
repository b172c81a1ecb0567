//! Handlers of `/api/v1/instances/{id}/fs`: the instance's files as its agent sees them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use faas_common::{
    Caller, ErrorCode, FileEntry, FsEvent, FsListResponse, MkdirRequest, MoveRequest,
};
use faas_executor::services::instances::processes::fs_op_name;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{ApiJson, ApiQuery};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stat))
        .routes(routes!(list))
        .routes(routes!(mkdir))
        .routes(routes!(rename))
        .routes(routes!(remove))
        .routes(routes!(watch))
}

#[derive(Debug, serde::Deserialize)]
struct PathQuery {
    path: Option<String>,
    depth: Option<u32>,
    #[serde(default)]
    recursive: bool,
}

impl PathQuery {
    fn path(&self) -> ApiResult<&str> {
        self.path.as_deref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the query parameter path is required",
            )
        })
    }
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/fs/stat", tag = "files", summary = "Describe a file of an instance (links are not followed)", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path in the instance")), responses((status = 200, body = faas_common::FileEntry), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn stat(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<FileEntry>> {
    Ok(Json(
        s.platform
            .instances
            .fs_stat(&caller, &id, q.path()?)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/fs/list", tag = "files", summary = "List a directory of an instance, `depth` levels down (1: its children)", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path in the instance"), ("depth" = Option<u32>, Query, description = "levels (1)")), responses((status = 200, body = faas_common::FsListResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<FsListResponse>> {
    let entries = s
        .platform
        .instances
        .fs_list(&caller, &id, q.path()?, q.depth.unwrap_or(1))
        .await?;
    Ok(Json(FsListResponse { entries }))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/fs/mkdir", tag = "files", summary = "Make a directory (and its missing parents)", params(("id" = String, Path, description = "instance id")), request_body = faas_common::MkdirRequest, responses((status = 201, body = faas_common::FileEntry), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn mkdir(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> ApiResult<(StatusCode, Json<FileEntry>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.platform
                .instances
                .fs_mkdir(&caller, &id, &req.path)
                .await?,
        ),
    ))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/fs/move", tag = "files", summary = "Move or rename a file or directory", params(("id" = String, Path, description = "instance id")), request_body = faas_common::MoveRequest, responses((status = 200, body = faas_common::FileEntry), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn rename(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> ApiResult<Json<FileEntry>> {
    Ok(Json(
        s.platform
            .instances
            .fs_move(&caller, &id, &req.from, &req.to)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/instances/{id}/fs", tag = "files", summary = "Remove a file, a link or a whole directory", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path in the instance")), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn remove(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<StatusCode> {
    s.platform
        .instances
        .fs_remove(&caller, &id, q.path()?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/fs/watch", tag = "files", summary = "Server-Sent Events of changes under a directory: `ready` once the watch is set, then `create`, `write`, `remove`, `rename`, `chmod` with the path", params(("id" = String, Path, description = "instance id"), ("path" = String, Query, description = "absolute path of a directory"), ("recursive" = Option<bool>, Query, description = "its subdirectories too")), responses((status = 200, content_type = "text/event-stream", body = String), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn watch(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<impl IntoResponse> {
    let watch = s
        .platform
        .instances
        .fs_watch(&caller, &id, q.path()?, q.recursive)
        .await?;
    let ready = SseEvent::default().event("ready").data("{}");
    let changes = futures::stream::unfold(Some(watch), |w| async move {
        let mut w = w?;
        match w.next().await {
            Ok(Some((op, path))) => {
                let op = fs_op_name(op).to_string();
                let ev = SseEvent::default()
                    .event(op.clone())
                    .data(serde_json::to_string(&FsEvent { op, path }).unwrap_or_default());
                Some((ev, Some(w)))
            }
            Ok(None) => None,
            Err(e) => {
                let data = serde_json::json!({ "message": e.to_string() }).to_string();
                Some((SseEvent::default().event("error").data(data), None))
            }
        }
    });
    let events = futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::once(async { ready }), changes),
        Ok::<_, std::convert::Infallible>,
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
