//! The port proxy: HTTP to a port an instance listens on, through its agent.
//!
//! - `ANY /api/v1/instances/{id}/ports/{port}/{path}`, and with `--sandbox-domain D` any
//!   request for the host `{port}-{id}.D` ([`sandbox_host`]), is passed to `127.0.0.1:port`
//!   inside the box as HTTP/1.1 over a connection the agent makes there: bodies stream both
//!   ways, a WebSocket (any `Upgrade`) is spliced through once the box's server answers 101.
//! - `GET /api/v1/instances/{id}/ports` lists what listens.
//! - `GET /api/v1/instances/{id}/tunnel/{port}` is a WebSocket carrying a raw TCP connection
//!   (binary frames both ways), what `faas instances port-forward` uses.
//!
//! The owner tenant's key opens them; an instance made with `public_ports` also opens to its
//! `ports_token` (the `faas_token` query parameter, the `X-Faas-Ports-Token` header, or the
//! cookie the proxy sets when the token came in the query, for the page's next requests). The
//! key, the token and that cookie are never passed on to the box.

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use faas_common::{Caller, ErrorCode, PortInfo, PortsResponse};
use faas_executor::services::instances::ports::{PortAccess, PortConn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{auth, ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(proxy_bare))
        .routes(routes!(proxy_root))
        .routes(routes!(proxy_path))
        .routes(routes!(tunnel))
}

/// The query parameter, header and cookie a ports token comes in.
pub const TOKEN_QUERY: &str = "faas_token";
pub const TOKEN_HEADER: &str = "x-faas-ports-token";
pub const TOKEN_COOKIE: &str = "faas_ports_token";
/// E2B's header for a sandbox's `trafficAccessToken` (our ports token).
pub const E2B_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// Headers that belong to one hop (RFC 9110 7.6.1), never passed on as they are.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn port_of(port: &str) -> ApiResult<u16> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("{port:?} is not a port")))
}

/// Whether a request to `path` may come without a key because it carries a ports token (the
/// token itself is checked by the instance).
pub fn token_only(path: &str, headers: &HeaderMap, query: Option<&str>) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    let is_proxy = parts.next() == Some("api")
        && parts.next() == Some("v1")
        && parts.next() == Some("instances")
        && parts.next().is_some()
        && parts.next() == Some("ports")
        && parts.next().is_some();
    is_proxy && token_of(headers, query).is_some()
}

/// The ports token a request carries, if any.
fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(t) = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == TOKEN_QUERY)
            .map(|(_, v)| v.into_owned())
    }) {
        return Some(t);
    }
    // Ours, or the one the e2b SDKs' users send (`trafficAccessToken`).
    for name in [TOKEN_HEADER, E2B_TOKEN_HEADER] {
        if let Some(t) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(t.trim().to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == TOKEN_COOKIE).then(|| v.to_string())
        })
}

/// The query without the token.
fn query_without_token(query: Option<&str>) -> Option<String> {
    let q = query?;
    if !q.contains(TOKEN_QUERY) {
        return Some(q.to_string());
    }
    let kept: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k != TOKEN_QUERY)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// The `host` of `{port}-{id}.{domain}` for an instance's port.
pub fn port_host(domain: &str, id: &str, port: u16) -> String {
    format!("{port}-{id}.{domain}")
}

/// `(port, id)` of a host name `{port}-{id}.{domain}` (any `:port` after it ignored).
pub fn parse_port_host<'a>(host: &'a str, domain: &str) -> Option<(u16, &'a str)> {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = name
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|at| {
            name.is_char_boundary(*at)
                && name[*at..].starts_with('.')
                && name[*at + 1..].eq_ignore_ascii_case(domain)
        })
        .map(|at| &name[..at])?;
    let (port, id) = label.split_once('-')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let ok_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok_id.then_some((port, id))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/ports", tag = "instances", summary = "The TCP ports something listens on in a running instance, with where the port proxy serves each", params(("id" = String, Path, description = "instance id")), responses((status = 200, body = faas_common::PortsResponse), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<PortsResponse>> {
    let listening = s.platform.instances.ports_list(&caller, &id).await?;
    let mut ports: Vec<PortInfo> = Vec::new();
    for l in listening {
        // One entry per port: the widest address it is bound to first.
        if ports.iter().any(|p| p.port == l.port) {
            continue;
        }
        ports.push(PortInfo {
            port: l.port,
            address: l.address,
            path: format!("/api/v1/instances/{id}/ports/{}/", l.port),
            host: s
                .sandbox_domain
                .as_deref()
                .map(|d| port_host(d, &id, l.port)),
        });
    }
    Ok(Json(PortsResponse { ports }))
}

