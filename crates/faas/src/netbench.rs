//! `faas bench network N`: what `network: "internet"` costs a cold start. N ephemeral
//! executes with `network: "none"` and N with `"internet"`, interleaved (the order
//! alternating) so the machine's noise falls on both alike, on native-crun and on gVisor
//! (`isolation: "gvisor"`), in the same run.

use std::time::Instant;

use serde_json::json;

use crate::bench::{check, execute};
use crate::benchkit::Stats;

pub(crate) async fn run(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    let mut table = Vec::new();
    for isolation in ["container", "gvisor"] {
        eprintln!("bench: ephemeral execute, isolation {isolation}, network none and internet x{n}, interleaved");
        let label = match isolation {
            "gvisor" => "native-runsc",
            _ => "native-crun",
        };
        let mut none = Stats::new(format!("ephemeral {label}, network none"));
        let mut internet = Stats::new(format!("ephemeral {label}, network internet"));
        for i in 0..n + 10 {
            let order = if i % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for networked in order {
                let extra = json!({
                    "runtime": "native",
                    "isolation": isolation,
                    "network": if networked { "internet" } else { "none" },
                });
                let t = Instant::now();
                let r = execute(http, url, image, "ephemeral", &extra).await?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                check(&r)?;
                if i < 10 {
                    continue; // warm-up
                }
                match networked {
                    true => internet.samples.push(ms),
                    false => none.samples.push(ms),
                }
            }
        }
        internet.note = format!(
            "p50 {:+.2} ms over network none",
            internet.pct(50.0) - none.pct(50.0)
        );
        table.push(none);
        table.push(internet);
    }
    Ok(table)
}

/// The server both sides of `faas bench ports` ask: HTTP/1.1 on the box's 127.0.0.1:8000,
/// a 2-byte answer to every GET.
const PORT_SERVER: &str = r#"
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", 8000), H).serve_forever()
"#;

/// The same GET, N times, from inside the box, each on a new connection (as the proxy makes
/// one per request): the milliseconds of each, as JSON.
const PORT_CLIENT: &str = r#"
import http.client, json, sys, time
out = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", 8000)
    c.request("GET", "/")
    r = c.getresponse()
    assert r.read() == b"ok"
    c.close()
    out.append((time.perf_counter() - t) * 1000)
print(json.dumps(out))
"#;

/// `faas bench ports N`: a GET through the port proxy against the same GET sent from inside
/// the box, to a server in an instance on native-crun (Python 3.11, `network: "none"`).
pub(crate) async fn ports(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    n: usize,
) -> anyhow::Result<Vec<Stats>> {
    use anyhow::{bail, Context};
    eprintln!("bench: GET through the port proxy vs from inside the box x{n} ({image})");
    let v: serde_json::Value = http
        .post(format!("{url}/api/v1/instances"))
        .json(&json!({"image": image, "runtime": "native"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = v["id"].as_str().context("instance id")?.to_string();
    let result = async {
        for (path, body) in [
            ("/srv/server.py", PORT_SERVER),
            ("/srv/client.py", PORT_CLIENT),
        ] {
            http.put(format!("{url}/api/v1/instances/{id}/files?path={path}"))
                .body(body)
                .send()
                .await?
                .error_for_status()?;
        }
        http.post(format!("{url}/api/v1/instances/{id}/processes"))
            .json(&json!({"command": "exec python3 /srv/server.py"}))
            .send()
            .await?
            .error_for_status()?;
        let proxied = format!("{url}/api/v1/instances/{id}/ports/8000/");
        let t0 = Instant::now();
        while http.get(&proxied).send().await?.status() != 200 {
            if t0.elapsed().as_secs() > 20 {
                bail!("the server in the box did not start");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut through = Stats::new("GET through the port proxy");
        for i in 0..n + 20 {
            let t = Instant::now();
            let r = http.get(&proxied).send().await?;
            let ok = r.status() == 200 && r.bytes().await? == "ok";
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !ok {
                bail!("the proxy did not answer ok");
            }
            if i >= 20 {
                through.samples.push(ms);
            }
        }
        let v: serde_json::Value = http
            .post(format!("{url}/api/v1/instances/{id}/exec"))
            .json(&json!({"command": ["python3", "/srv/client.py", (n + 20).to_string()]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let samples: Vec<f64> = serde_json::from_str(v["stdout"].as_str().unwrap_or_default())
            .with_context(|| format!("the in-box client: {v}"))?;
        let mut inside = Stats::new("GET from inside the box");
        inside.samples = samples.into_iter().skip(20).collect();
        through.note = format!(
            "p50 {:+.2} ms over from inside the box",
            through.pct(50.0) - inside.pct(50.0)
        );
        anyhow::Ok(vec![inside, through])
    }
    .await;
    let _ = http
        .delete(format!("{url}/api/v1/instances/{id}"))
        .send()
        .await;
    result
}
