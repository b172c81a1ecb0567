//! `faas instances ports|port-forward`: what listens in an instance, and a local TCP port
//! carried to one of its ports through the server's tunnel WebSocket
//! (`/api/v1/instances/{id}/tunnel/{port}`), one WebSocket per accepted connection.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::http::{print_json, Api};

/// `[LOCAL:]REMOTE`: `8000` is `8000:8000`; LOCAL may be 0 (any free port).
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected [LOCAL:]REMOTE ports (e.g. 8080:80), got {s:?}");
    let (local, remote) = match s.split_once(':') {
        Some((l, r)) => (l.parse().map_err(|_| bad())?, r.parse().map_err(|_| bad())?),
        None => {
            let p = s.parse().map_err(|_| bad())?;
            (p, p)
        }
    };
    if remote == 0 {
        return Err(bad());
    }
    Ok((local, remote))
}

/// `--network`: `none`, `internet`, or rules as a JSON object.
pub fn parse_network(s: &str) -> Result<Value, String> {
    match s.trim() {
        "none" | "internet" => Ok(Value::String(s.trim().to_string())),
        t if t.starts_with('{') => serde_json::from_str(t).map_err(|e| format!("--network: {e}")),
        _ => Err(format!(
            "--network is none, internet or a JSON object of rules, got {s:?}"
        )),
    }
}

pub async fn ports(api: &Api, json_out: bool, id: &str) -> anyhow::Result<u8> {
    let (_, v) = api
        .send(
            api.http
                .get(api.url(&format!("/api/v1/instances/{id}/ports"))),
        )
        .await?;
    if json_out {
        print_json(&v)?;
        return Ok(0);
    }
    println!("{:>6} {:<16} URL", "PORT", "ADDRESS");
    for p in v["ports"].as_array().into_iter().flatten() {
        println!(
            "{:>6} {:<16} {}",
            p["port"],
            p["address"].as_str().unwrap_or("-"),
            api.url(p["path"].as_str().unwrap_or_default())
        );
    }
    Ok(0)
}

/// Listens on `address:local` and carries each connection to `remote` of instance `id`.
pub async fn forward(
    api: &Api,
    id: &str,
    (local, remote): (u16, u16),
    address: IpAddr,
) -> anyhow::Result<u8> {
    // The instance and its port are checked first: a typo fails at once, not at the first
    // connection.
    let path = format!("/api/v1/instances/{id}/tunnel/{remote}");
    api.websocket(&path)
        .await
        .with_context(|| format!("reach port {remote} of instance {id}"))?
        .close(None)
        .await
        .ok();
    let listener = TcpListener::bind(SocketAddr::new(address, local))
        .await
        .with_context(|| format!("listen on {address}:{local}"))?;
    let at = listener.local_addr()?;
    // The one line on stdout (scripts read the port from it).
    println!("Forwarding from {at} -> {remote}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted.context("accept")?;
                let (api, path) = (api.clone(), path.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(&api, &path, tcp).await {
                        eprintln!("faas: connection from {peer}: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// One local connection, through its own WebSocket, until either end closes.
async fn carry(api: &Api, path: &str, tcp: TcpStream) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let ws = api.websocket(path).await?;
    let (mut tx, mut rx) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                // The local side is done sending: the server passes the end on.
                let _ = tx.send(Message::Close(None)).await;
                return anyhow::Ok(());
            }
            tx.send(Message::Binary(buf[..n].to_vec().into())).await?;
        }
    };
    let down = async {
        while let Some(msg) = rx.next().await {
            match msg? {
                Message::Binary(b) => wr.write_all(&b).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
        anyhow::Ok(())
    };
    // The answer may go on after the local side stopped sending: then wait for the
    // server's end; the server's end ends it at once.
    tokio::pin!(up, down);
    tokio::select! {
        d = &mut down => d,
        u = &mut up => {
            u?;
            down.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_parse() {
        assert_eq!(parse_ports("8000"), Ok((8000, 8000)));
        assert_eq!(parse_ports("0:80"), Ok((0, 80)));
        assert_eq!(parse_ports("8080:80"), Ok((8080, 80)));
        for bad in ["", "80:", ":80", "80:0", "x", "70000", "1:2:3"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_network("internet"), Ok(Value::from("internet")));
        assert!(parse_network(r#"{"egress":"deny","allow":["a.b"]}"#).is_ok());
        assert!(parse_network("all").is_err());
    }
}