#[utoipa::path(method(get, post, put, patch, delete, options), path = "/api/v1/instances/{id}/ports/{port}", tag = "instances", summary = "Redirects (308) to the port's root, `.../ports/{port}/`", params(("id" = String, Path, description = "instance id"), ("port" = u16, Path, description = "TCP port in the instance")), responses((status = 308, description = "to the same path with a slash"), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn proxy_bare(Path((id, port)): Path<(String, String)>, uri: Uri) -> ApiResult<Response> {
    let port = port_of(&port)?;
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let to = format!("/api/v1/instances/{id}/ports/{port}/{q}");
    Ok((
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, to)],
        Body::empty(),
    )
        .into_response())
}

#[utoipa::path(method(get, post, put, patch, delete, options), path = "/api/v1/instances/{id}/ports/{port}/", tag = "instances", summary = "HTTP to `/` of a port an instance listens on (any method, streamed bodies, WebSocket upgrades); the owner's key or, with `public_ports`, its `faas_token`", params(("id" = String, Path, description = "instance id"), ("port" = u16, Path, description = "TCP port in the instance"), ("faas_token" = Option<String>, Query, description = "the instance's ports token (public ports)")), responses((status = 200, description = "whatever the instance's server answers"), (status = 502, description = "`port_closed`: nothing listens there; `bad_gateway`: no HTTP answer", body = faas_common::ErrorBody), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn proxy_root(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let prefix = format!("/api/v1/instances/{id}/ports/{port}");
    let port = port_of(&port)?;
    forward(&s, &id, port, "/", &prefix, req).await
}

#[utoipa::path(method(get, post, put, patch, delete, options), path = "/api/v1/instances/{id}/ports/{port}/{*path}", tag = "instances", summary = "HTTP to `/{path}` of a port an instance listens on, as `.../ports/{port}/`", params(("id" = String, Path, description = "instance id"), ("port" = u16, Path, description = "TCP port in the instance"), ("path" = String, Path, description = "the path on the instance's server"), ("faas_token" = Option<String>, Query, description = "the instance's ports token (public ports)")), responses((status = 200, description = "whatever the instance's server answers"), (status = 502, description = "`port_closed`: nothing listens there; `bad_gateway`: no HTTP answer", body = faas_common::ErrorBody), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn proxy_path(
    State(s): State<AppState>,
    Path((id, port, _path)): Path<(String, String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let prefix = format!("/api/v1/instances/{id}/ports/{port}");
    let port = port_of(&port)?;
    // The path as sent (still percent-encoded), after the prefix.
    let path = req
        .uri()
        .path()
        .get(prefix.len()..)
        .unwrap_or("/")
        .to_string();
    forward(&s, &id, port, &path, &prefix, req).await
}

