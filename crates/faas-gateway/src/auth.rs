//! Authentication and request rates: the middleware that turns a request's API key into the
//! [`Caller`] every handler passes on, and refuses a request over its tenant's rate.
//!
//! The key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. `/health` is open
//! (its backend details only for a caller with a key), `/metrics` too with
//! `--metrics-public`; everything else needs a key. With `--auth none` every request is an
//! admin of the default tenant (the server refuses that on a non-loopback address).

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use faas_common::{Caller, ErrorCode};

use crate::{observe, ApiError, AppState};

/// Whether requests must carry a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Key,
    /// Local development only.
    None,
}

/// The key a request carries, if any (never logged).
pub fn key_of(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, key) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|k| !k.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn open_route(s: &AppState, path: &str) -> bool {
    path == "/health" || (path == "/metrics" && s.metrics_public)
}

pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = match s.auth {
        AuthMode::None => Some(Caller::unauthenticated_admin()),
        AuthMode::Key => match key_of(req.headers()) {
            Some(key) => match s.platform.tenants.authenticate(key).await {
                Ok(c) => Some(c),
                // An open route answers anyway, as to a caller without a key.
                Err(_) if open_route(&s, req.uri().path()) => None,
                Err(e) => return ApiError::from(e).into_response(),
            },
            None => None,
        },
    };
    let Some(caller) = caller else {
        if open_route(&s, req.uri().path())
            || crate::ports::token_only(req.uri().path(), req.headers(), req.uri().query())
        {
            return next.run(req).await;
        }
        return ApiError::new(
            ErrorCode::Unauthenticated,
            "this needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        )
        .into_response();
    };
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    if let Err(resp) = check_rate(&s, &caller).await {
        return resp;
    }
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(caller);
    resp
}

/// Refuses a request over its tenant's rate (with keys only).
async fn check_rate(s: &AppState, caller: &Caller) -> Result<(), Response> {
    if s.auth != AuthMode::Key {
        return Ok(());
    }
    match s.platform.tenants.check_rate(&caller.tenant).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(wait)) => {
            observe::rejected(s, &caller.tenant, "rate");
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "tenant {} is over its requests_per_second quota; retry in {} ms",
                    caller.tenant,
                    wait.as_millis()
                ),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
            .into_response())
        }
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// The caller of a request's key (`None`: it has none), its rate checked: for what answers
/// ahead of the routes' own authentication (the sandbox host names).
pub async fn key_caller(s: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, Response> {
    let caller = match s.auth {
        AuthMode::None => Caller::unauthenticated_admin(),
        AuthMode::Key => match key_of(headers) {
            Some(key) => s
                .platform
                .tenants
                .authenticate(key)
                .await
                .map_err(|e| ApiError::from(e).into_response())?,
            None => return Ok(None),
        },
    };
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    check_rate(s, &caller).await?;
    Ok(Some(caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(key_of(&h), None);
        h.insert("x-api-key", "faas_abc".parse().unwrap());
        assert_eq!(key_of(&h), Some("faas_abc"));
        h.insert("authorization", "Bearer faas_def".parse().unwrap());
        assert_eq!(key_of(&h), Some("faas_def"));
        h.insert("authorization", "bearer   faas_g ".parse().unwrap());
        assert_eq!(key_of(&h), Some("faas_g"));
        // Another scheme is not a key.
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(key_of(&h), None);
        h.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(key_of(&h), None);
    }
}
