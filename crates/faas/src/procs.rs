//! `faas instances ps|spawn|attach|send|kill|shell|fs` and instance metadata: processes, the
//! interactive terminal and the files of an instance, from the command line.
//!
//! Tables by default, `--json` for the answers as they are. `attach` and `shell` exit with the
//! process's (or the shell's) exit code; a failure of the CLI itself exits 125 when it has to be
//! told apart from the process's own codes.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::http::{print_json, Api, WebSocket};

/// The exit code of a failure of the CLI while it follows a process.
const CLI_FAILED: u8 = 125;

/// `KEY=VALUE` (for `--metadata` and `-e`).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `COLSxROWS` (for `--pty`).
pub fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected COLSxROWS (e.g. 80x24), got {s:?}");
    let (c, r) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let c: u16 = c.trim().parse().map_err(|_| bad())?;
    let r: u16 = r.trim().parse().map_err(|_| bad())?;
    if c == 0 || r == 0 {
        return Err(bad());
    }
    Ok((c, r))
}

fn kv_object(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

/// The `metadata` of a create request, when there is any.
pub fn metadata_body(body: &mut Map<String, Value>, metadata: &[(String, String)]) {
    if !metadata.is_empty() {
        body.insert("metadata".into(), kv_object(metadata));
    }
}

/// The query of a list filtered by metadata: `metadata.KEY=VALUE` each.
pub fn metadata_query(metadata: &[(String, String)]) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (format!("metadata.{k}"), v.clone()))
        .collect()
}

/// The `metadata:` line under an instance's row.
pub fn print_metadata(instance: &Value) {
    let pairs: Vec<String> = instance["metadata"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        println!("metadata: -");
    } else {
        println!("metadata: {}", pairs.join(" "));
    }
}

fn instance_url(api: &Api, id: &str, rest: &str) -> String {
    api.url(&format!("/api/v1/instances/{id}{rest}"))
}

/// The exit code of an `exit` answer: the code, else 128 + the signal.
fn exit_code_of(v: &Value) -> u8 {
    if let Some(c) = v["exit_code"].as_i64() {
        return u8::try_from(c).unwrap_or(CLI_FAILED);
    }
    match v["signal"].as_i64() {
        Some(s) => u8::try_from(128 + s).unwrap_or(CLI_FAILED),
        None => CLI_FAILED,
    }
}

/// Reads a Server-Sent Events stream: `(event, data)` per event (comments skipped).
struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
    done: bool,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: Vec::new(),
            event: String::new(),
            data: Vec::new(),
            done: false,
        }
    }

    /// The next event, or `None` at the end of the stream.
    async fn next(&mut self) -> anyhow::Result<Option<(String, String)>> {
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if self.data.is_empty() && self.event.is_empty() {
                        continue;
                    }
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data).join("\n");
                    let event = if event.is_empty() {
                        "message".to_string()
                    } else {
                        event
                    };
                    return Ok(Some((event, data)));
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => self.event = value.to_string(),
                    "data" => self.data.push(value.to_string()),
                    _ => {}
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.resp.chunk().await.context("read the event stream")? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    // A last event without its blank line still counts.
                    self.done = true;
                    self.buf.extend_from_slice(b"\n\n");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

#[derive(Args, Debug)]
pub struct SpawnArgs {
    pub id: String,
    /// A label to find the process by.
    #[arg(long)]
    pub tag: Option<String>,
    /// Keep its stdin open (write with `faas instances send`).
    #[arg(long)]
    pub stdin: bool,
    /// Run it in a terminal of this size, e.g. `80x24`.
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_size)]
    pub pty: Option<(u16, u16)>,
    /// Kill it after this long.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// The working directory.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// One argument is run by `sh -c`; several are run as argv.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `faas instances ps ID`: the process table.
