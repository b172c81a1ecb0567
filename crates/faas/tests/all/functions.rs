//! Functions over HTTP: deploy, versions, sync and async invokes, errors, timeouts, the
//! durable queue across a `kill -9`, on SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::require_docker;
use crate::support::{assert_error, new_data_dir, shared, Client, Server};

const ADD_PY: &str = "def handler(event, context):\n    print('adding', event['a'], event['b'])\n    return {'sum': event['a'] + event['b']}\n";
const ADD_JS: &str = "exports.handler = async (event) => {\n  console.log('adding', event.a, event.b);\n  return { sum: event.a + event.b };\n};\n";
const ADD_SH: &str = "read -r p\na=$(echo \"$p\" | sed 's/.*\"a\":\\([0-9]*\\).*/\\1/')\nb=$(echo \"$p\" | sed 's/.*\"b\":\\([0-9]*\\).*/\\1/')\necho \"adding $a $b\" >&2\necho \"{\\\"sum\\\": $((a + b))}\"\n";
const TRICKY_PY: &str = "import time\n\ndef boom(event, context):\n    return {'x': 1 / event.get('d', 0)}\n\ndef maybe_loop(event, context):\n    while event.get('loop'):\n        pass\n    return 'done'\n\ndef slow(event, context):\n    time.sleep(event.get('s', 1))\n    return event\n";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A name no other test (or earlier run on a shared store) uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn deploy(c: &Client, body: Value) -> Value {
    let (status, v) = c.post("/api/v1/functions", body).await;
    assert!(status == 201 || status == 200, "deploy: {status} {v}");
    v
}

async fn invoke(c: &Client, name: &str, payload: Value) -> Value {
    let (status, v) = c
        .post(&format!("/api/v1/functions/{name}/invoke"), payload)
        .await;
    assert_eq!(status, 200, "invoke {name}: {v}");
    v
}

#[tokio::test]
async fn python_node_and_shell_functions_add_and_stay_warm() {
    require_docker!();
    let c = shared().client();
    for (runtime, handler, code) in [
        ("python", Some("main.handler"), ADD_PY),
        ("node", Some("index.handler"), ADD_JS),
        ("shell", None, ADD_SH),
    ] {
        let name = unique(runtime);
        let mut body = json!({"name": name, "runtime": runtime, "code_b64": b64(code)});
        if let Some(h) = handler {
            body["handler"] = json!(h);
        }
        let f = deploy(&c, body).await;
        assert_eq!(f["version"], 1, "{f}");
        let first = invoke(&c, &name, json!({"a": 2, "b": 3})).await;
        assert_eq!(first["status"], "succeeded", "{runtime}: {first}");
        assert_eq!(first["result"], json!({"sum": 5}), "{runtime}: {first}");
        assert_eq!(first["cold"], true, "{first}");
        assert!(
            first["logs"].as_str().unwrap().contains("adding 2 3"),
            "{runtime} logs: {first}"
        );
        assert_eq!(first["version"], 1);
        assert!(first["invocation_id"].as_str().unwrap().len() > 10);
        let second = invoke(&c, &name, json!({"a": 20, "b": 22})).await;
        assert_eq!(second["result"], json!({"sum": 42}), "{second}");
        assert_eq!(second["cold"], false, "{runtime}: {second}");
        assert!(second["duration_ms"].as_f64().unwrap() > 0.0);
        // The sync invocation is recorded.
        let id = second["invocation_id"].as_str().unwrap();
        let (st, got) = c.get(&format!("/api/v1/invocations/{id}")).await;
        assert_eq!(st, 200, "{got}");
        assert_eq!(got["result"], json!({"sum": 42}));
        assert_eq!(c.delete(&format!("/api/v1/functions/{name}")).await, 200);
    }
}

