//! The real agent binary, run on the host on a temporary socket, driven through its protocol.

mod files;
mod procs;
mod tunnel;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use faas_agent::{
    read_frame, write_frame, write_json, Event, ExecRequest, ExitInfo, FrameKind, Request,
};

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Agent {
    start_with_stack(None)
}

/// An agent under a stack limit of `kib` (its children's argv and env may be a quarter of
/// it), or the inherited one.
fn start_with_stack(kib: Option<u32>) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = env!("CARGO_BIN_EXE_faas-agent");
    let mut cmd = match kib {
        None => Command::new(agent),
        Some(kib) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("ulimit -s {kib} && exec \"$0\" \"$@\""))
                .arg(agent);
            c
        }
    };
    let child = cmd.arg("--socket").arg(&socket).spawn().unwrap();
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "agent did not listen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Agent {
        child,
        socket,
        _dir: dir,
    }
}

struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    events: Vec<Event>,
}

impl Run {
    fn exit(&self) -> &ExitInfo {
        match self.events.last() {
            Some(Event::Exited(x)) => x,
            other => panic!("no exit event: {other:?}"),
        }
    }
}

fn exec(socket: &Path, req: ExecRequest, stdin: Option<&[u8]>) -> Run {
    let mut conn = UnixStream::connect(socket).unwrap();
    let has_stdin = stdin.is_some();
    write_json(
        &mut conn,
        &Request::Exec(ExecRequest {
            stdin: has_stdin,
            ..req
        }),
    )
    .unwrap();
    if let Some(data) = stdin {
        write_frame(&mut conn, FrameKind::Stdin, data).unwrap();
        write_frame(&mut conn, FrameKind::Stdin, &[]).unwrap();
    }
    let mut run = Run {
        stdout: vec![],
        stderr: vec![],
        events: vec![],
    };
    while let Some((kind, payload)) = read_frame(&mut conn).unwrap() {
        match kind {
            FrameKind::Stdout => run.stdout.extend(payload),
            FrameKind::Stderr => run.stderr.extend(payload),
            _ => {
                let ev: Event = serde_json::from_slice(&payload).unwrap();
                let last = matches!(
                    ev,
                    Event::Exited(_) | Event::SpawnFailed { .. } | Event::Error { .. }
                );
                run.events.push(ev);
                if last {
                    break;
                }
            }
        }
    }
    run
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn ping_answers_with_the_protocol_version() {
    let a = start();
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    write_json(&mut conn, &Request::Ping).unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    assert!(matches!(
        serde_json::from_slice(&p).unwrap(),
        Event::Pong {
            version: faas_agent::PROTOCOL_VERSION,
            ..
        }
    ));
}

#[test]
fn output_streams_and_exit_codes_are_exact() {
    let a = start();
    let r = exec(&a.socket, sh("echo out; echo err >&2; exit 42"), None);
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit().exit_code, 42);
    assert_eq!(r.exit().signal, None);
    assert!(r.exit().duration_us > 0);
    assert!(matches!(r.events[0], Event::Started { .. }));
}

#[test]
fn a_signal_is_reported_as_such() {
    let a = start();
    let r = exec(&a.socket, sh("kill -KILL $$"), None);
    assert_eq!(r.exit().signal, Some(9));
    assert_eq!(r.exit().exit_code, 137);
    assert!(!r.exit().timed_out);
}

#[test]
fn env_and_cwd_are_applied() {
    let a = start();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("new/dir");
    let req = ExecRequest {
        env: vec![("GREETING".into(), "hi there".into())],
        cwd: Some(cwd.display().to_string()),
        ..sh("echo \"$GREETING\"; pwd")
    };
    let r = exec(&a.socket, req, None);
    assert_eq!(
        String::from_utf8(r.stdout).unwrap(),
        format!("hi there\n{}\n", cwd.display())
    );
}

