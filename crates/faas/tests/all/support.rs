//! Starting and stopping real servers for the tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const IMAGE: &str = "faas/busybox:latest";
pub const DEBIAN_IMAGE: &str = "faas/bookworm-python3.11-node18:latest";
/// The shared server's `--sandbox-domain`: `{port}-{id}.sandbox.test` is an instance's port.
pub const SANDBOX_DOMAIN: &str = "sandbox.test";

/// Why the tests cannot run here, if they cannot. With `FAAS_REQUIRE_DOCKER=1` (the test
/// command sets it) a missing prerequisite is a failure, not a skip.
pub fn missing_prerequisite() -> Option<String> {
    static CHECK: OnceLock<Option<String>> = OnceLock::new();
    let why = CHECK
        .get_or_init(|| {
            let ok = |args: &[&str]| {
                Command::new("docker")
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !ok(&["info"]) {
                return Some("no Docker daemon answers (scripts/test.sh starts one)".into());
            }
            if !ok(&["image", "inspect", IMAGE]) {
                return Some(format!(
                    "image {IMAGE} is missing (scripts/build-images.sh builds it)"
                ));
            }
            None
        })
        .clone();
    if let Some(w) = &why {
        if std::env::var("FAAS_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("required test prerequisite missing: {w}");
        }
    }
    why
}

/// Returns early from a test, saying why, when the host lacks what it needs.
#[macro_export]
macro_rules! require_docker {
    () => {
        if let Some(why) = $crate::support::missing_prerequisite() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The backend under test: `FAAS_TEST_BACKEND` (docker, the default, or native) and, for
/// native, `FAAS_TEST_NATIVE_RUNTIME` (crun, the default, runc or runsc).
pub fn backend() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| std::env::var("FAAS_TEST_BACKEND").unwrap_or_else(|_| "docker".into()))
}

pub fn native_runtime() -> &'static str {
    static R: OnceLock<String> = OnceLock::new();
    R.get_or_init(|| std::env::var("FAAS_TEST_NATIVE_RUNTIME").unwrap_or_else(|_| "crun".into()))
}

/// True when the sandboxes under test run in gVisor.
pub fn gvisor() -> bool {
    backend() == "native" && native_runtime() == "runsc"
}

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    /// The admin key the server made on its first start (`<data-dir>/admin.key`).
    pub admin_key: String,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
}

fn test_root() -> PathBuf {
    std::env::temp_dir().join("faas-tests")
}

