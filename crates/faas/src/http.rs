//! The CLI's HTTP client of the API.

use anyhow::{bail, Context};
use clap::Args;
use faas_common::ErrorBody;
use serde_json::Value;

/// The server and output flags every API command takes.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "FAAS_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Print the JSON answers instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A small JSON client: an error answer becomes `faas: STATUS (code): message`.
pub(crate) struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(server: &str) -> Api {
        Api {
            base: server.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends; an error answer becomes an error carrying its status, code and message.
    pub async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.context("reach the server")?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let body = resp.bytes().await.context("read the answer")?;
            match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => bail!("{status} ({}): {}", e.error.code, e.error.message),
                Err(_) => bail!("{status}: {}", String::from_utf8_lossy(&body)),
            }
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
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
