//! The port proxy, through the real server, on the backend under test: servers listening in
//! instances with `network: "none"` (the connection goes through the agent), reached by path,
//! by the `{port}-{id}.sandbox.test` host name, by a public instance's token, and through
//! `faas instances port-forward`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::require_docker;
use crate::support::*;
use crate::tenants::{tenant, unique};

async fn create(c: &Client, image: &str, extra: Value) -> Value {
    let mut body = json!({"image": image});
    if gvisor() {
        body["isolation"] = json!("gvisor");
    }
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, v) = c.post("/api/v1/instances", body).await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn sh(c: &Client, id: &str, cmd: &str) {
    let (s, v) = c
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            json!({"command": cmd}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit_code"], 0, "{cmd}: {v}");
}

/// Starts `command` in the background and waits until `port` is listed as listening.
async fn serve(c: &Client, id: &str, command: &str, port: u16) {
    let (s, v) = c
        .post(
            &format!("/api/v1/instances/{id}/processes"),
            json!({"command": command}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let t0 = Instant::now();
    loop {
        let (s, v) = c.get(&format!("/api/v1/instances/{id}/ports")).await;
        assert_eq!(s, 200, "{v}");
        let ports = v["ports"].as_array().unwrap();
        if let Some(p) = ports.iter().find(|p| p["port"] == port) {
            assert_eq!(p["path"], format!("/api/v1/instances/{id}/ports/{port}/"));
            assert_eq!(p["host"], format!("{port}-{id}.{SANDBOX_DOMAIN}"));
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{command} does not listen on {port}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(c: &Client, path: &str) -> (u16, String) {
    let r = c
        .http
        .get(format!("{}{path}", c.base))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_busybox_httpd_answers_through_the_proxy_and_only_its_tenant_gets_in() {
    require_docker!();
    let server = shared();
    let c = server.client();
    let v = create(&c, IMAGE, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["network"], "none");
    assert_eq!(v["public_ports"], false);
    assert!(v.get("ports_token").is_none(), "{v}");
    sh(
        &c,
        &id,
        "mkdir -p /www && echo 'hello from the box' > /www/index.html",
    )
    .await;
    serve(&c, &id, "busybox httpd -f -p 8000 -h /www", 8000).await;

    let base = format!("/api/v1/instances/{id}/ports/8000");
    for path in ["/", "/index.html", "/index.html?x=1", ""] {
        // The bare port is redirected (308) to its root, which the client follows.
        let (s, body) = get(&c, &format!("{base}{path}")).await;
        assert_eq!((s, body.as_str()), (200, "hello from the box\n"), "{path}");
    }
    let (s, _) = get(&c, &format!("{base}/missing.html")).await;
    assert_eq!(s, 404, "the box's own 404 is passed on");

    // Nothing listens on 8001: a JSON error, not a hang.
    let (s, v) = c.get(&format!("/api/v1/instances/{id}/ports/8001/")).await;
    assert_error(s, &v, 502, "port_closed");
    let (s, v) = c.get(&format!("/api/v1/instances/{id}/ports/0/")).await;
    assert_error(s, &v, 404, "not_found");

    // Another tenant's key: no such instance, by path and by host name. No key: 401.
    let other = tenant(&server.client(), &unique("ports-other"), json!({})).await;
    let (s, v) = other.get(&format!("{base}/")).await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = other.get(&format!("/api/v1/instances/{id}/ports")).await;
    assert_error(s, &v, 404, "not_found");
    let r = other
        .http
        .get(format!("{}/", other.base))
        .header("host", format!("8000-{id}.{SANDBOX_DOMAIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let anonymous = server.client_with_key("");
    let (s, v) = anonymous.get(&format!("{base}/")).await;
    assert_error(s, &v, 401, "unauthenticated");

    // The host name `{port}-{id}.D` with the owner's key.
    let r = c
        .http
        .get(format!("{}/index.html", c.base))
        .header("host", format!("8000-{id}.{SANDBOX_DOMAIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from the box\n");

    // `faas instances port-forward`: a local port carried to the box's 8000.
    let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &server.admin_key)
        .args([
            "instances",
            "--server",
            &server.url,
            "port-forward",
            &id,
            "0:8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let local = line
        .strip_prefix("Forwarding from ")
        .and_then(|l| l.split(" -> ").next())
        .unwrap_or_else(|| panic!("port-forward printed {line:?}"))
        .to_string();
    let plain = reqwest::Client::new();
    for _ in 0..3 {
        let r = plain
            .get(format!("http://{local}/index.html"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "hello from the box\n");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A port nobody listens on fails at once.
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &server.admin_key)
        .args([
            "instances",
            "--server",
            &server.url,
            "port-forward",
            &id,
            "0:8001",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port_closed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(c.delete(&format!("/api/v1/instances/{id}")).await, 204);
    let (s, v) = c.get(&format!("{base}/")).await;
    assert_error(s, &v, 404, "not_found");
}

/// An HTTP/1.1 server on 127.0.0.1:8000 in the box (Python's standard library): POST echoes
/// the body's length and digest and the headers it got, `/stream` answers in three parts
/// 400 ms apart, and a WebSocket upgrade echoes frames.
const APP: &str = r#"
import base64, hashlib, http.server, socketserver, time

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))
    def answer(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        b = self.body()
        h = self.headers
        self.answer(("%d %s %s auth=%s key=%s" % (len(b), hashlib.sha256(b).hexdigest(), self.path,
                     h.get("Authorization"), h.get("X-Api-Key"))).encode())
    def do_GET(self):
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                c = ("part%d\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                self.wfile.flush()
                time.sleep(0.4)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers()
            self.wfile.flush()
            while True:
                h = self.rfile.read(2)
                if len(h) < 2:
                    return
                op, n = h[0] & 15, h[1] & 127
                if n == 126:
                    n = int.from_bytes(self.rfile.read(2), "big")
                elif n == 127:
                    n = int.from_bytes(self.rfile.read(8), "big")
                mask = self.rfile.read(4) if h[1] & 128 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                if op == 8:
                    self.wfile.write(b"\x88\x00")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if op in (1, 2):
                    reply = b"echo:" + data
                    size = bytes([len(reply)]) if len(reply) < 126 else bytes([126]) + len(reply).to_bytes(2, "big")
                    self.wfile.write(bytes([0x80 | op]) + size + reply)
                    self.wfile.flush()
        h = self.headers
        self.answer(("GET %s host=%s prefix=%s cookie=%s key=%s" % (self.path, h.get("Host"),
                     h.get("X-Forwarded-Prefix"), h.get("Cookie"), h.get("X-Api-Key"))).encode())

class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

S(("127.0.0.1", 8000), H).serve_forever()
"#;

#[tokio::test]
async fn bodies_stream_both_ways_and_websockets_pass_through() {
    require_docker!();
    let c = shared().client();
    let v = create(&c, DEBIAN_IMAGE, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.put_raw(
            &format!("/api/v1/instances/{id}/files?path=/srv/app.py"),
            APP.as_bytes().to_vec()
        )
        .await,
        204
    );
    serve(&c, &id, "exec python3 /srv/app.py", 8000).await;
    let base = format!("{}/api/v1/instances/{id}/ports/8000", c.base);

    // A streamed (chunked) upload of 12 MiB, more than the API's own body limit: the box
    // gets all of it, and neither the key nor the platform's headers.
    let chunk = vec![7u8; 1 << 20];
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..12).map(|_| Ok(chunk.clone())).collect();
    let digest = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for _ in 0..12 {
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    };
    let r = c
        .http
        .post(format!("{base}/upload?a=1"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("{} {digest} /upload?a=1 auth=None key=None", 12 << 20)
    );
    // With a length too.
    let r = c
        .http
        .post(format!("{base}/x"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().starts_with("5 "));

    // The answer streams: its first part arrives well before its last.
    let t0 = Instant::now();
    let r = c.http.get(format!("{base}/stream")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut parts = r.bytes_stream();
    let first = parts.next().await.unwrap().unwrap();
    let first_at = t0.elapsed();
    assert!(first.starts_with(b"part0"), "{first:?}");
    let mut rest = first.to_vec();
    while let Some(b) = parts.next().await {
        rest.extend_from_slice(&b.unwrap());
    }
    assert_eq!(rest, b"part0\npart1\npart2\n");
    assert!(
        t0.elapsed() >= first_at + Duration::from_millis(600),
        "first part at {first_at:?}, all at {:?}",
        t0.elapsed()
    );

    // What the box's server is told: the prefix it is served under, no key.
    let (s, body) = get(&c, &format!("/api/v1/instances/{id}/ports/8000/h?q=%2F")).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("GET /h?q=%2F host="), "{body}");
    assert!(
        body.contains(&format!("prefix=/api/v1/instances/{id}/ports/8000 ")),
        "{body}"
    );
    assert!(body.ends_with("key=None"), "{body}");

    // A WebSocket through the proxy.
    let (mut ws, _) = tokio_tungstenite::connect_async(
        c.ws_request(&format!("/api/v1/instances/{id}/ports/8000/ws")),
    )
    .await
    .unwrap();
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("echo:hello {i}"));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2].into()))
        .await
        .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m.into_data().as_ref(), b"echo:\x00\x01\x02");
    ws.close(None).await.unwrap();

    // The raw tunnel: an HTTP request written by hand.
    let (mut ws, _) = tokio_tungstenite::connect_async(
        c.ws_request(&format!("/api/v1/instances/{id}/tunnel/8000")),
    )
    .await
    .unwrap();
    ws.send(Message::Binary(
        b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec()
            .into(),
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"),
        "{got}"
    );
    assert!(got.contains("GET /raw host=x"), "{got}");
    let (s, v) = c.get(&format!("/api/v1/instances/{id}/tunnel/8000")).await;
    assert_error(s, &v, 400, "invalid_request");

    assert_eq!(c.delete(&format!("/api/v1/instances/{id}")).await, 204);
}

#[tokio::test]
async fn public_ports_open_to_their_token_only() {
    require_docker!();
    let server = shared();
    let c = server.client();
    let v = create(&c, IMAGE, json!({"public_ports": true})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["public_ports"], true);
    let token = v["ports_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let (_, got) = c.get(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(got["ports_token"], token.as_str());
    sh(&c, &id, "mkdir -p /www && echo public > /www/index.html").await;
    serve(&c, &id, "busybox httpd -f -p 8000 -h /www", 8000).await;

    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/api/v1/instances/{id}/ports/8000/", server.url);
    // The token in the query: the page, and a cookie for its next requests.
    let r = anonymous
        .get(format!("{url}index.html?faas_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!(
            "faas_ports_token={token}; Path=/api/v1/instances/{id}/ports/8000;"
        )),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert_eq!(r.text().await.unwrap(), "public\n");
    for (name, value) in [
        ("x-faas-ports-token", token.clone()),
        ("cookie", format!("faas_ports_token={token}")),
    ] {
        let r = anonymous
            .get(&url)
            .header(name, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{name}");
    }
    // By host name, with the token.
    let r = anonymous
        .get(format!("{}/?faas_token={token}", server.url))
        .header("host", format!("8000-{id}.{SANDBOX_DOMAIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Path=/;"));
    assert_eq!(r.text().await.unwrap(), "public\n");

    // A wrong token, one token short, or no token: refused, and the token opens nothing else.
    let mut wrong = token.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for t in [wrong.as_str(), &token[..63], ""] {
        let r = anonymous
            .get(format!("{url}?faas_token={t}"))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 401 | 404),
            "{t:?}: {}",
            r.status()
        );
    }
    let r = anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for path in [
        format!("/api/v1/instances/{id}?faas_token={token}"),
        format!("/api/v1/instances/{id}/ports?faas_token={token}"),
        format!("/api/v1/instances/{id}/files?path=/www/index.html&faas_token={token}"),
    ] {
        let r = anonymous
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    // Another instance's ports do not open to this token.
    let private = create(&c, IMAGE, json!({})).await;
    let pid = private["id"].as_str().unwrap();
    let r = anonymous
        .get(format!(
            "{}/api/v1/instances/{pid}/ports/8000/?faas_token={token}",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(c.delete(&format!("/api/v1/instances/{pid}")).await, 204);

    // A fork gets a token of its own.
    let (s, f) = c
        .post(&format!("/api/v1/instances/{id}/fork"), json!({"count": 1}))
        .await;
    assert_eq!(s, 201, "{f}");
    let fork = &f["instances"][0];
    let fork_token = fork["ports_token"].as_str().unwrap();
    assert_eq!(fork_token.len(), 64);
    assert_ne!(fork_token, token);
    let fid = fork["id"].as_str().unwrap();
    serve(&c, fid, "busybox httpd -f -p 8000 -h /www", 8000).await;
    let furl = format!("{}/api/v1/instances/{fid}/ports/8000/", server.url);
    let r = anonymous
        .get(format!("{furl}?faas_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = anonymous
        .get(format!("{furl}?faas_token={fork_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let snap = f["snapshot_id"].as_str().unwrap();
    assert_eq!(c.delete(&format!("/api/v1/instances/{fid}")).await, 204);
    assert_eq!(c.delete(&format!("/api/v1/instances/{id}")).await, 204);
    assert_eq!(c.delete(&format!("/api/v1/snapshots/{snap}")).await, 204);
}
