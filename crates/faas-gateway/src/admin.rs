//! Handlers of keys, tenants, usage, the audit trail and `whoami`: thin translations onto the
//! tenants service.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use faas_common::{
    AuditResponse, Caller, ErrorCode, KeyCreateRequest, KeyInfo, KeysResponse, TenantCreateRequest,
    TenantInfo, TenantUpdateRequest, TenantsResponse, UsageResponse, WhoamiResponse,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{ApiJson, ApiQuery};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(key_create, key_list))
        .routes(routes!(key_revoke))
        .routes(routes!(tenant_create, tenant_list))
        .routes(routes!(tenant_get, tenant_update))
        .routes(routes!(usage))
        .routes(routes!(audit))
}

#[utoipa::path(get, path = "/api/v1/auth/whoami", tag = "tenants", summary = "The tenant and role of the key this request carries", responses((status = 200, body = faas_common::WhoamiResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoamiResponse> {
    Json(WhoamiResponse {
        tenant: caller.tenant,
        role: caller.role,
        key_id: caller.key_id,
    })
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "tenants", summary = "Make an API key (admin); its secret is in this answer only", request_body = faas_common::KeyCreateRequest, responses((status = 201, body = faas_common::KeyInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn key_create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyCreateRequest>,
) -> ApiResult<(StatusCode, Json<KeyInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.platform.tenants.key_create(&caller, req).await?),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantQuery {
    tenant: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "tenants", summary = "List API keys (admin), of one tenant with `?tenant=`", params(("tenant" = Option<String>, Query, description = "only this tenant's")), responses((status = 200, body = faas_common::KeysResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn key_list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<KeysResponse>> {
    Ok(Json(KeysResponse {
        keys: s
            .platform
            .tenants
            .key_list(&caller, q.tenant.as_deref())
            .await?,
    }))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "tenants", summary = "Revoke an API key (admin); it stops working at once", params(("id" = String, Path, description = "key id")), responses((status = 204), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn key_revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.platform.tenants.key_revoke(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", summary = "Make a tenant (admin)", request_body = faas_common::TenantCreateRequest, responses((status = 201, body = faas_common::TenantInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn tenant_create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TenantCreateRequest>,
) -> ApiResult<(StatusCode, Json<TenantInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.platform.tenants.tenant_create(&caller, req).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", summary = "List tenants (admin)", responses((status = 200, body = faas_common::TenantsResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn tenant_list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<TenantsResponse>> {
    Ok(Json(TenantsResponse {
        tenants: s.platform.tenants.tenant_list(&caller).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}", tag = "tenants", summary = "A tenant and its quotas (an admin: any; a member: its own)", params(("id" = String, Path, description = "tenant id")), responses((status = 200, body = faas_common::TenantInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn tenant_get(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantInfo>> {
    Ok(Json(s.platform.tenants.tenant_get(&caller, &id).await?))
}

#[utoipa::path(put, path = "/api/v1/tenants/{id}", tag = "tenants", summary = "Set a tenant's quotas (admin): the body's settings replace its own, a missing one is the server's default", params(("id" = String, Path, description = "tenant id")), request_body = faas_common::TenantUpdateRequest, responses((status = 200, body = faas_common::TenantInfo), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn tenant_update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TenantUpdateRequest>,
) -> ApiResult<Json<TenantInfo>> {
    Ok(Json(
        s.platform.tenants.tenant_update(&caller, &id, req).await?,
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    tenant: Option<String>,
}

/// A time in a query: ms since the epoch, or a `YYYY-MM-DD` date (its UTC midnight).
fn time_of(what: &str, v: &str) -> ApiResult<i64> {
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} must be ms since the epoch or a YYYY-MM-DD date, got {v:?}"),
        )
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    let parts: Vec<&str> = v.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let (y, m, d): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return Err(bad());
    }
    Ok(faas_common::time::days_from_civil(y, m, d) * 86_400_000)
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "tenants", summary = "What a tenant used (the caller's; an admin may name any): executions, instance execs and runs, invocations, wall and CPU time, memory; per day, function or instance", params(("from" = Option<String>, Query, description = "ms since the epoch or YYYY-MM-DD (default: 30 days before `to`)"), ("to" = Option<String>, Query, description = "ms or YYYY-MM-DD, exclusive (default: now)"), ("group_by" = Option<String>, Query, description = "day (default), function or instance"), ("tenant" = Option<String>, Query, description = "admin: another tenant")), responses((status = 200, body = faas_common::UsageResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn usage(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<UsageResponse>> {
    let from = q.from.as_deref().map(|v| time_of("from", v)).transpose()?;
    let to = q.to.as_deref().map(|v| time_of("to", v)).transpose()?;
    Ok(Json(
        s.platform
            .tenants
            .usage(
                &caller,
                q.tenant.as_deref(),
                from,
                to,
                q.group_by.as_deref(),
            )
            .await?,
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "tenants", summary = "What admins did, newest first (admin): keys made and revoked, tenants made, quotas changed", params(("limit" = Option<i64>, Query, description = "at most this many (100)")), responses((status = 200, body = faas_common::AuditResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn audit(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditResponse>> {
    Ok(Json(AuditResponse {
        events: s.platform.tenants.audit_list(&caller, q.limit).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_ms_or_dates() {
        assert_eq!(time_of("from", "1234").unwrap(), 1234);
        assert_eq!(time_of("from", "1970-01-02").unwrap(), 86_400_000);
        assert_eq!(time_of("from", "2000-03-01").unwrap(), 951_868_800_000);
        for bad in ["", "2026-13-01", "x", "2026-01", "1-2-3-4", "2026-01-0x"] {
            assert!(time_of("from", bad).is_err(), "{bad:?}");
        }
    }
}
