//! `faas run`: a thin HTTP client of `POST /api/v1/execute`.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use faas_common::{CommandSpec, ExecuteRequest, ExecuteResponse, Mode, Runtime};
use reqwest::header::RETRY_AFTER;

use crate::http::{answer_error, unreached, Api, ConnectArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    #[arg(long, value_parser = parse_runtime)]
    pub runtime: Option<Runtime>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    #[arg(long, short = 'w')]
    pub working_dir: Option<String>,
    /// An id of your choosing, to follow the output with `faas logs ID`.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Print the whole JSON response instead of the command's output.
    #[arg(long)]
    pub json: bool,
    /// One argument is run by `sh -c`; several are run as argv.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

/// Exit code when the platform (not the command) failed, as `docker run` uses.
const PLATFORM_FAILURE: u8 = 125;

pub async fn run(a: RunArgs) -> anyhow::Result<u8> {
    let command = match a.command.as_slice() {
        [one] => CommandSpec::Shell(one.clone()),
        many => CommandSpec::Argv(many.to_vec()),
    };
    let mut req = ExecuteRequest::new(command);
    req.image = a.image;
    req.mode = a.mode;
    req.runtime = a.runtime;
    req.timeout_ms = a.timeout_ms;
    req.memory_mb = a.memory_mb;
    req.working_dir = a.working_dir;
    req.request_id = a.request_id;
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))?;
        req.env_vars.0.push((k.into(), v.into()));
    }
    let api = Api::new(&a.connect)?;
    let url = api.url("/api/v1/execute");
    let resp = api
        .http
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(|e| unreached(e, &format!("POST {url}")))?;
    let status = resp.status();
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    let body = resp.bytes().await.context("read the response")?;
    if !status.is_success() {
        let text = answer_error(status.as_u16(), retry_after.as_ref(), &body);
        eprintln!("faas: {text}");
        return Ok(PLATFORM_FAILURE);
    }
    let r: ExecuteResponse = serde_json::from_slice(&body).context("parse the response")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        std::io::stdout().write_all(r.stdout.as_bytes())?;
        std::io::stderr().write_all(r.stderr.as_bytes())?;
        if let Some(e) = &r.error {
            eprintln!("faas: {e}");
        }
    }
    Ok(u8::try_from(r.exit_code).unwrap_or(PLATFORM_FAILURE))
}
