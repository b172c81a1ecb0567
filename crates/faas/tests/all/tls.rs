//! HTTPS: `faas serve --tls-cert --tls-key` with a certificate from a CA made here, reached by a
//! client that trusts that CA and by the CLI (`FAAS_CA_CERT`); plain HTTP and clients without
//! the CA are refused; the terminal's WebSocket and a process's event stream work through it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{new_data_dir, Server, IMAGE};

/// A CA, and a certificate it signed for `localhost` and `127.0.0.1` with its key (PEM files).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        use rcgen::{KeyUsagePurpose, SanType};
        std::fs::create_dir_all(dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "faas test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", leaf_cert.pem()),
            key: write("key.pem", leaf_key.serialize_pem()),
        }
    }

    fn ca_pem(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap()
    }
}

/// A server with a fresh data dir whose certificate and CA are in `<data-dir>/tls`.
fn start_tls_server() -> (Server, Pki) {
    let data_dir = new_data_dir();
    let pki = Pki::make(&data_dir.join("tls"));
    let server = Server::start_with(
        data_dir,
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    );
    (server, pki)
}

/// The TLS server these tests share.
fn tls_server() -> &'static (Server, Pki) {
    static SERVER: OnceLock<(Server, Pki)> = OnceLock::new();
    SERVER.get_or_init(start_tls_server)
}

/// A client that trusts the test CA (and the system's roots).
fn trusting(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(pki.ca_pem())
        .build()
        .unwrap()
}

/// The server's admin key, once the server writes one (`<data-dir>/admin.key`).
fn admin_key(server: &Server) -> Option<String> {
    let key = std::fs::read_to_string(server.data_dir.join("admin.key")).ok()?;
    Some(key.trim().to_string())
}

/// An error and all its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `faas ARGS...` against the TLS server, trusting its CA, finding the key in its data dir →
/// (exit code, stdout, stderr).
fn faas(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let (server, pki) = tls_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .env("FAAS_SERVER", &server.url)
        .env("FAAS_CA_CERT", &pki.ca)
        .env("FAAS_DATA_DIR", &server.data_dir)
        .env_remove("FAAS_API_KEY")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn https_serves_health_and_the_api() {
    require_docker!();
    let (server, pki) = tls_server();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let http = trusting(pki);
    let r = http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    // The name in the certificate works as well as the address.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    let r = http.get(format!("{by_name}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let Some(key) = admin_key(server) else {
        eprintln!("skipped the /api/v1 call: the server wrote no admin.key");
        return;
    };
    let r = http
        .get(format!("{}/api/v1/pools", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[test]
fn the_cli_talks_https_with_the_ca_and_the_admin_key() {
    require_docker!();
    let (server, _) = tls_server();
    let (st, out, err) = faas(&["health"], None);
    assert_eq!(st, Some(0), "{out}{err}");
    assert!(out.starts_with("ok"), "{out}");

    // Without the CA the server's certificate is not trusted.
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["health", "--server", &server.url])
        .env_remove("FAAS_CA_CERT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("certificate") && err.contains("--ca-cert"),
        "{err}"
    );

    let Some(key) = admin_key(server) else {
        eprintln!("skipped the keyed CLI calls: the server wrote no admin.key");
        return;
    };
    let (st, out, err) = faas(&["whoami"], None);
    assert_eq!(st, Some(0), "{out}{err}");
    assert!(out.contains("role admin"), "{out}");
    // The key is sent, never shown: not even in an error.
    let (st, out, err) = faas(&["instances", "get", "nosuchinstance"], None);
    assert_eq!(st, Some(1), "{out}{err}");
    assert!(err.contains("404 (not_found)"), "{err}");
    assert!(!out.contains(&key) && !err.contains(&key), "{out}{err}");
}

#[test]
fn the_terminal_and_event_streams_work_through_tls() {
    require_docker!();
    let (server, _) = tls_server();
    if admin_key(server).is_none() {
        eprintln!("skipped: the server wrote no admin.key");
        return;
    }
    let (st, id, err) = faas(&["instances", "create", "--image", IMAGE], None);
    assert_eq!(st, Some(0), "{id}{err}");
    let id = id.trim().to_string();
    // wss://: the terminal's WebSocket, the key in its handshake.
    let (st, out, err) = faas(
        &["instances", "shell", &id],
        Some("echo $((6*7)); exit 3\n"),
    );
    assert_eq!(st, Some(3), "{out}{err}");
    assert!(out.lines().any(|l| l.trim() == "42"), "{out:?}");
    // Server-Sent Events: a process's output as it happens.
    let (st, pid, err) = faas(
        &[
            "instances",
            "spawn",
            &id,
            "--",
            "echo hi; sleep 0.2; echo bye",
        ],
        None,
    );
    assert_eq!(st, Some(0), "{pid}{err}");
    let (st, out, err) = faas(&["instances", "attach", &id, pid.trim()], None);
    assert_eq!((st, out.as_str()), (Some(0), "hi\nbye\n"), "{err}");
    let (st, out, err) = faas(&["instances", "rm", &id], None);
    assert_eq!(st, Some(0), "{out}{err}");
}

#[tokio::test]
async fn plain_http_and_unknown_cas_are_refused() {
    require_docker!();
    let (server, _) = tls_server();
    let plain = server.url.replace("https://", "http://");
    let r = reqwest::get(format!("{plain}/health")).await;
    assert!(r.is_err(), "plain HTTP was answered: {r:?}");

    let e = reqwest::Client::new()
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap_err();
    let text = chain(&e);
    assert!(text.contains("certificate"), "{text}");
}

#[tokio::test]
async fn a_tls_server_stops_gracefully_with_open_connections() {
    require_docker!();
    let (server, pki) = start_tls_server();
    let http = trusting(&pki);
    // A kept-alive connection stays open in the client's pool.
    let r = http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