pub async fn ps(api: &Api, json_out: bool, id: &str) -> anyhow::Result<u8> {
    let (_, v) = api
        .send(api.http.get(instance_url(api, id, "/processes")))
        .await?;
    if json_out {
        print_json(&v)?;
        return Ok(0);
    }
    println!(
        "{:>7} {:<12} {:<7} {:>6} COMMAND",
        "PID", "TAG", "RUNNING", "EXIT"
    );
    for p in v["processes"].as_array().into_iter().flatten() {
        let exit = match (p["exit_code"].as_i64(), p["signal"].as_i64()) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            (None, None) => "-".to_string(),
        };
        let command: Vec<&str> = p["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:>7} {:<12} {:<7} {:>6} {}",
            p["pid"].to_string(),
            p["tag"].as_str().unwrap_or("-"),
            if p["running"] == true { "yes" } else { "no" },
            exit,
            command.join(" ")
        );
    }
    Ok(0)
}

/// `faas instances spawn ID ... -- CMD...`: starts a background process; prints its pid.
pub async fn spawn(api: &Api, json_out: bool, a: SpawnArgs) -> anyhow::Result<u8> {
    let command = match a.command.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let mut body = Map::new();
    body.insert("command".into(), command);
    if !a.env.is_empty() {
        body.insert("env_vars".into(), kv_object(&a.env));
    }
    if let Some(w) = a.workdir {
        body.insert("working_dir".into(), json!(w));
    }
    if a.stdin {
        body.insert("stdin".into(), json!(true));
    }
    if let Some((cols, rows)) = a.pty {
        body.insert("pty".into(), json!({"cols": cols, "rows": rows}));
    }
    if let Some(t) = a.tag {
        body.insert("tag".into(), json!(t));
    }
    if let Some(t) = a.timeout_ms {
        body.insert("timeout_ms".into(), json!(t));
    }
    let (_, v) = api
        .send(
            api.http
                .post(instance_url(api, &a.id, "/processes"))
                .json(&body),
        )
        .await?;
    if json_out {
        print_json(&v)?;
    } else {
        println!("{}", v["pid"]);
    }
    Ok(0)
}

/// `faas instances attach ID PID`: the process's output as it comes (stdout and terminal
/// output to stdout, stderr to stderr); exits with its exit code.
pub async fn attach(api: &Api, json_out: bool, id: &str, pid: u32) -> anyhow::Result<u8> {
    let resp = api
        .send_raw(
            api.http
                .get(instance_url(api, id, &format!("/processes/{pid}/events"))),
        )
        .await?;
    let mut events = SseReader::new(resp);
    let b64 = base64::engine::general_purpose::STANDARD;
    while let Some((event, data)) = events.next().await? {
        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        if json_out {
            println!("{}", json!({"event": event, "data": v}));
            std::io::stdout().flush()?;
        }
        match event.as_str() {
            "stdout" | "pty" | "stderr" if !json_out => {
                let bytes = b64
                    .decode(v["data"].as_str().unwrap_or_default())
                    .context("decode the process's output")?;
                if event == "stderr" {
                    let mut err = std::io::stderr();
                    err.write_all(&bytes)?;
                    err.flush()?;
                } else {
                    let mut out = std::io::stdout();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
            }
            "exit" => return Ok(exit_code_of(&v)),
            "error" => {
                eprintln!(
                    "error: the process's stream failed: {}",
                    v["message"].as_str().unwrap_or(&data)
                );
                return Ok(CLI_FAILED);
            }
            _ => {}
        }
    }
    eprintln!("error: the event stream ended before the process's exit");
    Ok(CLI_FAILED)
}

/// `faas instances send ID PID [TEXT]`: writes TEXT (or this CLI's stdin) to the process's
/// stdin; `close` closes it after.
pub async fn send(
    api: &Api,
    id: &str,
    pid: u32,
    text: Option<String>,
    close: bool,
) -> anyhow::Result<u8> {
    let data = match text {
        Some(t) => t.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("read stdin")?;
            buf
        }
    };
    // Nothing to write with `--close`: only the close.
    if !(data.is_empty() && close) {
        api.send(
            api.http
                .post(instance_url(api, id, &format!("/processes/{pid}/stdin")))
                .header("content-type", "application/octet-stream")
                .body(data),
        )
        .await?;
    }
    if close {
        api.send(api.http.post(instance_url(
            api,
            id,
            &format!("/processes/{pid}/stdin/close"),
        )))
        .await?;
    }
    Ok(0)
}

