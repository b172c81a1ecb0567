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

async fn envd(e: E2b, id: String, port: u16, mut req: Request) -> Response {
    let token = req
        .headers()
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .map(str::to_string);
    let caller = match e
        .state
        .platform
        .instances
        .envd_caller(&id, token.as_deref())
    {
        Ok(c) => c,
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