/// Answers requests for `{port}-{id}.{domain}` with the port proxy, ahead of the routes and
/// their authentication (it authenticates itself: a key, or a ports token).
pub async fn sandbox_host(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(domain) = s.sandbox_domain.as_deref() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let Some((port, id)) = parse_port_host(host, domain) else {
        return next.run(req).await;
    };
    let id = id.to_string();
    let mut req = req;
    match auth::key_caller(&s, req.headers()).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
        }
        // No key: the instance's token, or an instance open to whoever names it.
        Ok(None) => {}
        Err(resp) => return resp,
    }
    let path = req.uri().path().to_string();
    forward(&s, &id, port, &path, "", req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Passes `req` to `port` of instance `id` as a request for `path` (plus its query), and the
/// answer back. `prefix` is where the proxy serves the port (empty on its own host name).
pub(crate) async fn forward(
    s: &AppState,
    id: &str,
    port: u16,
    path: &str,
    prefix: &str,
    mut req: Request,
) -> ApiResult<Response> {
    let caller = req.extensions().get::<Caller>().cloned();
    let token = token_of(req.headers(), req.uri().query());
    let access = match (&caller, token.as_deref()) {
        (Some(c), t) => PortAccess::Caller(c, t),
        (None, Some(t)) => PortAccess::Token(t),
        (None, None) => PortAccess::Anonymous,
    };
    let token_in_query = req
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == TOKEN_QUERY));
    let PortConn { stream, lease } = s.platform.instances.port_connect(access, id, port).await?;

    // The request as the box's server sees it.
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let target = match query_without_token(parts.uri.query()) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("request: {e}")))?;
    let headers = out.headers_mut();
    copy_headers(&parts.headers, headers, upgrade);
    if !headers.contains_key(header::HOST) {
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&format!("127.0.0.1:{port}")).expect("a host value"),
        );
    }
    if let Some(h) = parts.headers.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if s.tls { "https" } else { "http" }),
    );
    if !prefix.is_empty() {
        if let Ok(v) = HeaderValue::from_str(prefix) {
            headers.insert(HeaderName::from_static("x-forwarded-prefix"), v);
        }
    }

    let bad = |e: hyper::Error| {
        ApiError::new(
            ErrorCode::BadGateway,
            format!("port {port} of instance {id} did not answer with HTTP: {e}"),
        )
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad)?;
    let conn_lease = lease.clone();
    tokio::spawn(async move {
        // The connection (and the instance's lease) lives until the answer's body is read
        // or given up, or, upgraded, is handed over.
        let _lease = conn_lease;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "port proxy connection");
        }
    });
    let mut resp = sender.send_request(out).await.map_err(bad)?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::new(
                ErrorCode::BadGateway,
                format!("port {port} of instance {id} switched protocols unasked"),
            ));
        };
        let box_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _lease = lease;
            match tokio::join!(client_upgrade, box_upgrade) {
                (Ok(a), Ok(b)) => {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                (a, b) => tracing::debug!(client = ?a.err(), sandbox = ?b.err(), "upgrade"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    if token_in_query {
        // The page's next requests (its scripts, its images) carry the token as a cookie,
        // for this host and under this port's prefix only.
        if let Some(t) = &token {
            let path = if prefix.is_empty() { "/" } else { prefix };
            let cookie = format!("{TOKEN_COOKIE}={t}; Path={path}; HttpOnly; SameSite=Lax");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, v);
            }
        }
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The request headers a box's server is given: all but hop-by-hop ones (except, for an
/// upgrade, `Connection` and `Upgrade`), the platform's key and the ports token.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    for (name, value) in from {
        let n = name.as_str();
        let keep_for_upgrade = upgrade && (n == "connection" || n == "upgrade");
        if (HOP_BY_HOP.contains(&n) && !keep_for_upgrade)
            || n == "authorization"
            || n == "x-api-key"
            || n == TOKEN_HEADER
            || n == E2B_TOKEN_HEADER
        {
            continue;
        }
        if name == header::COOKIE {
            let Ok(v) = value.to_str() else { continue };
            let rest: Vec<&str> = v
                .split(';')
                .map(str::trim)
                .filter(|c| !c.starts_with(&format!("{TOKEN_COOKIE}=")) && !c.is_empty())
                .collect();
            if !rest.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&rest.join("; ")) {
                    to.append(header::COOKIE, v);
                }
            }
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/tunnel/{port}", tag = "instances", summary = "A WebSocket carrying a raw TCP connection to a port of the instance (binary frames both ways; closed when either side ends): `faas instances port-forward`", params(("id" = String, Path, description = "instance id"), ("port" = u16, Path, description = "TCP port in the instance")), responses((status = 101, description = "switching to the WebSocket protocol"), (status = 502, description = "`port_closed`: nothing listens there", body = faas_common::ErrorBody), (status = "default", description = "an error: `{\"error\": {\"code\", \"message\"}}`", body = faas_common::ErrorBody)))]
async fn tunnel(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, port)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let port = port_of(&port)?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => {
            s.platform.instances.instance_get(&caller, &id).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("this route is a WebSocket: {}", rej.body_text()),
            ));
        }
    };
    // Connected before the upgrade, so a closed port is a JSON error.
    let conn = s
        .platform
        .instances
        .port_connect(PortAccess::Caller(&caller, None), &id, port)
        .await?;
    Ok(ws.on_upgrade(move |socket| splice(socket, conn)))
}

