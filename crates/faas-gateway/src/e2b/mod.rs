//! The E2B-compatible surface: the stock e2b SDKs (PyPI `e2b`, npm `e2b`) against this server,
//! on the same listener as our API (`E2B_API_URL` = `E2B_SANDBOX_URL` = one plain URL).
//! `../shared/e2b-protocol.md` (in the project's notes) has the protocol field by field.
//!
//! A request is routed here, ahead of our own routes and their authentication, when it is
//! - for **envd** (a sandbox's processes and files): it has an `E2b-Sandbox-Id` header, or its
//!   host is `49983-{id}.D` with `--sandbox-domain D`. It is authenticated by the sandbox's
//!   access token (`X-Access-Token`), never by an API key; a sandbox port other than envd's
//!   (49983) goes to the port proxy;
//! - for the **control plane**: a path under `/sandboxes`, `/v2/sandboxes`, `/snapshots` or
//!   `/templates`, authenticated by `X-API-KEY` (one of our API keys), scoped to its tenant.
//!
//! Errors here are E2B's: `{"code": <status>, "message"}` on the control plane and on envd's
//! plain HTTP routes, Connect errors on its RPCs ([`connect`]).
//!
//! A sandbox is one of our instances ([`control`]); its processes ([`process`]) and files
//! ([`filesystem`]) are the instance's.

pub mod connect;
pub mod control;
pub mod filesystem;
pub mod process;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use faas_common::Caller;
use tower::ServiceExt;

use crate::AppState;

/// envd's port: what `E2b-Sandbox-Port` (or the host name's port) names for envd itself.
pub const ENVD_PORT: u16 = 49983;

/// The envd version the SDKs are told: its features are what we implement (0.5.7:
/// `close_stdin`, octet-stream uploads; ≥ 0.4.0, so no forced user).
pub const ENVD_VERSION: &str = "0.5.7";

/// The sandbox an envd request is for, and who it acts as (the sandbox's tenant): an
/// extension of every request the envd router gets.
#[derive(Clone, Debug)]
pub struct Envd {
    pub id: String,
    pub caller: Caller,
}

/// An E2B error answer: `{"code": <status>, "message"}` with that status.
#[derive(Debug)]
pub struct E2bError {
    pub status: StatusCode,
    pub message: String,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> E2bError {
        E2bError {
            status,
            message: message.into(),
        }
    }

    /// What envd's edge answers for a sandbox that is not running or not there.
    pub fn sandbox_not_found(id: &str) -> E2bError {
        E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} was not found"),
        )
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<faas_executor::Error> for E2bError {
    fn from(e: faas_executor::Error) -> E2bError {
        // Our codes and statuses; the message as our API gives it.
        let api = crate::ApiError::from(e);
        let status =
            StatusCode::from_u16(api.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        E2bError::new(status, api.message)
    }
}

/// The routers of the E2B surface, made once, with the state.
#[derive(Clone)]
pub struct E2b {
    state: AppState,
    control: Router,
    envd: Router,
}

impl E2b {
    pub fn new(state: AppState) -> E2b {
        E2b {
            control: control::routes().with_state(state.clone()),
            envd: process::routes()
                .merge(filesystem::routes())
                .with_state(state.clone()),
            state,
        }
    }
}

/// Where a request goes.
enum Plane {
    Control,
    Envd { id: String, port: u16 },
    Ours,
}

fn plane(req: &Request, domain: Option<&str>) -> Plane {
    let h = req.headers();
    if let Some(id) = h.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = h
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(ENVD_PORT);
        return Plane::Envd {
            id: id.trim().to_string(),
            port,
        };
    }
    if let Some(domain) = domain {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some((ENVD_PORT, id)) = crate::ports::parse_port_host(host, domain) {
            return Plane::Envd {
                id: id.to_string(),
                port: ENVD_PORT,
            };
        }
    }
    let path = req.uri().path();
    // A signed file URL (`download_url()`, `upload_url()`): with one URL for all sandboxes it
    // names none; the signature says which.
    if path == "/files" && signed_query(req.uri().query()).is_some() {
        return Plane::Envd {
            id: String::new(),
            port: ENVD_PORT,
        };
    }
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("/sandboxes") || under("/v2/sandboxes") || under("/snapshots") || under("/templates") {
        return Plane::Control;
    }
    Plane::Ours
}

