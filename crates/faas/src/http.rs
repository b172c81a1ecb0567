//! The CLI's client of the API, one for every command, the benchmarks and the terminal: the
//! server's URL, the API key sent with each request (and in the WebSocket handshake), and the
//! TLS roots of an https server.
//!
//! The key is `--api-key` / `FAAS_API_KEY`, else the admin key a server on this host wrote to
//! `$FAAS_DATA_DIR/admin.key` (default `/var/lib/faas`) when this user can read it, else none,
//! and the server answers 401. It is never printed: [`ApiKey`]'s `Debug` hides it, and the
//! header is marked sensitive (reqwest drops it on a redirect to another host).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use faas_common::ErrorBody;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// The file of a server's data dir that holds its first admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// The data dir of `faas serve` when `FAAS_DATA_DIR` names none.
const DEFAULT_DATA_DIR: &str = "/var/lib/faas";

/// How to reach the server: the flags of every command that talks to the API.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The server's base URL (`http://` or `https://`).
    #[arg(
        long,
        env = "FAAS_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// The API key [default: the server's admin key, `$FAAS_DATA_DIR/admin.key`, when readable].
    #[arg(long, env = "FAAS_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<ApiKey>,
    /// A CA certificate (PEM) to trust besides the system's, for an https server.
    #[arg(long, env = "FAAS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// The server and output flags every API command takes.
#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the JSON answers instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An API key, kept as its `Authorization: Bearer KEY` header (marked sensitive). Its `Debug`
/// shows no part of it.
#[derive(Clone)]
pub struct ApiKey(HeaderValue);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;

    /// Surrounding whitespace (a file's last newline) is not part of the key.
    fn from_str(s: &str) -> Result<ApiKey, String> {
        let key = s.trim();
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        // The message names no part of the key.
        let mut header = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "an API key has printable ASCII characters only".to_string())?;
        header.set_sensitive(true);
        Ok(ApiKey(header))
    }
}

impl ApiKey {
    /// The key a command sends: `given` (`--api-key`, `FAAS_API_KEY`), else the admin key of
    /// the server whose data dir is `FAAS_DATA_DIR` (default `/var/lib/faas`), when readable.
    pub fn find(given: Option<&ApiKey>) -> Option<ApiKey> {
        given.cloned().or_else(|| {
            let dir = std::env::var_os("FAAS_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            ApiKey::in_data_dir(&dir)
        })
    }

    /// The admin key a server wrote to its data dir `dir`, when it is there and readable.
    pub fn in_data_dir(dir: &Path) -> Option<ApiKey> {
        let path = dir.join(ADMIN_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => text.parse().ok(),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no admin key");
                None
            }
        }
    }
}

/// `STATUS (code): message` of an error answer, and when to try again if the server said.
pub(crate) fn answer_error(status: u16, retry_after: Option<&HeaderValue>, body: &[u8]) -> String {
    let mut text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => format!("{status} ({}): {}", e.error.code, e.error.message),
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(body)),
    };
    if let Some(s) = retry_after.and_then(|v| v.to_str().ok()) {
        text.push_str(&format!(" (retry after {s} s)"));
    }
    text
}

/// The error of a request that did not reach the server, with a hint when the server's
/// certificate is not trusted.
pub(crate) fn unreached<E>(e: E, what: &str) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    if untrusted_certificate(&e) {
        return anyhow::Error::new(e).context(format!(
            "{what} (for a server whose certificate comes from your own CA, pass it with \
             --ca-cert or FAAS_CA_CERT)"
        ));
    }
    anyhow::Error::new(e).context(what.to_string())
}

/// Whether `e` comes from a certificate rustls did not accept.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(s) = next {
        if matches!(
            s.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        ) {
            return true;
        }
        // An `io::Error` names the error it wraps in `get_ref`; its `source` skips that one.
        next = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    false
}

