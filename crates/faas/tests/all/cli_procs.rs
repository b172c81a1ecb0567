//! The `faas instances` commands of processes, the terminal, files and metadata, through the
//! real binary against the real server, on the backend under test.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::require_docker;
use crate::support::{gvisor, shared, IMAGE};

/// `faas instances --server URL ARGS...` → (exit code, stdout, stderr).
fn faas(args: &[&str]) -> (Option<i32>, String, String) {
    faas_with_stdin(args, None)
}

fn faas_with_stdin(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .arg("instances")
        .args(["--server", &shared().url])
        .args(args)
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
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A new running instance of the test image; its id.
fn create(extra: &[&str]) -> String {
    let mut args = vec!["create", "--image", IMAGE];
    if gvisor() {
        args.extend(["--isolation", "gvisor"]);
    }
    args.extend(extra);
    let (st, out, err) = faas(&args);
    assert_eq!(st, Some(0), "{out}{err}");
    out.trim().to_string()
}

fn rm(id: &str) {
    let (st, out, err) = faas(&["rm", id]);
    assert_eq!(st, Some(0), "{out}{err}");
}

#[test]
fn cli_spawn_attach_and_ps() {
    require_docker!();
    let id = create(&[]);
    let (st, out, err) = faas(&[
        "spawn",
        &id,
        "--tag",
        "greeter",
        "--",
        "echo hi; sleep 0.2; echo bye",
    ]);
    assert_eq!(st, Some(0), "{out}{err}");
    let pid = out.trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "a pid: {out}");
    let (st, out, err) = faas(&["attach", &id, &pid]);
    assert_eq!((st, out.as_str()), (Some(0), "hi\nbye\n"), "{err}");
    let (st, out, err) = faas(&["ps", &id]);
    assert_eq!(st, Some(0), "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("no row of {pid}: {out}"));
    assert!(row.contains("greeter") && row.contains("echo hi"), "{row}");
    // A failing process: attach exits with its code; an unknown pid is a 404.
    let (_, out, _) = faas(&["spawn", &id, "--", "exit 5"]);
    let (st, _, err) = faas(&["attach", &id, out.trim()]);
    assert_eq!(st, Some(5), "{err}");
    let (st, _, err) = faas(&["attach", &id, "999999"]);
    assert_eq!(st, Some(1));
    assert!(err.contains("404 (not_found)"), "{err}");
    rm(&id);
}

#[test]
fn cli_send_and_kill() {
    require_docker!();
    let id = create(&[]);
    let (st, out, err) = faas(&["spawn", &id, "--stdin", "--json", "--", "cat"]);
    assert_eq!(st, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let pid = v["pid"].to_string();
    let (st, _, err) = faas(&["send", &id, &pid, "one\n"]);
    assert_eq!(st, Some(0), "{err}");
    let (st, _, err) = faas_with_stdin(&["send", &id, &pid, "--close"], Some("two\n"));
    assert_eq!(st, Some(0), "{err}");
    let (st, out, err) = faas(&["attach", &id, &pid]);
    assert_eq!((st, out.as_str()), (Some(0), "one\ntwo\n"), "{err}");
    let (_, out, _) = faas(&["spawn", &id, "--", "sleep 30"]);
    let pid = out.trim().to_string();
    let (st, _, err) = faas(&["kill", &id, &pid, "--signal", "KILL"]);
    assert_eq!(st, Some(0), "{err}");
    let (st, _, err) = faas(&["attach", &id, &pid]);
    assert_eq!(st, Some(128 + 9), "{err}");
    rm(&id);
}

#[test]
fn cli_shell_runs_piped_input_and_exits_with_its_code() {
    require_docker!();
    let id = create(&[]);
    let (st, out, err) = faas_with_stdin(&["shell", &id], Some("echo $((6*7)); exit 3\n"));
    assert_eq!(st, Some(3), "{out}{err}");
    // The terminal echoes the typed line; the answer is a line of its own.
    assert!(out.lines().any(|l| l.trim() == "42"), "{out:?}");
    let (st, _, err) = faas_with_stdin(&["shell", "nosuchinstance"], Some(""));
    assert_eq!(st, Some(1));
    assert!(err.contains("404 (not_found)"), "{err}");
    rm(&id);
}

#[test]
fn cli_fs_mkdir_ls_rm_stat() {
    require_docker!();
    let id = create(&[]);
    let (st, out, err) = faas(&["fs", &id, "mkdir", "/tmp/x"]);
    assert_eq!((st, out.as_str()), (Some(0), "/tmp/x\n"), "{err}");
    let (st, out, err) = faas(&["fs", &id, "ls", "/tmp"]);
    assert_eq!(st, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('d') && l.split_whitespace().last() == Some("x")),
        "{out}"
    );
    let (st, out, err) = faas(&["fs", &id, "stat", "/tmp/x", "--json"]);
    assert_eq!(st, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["type"], "dir", "{v}");
    let (st, out, err) = faas(&["fs", &id, "mv", "/tmp/x", "/tmp/y"]);
    assert_eq!((st, out.as_str()), (Some(0), "/tmp/y\n"), "{err}");
    let (st, _, err) = faas(&["fs", &id, "rm", "/tmp/y"]);
    assert_eq!(st, Some(0), "{err}");
    let (st, out, err) = faas(&["fs", &id, "stat", "/tmp/y"]);
    assert_eq!(st, Some(1), "{out}");
    assert!(err.contains("404 (not_found)"), "{err}");
    rm(&id);
}

#[test]
fn cli_metadata_create_list_get() {
    require_docker!();
    let team = format!("a-{}", std::process::id());
    let label = format!("team={team}");
    let id = create(&["--metadata", &label, "--metadata", "tier=dev"]);
    let ids = |filter: &str| -> Vec<String> {
        let (st, out, err) = faas(&["list", "--metadata", filter, "--json"]);
        assert_eq!(st, Some(0), "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&label), vec![id.clone()]);
    assert!(!ids("team=b").contains(&id));
    let (st, out, err) = faas(&["get", &id]);
    assert_eq!(st, Some(0), "{err}");
    assert!(out.contains(&label) && out.contains("tier=dev"), "{out}");
    let (st, _, err) = faas(&["create", "--metadata", "novalue"]);
    assert_eq!(st, Some(2), "a usage error: {err}");
    rm(&id);
}