/// `faas instances kill ID PID [--signal SIG]`.
pub async fn kill(api: &Api, id: &str, pid: u32, signal: &str) -> anyhow::Result<u8> {
    let sig = match signal.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(signal),
    };
    api.send(
        api.http
            .post(instance_url(api, id, &format!("/processes/{pid}/signal")))
            .json(&json!({ "signal": sig })),
    )
    .await?;
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// The terminal

/// The window size of the terminal on fd `fd`, if it is one.
#[allow(unsafe_code)]
mod winsize {
    use std::os::fd::AsRawFd;

    nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

    /// `(cols, rows)` of the terminal `f` is, or `None`.
    pub fn get(f: &impl AsRawFd) -> Option<(u16, u16)> {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `ws`;
        // a bad or non-terminal fd only makes it fail.
        let ok = unsafe { tiocgwinsz(f.as_raw_fd(), &mut ws) }.is_ok();
        (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    }
}

/// The local terminal's size: stdout's, else stdin's.
fn local_size() -> Option<(u16, u16)> {
    winsize::get(&std::io::stdout()).or_else(|| winsize::get(&std::io::stdin()))
}

/// Puts stdin's terminal in raw mode; the old mode comes back when this is dropped (on every
/// way out of the shell, errors and panics included).
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("read the terminal's mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// `{"exit": {"exit_code", "signal"}}` → the exit code.
fn terminal_exit(text: &str) -> Option<u8> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("exit").map(exit_code_of)
}

/// `faas instances shell ID`: an interactive shell in the instance, like `docker exec -it`.
pub async fn shell(
    api: &Api,
    id: &str,
    cols: Option<u16>,
    rows: Option<u16>,
) -> anyhow::Result<u8> {
    let tty = std::io::stdin().is_terminal();
    let (c, r) = if tty { local_size() } else { None }.unwrap_or((80, 24));
    let (cols, rows) = (cols.unwrap_or(c), rows.unwrap_or(r));
    let ws = api
        .websocket(&format!(
            "/api/v1/instances/{id}/terminal?cols={cols}&rows={rows}"
        ))
        .await
        .context("open the terminal")?;
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    let result = run_terminal(ws, tty, (cols, rows) != (c, r)).await;
    drop(raw);
    match result {
        Ok(Some(code)) => Ok(code),
        Ok(None) => {
            eprintln!("error: the terminal closed without the shell's exit status");
            Ok(CLI_FAILED)
        }
        Err(e) => {
            // After a terminal's output, on a line of its own.
            let nl = if tty { "\n" } else { "" };
            eprintln!("{nl}error: {e:#}");
            Ok(CLI_FAILED)
        }
    }
}

/// Copies stdin to the terminal and the terminal to stdout until the shell's exit (its code),
/// the socket's close (`None`) or a signal to this CLI (128 + it).
async fn run_terminal(ws: WebSocket, tty: bool, fixed_size: bool) -> anyhow::Result<Option<u8>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut tx, mut rx) = ws.split();
    // Stdin on a thread of its own: a blocking read cannot be cancelled, and a thread of the
    // runtime's blocking pool would hold up its shutdown until the next key press.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    let mut winch = signal(SignalKind::window_change()).context("watch the window size")?;
    let mut hangup = signal(SignalKind::hangup()).context("watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watch SIGINT")?;
    let mut stdin_open = true;
    let mut out = std::io::stdout();
    let code = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(d))) => {
                    out.write_all(&d).context("write stdout")?;
                    out.flush().context("write stdout")?;
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(code) = terminal_exit(t.as_str()) {
                        break Some(code);
                    }
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("read the terminal"),
            },
            data = in_rx.recv(), if stdin_open => match data {
                Some(d) => tx
                    .send(Message::Binary(d.into()))
                    .await
                    .context("write to the terminal")?,
                None => {
                    // The end of the input is the terminal's end of input (^D), as closing
                    // the socket would end the shell before it ran what it was given.
                    stdin_open = false;
                    tx.send(Message::Binary(vec![4u8].into()))
                        .await
                        .context("write to the terminal")?;
                }
            },
            _ = winch.recv() => {
                if tty && !fixed_size {
                    if let Some((cols, rows)) = local_size() {
                        let resize = json!({"resize": {"cols": cols, "rows": rows}});
                        tx.send(Message::text(resize.to_string()))
                            .await
                            .context("resize the terminal")?;
                    }
                }
            },
            _ = hangup.recv() => break Some(128 + 1),
            _ = interrupt.recv() => break Some(128 + 2),
            _ = terminate.recv() => break Some(128 + 15),
        }
    };
    let _ = tx.send(Message::Close(None)).await;
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// Files