#[tokio::test]
async fn errors_tracebacks_and_timeouts() {
    require_docker!();
    let c = shared().client();
    let name = unique("boom");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "tricky.boom",
               "code_b64": b64(TRICKY_PY)}),
    )
    .await;
    let r = invoke(&c, &name, json!({})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["type"], "ZeroDivisionError", "{r}");
    let tb = r["error"]["traceback"].as_str().unwrap();
    assert!(
        tb.contains("/var/task/tricky.py") && tb.contains("1 / event"),
        "{tb}"
    );
    assert!(
        !tb.contains("<string>"),
        "the shim's frames are left out: {tb}"
    );
    // The sandbox survives a handler error.
    let ok = invoke(&c, &name, json!({"d": 4})).await;
    assert_eq!(ok["result"], json!({"x": 0.25}), "{ok}");
    assert_eq!(ok["cold"], false, "{ok}");

    let name = unique("loop");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "tricky.maybe_loop",
               "code_b64": b64(TRICKY_PY), "timeout_ms": 1500}),
    )
    .await;
    invoke(&c, &name, json!({})).await;
    let start = Instant::now();
    let r = invoke(&c, &name, json!({"loop": true})).await;
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["error"]["type"], "timeout", "{r}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let next = invoke(&c, &name, json!({})).await;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert_eq!(next["result"], "done");
    assert_eq!(
        next["cold"], true,
        "the timed-out sandbox is not reused: {next}"
    );

    // A handler that cannot load reports why, on every invoke.
    let name = unique("noload");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "main.handler",
               "code_b64": b64("import not_a_module_anywhere\n")}),
    )
    .await;
    let r = invoke(&c, &name, json!({})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["type"], "ModuleNotFoundError", "{r}");
}

#[tokio::test]
async fn versions_validation_and_http_errors() {
    require_docker!();
    let c = shared().client();
    let name = unique("ver");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "main.handler",
               "code_b64": b64("def handler(e, c):\n    return 'v1'\n"), "env_vars": {"K": "1"}}),
    )
    .await;
    let (st, v2) = c
        .put_json(
            &format!("/api/v1/functions/{name}"),
            json!({"code_b64": b64("import os\ndef handler(e, c):\n    return 'v2 ' + os.environ['K']\n")}),
        )
        .await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(
        v2["env_vars"]["K"], "1",
        "an update keeps what it does not change"
    );
    assert_eq!(invoke(&c, &name, json!(null)).await["result"], "v2 1");
    let (st, old) = c
        .post(
            &format!("/api/v1/functions/{name}/invoke?version=1"),
            json!(null),
        )
        .await;
    assert_eq!((st, &old["result"]), (200, &json!("v1")), "{old}");
    let (_, got) = c.get(&format!("/api/v1/functions/{name}")).await;
    assert_eq!(got["versions"], json!([1, 2]), "{got}");
    let (_, list) = c.get("/api/v1/functions").await;
    assert!(list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == name.as_str()));

    // Errors.
    let (st, v) = c
        .post("/api/v1/functions/no-such-fn/invoke", json!({}))
        .await;
    assert_error(st, &v, 404, "not_found");
    let (st, v) = c.get("/api/v1/invocations/nope").await;
    assert_error(st, &v, 404, "not_found");
    let code = b64(ADD_PY);
    for (body, what) in [
        (
            json!({"name": "x1", "runtime": "ruby", "code_b64": code}),
            "runtime",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main", "code_b64": code}),
            "handler",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main.h-x", "code_b64": code}),
            "handler",
        ),
        (
            json!({"name": "x1", "runtime": "python", "code_b64": code}),
            "handler",
        ),
        (
            json!({"name": "Bad Name", "runtime": "python", "handler": "main.handler", "code_b64": code}),
            "name",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main.handler"}),
            "code",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main.handler", "code_b64": "%%%"}),
            "base64",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main.handler", "archive_b64": b64("junk")}),
            "archive",
        ),
        (
            json!({"name": "x1", "runtime": "node", "handler": "../x.handler", "code_b64": code}),
            "handler",
        ),
        (
            json!({"name": "x1", "runtime": "image", "image": "faas/busybox:latest"}),
            "command",
        ),
        (
            json!({"name": "x1", "runtime": "python", "handler": "main.handler", "code_b64": code, "max_concurrency": 0}),
            "max_concurrency",
        ),
    ] {
        let (st, v) = c.post("/api/v1/functions", body).await;
        assert_error(st, &v, 400, "invalid_request");
        let _ = what;
    }
    let (st, v) = c.get("/api/v1/functions/x1").await;
    assert_error(st, &v, 404, "not_found");
    // The payload: at most 6 MiB, JSON.
    let big = format!("\"{}\"", "a".repeat(7 * 1024 * 1024));
    let (st, v) = c
        .post_raw(
            &format!("/api/v1/functions/{name}/invoke"),
            big.into_bytes(),
        )
        .await;
    assert_error(st, &v, 413, "payload_too_large");
    let (st, v) = c
        .post_raw(
            &format!("/api/v1/functions/{name}/invoke"),
            b"{not json".to_vec(),
        )
        .await;
    assert_error(st, &v, 400, "invalid_request");
    let (st, v) = c
        .post(
            &format!("/api/v1/functions/{name}/invoke?async=true&max_attempts=99"),
            json!({}),
        )
        .await;
    assert_error(st, &v, 400, "invalid_request");
    let (st, v) = c.get("/api/v1/invocations?status=bogus").await;
    assert_error(st, &v, 400, "invalid_request");
    assert_eq!(c.delete(&format!("/api/v1/functions/{name}")).await, 200);
    assert_eq!(c.delete(&format!("/api/v1/functions/{name}")).await, 404);
}

