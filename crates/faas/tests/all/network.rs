//! Sandboxes' egress, against an "internet" the test makes itself: a network namespace behind
//! a veth, holding every address a test connects to (the denied ones too: a metadata stand-in
//! in 169.254/16, a private-range host), each serving HTTP (and HTTPS), and a DNS server. The
//! server's egress interface is the test's veth, and the host has a route for each of those
//! addresses through it, so no packet of these tests leaves the machine, even if a rule were
//! wrong.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::require_docker;
use crate::support::{backend, gvisor, native_runtime, new_data_dir, Client, Server, DEBIAN_IMAGE};

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's own internet: a namespace `ns` behind veth `link` (host end 198.18.N.1, the
/// namespace's 198.18.N.2), with web servers on 198.18.N.10 (`allowed.test`), 198.18.N.11
/// (`other.test`), 169.254.N.254 (metadata stand-in) and 10.99.N.10 (a private host), HTTPS
/// on the first two, and a DNS server on 198.18.N.2.
struct TestNet {
    n: u32,
    ns: String,
    link: String,
    servers: Child,
    _certs: tempfile::TempDir,
}

const SERVERS_PY: &str = r#"
import http.server, socketserver, ssl, socket, struct, sys, threading
n, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
names = {"allowed.test": f"198.18.{n}.10", "other.test": f"198.18.{n}.11",
         "alias.test": None, "private.test": f"10.99.{n}.10"}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"host {self.server.server_address[0]} via {self.headers.get('Host')}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    # HTTPServer's own looks its name up in DNS: nothing here may ask the host's resolver.
    server_bind = socketserver.TCPServer.server_bind
def serve(addr, port, tls):
    s = S((addr, port), H)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
for a in [f"198.18.{n}.10", f"198.18.{n}.11", f"169.254.{n}.254", f"10.99.{n}.10"]:
    serve(a, 80, False)
for a in [f"198.18.{n}.10", f"198.18.{n}.11"]:
    serve(a, 443, True)
# DNS: A records of `names`; alias.test is a CNAME to other.test.
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.bind((f"198.18.{n}.2", 53))
def name_end(m, i):
    while m[i]: i += m[i] + 1
    return i + 1
def enc(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
print("ready", flush=True)
while True:
    m, peer = d.recvfrom(4096)
    qend = name_end(m, 12); q = m[12:qend + 4]
    labels, i = [], 12
    while m[i]: labels.append(m[i+1:i+1+m[i]].decode().lower()); i += m[i] + 1
    name = ".".join(labels); qtype = struct.unpack(">H", m[qend:qend+2])[0]
    ans = []
    if name == "alias.test":
        ans.append(b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, len(enc("other.test"))) + enc("other.test"))
        if qtype == 1:
            ans.append(enc("other.test") + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(names["other.test"]))
    elif names.get(name) and qtype == 1:
        ans.append(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(names[name]))
    rcode = 0 if name in names else 3
    hdr = m[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(ans), 0, 0)
    d.sendto(hdr + q + b"".join(ans), peer)
"#;

