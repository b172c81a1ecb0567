//! `faas instances|snapshots|pools|health|metrics|logs|openapi`: the rest of the API from the
//! command line. Tables by default, `--json` for the answers as they are.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::http::{print_json, Api, ApiArgs};
use crate::{portfwd, procs};

#[derive(Args, Debug)]
pub struct InstancesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: InstancesCmd,
}

#[derive(Subcommand, Debug)]
pub enum InstancesCmd {
    /// Create an instance; prints its id.
    Create {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        idle_timeout_s: Option<u64>,
        /// `gvisor` for memory snapshots.
        #[arg(long)]
        isolation: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = procs::parse_kv)]
        metadata: Vec<(String, String)>,
        /// What it may reach: `none` (the default), `internet`, or rules as JSON
        /// (`{"egress":"deny","allow":["example.com"]}`).
        #[arg(long, value_parser = portfwd::parse_network)]
        network: Option<Value>,
        /// Its ports answer without a key to whoever has its `ports_token` (printed with
        /// `--json`).
        #[arg(long)]
        public_ports: bool,
    },
    List {
        /// Only instances with this label, KEY=VALUE (repeatable: all of them).
        #[arg(long, value_name = "KEY=VALUE", value_parser = procs::parse_kv)]
        metadata: Vec<(String, String)>,
    },
    Get {
        id: String,
    },
    /// Run a command in an instance; exits with its code.
    Exec {
        id: String,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// One argument is run by `sh -c`; several are run as argv.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    Stop {
        id: String,
    },
    Start {
        id: String,
    },
    Rm {
        id: String,
    },
    /// Copy a local file into an instance.
    Upload {
        id: String,
        local: PathBuf,
        path: String,
    },
    /// Copy a file out of an instance (to stdout with `-`).
    Download {
        id: String,
        path: String,
        local: String,
    },
    /// Fork into N new instances.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Snapshot an instance (`--memory` on gVisor instances).
    Snapshot {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        memory: bool,
    },
    /// The processes of an instance (running and recently ended).
    Ps {
        id: String,
    },
    /// Start a process in the background; prints its pid.
    Spawn(procs::SpawnArgs),
    /// Follow a process's output; exits with its exit code.
    Attach {
        id: String,
        pid: u32,
    },
    /// Write TEXT (or this command's stdin) to a process's stdin.
    Send {
        id: String,
        pid: u32,
        text: Option<String>,
        /// Close the process's stdin after.
        #[arg(long)]
        close: bool,
    },
    /// Send a signal to a process (its group).
    Kill {
        id: String,
        pid: u32,
        #[arg(long, short = 's', default_value = "SIGTERM")]
        signal: String,
    },
    /// An interactive shell in an instance (like `docker exec -it`); exits with its code.
    Shell {
        id: String,
        /// Columns [default: the local terminal's, else 80].
        #[arg(long)]
        cols: Option<u16>,
        /// Rows [default: the local terminal's, else 24].
        #[arg(long)]
        rows: Option<u16>,
    },
    /// The TCP ports something listens on in an instance.
    Ports {
        id: String,
    },
    /// Forward a local TCP port to a port of an instance (like `kubectl port-forward`):
    /// `[LOCAL:]REMOTE`, LOCAL 0 for any free one; runs until interrupted.
    PortForward {
        id: String,
        #[arg(value_parser = portfwd::parse_ports)]
        ports: (u16, u16),
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Files of an instance: ls, stat, mkdir, mv, rm, watch.
    Fs {
        id: String,
        #[command(subcommand)]
        cmd: procs::FsCmd,
    },
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: SnapshotsCmd,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCmd {
    List,
    Get {
        id: String,
    },
    Rm {
        id: String,
    },
    /// Restore into a new instance; prints its id.
    Restore {
        id: String,
    },
    /// Branch into N new instances.
    Branch {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

#[derive(Args, Debug)]
pub struct PoolsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: PoolsCmd,
}

#[derive(Subcommand, Debug)]
pub enum PoolsCmd {
    List,
    /// Set the warm pool of an image to COUNT started sandboxes.
    Prewarm {
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        runtime: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct SimpleArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The Prometheus text format.
    #[arg(long)]
    pub prometheus: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The execution's request id.
    pub id: String,
}

fn instance_header() {
    println!(
        "{:<18} {:<12} {:<9} {:<8} {:<40} {:>6}",
        "ID", "NAME", "STATUS", "BACKEND", "IMAGE", "MEM_MB"
    );
}

fn instance_row(i: &Value) {
    println!(
        "{:<18} {:<12} {:<9} {:<8} {:<40} {:>6}",
        i["id"].as_str().unwrap_or_default(),
        i["name"].as_str().unwrap_or("-"),
        i["status"].as_str().unwrap_or_default(),
        i["backend"].as_str().unwrap_or_default(),
        i["image"].as_str().unwrap_or_default(),
        i["memory_mb"]
    );
}

/// The header and a row per instance of an answer's `instances` list.
fn instance_table(v: &Value) {
    instance_header();
    v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .for_each(instance_row);
}

fn snapshot_header() {
    println!(
        "{:<18} {:<12} {:<11} {:<18} {:>12}",
        "ID", "NAME", "KIND", "INSTANCE", "BYTES"
    );
}

fn snapshot_row(s: &Value) {
    println!(
        "{:<18} {:<12} {:<11} {:<18} {:>12}",
        s["id"].as_str().unwrap_or_default(),
        s["name"].as_str().unwrap_or("-"),
        s["kind"].as_str().unwrap_or_default(),
        s["instance_id"].as_str().unwrap_or("-"),
        s["size_bytes"]
    );
}

/// Prints `v` as JSON, or with `table`.
fn show(json_out: bool, v: &Value, table: impl FnOnce(&Value)) -> anyhow::Result<u8> {
    if json_out {
        print_json(v)?;
    } else {
        table(v);
    }
    Ok(0)
}

fn command_value(words: &[String]) -> Value {
    match words {
        [one] => json!(one),
        many => json!(many),
    }
}

pub async fn instances(a: InstancesArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let j = a.api.json;
    let path = |id: &str, rest: &str| api.url(&format!("/api/v1/instances/{id}{rest}"));
    match a.cmd {
        InstancesCmd::Create {
            image,
            name,
            memory_mb,
            idle_timeout_s,
            isolation,
            metadata,
            network,
            public_ports,
        } => {
            let body = json!({"image": image, "name": name, "memory_mb": memory_mb,
                              "idle_timeout_s": idle_timeout_s, "isolation": isolation,
                              "network": network, "public_ports": public_ports.then_some(true)});
            let mut body: serde_json::Map<String, Value> = body
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            procs::metadata_body(&mut body, &metadata);
            let (_, v) = api
                .send(api.http.post(api.url("/api/v1/instances")).json(&body))
                .await?;
            show(j, &v, |v| {
                println!("{}", v["id"].as_str().unwrap_or_default())
            })
        }
        InstancesCmd::List { metadata } => {
            let (_, v) = api
                .send(
                    api.http
                        .get(api.url("/api/v1/instances"))
                        .query(&procs::metadata_query(&metadata)),
                )
                .await?;
            show(j, &v, |v| {
                instance_table(v);
            })
        }
        InstancesCmd::Get { id } => {
            let (_, v) = api.send(api.http.get(path(&id, ""))).await?;
            show(j, &v, |v| {
                instance_header();
                instance_row(v);
                procs::print_metadata(v);
            })
        }
        InstancesCmd::Exec {
            id,
            timeout_ms,
            command,
        } => {
            let body = json!({"command": command_value(&command), "timeout_ms": timeout_ms});
            let (_, v) = api
                .send(api.http.post(path(&id, "/exec")).json(&body))
                .await?;
            if j {
                print_json(&v)?;
            } else {
                std::io::stdout().write_all(v["stdout"].as_str().unwrap_or_default().as_bytes())?;
                std::io::stderr().write_all(v["stderr"].as_str().unwrap_or_default().as_bytes())?;
            }
            Ok(u8::try_from(v["exit_code"].as_i64().unwrap_or(125)).unwrap_or(125))
        }
        InstancesCmd::Stop { id } => {
            let (_, v) = api.send(api.http.post(path(&id, "/stop"))).await?;
            show(j, &v, |v| {
                println!("{} {}", id, v["status"].as_str().unwrap_or_default())
            })
        }
        InstancesCmd::Start { id } => {
            let (_, v) = api.send(api.http.post(path(&id, "/start"))).await?;
            show(j, &v, |v| {
                println!("{} {}", id, v["status"].as_str().unwrap_or_default())
            })
        }
        InstancesCmd::Rm { id } => {
            api.send(api.http.delete(path(&id, ""))).await?;
            show(j, &Value::Null, |_| println!("deleted {id}"))
        }
        InstancesCmd::Upload { id, local, path: p } => {
            let data =
                std::fs::read(&local).with_context(|| format!("read {}", local.display()))?;
            api.send(
                api.http
                    .put(path(&id, "/files"))
                    .query(&[("path", &p)])
                    .body(data),
            )
            .await?;
            show(j, &Value::Null, |_| {
                println!("uploaded {} to {id}:{p}", local.display())
            })
        }
        InstancesCmd::Download { id, path: p, local } => {
            let resp = api
                .send_raw(api.http.get(path(&id, "/files")).query(&[("path", &p)]))
                .await?;
            let data = resp.bytes().await.context("read the file")?;
            if local == "-" {
                std::io::stdout().write_all(&data)?;
            } else {
                std::fs::write(&local, &data).with_context(|| format!("write {local}"))?;
            }
            Ok(0)
        }
        InstancesCmd::Fork { id, count } => {
            let (_, v) = api
                .send(
                    api.http
                        .post(path(&id, "/fork"))
                        .json(&json!({"count": count})),
                )
                .await?;
            show(j, &v, |v| {
                instance_table(v);
            })
        }
        InstancesCmd::Snapshot { id, name, memory } => {
            let (_, v) = api
                .send(
                    api.http
                        .post(path(&id, "/snapshot"))
                        .json(&json!({"name": name, "memory": memory})),
                )
                .await?;
            show(j, &v, |v| {
                println!("{}", v["id"].as_str().unwrap_or_default())
            })
        }
        InstancesCmd::Ps { id } => procs::ps(&api, j, &id).await,
        InstancesCmd::Spawn(a) => procs::spawn(&api, j, a).await,
        InstancesCmd::Attach { id, pid } => procs::attach(&api, j, &id, pid).await,
        InstancesCmd::Send {
            id,
            pid,
            text,
            close,
        } => procs::send(&api, &id, pid, text, close).await,
        InstancesCmd::Kill { id, pid, signal } => procs::kill(&api, &id, pid, &signal).await,
        InstancesCmd::Shell { id, cols, rows } => procs::shell(&api, &id, cols, rows).await,
        InstancesCmd::Fs { id, cmd } => procs::fs(&api, j, &id, cmd).await,
        InstancesCmd::Ports { id } => portfwd::ports(&api, j, &id).await,
        InstancesCmd::PortForward { id, ports, address } => {
            portfwd::forward(&api, &id, ports, address).await
        }
    }
}

pub async fn snapshots(a: SnapshotsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let j = a.api.json;
    let path = |id: &str, rest: &str| api.url(&format!("/api/v1/snapshots/{id}{rest}"));
    let (_, v) = match &a.cmd {
        SnapshotsCmd::List => api.send(api.http.get(api.url("/api/v1/snapshots"))).await?,
        SnapshotsCmd::Get { id } => api.send(api.http.get(path(id, ""))).await?,
        SnapshotsCmd::Rm { id } => api.send(api.http.delete(path(id, ""))).await?,
        SnapshotsCmd::Restore { id } => api.send(api.http.post(path(id, "/restore"))).await?,
        SnapshotsCmd::Branch { id, count } => {
            api.send(
                api.http
                    .post(path(id, "/branch"))
                    .json(&json!({"count": count})),
            )
            .await?
        }
    };
    show(j, &v, |v| match &a.cmd {
        SnapshotsCmd::List => {
            snapshot_header();
            v["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .for_each(snapshot_row);
        }
        SnapshotsCmd::Get { .. } => {
            snapshot_header();
            snapshot_row(v);
        }
        SnapshotsCmd::Rm { id } => println!("deleted {id}"),
        SnapshotsCmd::Restore { .. } => println!("{}", v["id"].as_str().unwrap_or_default()),
        SnapshotsCmd::Branch { .. } => {
            instance_table(v);
        }
    })
}

pub async fn pools(a: PoolsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let row = |p: &Value| {
        println!(
            "{:<44} {:<8} {:>5} {:>8} {:>6}",
            p["image"].as_str().unwrap_or_default(),
            p["backend"].as_str().unwrap_or_default(),
            p["ready"],
            p["creating"],
            p["target"]
        )
    };
    let header = || {
        println!(
            "{:<44} {:<8} {:>5} {:>8} {:>6}",
            "IMAGE", "BACKEND", "READY", "CREATING", "TARGET"
        )
    };
    match a.cmd {
        PoolsCmd::List => {
            let (_, v) = api.send(api.http.get(api.url("/api/v1/pools"))).await?;
            show(a.api.json, &v, |v| {
                header();
                v["pools"].as_array().into_iter().flatten().for_each(row);
            })
        }
        PoolsCmd::Prewarm {
            image,
            count,
            runtime,
        } => {
            let body = json!({"image": image, "count": count, "runtime": runtime});
            let (_, v) = api
                .send(api.http.post(api.url("/api/v1/prewarm")).json(&body))
                .await?;
            show(a.api.json, &v, |v| {
                header();
                row(v);
            })
        }
    }
}

/// `faas templates`: the E2B surface's templates (`GET /templates`).
pub async fn templates(a: SimpleArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let (_, v) = api.send(api.http.get(api.url("/templates"))).await?;
    show(a.api.json, &v, |v| {
        println!("{:<24} IMAGE", "TEMPLATE");
        for t in v.as_array().into_iter().flatten() {
            println!(
                "{:<24} {}",
                t["templateID"].as_str().unwrap_or_default(),
                t["image"].as_str().unwrap_or_default()
            );
        }
    })
}

pub async fn health(a: SimpleArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let (_, v) = api.send(api.http.get(api.url("/health"))).await?;
    show(a.api.json, &v, |v| {
        println!(
            "{} (version {}, up {:.0} s, default backend {})",
            v["status"].as_str().unwrap_or_default(),
            v["version"].as_str().unwrap_or_default(),
            v["uptime_s"].as_f64().unwrap_or(0.0),
            v["default_backend"].as_str().unwrap_or("none")
        );
        for b in v["backends"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} {:<12} {}",
                b["name"].as_str().unwrap_or_default(),
                if b["available"] == true {
                    "available"
                } else {
                    "unavailable"
                },
                b["detail"].as_str().unwrap_or_default()
            );
        }
    })?;
    Ok(u8::from(v["status"] != "ok"))
}

pub async fn metrics(a: MetricsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    if a.prometheus {
        let resp = api.send_raw(api.http.get(api.url("/metrics"))).await?;
        print!("{}", resp.text().await?);
        return Ok(0);
    }
    let (_, v) = api.send(api.http.get(api.url("/api/v1/metrics"))).await?;
    print_json(&v)?;
    Ok(0)
}

pub async fn openapi(a: SimpleArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let (_, v) = api
        .send(api.http.get(api.url("/api/v1/openapi.json")))
        .await?;
    print_json(&v)?;
    Ok(0)
}

/// Follows an execution's output (Server-Sent Events) until its exit; exits with its code.
pub async fn logs(a: LogsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let resp = api
        .send_raw(
            api.http
                .get(api.url(&format!("/api/v1/logs/{}/stream", a.id))),
        )
        .await?;
    let mut resp = resp;
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = resp.chunk().await.context("read the stream")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].trim_end_matches('\r').to_string();
            buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(d.trim_start()).unwrap_or(Value::Null);
                if a.api.json {
                    println!("{}", json!({"event": event, "data": v}));
                }
                match event.as_str() {
                    "stdout" if !a.api.json => {
                        print!("{}", v["data"].as_str().unwrap_or_default());
                        std::io::stdout().flush()?;
                    }
                    "stderr" if !a.api.json => {
                        eprint!("{}", v["data"].as_str().unwrap_or_default())
                    }
                    "exit" => {
                        return Ok(
                            u8::try_from(v["exit_code"].as_i64().unwrap_or(125)).unwrap_or(125)
                        )
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(125)
}
