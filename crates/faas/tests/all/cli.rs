//! The `faas` command line: `run` exits with the command's code; `doctor` reports backends.

use std::process::Command;

use crate::require_docker;
use crate::support::{shared, IMAGE};

#[test]
fn run_exits_with_the_commands_code() {
    require_docker!();
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .args([
            "run",
            "--server",
            &shared().url,
            "--image",
            IMAGE,
            "--",
            "echo from-cli; echo e >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "e\n");
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .args([
            "run",
            "--server",
            &shared().url,
            "--image",
            "faas/none:x",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image_not_found"));
}

#[test]
fn doctor_reports_docker() {
    require_docker!();
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("docker") && l.contains(" ok ")),
        "{text}"
    );
    assert!(text.contains("firecracker"), "{text}");
}

#[test]
fn fn_deploy_invoke_list_and_rm() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("main.py");
    std::fs::write(
        &code,
        "def handler(e, c):\n    print('hi')\n    return {'sum': e['a'] + e['b']}\n",
    )
    .unwrap();
    let name = format!("cli-{}", std::process::id());
    let faas = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_faas"))
            .env("FAAS_API_KEY", &crate::support::shared().admin_key)
            .args(args)
            .args(["--server", &shared().url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let code = code.to_str().unwrap();
    let (st, out, err) = faas(&[
        "fn",
        "deploy",
        &name,
        "--runtime",
        "python",
        "--handler",
        "main.handler",
        "--code",
        code,
    ]);
    assert_eq!(st, Some(0), "{out}{err}");
    assert!(out.contains("version 1"), "{out}");
    let (st, out, err) = faas(&["fn", "invoke", &name, "-d", r#"{"a": 2, "b": 3}"#]);
    assert_eq!(st, Some(0), "{out}{err}");
    assert!(out.contains(r#"result: {"sum":5}"#), "{out}");
    assert!(
        err.contains("hi"),
        "the function's logs go to stderr: {err}"
    );
    let (st, out, _) = faas(&[
        "fn",
        "invoke",
        &name,
        "--async",
        "-d",
        r#"{"a": 1, "b": 1}"#,
    ]);
    assert_eq!(st, Some(0));
    let id = out.trim().to_string();
    let (st, out, _) = faas(&["invocations", "get", &id, "--json"]);
    assert_eq!(st, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["invocation_id"], id.as_str());
    let (st, out, _) = faas(&["fn", "list"]);
    assert_eq!(st, Some(0));
    assert!(out.lines().any(|l| l.starts_with(&name)), "{out}");
    let (st, out, _) = faas(&["invocations", "list", "--function", &name]);
    assert_eq!(st, Some(0));
    assert!(out.contains(&id), "{out}");
    // A handler error: exit 1, the error printed.
    let (st, out, err) = faas(&["fn", "invoke", &name, "-d", "{}"]);
    assert_eq!(st, Some(1), "{out}{err}");
    assert!(out.contains("error: KeyError"), "{out}");
    let (st, out, _) = faas(&["fn", "rm", &name]);
    assert_eq!(st, Some(0), "{out}");
    let (st, _, err) = faas(&["fn", "get", &name]);
    assert_eq!(st, Some(1));
    assert!(err.contains("404 (not_found)"), "{err}");
}

#[test]
fn every_api_area_is_reachable_from_the_cli() {
    require_docker!();
    let faas = |args: &[&str]| {
        // The server flag right after the area: a command after `--` takes everything.
        let out = Command::new(env!("CARGO_BIN_EXE_faas"))
            .env("FAAS_API_KEY", &crate::support::shared().admin_key)
            .arg(args[0])
            .args(["--server", &shared().url])
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (st, out, err) = faas(&["health"]);
    assert_eq!(st, Some(0), "{out}{err}");
    assert!(out.starts_with("ok "), "{out}");
    let (st, out, _) = faas(&["instances", "create", "--image", IMAGE, "--name", "cli"]);
    assert_eq!(st, Some(0), "{out}");
    let id = out.trim().to_string();
    let (st, out, _) = faas(&[
        "instances",
        "exec",
        &id,
        "--",
        "echo hi > /f; cat /f; exit 3",
    ]);
    assert_eq!((st, out.as_str()), (Some(3), "hi\n"));
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("up.txt");
    std::fs::write(&local, "uploaded").unwrap();
    let (st, _, err) = faas(&[
        "instances",
        "upload",
        &id,
        local.to_str().unwrap(),
        "/up.txt",
    ]);
    assert_eq!(st, Some(0), "{err}");
    let (st, out, _) = faas(&["instances", "download", &id, "/up.txt", "-"]);
    assert_eq!((st, out.as_str()), (Some(0), "uploaded"));
    let (_, out, _) = faas(&["instances", "list"]);
    assert!(out.lines().any(|l| l.starts_with(&id)), "{out}");
    let (st, out, _) = faas(&["instances", "snapshot", &id]);
    assert_eq!(st, Some(0), "{out}");
    let snap = out.trim().to_string();
    let (st, out, _) = faas(&["snapshots", "branch", &snap, "--count", "2", "--json"]);
    assert_eq!(st, Some(0), "{out}");
    let branch: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (_, out, _) = faas(&["snapshots", "list"]);
    assert!(out.contains(&snap), "{out}");
    for b in branch["instances"].as_array().unwrap() {
        let (st, _, _) = faas(&["instances", "rm", b["id"].as_str().unwrap()]);
        assert_eq!(st, Some(0));
    }
    let (st, out, _) = faas(&["instances", "stop", &id]);
    assert_eq!(st, Some(0), "{out}");
    let (st, _, err) = faas(&["instances", "exec", &id, "--", "true"]);
    assert_eq!(st, Some(1));
    assert!(err.contains("409 (conflict)"), "{err}");
    assert_eq!(faas(&["snapshots", "rm", &snap]).0, Some(0));
    assert_eq!(faas(&["instances", "rm", &id]).0, Some(0));
    let (st, _, err) = faas(&["instances", "get", &id]);
    assert_eq!(st, Some(1));
    assert!(err.contains("404 (not_found)"), "{err}");
    let (st, out, _) = faas(&["pools", "list"]);
    assert_eq!(st, Some(0));
    assert!(out.starts_with("IMAGE"), "{out}");
    let (st, out, _) = faas(&["metrics", "--prometheus"]);
    assert_eq!(st, Some(0));
    assert!(out.contains("faas_sandboxes_created_total"));
    let (st, out, _) = faas(&["openapi"]);
    assert_eq!(st, Some(0));
    assert!(out.contains("/api/v1/functions/{name}/invoke"));
    // Logs: follow an execution started with a request id.
    let rid = format!("cli-logs-{}", std::process::id());
    let follower = {
        let rid = rid.clone();
        let url = shared().url.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_faas"))
                .env("FAAS_API_KEY", &crate::support::shared().admin_key)
                .args(["logs", &rid, "--server", &url])
                .output()
                .unwrap()
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .args([
            "run",
            "--server",
            &shared().url,
            "--image",
            IMAGE,
            "--request-id",
            &rid,
        ])
        .args(["--", "echo streamed; exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let logs = follower.join().unwrap();
    assert_eq!(logs.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "streamed\n");
}