impl TestNet {
    fn new() -> TestNet {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = 40 + N.fetch_add(1, Ordering::SeqCst);
        let tag = std::process::id() % 10_000;
        let (ns, link) = (format!("faastest-{tag}-{n}"), format!("ftv{n}x{tag}"));
        let _ = sh(&format!(
            "ip netns del {ns} 2>/dev/null; ip link del {link} 2>/dev/null"
        ));
        must(&format!("ip netns add {ns}"));
        must(&format!(
            "ip link add {link} type veth peer name eth0 netns {ns} && \
             ip addr add 198.18.{n}.1/24 dev {link} && ip link set {link} up && \
             ip route add 169.254.{n}.254/32 dev {link} && ip route add 10.99.{n}.10/32 dev {link} && \
             ip -n {ns} link set lo up && ip -n {ns} link set eth0 up && \
             ip -n {ns} addr add 198.18.{n}.2/24 dev eth0 && ip -n {ns} addr add 198.18.{n}.10/24 dev eth0 && \
             ip -n {ns} addr add 198.18.{n}.11/24 dev eth0 && ip -n {ns} addr add 169.254.{n}.254/32 dev eth0 && \
             ip -n {ns} addr add 10.99.{n}.10/32 dev eth0"
        ));
        let certs = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["allowed.test".into()]).unwrap();
        std::fs::write(certs.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(
            certs.path().join("key.pem"),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        let mut servers = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", SERVERS_PY])
            .arg(n.to_string())
            .arg(certs.path().join("cert.pem"))
            .arg(certs.path().join("key.pem"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(servers.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "the test's servers did not start");
        TestNet {
            n,
            ns,
            link,
            servers,
            _certs: certs,
        }
    }

    fn ip(&self, last: u8) -> String {
        format!("198.18.{}.{last}", self.n)
    }

    /// A server whose sandboxes' egress is this network.
    fn server(&self, data_dir: std::path::PathBuf) -> Server {
        let subnet = format!("10.{}.0.0/16", 200 + self.n);
        let dns = self.ip(2);
        Server::start_with(
            data_dir,
            &[
                "--sandbox-subnet",
                &subnet,
                "--egress-interface",
                &self.link,
                "--dns-upstream",
                &dns,
            ],
        )
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.servers.kill();
        let _ = self.servers.wait();
        let _ = sh(&format!(
            "ip link del {}; ip netns del {}",
            self.link, self.ns
        ));
    }
}

/// Fetches every URL from inside a box (at once, 3 s each) and says what each gave: the body
/// (`host ADDR via HOST`) or `ERR`.
const FETCH_PY: &str = r#"
import sys, ssl, urllib.request, concurrent.futures as cf
ctx = ssl._create_unverified_context()
def get(u):
    try:
        return urllib.request.urlopen(u, timeout=3, context=ctx).read().decode().strip()
    except Exception as e:
        return "ERR " + type(e).__name__
with cf.ThreadPoolExecutor(16) as ex:
    for u, r in zip(sys.argv[1:], ex.map(get, sys.argv[1:])):
        print(u, "=>", r)
"#;

fn with_isolation(mut body: Value) -> Value {
    if gvisor() {
        body["isolation"] = json!("gvisor");
    }
    body
}

/// What each URL gave from a box with `network` (a one-shot execution).
async fn fetch(c: &Client, network: Value, urls: &[String]) -> Vec<(String, String)> {
    let mut argv = vec!["python3".to_string(), "-c".into(), FETCH_PY.into()];
    argv.extend(urls.iter().cloned());
    let v = c
        .exec(with_isolation(json!({
            "command": argv, "image": DEBIAN_IMAGE, "network": network, "timeout_ms": 30000
        })))
        .await;
    assert_eq!(v["exit_code"], 0, "{v}");
    eprintln!("fetched in {} ms: {}", v["total_ms"], v["stdout"]);
    parse(v["stdout"].as_str().unwrap())
}

fn parse(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(" => "))
        .map(|(u, r)| (u.to_string(), r.to_string()))
        .collect()
}

/// Asserts which URLs answered (with a body naming `want`'s address) and which did not.
fn expect(got: &[(String, String)], want: &[(&str, Option<&str>)]) {
    for (url, addr) in want {
        let r = &got
            .iter()
            .find(|(u, _)| u == url)
            .unwrap_or_else(|| panic!("{url} not fetched: {got:?}"))
            .1;
        match addr {
            Some(a) => assert!(
                r.starts_with(&format!("host {a} ")),
                "{url} should answer from {a}: {r} (all: {got:?})"
            ),
            None => assert!(
                r.starts_with("ERR"),
                "{url} must not answer: {r} (all: {got:?})"
            ),
        }
    }
}

/// Links, table entries and chains of `server`'s deployment left on the host.
fn leftovers(server: &Server) -> (Vec<String>, String) {
    use sha2::Digest;
    let dir = server.data_dir.canonicalize().unwrap();
    let tag =
        hex::encode(sha2::Sha256::digest(dir.display().to_string().as_bytes()))[..6].to_string();
    let links = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("fx{tag}")))
        .collect();
    let out = sh(&format!("nft list table inet faas_{tag} 2>/dev/null"));
    (links, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until no box's link or rules are left: no chain of its own, and at most the
/// namespaces a native server keeps plumbed ahead for plain internet (2: a link and an
/// address in the shared set each, no box in them).
async fn assert_clean(server: &Server, why: &str) {
    let ahead = if crate::support::backend() == "native" {
        2
    } else {
        0
    };
    let start = Instant::now();
    loop {
        let (links, table) = leftovers(server);
        let internet = table
            .split("set internet {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .and_then(|s| s.split("elements = {").nth(1))
            .map(|e| e.split(',').count())
            .unwrap_or(0);
        let custom = table.contains("jump b") || table.contains("chain b");
        if links.len() <= ahead && internet <= ahead && !custom {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{why}: left behind: links {links:?}, table:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn internet_reaches_the_test_hosts_and_nothing_it_must_not() {
    require_docker!();
    let net = TestNet::new();
    let server = net.server(new_data_dir());
    let c = server.client();
    let n = net.n;
    // A service on the host itself, on every host address: boxes must not reach it.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let hp = host_service.local_addr().unwrap().port();
    // Another box, serving on port 8000.
    let (s, inst) = c
        .post(
            "/api/v1/instances",
            with_isolation(json!({"image": DEBIAN_IMAGE, "network": "internet"})),
        )
        .await;
    assert_eq!(s, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["network"], "internet", "{inst}");
    let (s, v) = c
        .post(
            &format!("/api/v1/instances/{id}/processes"),
            json!({"command": ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let v = c
        .post(
            &format!("/api/v1/instances/{id}/exec"),
            json!({"command": format!("python3 -c 'import socket; s=socket.socket(2,2); s.connect((\"{}\",9)); print(s.getsockname()[0])'", net.ip(1))}),
        )
        .await
        .1;
    let other_box = v["stdout"].as_str().unwrap().trim().to_string();
    assert!(other_box.starts_with(&format!("10.{}.", 200 + n)), "{v}");
    // Its gateway: the host's end of its veth.
    let parts: Vec<u32> = other_box.split('.').map(|p| p.parse().unwrap()).collect();
    let gateway = format!("10.{}.{}.{}", parts[1], parts[2], parts[3] - 1);

    // No network: nothing.
    let none = fetch(&c, json!("none"), &[format!("http://{}/", net.ip(10))]).await;
    expect(&none, &[(&format!("http://{}/", net.ip(10)), None)]);

    let urls = [
        format!("http://{}/", net.ip(10)),
        format!("http://{}/", net.ip(11)),
        "http://allowed.test/".to_string(),
        "https://allowed.test/".to_string(),
        format!("http://169.254.{n}.254/"),
        format!("http://10.99.{n}.10/"),
        "http://private.test/".to_string(),
        format!("http://{}:{hp}/", net.ip(1)),
        format!("http://{gateway}:{hp}/"),
        format!("http://{}:{}/", "127.0.0.1", hp),
        format!("http://{other_box}:8000/"),
    ];
    let got = fetch(&c, json!("internet"), &urls).await;
    let (ten, eleven) = (net.ip(10), net.ip(11));
    expect(
        &got,
        &[
            (&urls[0], Some(&ten)),
            (&urls[1], Some(&eleven)),
            (&urls[2], Some(&ten)),
            (&urls[3], Some(&ten)),
            (&urls[4], None),
            (&urls[5], None),
            (&urls[6], None),
            (&urls[7], None),
            (&urls[8], None),
            (&urls[9], None),
            (&urls[10], None),
        ],
    );
    // The host itself reaches what the boxes may not.
    assert!(std::net::TcpStream::connect((net.ip(1).as_str(), hp)).is_ok());

    // A tenant an admin allowed the private ranges reaches the private host; still not the
    // metadata stand-in.
    let (s, v) = c
        .post(
            "/api/v1/tenants",
            json!({"id": format!("private-{n}"), "quotas": {"private_egress": true}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = c
        .post(
            "/api/v1/keys",
            json!({"name": "private", "tenant": format!("private-{n}")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let member = Client::new(&server.url, v["secret"].as_str().unwrap());
    let urls = [
        format!("http://10.99.{n}.10/"),
        format!("http://169.254.{n}.254/"),
        format!("http://{}/", net.ip(11)),
    ];
    let got = fetch(&member, json!("internet"), &urls).await;
    let private = format!("10.99.{n}.10");
    expect(
        &got,
        &[
            (&urls[0], Some(&private)),
            (&urls[1], None),
            (&urls[2], Some(&eleven)),
        ],
    );
    assert_eq!(c.delete(&format!("/api/v1/instances/{id}")).await, 204);
    assert_clean(&server, "after the boxes ended").await;
    server.stop();
    let (links, table) = leftovers(&server);
    assert!(links.is_empty() && table.is_empty(), "{links:?} {table}");
}

#[tokio::test]
async fn domain_rules_hold_by_name_and_by_address() {
    require_docker!();
    let net = TestNet::new();
    let server = net.server(new_data_dir());
    let c = server.client();
    let (ten, eleven) = (net.ip(10), net.ip(11));

    // Nothing but allowed.test: its address is allowed once the platform's DNS gave it.
    let only = json!({"egress": "deny", "allow": ["allowed.test"]});
    let direct = [format!("http://{ten}/"), format!("http://{eleven}/")];
    let got = fetch(&c, only.clone(), &direct).await;
    expect(&got, &[(&direct[0], None), (&direct[1], None)]);
    let urls = [
        "http://allowed.test/".to_string(),
        "https://allowed.test/".to_string(),
        "http://other.test/".to_string(),
        "https://other.test/".to_string(),
        "http://alias.test/".to_string(),
        format!("http://{eleven}/"),
        format!("https://{eleven}/"),
    ];
    // The names first (one request after the other), then the addresses.
    let mut argv = vec!["python3".to_string(), "-c".into(), FETCH_PY.into()];
    argv.extend(urls[..5].iter().cloned());
    let script = format!(
        "{} && python3 -c \"$FETCH\" {} {}",
        shell_words(&argv),
        urls[5],
        urls[6]
    );
    let v = c
        .exec(with_isolation(json!({
            "command": script, "image": DEBIAN_IMAGE, "network": only,
            "env_vars": {"FETCH": FETCH_PY}, "timeout_ms": 30000
        })))
        .await;
    let got = parse(v["stdout"].as_str().unwrap());
    expect(
        &got,
        &[
            (&urls[0], Some(&ten)),
            (&urls[1], Some(&ten)),
            (&urls[2], None),
            (&urls[3], None),
            // Allowed names cannot lead to others through a CNAME.
            (&urls[4], None),
            (&urls[5], None),
            (&urls[6], None),
        ],
    );
    // A CIDR in the allow list.
    let cidr = json!({"egress": "deny", "allow": [format!("{eleven}/32")]});
    let urls = [format!("http://{eleven}/"), format!("http://{ten}/")];
    let got = fetch(&c, cidr, &urls).await;
    expect(&got, &[(&urls[0], Some(&eleven)), (&urls[1], None)]);
    // Everything but a name and an address.
    let but = json!({"egress": "allow", "deny": ["other.test", ten.clone()]});
    let urls = [
        "http://other.test/".to_string(),
        format!("http://{ten}/"),
        "http://allowed.test/".to_string(),
        format!("http://{eleven}/"),
    ];
    let got = fetch(&c, but, &urls).await;
    expect(
        &got,
        &[
            (&urls[0], None),
            (&urls[1], None),
            (&urls[2], None),
            (&urls[3], Some(&eleven)),
        ],
    );
    assert_clean(&server, "after the boxes ended").await;
    server.stop();
}

/// `argv` quoted for sh.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn nothing_of_200_networked_boxes_is_left_nor_after_kill_9() {
    require_docker!();
    let net = TestNet::new();
    let dir = new_data_dir();
    let server = net.server(dir.clone());
    let c = server.client();
    let image = crate::support::IMAGE;
    let mut tasks = Vec::new();
    let count = std::sync::Arc::new(AtomicU32::new(0));
    // 200 on crun (the suite's first backend); the others make the same mix, fewer of them,
    // to keep the suite short (each backend's own clean-up paths are the same for 50 or 200).
    let boxes = if backend() == "native" && native_runtime() == "crun" {
        200
    } else {
        50
    };
    for w in 0..4u32 {
        let (c, count) = (c.clone(), count.clone());
        let eleven = net.ip(11);
        tasks.push(tokio::spawn(async move {
            while count.fetch_add(1, Ordering::SeqCst) < boxes {
                // Every fourth has rules of its own (a chain and sets).
                let network = match w {
                    0 => {
                        json!({"egress": "deny", "allow": [format!("{eleven}/32"), "allowed.test"]})
                    }
                    _ => json!("internet"),
                };
                let v = c
                    .exec(with_isolation(json!({
                        "command": "ip addr show eth0 | grep -q 'inet 10\\.'", "image": image,
                        "network": network
                    })))
                    .await;
                assert_eq!(v["exit_code"], 0, "a box without its address: {v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_clean(&server, &format!("after {boxes} boxes")).await;

    // kill -9 with a networked instance and a box in the middle of a command.
    let (s, inst) = c
        .post(
            "/api/v1/instances",
            with_isolation(json!({"image": DEBIAN_IMAGE, "network": "internet"})),
        )
        .await;
    assert_eq!(s, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.post(
                "/api/v1/execute",
                with_isolation(
                    json!({"command": "sleep 30", "network": "internet", "image": image}),
                ),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    let _ = slow.await;
    let (links, _) = leftovers(&server);
    assert!(
        !links.is_empty(),
        "the killed server's links should still be there"
    );
    let server = net.server(dir);
    let c = server.client();
    // The instance runs on and has its network again (crun and runc; gVisor reads its
    // interfaces only at start, so it gets it back when started again).
    if !gvisor() {
        let got = {
            let mut argv = vec!["python3".to_string(), "-c".into(), FETCH_PY.into()];
            argv.push(format!("http://{}/", net.ip(11)));
            let (s, v) = c
                .post(
                    &format!("/api/v1/instances/{id}/exec"),
                    json!({"command": argv, "timeout_ms": 20000}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            parse(v["stdout"].as_str().unwrap())
        };
        let eleven = net.ip(11);
        expect(&got, &[(&format!("http://{eleven}/"), Some(&eleven))]);
    }
    assert_eq!(c.delete(&format!("/api/v1/instances/{id}")).await, 204);
    assert_clean(&server, "after the restart").await;
    server.stop();
    let (links, table) = leftovers(&server);
    assert!(links.is_empty() && table.is_empty(), "{links:?} {table}");
}