#[derive(Subcommand, Debug)]
pub enum FsCmd {
    /// List a directory (`--depth` levels down).
    Ls {
        path: String,
        #[arg(long, default_value_t = 1)]
        depth: u32,
    },
    /// Describe a file (links are not followed).
    Stat { path: String },
    /// Make a directory and its missing parents.
    Mkdir { path: String },
    /// Move or rename a file or directory.
    Mv { from: String, to: String },
    /// Remove a file, a link or a whole directory.
    Rm { path: String },
    /// Print `OP PATH` per change under a directory, until interrupted.
    Watch {
        path: String,
        #[arg(long)]
        recursive: bool,
    },
}

/// `YYYY-MM-DD HH:MM` (UTC) of milliseconds since the epoch.
fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = faas_common::time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rest / 3600,
        (rest % 3600) / 60
    )
}

fn entry_name(e: &Value, full_path: bool) -> String {
    let name = if full_path {
        e["path"].as_str().unwrap_or_default()
    } else {
        e["name"].as_str().unwrap_or_default()
    };
    match e["symlink_target"].as_str() {
        Some(t) => format!("{name} -> {t}"),
        None => name.to_string(),
    }
}

fn entry_header() {
    println!(
        "{:<10} {:<8} {:<8} {:>10} {:<16} NAME",
        "MODE", "OWNER", "GROUP", "SIZE", "MODIFIED"
    );
}

fn entry_row(e: &Value, full_path: bool) {
    println!(
        "{:<10} {:<8} {:<8} {:>10} {:<16} {}",
        e["permissions"].as_str().unwrap_or_default(),
        e["owner"].as_str().unwrap_or("-"),
        e["group"].as_str().unwrap_or("-"),
        e["size"].to_string(),
        utc_time(e["mtime_ms"].as_i64().unwrap_or(0)),
        entry_name(e, full_path)
    );
}

fn print_stat(e: &Value) {
    println!("path:     {}", e["path"].as_str().unwrap_or_default());
    println!("type:     {}", e["type"].as_str().unwrap_or_default());
    println!("size:     {}", e["size"]);
    println!(
        "mode:     {} ({:04o})",
        e["permissions"].as_str().unwrap_or_default(),
        e["mode"].as_u64().unwrap_or(0) & 0o7777
    );
    println!(
        "owner:    {} ({})",
        e["owner"].as_str().unwrap_or("-"),
        e["uid"]
    );
    println!(
        "group:    {} ({})",
        e["group"].as_str().unwrap_or("-"),
        e["gid"]
    );
    println!(
        "modified: {} UTC",
        utc_time(e["mtime_ms"].as_i64().unwrap_or(0))
    );
    if let Some(t) = e["symlink_target"].as_str() {
        println!("target:   {t}");
    }
}

