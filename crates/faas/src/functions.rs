//! `faas fn ...` and `faas invocations ...`: clients of the functions API.

use std::path::PathBuf;

use crate::http::{print_json, Api, ApiArgs};
use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use faas_common::{
    DeployRequest, EnvVars, FunctionInfo, FunctionRuntime, FunctionsResponse, InvocationInfo,
    InvocationsResponse,
};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct FnArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: FnCmd,
}

#[derive(Subcommand, Debug)]
pub enum FnCmd {
    /// Deploy a function (a new version when the name exists).
    Deploy(DeployArgs),
    /// List functions.
    List,
    /// Show a function (its latest version, or `--version`).
    Get {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Delete a function, all its versions and its queued invocations.
    Rm { name: String },
    /// Invoke a function with a JSON payload; exits 1 when it did not succeed.
    Invoke {
        name: String,
        /// The JSON payload (default `null`); `@FILE` reads it from a file.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// Queue it and print the invocation id.
        #[arg(long = "async")]
        is_async: bool,
        #[arg(long)]
        version: Option<i64>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        max_attempts: Option<i64>,
        #[arg(long)]
        callback_url: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    pub name: String,
    /// python, node, shell, binary or image.
    #[arg(long, value_parser = parse_runtime)]
    pub runtime: FunctionRuntime,
    /// The code: one source file, or a .zip / .tar / .tar.gz archive.
    #[arg(long)]
    pub code: Option<PathBuf>,
    /// `module.function` (python, node), or the file name (shell, binary).
    #[arg(long)]
    pub handler: Option<String>,
    #[arg(long)]
    pub image: Option<String>,
    /// The image runtime's command, run by `sh -c`.
    #[arg(long)]
    pub command: Option<String>,
    /// `KEY=VALUE`, repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    #[arg(long)]
    pub memory_mb: Option<u64>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub min_warm: Option<u32>,
    #[arg(long)]
    pub max_concurrency: Option<u32>,
}

#[derive(Args, Debug)]
pub struct InvocationsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: InvocationsCmd,
}

#[derive(Subcommand, Debug)]
pub enum InvocationsCmd {
    /// Show one invocation.
    Get { id: String },
    /// List invocations, newest first.
    List {
        #[arg(long)]
        function: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn parse_runtime(s: &str) -> Result<FunctionRuntime, String> {
    serde_json::from_value(Value::String(s.into())).map_err(|e| e.to_string())
}

fn function_row(f: &FunctionInfo) {
    println!(
        "{:<24} {:>4} {:<7} {:<22} {:>6} {:>8} {:>5}",
        f.name,
        f.version,
        f.runtime.as_str(),
        f.handler.as_deref().unwrap_or("-"),
        f.memory_mb,
        f.timeout_ms,
        f.warm
    );
}

fn function_header() {
    println!(
        "{:<24} {:>4} {:<7} {:<22} {:>6} {:>8} {:>5}",
        "NAME", "VER", "RUNTIME", "HANDLER", "MEM_MB", "TIMEOUT", "WARM"
    );
}

fn invocation_text(i: &InvocationInfo) {
    let result = i.result.as_ref().map(|r| r.to_string()).unwrap_or_default();
    println!(
        "{} {} v{} {} {}{}",
        i.invocation_id,
        i.function,
        i.version,
        i.status,
        i.duration_ms
            .map(|d| format!("{d:.2}ms "))
            .unwrap_or_default(),
        if i.cold == Some(true) { "cold" } else { "" }
    );
    if !result.is_empty() && result != "null" {
        println!("result: {result}");
    }
    if let Some(e) = &i.error {
        println!("error: {}: {}", e.kind, e.message);
        if let Some(tb) = &e.traceback {
            eprint!("{tb}");
        }
    }
    if !i.logs.is_empty() {
        eprint!("{}", i.logs);
    }
}

pub async fn run(a: FnArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    match a.cmd {
        FnCmd::Deploy(d) => {
            let mut req = DeployRequest {
                name: Some(d.name.clone()),
                runtime: Some(d.runtime),
                handler: d.handler,
                image: d.image,
                command: d.command.map(faas_common::CommandSpec::Shell),
                memory_mb: d.memory_mb,
                timeout_ms: d.timeout_ms,
                min_warm: d.min_warm,
                max_concurrency: d.max_concurrency,
                ..Default::default()
            };
            if !d.env.is_empty() {
                let mut env = EnvVars::default();
                for kv in &d.env {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))?;
                    env.0.push((k.into(), v.into()));
                }
                req.env_vars = Some(env);
            }
            if let Some(path) = &d.code {
                let bytes =
                    std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
                let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
                let name = path.to_string_lossy();
                let archive = [".zip", ".tar", ".tar.gz", ".tgz"]
                    .iter()
                    .any(|e| name.ends_with(e));
                if archive {
                    req.archive_b64 = Some(text);
                } else {
                    req.code_b64 = Some(text);
                }
            }
            let (_, v) = api
                .send(api.http.post(api.url("/api/v1/functions")).json(&req))
                .await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                let f: FunctionInfo = serde_json::from_value(v)?;
                println!("deployed {} version {}", f.name, f.version);
            }
        }
        FnCmd::List => {
            let (_, v) = api.send(api.http.get(api.url("/api/v1/functions"))).await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                let list: FunctionsResponse = serde_json::from_value(v)?;
                function_header();
                list.functions.iter().for_each(function_row);
            }
        }
        FnCmd::Get { name, version } => {
            let mut path = format!("/api/v1/functions/{name}");
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let (_, v) = api.send(api.http.get(api.url(&path))).await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                let f: FunctionInfo = serde_json::from_value(v)?;
                function_header();
                function_row(&f);
                println!("versions: {:?}", f.versions);
            }
        }
        FnCmd::Rm { name } => {
            let (_, v) = api
                .send(
                    api.http
                        .delete(api.url(&format!("/api/v1/functions/{name}"))),
                )
                .await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                println!(
                    "deleted {name}; {} queued invocation(s) failed",
                    v["failed_invocations"]
                );
            }
        }
        FnCmd::Invoke {
            name,
            data,
            is_async,
            version,
            idempotency_key,
            max_attempts,
            callback_url,
        } => {
            let body = match data.as_deref() {
                Some(d) if d.starts_with('@') => {
                    std::fs::read(&d[1..]).with_context(|| format!("read {}", &d[1..]))?
                }
                Some(d) => d.as_bytes().to_vec(),
                None => b"null".to_vec(),
            };
            let mut q: Vec<(&str, String)> = Vec::new();
            if is_async {
                q.push(("async", "true".into()));
            }
            if let Some(v) = version {
                q.push(("version", v.to_string()));
            }
            if let Some(m) = max_attempts {
                q.push(("max_attempts", m.to_string()));
            }
            if let Some(u) = callback_url {
                q.push(("callback_url", u));
            }
            let mut req = api
                .http
                .post(api.url(&format!("/api/v1/functions/{name}/invoke")))
                .query(&q)
                .header("content-type", "application/json")
                .body(body);
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let (_, v) = api.send(req).await?;
            if a.api.json {
                print_json(&v)?;
                return Ok(u8::from(!matches!(
                    v["status"].as_str(),
                    Some("succeeded" | "queued")
                )));
            }
            if is_async {
                println!("{}", v["invocation_id"].as_str().unwrap_or_default());
                return Ok(0);
            }
            let i: InvocationInfo = serde_json::from_value(v)?;
            invocation_text(&i);
            return Ok(u8::from(i.status != "succeeded"));
        }
    }
    Ok(0)
}

pub async fn run_invocations(a: InvocationsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    match a.cmd {
        InvocationsCmd::Get { id } => {
            let (_, v) = api
                .send(api.http.get(api.url(&format!("/api/v1/invocations/{id}"))))
                .await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                invocation_text(&serde_json::from_value(v)?);
            }
        }
        InvocationsCmd::List {
            function,
            status,
            limit,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(f) = function {
                q.push(("function", f));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            let (_, v) = api
                .send(api.http.get(api.url("/api/v1/invocations")).query(&q))
                .await?;
            if a.api.json {
                print_json(&v)?;
            } else {
                let list: InvocationsResponse = serde_json::from_value(v)?;
                println!(
                    "{:<36} {:<24} {:>4} {:<12} {:>8} {:>10}",
                    "ID", "FUNCTION", "VER", "STATUS", "ATTEMPTS", "MS"
                );
                for i in list.invocations {
                    println!(
                        "{:<36} {:<24} {:>4} {:<12} {:>8} {:>10}",
                        i.invocation_id,
                        i.function,
                        i.version,
                        i.status,
                        i.attempts,
                        i.duration_ms.map(|d| format!("{d:.2}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(0)
}