/// Bytes between a WebSocket and a port connection until either ends.
async fn splice(mut ws: WebSocket, conn: PortConn) {
    let PortConn { stream, lease } = conn;
    let _lease = lease;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if wr.write_all(t.as_bytes()).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The client is done sending: pass the end on, keep reading the answer.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = wr.shutdown().await;
                    // Drain what the box still sends, then end.
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    break;
                }
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_hosts_parse_strictly() {
        assert_eq!(
            parse_port_host("8000-abc123.sb.example", "sb.example"),
            Some((8000, "abc123"))
        );
        assert_eq!(
            parse_port_host("8000-abc123.SB.example:8443", "sb.example"),
            Some((8000, "abc123"))
        );
        for bad in [
            "sb.example",
            "8000.sb.example",
            "-abc.sb.example",
            "0-abc.sb.example",
            "70000-abc.sb.example",
            "8000-.sb.example",
            "8000-abc.evil.example",
            "8000-abc.sb.example.evil",
            "8000-a/b.sb.example",
            "8000-abcsb.example",
            "x8000-abc.sb.example",
        ] {
            assert_eq!(parse_port_host(bad, "sb.example"), None, "{bad}");
        }
        assert_eq!(port_host("sb.example", "abc", 80), "80-abc.sb.example");
    }

    #[test]
    fn tokens_come_from_query_header_or_cookie_and_are_not_passed_on() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h, Some("a=1")), None);
        assert_eq!(
            token_of(&h, Some("a=1&faas_token=t1")).as_deref(),
            Some("t1")
        );
        h.insert(TOKEN_HEADER, "t2".parse().unwrap());
        assert_eq!(token_of(&h, None).as_deref(), Some("t2"));
        let mut c = HeaderMap::new();
        c.insert(header::COOKIE, "x=1; faas_ports_token=t3".parse().unwrap());
        assert_eq!(token_of(&c, None).as_deref(), Some("t3"));
        assert_eq!(
            query_without_token(Some("a=1&faas_token=t1&b=2")).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(query_without_token(Some("faas_token=t1")), None);
        assert_eq!(query_without_token(Some("a=%2F")).as_deref(), Some("a=%2F"));

        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        from.insert("x-api-key", "k".parse().unwrap());
        from.insert(TOKEN_HEADER, "t".parse().unwrap());
        from.insert(header::COOKIE, "faas_ports_token=t; app=1".parse().unwrap());
        from.insert(header::CONNECTION, "upgrade".parse().unwrap());
        from.insert(header::UPGRADE, "websocket".parse().unwrap());
        from.insert("x-app", "y".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, false);
        assert_eq!(to.len(), 2, "{to:?}");
        assert_eq!(to["cookie"], "app=1");
        assert_eq!(to["x-app"], "y");
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, true);
        assert_eq!(to["upgrade"], "websocket");
        assert!(!to.contains_key("authorization"));
    }

    #[test]
    fn only_proxy_paths_with_a_token_skip_the_key() {
        let h = HeaderMap::new();
        let p = "/api/v1/instances/abc/ports/8000/x";
        assert!(token_only(p, &h, Some("faas_token=t")));
        assert!(!token_only(p, &h, None));
        assert!(!token_only(
            "/api/v1/instances/abc/ports",
            &h,
            Some("faas_token=t")
        ));
        assert!(!token_only(
            "/api/v1/instances/abc/files",
            &h,
            Some("faas_token=t")
        ));
        assert!(!token_only(
            "/api/v1/instances/abc/tunnel/80",
            &h,
            Some("faas_token=t")
        ));
    }
}