#[test]
fn stdin_is_delivered_then_closed() {
    let a = start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = exec(
        &a.socket,
        ExecRequest {
            argv: vec!["cat".into()],
            ..Default::default()
        },
        Some(&data),
    );
    assert_eq!(r.stdout, data);
    assert_eq!(r.exit().exit_code, 0);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let a = start();
    let t = Instant::now();
    let r = exec(
        &a.socket,
        ExecRequest {
            timeout_ms: 300,
            ..sh("sleep 30 & echo $!; sleep 30")
        },
        None,
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.exit().timed_out);
    assert_eq!(r.exit().signal, Some(9));
    let bg: u32 = String::from_utf8(r.stdout).unwrap().trim().parse().unwrap();
    let t = Instant::now();
    while alive(bg) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "background child {bg} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn output_over_the_cap_is_truncated() {
    let a = start();
    let r = exec(
        &a.socket,
        ExecRequest {
            output_limit: 1000,
            ..sh("head -c 5000 /dev/zero; head -c 5000 /dev/zero >&2")
        },
        None,
    );
    assert_eq!(r.stdout.len() + r.stderr.len(), 1000);
    assert!(r.exit().truncated);
    assert_eq!(r.exit().exit_code, 0);
}

#[test]
fn missing_programs_fail_to_spawn_with_127() {
    let a = start();
    let r = exec(
        &a.socket,
        ExecRequest {
            argv: vec!["/no/such/program".into()],
            ..Default::default()
        },
        None,
    );
    match r.events.last() {
        Some(Event::SpawnFailed {
            exit_code: 127,
            message,
        }) => assert!(message.contains("/no/such/program")),
        other => panic!("{other:?}"),
    }
    // The agent is fine afterwards (std's own reaping of the failed child was not raced).
    let r = exec(&a.socket, sh("echo ok"), None);
    assert_eq!(r.stdout, b"ok\n");
}

#[test]
fn a_host_that_goes_away_takes_its_process_with_it() {
    let a = start();
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    write_json(
        &mut conn,
        &Request::Exec(ExecRequest {
            argv: vec!["sleep".into(), "30".into()],
            ..Default::default()
        }),
    )
    .unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    let Event::Started { pid } = serde_json::from_slice(&p).unwrap() else {
        panic!("not started")
    };
    assert!(alive(pid));
    drop(conn);
    let t = Instant::now();
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "process {pid} outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn malformed_input_is_refused_and_the_agent_keeps_serving() {
    let a = start();
    // Not JSON.
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    write_frame(&mut conn, FrameKind::Json, b"{nope").unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    assert!(matches!(
        serde_json::from_slice(&p).unwrap(),
        Event::Error { .. }
    ));
    // A header announcing a frame over the limit, and garbage kinds.
    for junk in [
        &[0u8, 0xff, 0xff, 0xff, 0xff][..],
        &[7, 0, 0, 0, 1, 0],
        b"\x00\x00\x00",
    ] {
        let mut conn = UnixStream::connect(&a.socket).unwrap();
        conn.write_all(junk).unwrap();
        drop(conn);
    }
    let r = exec(&a.socket, sh("echo alive"), None);
    assert_eq!(r.stdout, b"alive\n");
}

#[test]
fn many_concurrent_execs() {
    let a = start();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let s = a.socket.clone();
            std::thread::spawn(move || (i, exec(&s, sh(&format!("echo {i}; exit {i}")), None)))
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        assert_eq!(r.stdout, format!("{i}\n").as_bytes());
        assert_eq!(r.exit().exit_code, i);
    }
}

/// Threads are reused from exec to exec: sequential execs do not pile them up, and concurrent
/// ones get their own.
#[test]
fn threads_are_reused_not_piled_up() {
    let a = start();
    let tasks = || {
        std::fs::read_dir(format!("/proc/{}/task", a.child.id()))
            .unwrap()
            .count()
    };
    for i in 0..40 {
        let r = exec(&a.socket, sh(&format!("echo {i}")), None);
        assert_eq!(r.stdout, format!("{i}\n").as_bytes());
    }
    let after_sequential = tasks();
    // The main thread, the reaper, and the prestarted workers (an exec needs one: its
    // connection's, which also watches the process's output), give or take those still
    // finishing the previous exec; not 40 execs' worth.
    assert!(
        after_sequential <= 16,
        "{after_sequential} threads after 40 sequential execs"
    );
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = a.socket.clone();
            std::thread::spawn(move || exec(&s, sh(&format!("sleep 0.2; echo {i}")), None))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap().stdout, format!("{i}\n").as_bytes());
    }
    assert!(tasks() >= 8, "concurrent execs shared threads: {}", tasks());
}