#[tokio::test]
async fn binary_image_and_archive_functions() {
    require_docker!();
    let c = shared().client();
    // A zip with a package: handler pkg.mod.run.
    let zip = {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("pkg/__init__.py", o).unwrap();
        w.start_file("pkg/mod.py", o).unwrap();
        w.write_all(b"from .helper import twice\ndef run(e, c):\n    return twice(e)\n")
            .unwrap();
        w.start_file("pkg/helper.py", o).unwrap();
        w.write_all(b"def twice(x):\n    return x * 2\n").unwrap();
        w.finish().unwrap().into_inner()
    };
    let name = unique("zip");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "pkg.mod.run",
               "archive_b64": base64::engine::general_purpose::STANDARD.encode(&zip)}),
    )
    .await;
    assert_eq!(invoke(&c, &name, json!(21)).await["result"], 42);

    // Any image plus a command: the payload on stdin, the result on stdout.
    let name = unique("img");
    deploy(
        &c,
        json!({"name": name, "runtime": "image", "image": crate::support::IMAGE,
               "command": ["/bin/sh", "-c", "wc -c"]}),
    )
    .await;
    let r = invoke(&c, &name, json!("abc")).await;
    assert_eq!(r["result"], 5, "{r}");

    // A static binary (Debian's busybox-static, which acts as the applet it is named after:
    // `cat` echoes the payload back).
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let name = unique("bin");
    let (st, v) = c
        .post(
            "/api/v1/functions",
            json!({"name": name, "runtime": "binary", "handler": "cat",
                   "code_b64": base64::engine::general_purpose::STANDARD.encode(&busybox)}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let r = invoke(&c, &name, json!({"echo": [1, 2]})).await;
    assert_eq!(r["result"], json!({"echo": [1, 2]}), "{r}");
    // Renamed in a new version: busybox has no `nope` applet and exits 127.
    let (st, v) = c
        .put_json(
            &format!("/api/v1/functions/{name}"),
            json!({"handler": "nope"}),
        )
        .await;
    assert_eq!((st, v["version"].as_i64()), (200, Some(2)), "{v}");
    let r = invoke(&c, &name, json!({})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["type"], "exit_code", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("127"),
        "{r}"
    );
}

async fn wait_final(c: &Client, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (st, v) = c.get(&format!("/api/v1/invocations/{id}")).await;
        assert_eq!(st, 200, "{v}");
        if !matches!(v["status"].as_str(), Some("queued" | "running")) {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "invocation {id} did not finish: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn async_invokes_idempotency_retries_and_dead_letters() {
    require_docker!();
    let c = shared().client();
    let name = unique("async");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "tricky.boom",
               "code_b64": b64(TRICKY_PY)}),
    )
    .await;
    let path = format!("/api/v1/functions/{name}/invoke?async=true");
    let send = |key: &'static str, body: Value| {
        let req = c.http.post(format!("{}{path}", c.base)).json(&body);
        async move {
            let r = req.header("Idempotency-Key", key).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, a) = send("key-1", json!({"d": 2})).await;
    assert_eq!(st, 202, "{a}");
    let (st, b) = send("key-1", json!({"d": 2})).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(a["invocation_id"], b["invocation_id"]);
    let done = wait_final(
        &c,
        a["invocation_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"x": 0.5}));
    assert_eq!(done["async"], true);
    assert_eq!(done["attempts"], 1);

    let (st, f) = c.post(&format!("{path}&max_attempts=2"), json!({})).await;
    assert_eq!(st, 202, "{f}");
    let dead = wait_final(
        &c,
        f["invocation_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dead["status"], "dead_letter", "{dead}");
    assert_eq!(dead["attempts"], 2);
    let errs = dead["attempt_errors"].as_array().unwrap();
    assert_eq!(errs.len(), 2, "{dead}");
    assert!(
        errs.iter().all(|e| e["type"] == "ZeroDivisionError"),
        "{dead}"
    );
    let (_, list) = c
        .get(&format!(
            "/api/v1/invocations?function={name}&status=dead_letter"
        ))
        .await;
    assert_eq!(list["invocations"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn deleting_a_function_fails_its_queued_invocations() {
    require_docker!();
    let c = shared().client();
    let name = unique("del");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "tricky.slow",
               "code_b64": b64(TRICKY_PY), "max_concurrency": 1}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (st, v) = c
            .post(
                &format!("/api/v1/functions/{name}/invoke?async=true"),
                json!({"s": 2}),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        ids.push(v["invocation_id"].as_str().unwrap().to_string());
    }
    let (st, del) = c.delete_json(&format!("/api/v1/functions/{name}")).await;
    assert_eq!(st, 200, "{del}");
    // Still queued, or claimed and waiting for the function's one slot: either way they
    // end with `function_deleted`.
    assert!(del["failed_invocations"].as_u64().is_some(), "{del}");
    let mut deleted = 0;
    for id in &ids {
        let v = wait_final(&c, id, Duration::from_secs(60)).await;
        if v["error"]["type"] == "function_deleted" {
            assert_eq!(v["status"], "error", "{v}");
            deleted += 1;
        }
    }
    assert!(deleted >= 3, "{deleted}");
}

/// Status counts of a function's invocations.
async fn statuses(c: &Client, name: &str) -> (HashMap<String, usize>, Vec<Value>) {
    let (st, v) = c
        .get(&format!("/api/v1/invocations?function={name}&limit=1000"))
        .await;
    assert_eq!(st, 200, "{v}");
    let all = v["invocations"].as_array().unwrap().clone();
    let mut counts = HashMap::new();
    for i in &all {
        *counts
            .entry(i["status"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    (counts, all)
}

/// 1,000 async invocations; `kill -9` of the server half-way; a new server on the same store:
/// every invocation ends `succeeded` or `dead_letter`, none is lost, and none ran twice (each
/// claim of an invocation is accounted for: one outcome, or one attempt lost with the server).
async fn queue_survives_kill9(database_url: Option<String>) {
    let data_dir = new_data_dir();
    let mut extra: Vec<String> = vec![
        "--retry-base-ms".into(),
        "100".into(),
        "--queue-lease-ms".into(),
        "3000".into(),
    ];
    if let Some(u) = &database_url {
        extra.extend(["--database-url".into(), u.clone()]);
    }
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    let server = Server::start_with(data_dir.clone(), &args);
    let c = server.client();
    let name = unique("q");
    deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "main.handler",
               "code_b64": b64(ADD_PY), "max_concurrency": 8}),
    )
    .await;
    const N: usize = 1000;
    let path = format!("{}/api/v1/functions/{name}/invoke?async=true", c.base);
    let enqueue = futures::stream::iter(0..N)
        .map(|i| {
            let req = c.http.post(&path).json(&json!({"a": i, "b": 1}));
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        })
        .buffer_unordered(16);
    use futures::StreamExt;
    enqueue.collect::<Vec<()>>().await;
    // Half-way: kill it.
    let start = Instant::now();
    loop {
        let (counts, _) = statuses(&c, &name).await;
        if counts.get("succeeded").copied().unwrap_or(0) >= N / 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "{counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    // A new server on the same store finishes the rest.
    let s2 = Server::start_with(data_dir.clone(), &args);
    let c2 = s2.client();
    let start = Instant::now();
    let (counts, all) = loop {
        let (counts, all) = statuses(&c2, &name).await;
        let done = counts.get("succeeded").copied().unwrap_or(0)
            + counts.get("dead_letter").copied().unwrap_or(0);
        if done == N {
            break (counts, all);
        }
        assert!(start.elapsed() < Duration::from_secs(240), "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(all.len(), N, "none lost");
    let mut lost = 0;
    for inv in &all {
        let attempts = inv["attempts"].as_i64().unwrap();
        let lost_here = inv["attempt_errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "worker_lost")
            .count() as i64;
        lost += usize::from(lost_here > 0);
        if inv["status"] == "succeeded" {
            assert_eq!(attempts, lost_here + 1, "every claim accounted for: {inv}");
            assert!(inv["result"]["sum"].as_i64().unwrap() >= 1, "{inv}");
        }
        assert!(
            attempts <= inv["max_attempts"].as_i64().unwrap() + 1,
            "{inv}"
        );
    }
    // Only what ran at the kill can have lost an attempt.
    assert!(lost <= 32, "{lost} invocations lost an attempt");
    s2.stop();
    eprintln!("queue after kill -9: {counts:?}, {lost} lost an attempt");
}

#[tokio::test]
async fn queue_survives_kill9_on_sqlite() {
    require_docker!();
    queue_survives_kill9(None).await;
}

#[tokio::test]
async fn queue_survives_kill9_on_postgres() {
    require_docker!();
    let Ok(admin) = std::env::var("FAAS_TEST_POSTGRES_URL") else {
        if std::env::var("FAAS_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("FAAS_TEST_POSTGRES_URL is not set (scripts/test.sh starts PostgreSQL)");
        }
        eprintln!("skipped: PostgreSQL (FAAS_TEST_POSTGRES_URL is not set)");
        return;
    };
    let db = format!("faas_kill9_{}", uuid::Uuid::new_v4().simple());
    let url = faas_store::Store::create_postgres_database(&admin, &db)
        .await
        .unwrap();
    queue_survives_kill9(Some(url)).await;
}

#[tokio::test]
async fn min_warm_idle_reclaim_and_callbacks() {
    require_docker!();
    let server = Server::start_with(
        new_data_dir(),
        &["--function-idle-ms", "800", "--retry-base-ms", "100"],
    );
    let c = server.client();
    let name = unique("warm");
    let f = deploy(
        &c,
        json!({"name": name, "runtime": "python", "handler": "main.handler",
               "code_b64": b64(ADD_PY), "min_warm": 1}),
    )
    .await;
    assert_eq!(f["min_warm"], 1);
    // min_warm: a sandbox starts without an invoke, so the first invoke is warm.
    let start = Instant::now();
    loop {
        let (_, f) = c.get(&format!("/api/v1/functions/{name}")).await;
        if f["warm"] == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = invoke(&c, &name, json!({"a": 1, "b": 2})).await;
    assert_eq!(r["cold"], false, "{r}");
    // Beyond min_warm, idle sandboxes are reclaimed.
    let burst =
        futures::future::join_all((0..3).map(|_| invoke(&c, &name, json!({"a": 1, "b": 1})))).await;
    assert!(burst.iter().all(|r| r["status"] == "succeeded"));
    let start = Instant::now();
    loop {
        let (_, f) = c.get(&format!("/api/v1/functions/{name}")).await;
        if f["warm"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not reclaimed: {f}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A callback gets the final result, for a success and for a dead letter.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text[..i]
                            .lines()
                            .find_map(|l| {
                                let l = l.to_ascii_lowercase();
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            let body: Value =
                                serde_json::from_slice(&buf[i + 4..i + 4 + len]).unwrap();
                            let _ = tx.send(body);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let cb = format!("http://127.0.0.1:{port}/done");
    let (st, a) = c
        .post(
            &format!("/api/v1/functions/{name}/invoke?async=true&callback_url={cb}"),
            json!({"a": 40, "b": 2}),
        )
        .await;
    assert_eq!(st, 202, "{a}");
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("callback within 60 s")
        .unwrap();
    assert_eq!(got["invocation_id"], a["invocation_id"]);
    assert_eq!(got["status"], "succeeded");
    assert_eq!(got["result"], json!({"sum": 42}));
    let (st, b) = c
        .post(
            &format!("/api/v1/functions/{name}/invoke?async=true&max_attempts=2&callback_url={cb}"),
            json!({}),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("callback within 60 s")
        .unwrap();
    assert_eq!(got["invocation_id"], b["invocation_id"]);
    assert_eq!(got["status"], "dead_letter", "{got}");
    assert_eq!(got["attempt_errors"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(got["error"]["type"], "KeyError", "{got}");
    server.stop();
}