/// `faas instances fs ID ...`.
pub async fn fs(api: &Api, json_out: bool, id: &str, cmd: FsCmd) -> anyhow::Result<u8> {
    let show = |v: &Value, table: &dyn Fn(&Value)| -> anyhow::Result<u8> {
        if json_out {
            print_json(v)?;
        } else {
            table(v);
        }
        Ok(0)
    };
    match cmd {
        FsCmd::Ls { path, depth } => {
            let (_, v) = api
                .send(
                    api.http
                        .get(instance_url(api, id, "/fs/list"))
                        .query(&[("path", path.as_str()), ("depth", &depth.to_string())]),
                )
                .await?;
            show(&v, &|v| {
                entry_header();
                for e in v["entries"].as_array().into_iter().flatten() {
                    entry_row(e, depth > 1);
                }
            })
        }
        FsCmd::Stat { path } => {
            let (_, v) = api
                .send(
                    api.http
                        .get(instance_url(api, id, "/fs/stat"))
                        .query(&[("path", &path)]),
                )
                .await?;
            show(&v, &print_stat)
        }
        FsCmd::Mkdir { path } => {
            let (_, v) = api
                .send(
                    api.http
                        .post(instance_url(api, id, "/fs/mkdir"))
                        .json(&json!({ "path": path })),
                )
                .await?;
            show(&v, &|v| println!("{}", v["path"].as_str().unwrap_or(&path)))
        }
        FsCmd::Mv { from, to } => {
            let (_, v) = api
                .send(
                    api.http
                        .post(instance_url(api, id, "/fs/move"))
                        .json(&json!({ "from": from, "to": to })),
                )
                .await?;
            show(&v, &|v| println!("{}", v["path"].as_str().unwrap_or(&to)))
        }
        FsCmd::Rm { path } => {
            api.send(
                api.http
                    .delete(instance_url(api, id, "/fs"))
                    .query(&[("path", &path)]),
            )
            .await?;
            show(&Value::Null, &|_| println!("removed {path}"))
        }
        FsCmd::Watch { path, recursive } => {
            let resp = api
                .send_raw(
                    api.http
                        .get(instance_url(api, id, "/fs/watch"))
                        .query(&[("path", path.as_str())])
                        .query(&[("recursive", recursive)]),
                )
                .await?;
            let mut events = SseReader::new(resp);
            let mut out = std::io::stdout();
            while let Some((event, data)) = events.next().await? {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if json_out {
                    writeln!(out, "{}", json!({"event": event, "data": v}))?;
                } else if event == "error" {
                    eprintln!(
                        "error: the watch failed: {}",
                        v["message"].as_str().unwrap_or(&data)
                    );
                    return Ok(1);
                } else if event != "ready" {
                    let op = v["op"].as_str().unwrap_or(&event);
                    writeln!(out, "{op} {}", v["path"].as_str().unwrap_or_default())?;
                }
                out.flush()?;
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_pairs() {
        assert_eq!(parse_size("80x24"), Ok((80, 24)));
        assert_eq!(parse_size("120X40"), Ok((120, 40)));
        assert!(parse_size("80").is_err());
        assert!(parse_size("0x24").is_err());
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("a="), Ok(("a".into(), String::new())));
        assert!(parse_kv("=b").is_err());
        assert!(parse_kv("ab").is_err());
    }

    #[test]
    fn formats_times_and_exits() {
        assert_eq!(utc_time(0), "1970-01-01 00:00");
        assert_eq!(utc_time(1_709_210_096_000), "2024-02-29 12:34");
        assert_eq!(exit_code_of(&json!({"exit_code": 3, "signal": null})), 3);
        assert_eq!(exit_code_of(&json!({"exit_code": null, "signal": 9})), 137);
        assert_eq!(terminal_exit(r#"{"exit": {"exit_code": 7}}"#), Some(7));
        assert_eq!(terminal_exit(r#"{"other": 1}"#), None);
    }
}