/// A fresh data dir for one server.
pub fn new_data_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = test_root().join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Server {
    /// Starts `faas serve` on a free port with `data_dir`.
    pub fn start_with(data_dir: PathBuf, extra: &[&str]) -> Server {
        Server::spawn(data_dir, extra, Stdio::inherit(), None)
    }

    /// Like [`Server::start_with`], its log (at `RUST_LOG=level`) going to the file `log`.
    pub fn start_logged(
        data_dir: PathBuf,
        extra: &[&str],
        log: &std::path::Path,
        level: &str,
    ) -> Server {
        let f = std::fs::File::create(log).unwrap();
        Server::spawn(data_dir, extra, Stdio::from(f), Some(level))
    }

    fn spawn(data_dir: PathBuf, extra: &[&str], stderr: Stdio, level: Option<&str>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--shutdown-on-stdin-eof",
                "--backend",
                backend(),
                "--native-runtime",
                native_runtime(),
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            // Servers share the host: only the network tests' own, each with a subnet of its
            // own, set up sandbox networking.
            .args((!extra.contains(&"--sandbox-subnet")).then_some("--no-network"))
            .args(extra)
            .env(
                "RUST_LOG",
                level
                    .map(str::to_string)
                    .unwrap_or_else(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start faas serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("faas listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("faas serve did not start: {:?}", child.wait());
            }
        };
        let stdin = child.stdin.take();
        // Written before the server listens; kept from its first start on a reused data dir.
        let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        Server {
            url,
            admin_key,
            data_dir,
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
        }
    }

    pub fn start() -> Server {
        Server::start_with(new_data_dir(), &["--sandbox-domain", SANDBOX_DOMAIN])
    }

    /// Graceful stop (stdin closes, as when a supervisor goes away); waits for the exit.
    pub fn stop(&self) -> std::process::ExitStatus {
        self.stdin.lock().unwrap().take();
        let mut child = self.child.lock().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server did not stop within 60s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no clean-up runs.
    pub fn kill9(&self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A client with the server's admin key.
    pub fn client(&self) -> Client {
        self.client_with_key(&self.admin_key)
    }

    /// A client sending `key` (none when empty).
    pub fn client_with_key(&self, key: &str) -> Client {
        Client::new(&self.url, key)
    }

    /// Sandboxes of this server's deployment that exist on the host, running or not: docker
    /// containers by the `faas.owner` label, or native bundle dirs and runtime state.
    pub fn sandboxes(&self) -> Vec<String> {
        let owner = self.data_dir.canonicalize().unwrap();
        if backend() == "docker" {
            return docker_ps(&format!("label=faas.owner={}", owner.display()));
        }
        let mut found: Vec<String> = Vec::new();
        let native = owner.join("native");
        let state = native.join("state").join(native_runtime());
        for dir in [native.join("sandboxes"), state] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !found.contains(&name) && !name.starts_with('.') && e.path().is_dir() {
                    found.push(name);
                }
            }
        }
        found
    }

    /// Whether the sandbox `id` still exists on the host.
    pub fn sandbox_exists(&self, id: &str) -> bool {
        if backend() == "docker" {
            return !docker_ps(&format!("name=faas-{id}")).is_empty();
        }
        self.sandboxes().iter().any(|s| s == id)
    }

    /// Kills a sandbox's processes from outside, as a crash would.
    pub fn kill_sandbox(&self, id: &str) {
        let ok = if backend() == "docker" {
            Command::new("docker")
                .args(["kill", id])
                .output()
                .unwrap()
                .status
                .success()
        } else {
            let root = self
                .data_dir
                .canonicalize()
                .unwrap()
                .join("native/state")
                .join(native_runtime());
            let root = format!("--root={}", root.display());
            Command::new(native_runtime())
                .args([root.as_str(), "kill", id, "KILL"])
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(ok, "could not kill sandbox {id}");
    }
}

pub fn docker_ps(filter: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The server most tests share; it shuts down when the test binary exits (its stdin closes).
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(Server::start)
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    /// The key it sends (empty: none).
    pub key: String,
    pub http: reqwest::Client,
}

/// Headers that carry `key` (none when empty).
pub fn auth_headers(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if !key.is_empty() {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    headers
}

impl Client {
    pub fn new(base: &str, key: &str) -> Client {
        Client {
            base: base.to_string(),
            key: key.to_string(),
            http: reqwest::Client::builder()
                .default_headers(auth_headers(key))
                .build()
                .unwrap(),
        }
    }

    /// A WebSocket handshake to `path` (a `ws://` URL of this server) with the client's key.
    pub fn ws_request(
        &self,
        path: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{path}", self.base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().unwrap();
        if !self.key.is_empty() {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", self.key).parse().unwrap(),
            );
        }
        req
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        req.send().await.unwrap()
    }

    async fn send_json(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = self.send(req).await;
        (r.status().as_u16(), r.json().await.unwrap())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_json(self.http.post(self.url(path)).json(&body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.send_json(self.http.post(self.url(path)).body(body))
            .await
    }

    pub async fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_json(self.http.put(self.url(path)).json(&body))
            .await
    }

    pub async fn delete_json(&self, path: &str) -> (u16, Value) {
        self.send_json(self.http.delete(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.send(self.http.delete(self.url(path)))
            .await
            .status()
            .as_u16()
    }

    pub async fn put_raw(&self, path: &str, body: Vec<u8>) -> u16 {
        self.send(self.http.put(self.url(path)).body(body))
            .await
            .status()
            .as_u16()
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self.send(self.http.get(self.url(path))).await;
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send_json(self.http.get(self.url(path))).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.send(self.http.get(self.url(path))).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Executes and expects a 200.
    pub async fn exec(&self, body: Value) -> Value {
        let mut body = body;
        if body.get("image").is_none() {
            body["image"] = json!(IMAGE);
        }
        let (status, v) = self.post("/api/v1/execute", body).await;
        assert_eq!(status, 200, "execute failed: {v}");
        v
    }

    /// Waits until the warm pool of `image` has a ready sandbox.
    pub async fn wait_pool_ready(&self, image: &str, n: u64) {
        self.wait_pool(image, None, n).await
    }

    /// Waits until the warm pool of `image` with `memory_mb` has `n` ready sandboxes.
    pub async fn wait_pool_ready_for(&self, image: &str, memory_mb: u64, n: u64) {
        self.wait_pool(image, Some(memory_mb), n).await
    }

    async fn wait_pool(&self, image: &str, memory_mb: Option<u64>, n: u64) {
        let start = Instant::now();
        loop {
            let (_, v) = self.get("/api/v1/pools").await;
            let ready = v["pools"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["image"] == image)
                .filter(|p| memory_mb.is_none_or(|m| p["memory_mb"] == m))
                .map(|p| p["ready"].as_u64().unwrap())
                .sum::<u64>();
            if ready >= n {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pool of {image} not ready: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asserts the error shape `{"error": {"code", "message"}}` with `code`.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "only `error` at the top: {body}"
    );
}

/// Waits until the sandbox `id` of `server` is gone.
pub async fn assert_sandbox_gone(server: &Server, id: &str) {
    let start = Instant::now();
    while server.sandbox_exists(id) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sandbox {id} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