/// The middleware: E2B requests to their routers, the others on to ours.
pub async fn route(State(e): State<E2b>, req: Request, next: Next) -> Response {
    match plane(&req, e.state.sandbox_domain.as_deref()) {
        Plane::Ours => next.run(req).await,
        Plane::Control => match e.control.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Plane::Envd { id, port } => envd(e, id, port, req).await,
    }
}

/// What a signed file URL carries: `(signature, expiration)`.
fn signed_query(query: Option<&str>) -> Option<(String, Option<String>)> {
    let mut sig = None;
    let mut exp = None;
    for (k, v) in form_urlencoded::parse(query?.as_bytes()) {
        match k.as_ref() {
            "signature" => sig = Some(v.into_owned()),
            "signature_expiration" => exp = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((sig?, exp))
}

/// E2B's file URL signature: `v1_` + base64 (no padding) of the SHA-256 of
/// `{path}:{read|write}:{user}:{token}` (then `:{expiration}` when it has one).
pub fn file_signature(
    path: &str,
    write: bool,
    user: &str,
    token: &str,
    exp: Option<&str>,
) -> String {
    use base64::Engine;
    use sha2::Digest;
    let op = if write { "write" } else { "read" };
    let mut raw = format!("{path}:{op}:{user}:{token}");
    if let Some(e) = exp {
        raw.push(':');
        raw.push_str(e);
    }
    let digest = sha2::Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The sandbox and caller of a `/files` request signed instead of carrying the token.
fn signed_caller(
    e: &E2b,
    id: &str,
    req: &Request,
) -> Result<(String, Caller), faas_executor::Error> {
    use subtle::ConstantTimeEq;
    let bad = |m: &str| faas_executor::Error::Unauthenticated(m.to_string());
    let (sig, exp) = signed_query(req.uri().query()).ok_or_else(|| bad("no signature"))?;
    if let Some(e) = &exp {
        let at: i64 = e
            .parse()
            .map_err(|_| bad("signature_expiration is not a time"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if at < now {
            return Err(bad("the signed URL has expired"));
        }
    }
    let q: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let path = param("path").unwrap_or("");
    let user = param("username").unwrap_or("");
    let write = req.method() == axum::http::Method::POST;
    e.state
        .platform
        .instances
        .envd_caller_signed((!id.is_empty()).then_some(id), |token| {
            let want = file_signature(path, write, user, token, exp.as_deref());
            bool::from(want.as_bytes().ct_eq(sig.as_bytes()))
        })
}

async fn envd(e: E2b, id: String, port: u16, mut req: Request) -> Response {
    let token = req
        .headers()
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .map(str::to_string);
    let signed = token.is_none()
        && req.uri().path() == "/files"
        && signed_query(req.uri().query()).is_some();
    let found = if signed {
        signed_caller(&e, &id, &req)
    } else {
        e.state
            .platform
            .instances
            .envd_caller(&id, token.as_deref())
            .map(|c| (id.clone(), c))
    };
    let (id, caller) = match found {
        Ok(found) => found,
        Err(faas_executor::Error::NotFound(_)) => {
            return E2bError::sandbox_not_found(&id).into_response()
        }
        Err(err) => return E2bError::from(err).into_response(),
    };
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    if port != ENVD_PORT {
        // Another port of the sandbox: the port proxy, as its owner.
        req.extensions_mut().insert(caller);
        let path = req.uri().path().to_string();
        return crate::ports::forward(&e.state, &id, port, &path, "", req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if req.uri().path() == "/health" {
        return StatusCode::NO_CONTENT.into_response();
    }
    req.extensions_mut().insert(Envd { id, caller });
    match e.envd.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_signatures_are_the_sdks() {
        // e2b/sandbox/signature.py: get_signature("/tmp/a", "read", None, "tok")
        let want = {
            use base64::Engine;
            use sha2::Digest;
            let d = sha2::Sha256::digest(b"/tmp/a:read::tok");
            let b = base64::engine::general_purpose::STANDARD.encode(d);
            format!("v1_{}", b.trim_end_matches('='))
        };
        assert_eq!(file_signature("/tmp/a", false, "", "tok", None), want);
        assert_ne!(file_signature("/tmp/a", true, "", "tok", None), want);
        assert_ne!(file_signature("/tmp/a", false, "", "tok", Some("1")), want);
        assert!(signed_query(Some("path=/a&signature=v1_x")).is_some());
        let (_, exp) = signed_query(Some("signature=v1_x&signature_expiration=5")).unwrap();
        assert_eq!(exp.as_deref(), Some("5"));
        assert!(signed_query(Some("path=/a")).is_none());
    }
}