/// The WebSocket of a terminal (`ws://`, or `wss://` through rustls).
pub(crate) type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A small JSON client: an error answer becomes `faas: STATUS (code): message`.
#[derive(Clone)]
pub(crate) struct Api {
    pub base: String,
    /// Sends the key with every request; trusts the system's roots and `--ca-cert`.
    pub http: reqwest::Client,
    key: Option<ApiKey>,
    /// The TLS settings of an https server, for the WebSocket too.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Api {
    /// A client with the flags' server, key (or the one found, see [`ApiKey::find`]) and CA.
    pub fn new(a: &ConnectArgs) -> anyhow::Result<Api> {
        Api::connect(
            &a.server,
            ApiKey::find(a.api_key.as_ref()),
            a.ca_cert.as_deref(),
        )
    }

    /// A client of `server` that sends `key` (no `Authorization` without one) and, for an
    /// https server, trusts the system's roots and `ca_cert`.
    pub fn connect(
        server: &str,
        key: Option<ApiKey>,
        ca_cert: Option<&Path>,
    ) -> anyhow::Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        let mut headers = HeaderMap::new();
        if let Some(k) = &key {
            headers.insert(AUTHORIZATION, k.0.clone());
        }
        let builder = reqwest::Client::builder().default_headers(headers);
        let (builder, tls) = if base.starts_with("https://") {
            let tls = Arc::new(crate::tls::client_config(ca_cert)?);
            (builder.use_preconfigured_tls((*tls).clone()), Some(tls))
        } else {
            // Plain HTTP: no roots to load.
            (builder.tls_built_in_root_certs(false), None)
        };
        let http = builder.build().context("set up the HTTP client")?;
        Ok(Api {
            base,
            http,
            key,
            tls,
        })
    }

    /// Sends; an error answer becomes an error carrying its status, code and message.
    pub async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| unreached(e, "reach the server"))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let retry_after = resp.headers().get(RETRY_AFTER).cloned();
            let body = resp.bytes().await.context("read the answer")?;
            bail!("{}", answer_error(status, retry_after.as_ref(), &body));
        }
        Ok(resp)
    }

    /// Sends and parses the JSON answer (`null` when it has no body).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = self.send_raw(req).await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.context("read the answer")?;
        if body.is_empty() {
            return Ok((status, Value::Null));
        }
        Ok((
            status,
            serde_json::from_slice(&body).context("parse the answer")?,
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens the WebSocket at `path` (with its query) on the server, the key in the handshake.
    pub async fn websocket(&self, path: &str) -> anyhow::Result<WebSocket> {
        let base = if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            bail!(
                "the server URL {:?} is neither http:// nor https://",
                self.base
            )
        };
        let mut req = format!("{base}{path}")
            .into_client_request()
            .context("the WebSocket's URL")?;
        if let Some(k) = &self.key {
            req.headers_mut().insert(AUTHORIZATION, k.0.clone());
        }
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        match tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get(RETRY_AFTER);
                let body = resp.body().as_deref().unwrap_or_default();
                bail!("{}", answer_error(status, retry_after, body))
            }
            Err(e) => Err(unreached(e, "open the WebSocket")),
        }
    }
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_never_shown() {
        let key: ApiKey = " faas_secret123\n".parse().unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
        assert_eq!(key.0.to_str().unwrap(), "Bearer faas_secret123");
        assert!(key.0.is_sensitive());
        let e = "faas_s\u{7f}cret".parse::<ApiKey>().unwrap_err();
        assert!(!e.contains("cret"), "{e}");
        assert!("  \n".parse::<ApiKey>().is_err());
    }

    #[test]
    fn the_admin_key_comes_from_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ApiKey::in_data_dir(dir.path()).is_none());
        std::fs::write(dir.path().join(ADMIN_KEY_FILE), "faas_abc\n").unwrap();
        let key = ApiKey::in_data_dir(dir.path()).unwrap();
        assert_eq!(key.0.to_str().unwrap(), "Bearer faas_abc");
        let given: ApiKey = "faas_given".parse().unwrap();
        let found = ApiKey::find(Some(&given)).unwrap();
        assert_eq!(found.0.to_str().unwrap(), "Bearer faas_given");
    }

    #[test]
    fn error_answers_read_as_one_line() {
        let body = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let retry = HeaderValue::from_static("2");
        assert_eq!(
            answer_error(429, Some(&retry), body),
            "429 (rate_limited): slow down (retry after 2 s)"
        );
        assert_eq!(answer_error(502, None, b"bad gateway"), "502: bad gateway");
    }
}
