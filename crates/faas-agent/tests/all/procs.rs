//! The process table: detached execs, Connect, input, signals, PTYs, List, and no leaks.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use faas_agent::{
    read_frame, write_json, ErrorKind, Event, ExecRequest, ExitInfo, FrameKind, ProcessInfo,
    PtySize, Request,
};

use crate::{sh, start, start_with_stack};

pub fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A one-shot request: its one answer.
pub fn ask(socket: &Path, req: &Request) -> Event {
    let mut conn = UnixStream::connect(socket).unwrap();
    write_json(&mut conn, req).unwrap();
    let (kind, p) = read_frame(&mut conn).unwrap().expect("an answer");
    assert_eq!(kind, FrameKind::Json);
    serde_json::from_slice(&p).unwrap()
}

/// Starts a detached process: its pid.
fn detach(socket: &Path, req: ExecRequest) -> u32 {
    let mut conn = UnixStream::connect(socket).unwrap();
    write_json(
        &mut conn,
        &Request::Exec(ExecRequest {
            detach: true,
            ..req
        }),
    )
    .unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    let ev: Event = serde_json::from_slice(&p).unwrap();
    let Event::Started { pid } = ev else {
        panic!("not started: {ev:?}")
    };
    // Then the connection ends.
    assert!(read_frame(&mut conn).unwrap().is_none());
    pid
}

#[derive(Debug)]
enum Got {
    Out(FrameKind, Vec<u8>),
    Ev(Event),
}

/// Connects to `pid` and reads the acknowledgement, which comes first: `started {pid}`.
fn connect(socket: &Path, pid: u32) -> UnixStream {
    let mut conn = UnixStream::connect(socket).unwrap();
    write_json(&mut conn, &Request::Connect { pid }).unwrap();
    let (kind, p) = read_frame(&mut conn).unwrap().expect("an acknowledgement");
    assert_eq!(kind, FrameKind::Json);
    assert_eq!(
        serde_json::from_slice::<Event>(&p).unwrap(),
        Event::Started { pid }
    );
    conn
}

/// Subscribes to `pid` (after its acknowledgement); what arrives goes to the channel, until
/// the connection ends.
fn subscribe(socket: &Path, pid: u32) -> mpsc::Receiver<Got> {
    forward_frames(connect(socket, pid))
}

/// What arrives on `conn` from now on goes to the channel, until the connection ends.
fn forward_frames(mut conn: UnixStream) -> mpsc::Receiver<Got> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(Some((kind, p))) = read_frame(&mut conn) {
            let got = match kind {
                FrameKind::Json => Got::Ev(serde_json::from_slice(&p).unwrap()),
                k => Got::Out(k, p),
            };
            if tx.send(got).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads from a subscription until `until` holds for the output so far (or the exit).
fn read_until(rx: &mpsc::Receiver<Got>, out: &mut Vec<u8>, until: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until(out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Got::Out(_, p)) => out.extend(p),
            Ok(Got::Ev(ev)) => panic!(
                "{ev:?} while waiting; output {:?}",
                String::from_utf8_lossy(out)
            ),
            Err(e) => panic!("{e}; output so far {:?}", String::from_utf8_lossy(out)),
        }
    }
}

/// Everything until the exit: output and exit info; the connection then ends.
fn to_exit(rx: &mpsc::Receiver<Got>) -> (Vec<u8>, ExitInfo) {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)).expect("an exit") {
            Got::Out(_, p) => out.extend(p),
            Got::Ev(Event::Exited(x)) => {
                // Closed after it.
                assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
                return (out, x);
            }
            Got::Ev(ev) => panic!("{ev:?}"),
        }
    }
}

fn list(socket: &Path) -> Vec<ProcessInfo> {
    match ask(socket, &Request::List) {
        Event::Processes { processes } => processes,
        other => panic!("{other:?}"),
    }
}

fn kind_of(ev: &Event) -> ErrorKind {
    match ev {
        Event::Error { kind, .. } => *kind,
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn detached_processes_outlive_their_connection_and_replay_their_output() {
    let a = start();
    let t = Instant::now();
    let pid = detach(&a.socket, sh("sleep 1; echo done"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let (out, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(out, b"done\n");
    assert_eq!(x.exit_code, 0);
    assert!(t.elapsed() >= Duration::from_secs(1));

    // Two subscribers, the second one joining mid-way: it gets the earlier output replayed.
    let pid = detach(&a.socket, sh("echo a; sleep 1; echo b >&2; exit 7"));
    let first = subscribe(&a.socket, pid);
    std::thread::sleep(Duration::from_millis(300));
    let second = subscribe(&a.socket, pid);
    for rx in [&first, &second] {
        let (out, x) = to_exit(rx);
        assert_eq!(out, b"a\nb\n");
        assert_eq!(x.exit_code, 7);
    }
    // After the end: everything, then the exit, at once.
    let t = Instant::now();
    let rx = subscribe(&a.socket, pid);
    let mut frames = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Got::Out(k, p) => frames.push((k, p)),
            Got::Ev(Event::Exited(x)) => {
                assert_eq!(x.exit_code, 7);
                break;
            }
            Got::Ev(ev) => panic!("{ev:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(
        frames,
        vec![
            (FrameKind::Stdout, b"a\n".to_vec()),
            (FrameKind::Stderr, b"b\n".to_vec())
        ]
    );
    // Unknown pid.
    let ev = ask(&a.socket, &Request::Connect { pid: 999_999_999 });
    assert_eq!(kind_of(&ev), ErrorKind::NotFound);
}

/// A detached start whose connection stays as its subscription: `started {pid}`, then all
/// its output from the first byte, then its exit; a watcher that leaves does not end it.
#[test]
fn a_subscribed_start_watches_from_the_first_byte_and_its_end_kills_nothing() {
    let a = start();
    let subscribed = |req: ExecRequest| {
        let mut conn = UnixStream::connect(&a.socket).unwrap();
        let req = ExecRequest {
            detach: true,
            subscribe: true,
            ..req
        };
        write_json(&mut conn, &Request::Exec(req)).unwrap();
        let (_, p) = read_frame(&mut conn).unwrap().unwrap();
        let Event::Started { pid } = serde_json::from_slice(&p).unwrap() else {
            panic!("not started: {}", String::from_utf8_lossy(&p))
        };
        let rx = forward_frames(conn.try_clone().unwrap());
        (pid, conn, rx)
    };
    // Output written at once is not missed (it comes before any later Connect could).
    let (_, _conn, rx) = subscribed(sh("echo first; echo err >&2; exit 5"));
    let (out, x) = to_exit(&rx);
    assert_eq!(out, b"first\nerr\n");
    assert_eq!(x.exit_code, 5);

    // The watcher leaves mid-way: the process goes on, and a later subscriber gets it all.
    let (pid, conn, rx) = subscribed(sh("echo a; sleep 1; echo b"));
    let mut out = Vec::new();
    read_until(&rx, &mut out, |o| o == b"a\n");
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);
    let (out, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(out, b"a\nb\n");
    assert_eq!(x.exit_code, 0);

    // A program that is not there: refused as a plain start is, nothing registered.
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    let req = ExecRequest {
        argv: vec!["/no/such/program".into()],
        detach: true,
        subscribe: true,
        ..Default::default()
    };
    write_json(&mut conn, &Request::Exec(req)).unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    let ev: Event = serde_json::from_slice(&p).unwrap();
    assert!(
        matches!(ev, Event::SpawnFailed { exit_code: 127, .. }),
        "{ev:?}"
    );
}

#[test]
fn replay_keeps_the_newest_output() {
    let a = start();
    // 3 MiB in numbered lines: the replay keeps at least the last REPLAY_BYTES of it.
    let pid = detach(&a.socket, sh("seq 1 400000"));
    let t = Instant::now();
    while list(&a.socket).iter().any(|p| p.pid == pid && p.running) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (out, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(x.exit_code, 0);
    assert!(out.len() >= faas_agent::REPLAY_BYTES, "{}", out.len());
    assert!(
        out.len() < 3 * faas_agent::REPLAY_BYTES / 2,
        "{}",
        out.len()
    );
    assert!(out.ends_with(b"399999\n400000\n"));
}

#[test]
fn ended_processes_keep_16_mib_of_output_in_all() {
    let a = start();
    // 20 processes of about 1.3 MiB each: the oldest ones' output goes, their exits stay.
    let pids: Vec<u32> = (0..20)
        .map(|_| {
            let pid = detach(&a.socket, sh("seq 1 200000"));
            let (_, x) = to_exit(&subscribe(&a.socket, pid));
            assert_eq!(x.exit_code, 0);
            pid
        })
        .collect();
    let (first, x) = to_exit(&subscribe(&a.socket, pids[0]));
    assert_eq!((first.len(), x.exit_code), (0, 0));
    let (last, _) = to_exit(&subscribe(&a.socket, pids[19]));
    assert!(last.ends_with(b"199999\n200000\n"), "{}", last.len());
    let kept: usize = pids
        .iter()
        .map(|&p| to_exit(&subscribe(&a.socket, p)).0.len())
        .sum();
    assert!(kept <= 16 * 1024 * 1024, "{kept} bytes kept");
    assert!(kept >= 8 * 1024 * 1024, "{kept} bytes kept");
}

#[test]
fn input_is_sent_then_closed() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..Default::default()
        },
    );
    let rx = subscribe(&a.socket, pid);
    let ev = ask(
        &a.socket,
        &Request::SendInput {
            pid,
            data_b64: b64(b"hello"),
        },
    );
    assert_eq!(ev, Event::Done);
    assert_eq!(ask(&a.socket, &Request::CloseStdin { pid }), Event::Done);
    let (out, x) = to_exit(&rx);
    assert_eq!(out, b"hello");
    assert_eq!(x.exit_code, 0);
    // Ended: closing is a no-op, input is refused.
    assert_eq!(ask(&a.socket, &Request::CloseStdin { pid }), Event::Done);
    let ev = ask(
        &a.socket,
        &Request::SendInput {
            pid,
            data_b64: b64(b"late"),
        },
    );
    assert_eq!(kind_of(&ev), ErrorKind::Invalid);

    // Without stdin.
    let pid = detach(&a.socket, sh("sleep 5"));
    let ev = ask(
        &a.socket,
        &Request::SendInput {
            pid,
            data_b64: b64(b"x"),
        },
    );
    assert_eq!(kind_of(&ev), ErrorKind::Invalid, "{ev:?}");
    // Not a terminal.
    let ev = ask(
        &a.socket,
        &Request::Resize {
            pid,
            cols: 10,
            rows: 10,
        },
    );
    assert_eq!(kind_of(&ev), ErrorKind::Invalid, "{ev:?}");
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 9 }),
        Event::Done
    );
}

#[test]
fn a_process_that_does_not_read_its_input_blocks_nothing() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            stdin: true,
            ..sh("sleep 30")
        },
    );
    // More than a pipe holds: queued, answered at once.
    let big = b64(&vec![b'x'; 1 << 20]);
    let t = Instant::now();
    for _ in 0..3 {
        let ev = ask(
            &a.socket,
            &Request::SendInput {
                pid,
                data_b64: big.clone(),
            },
        );
        assert_eq!(ev, Event::Done);
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    // Up to 16 MiB queued (and what the pipe holds), then refused.
    let full = 3 + fill_stdin(&a.socket, pid, &big);
    assert_eq!(full, 16, "{full} MiB queued");
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 9 }),
        Event::Done
    );
    let (_, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(x.signal, Some(9));

    // The same for a terminal's input (raw, so its line discipline does not drop what the
    // process does not read, but stops taking it).
    if !Path::new("/usr/bin/stty").exists() && !Path::new("/bin/stty").exists() {
        eprintln!("terminal part skipped: no stty on this host");
        return;
    }
    let pid = detach(
        &a.socket,
        ExecRequest {
            pty: Some(PtySize { cols: 80, rows: 24 }),
            ..sh("stty raw -echo; echo ready; sleep 30")
        },
    );
    let mut out = Vec::new();
    read_until(&subscribe(&a.socket, pid), &mut out, |o| {
        o.ends_with(b"ready\r\n") || o.ends_with(b"ready\n")
    });
    let full = fill_stdin(&a.socket, pid, &big);
    assert_eq!(full, 16, "{full} MiB queued");
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 9 }),
        Event::Done
    );
}

/// Sends `chunk` (1 MiB, base64) to `pid` until refused as full: how many were taken.
fn fill_stdin(socket: &Path, pid: u32, chunk: &str) -> usize {
    for n in 0..64 {
        let ev = ask(
            socket,
            &Request::SendInput {
                pid,
                data_b64: chunk.to_string(),
            },
        );
        match ev {
            Event::Done => {}
            Event::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::Invalid);
                assert!(message.contains("stdin is full"), "{message}");
                return n;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("64 MiB queued to a process that does not read")
}

#[test]
fn signals_reach_the_group() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            argv: vec!["sleep".into(), "100".into()],
            ..Default::default()
        },
    );
    let rx = subscribe(&a.socket, pid);
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 15 }),
        Event::Done
    );
    let (_, x) = to_exit(&rx);
    assert_eq!((x.exit_code, x.signal), (143, Some(15)));
    // Ended: a no-op.
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 15 }),
        Event::Done
    );
    let ev = ask(
        &a.socket,
        &Request::Signal {
            pid: 999_999_999,
            signal: 15,
        },
    );
    assert_eq!(kind_of(&ev), ErrorKind::NotFound);
    let ev = ask(&a.socket, &Request::Signal { pid, signal: 1000 });
    assert_eq!(kind_of(&ev), ErrorKind::Invalid);
}

#[test]
fn a_detached_timeout_kills_the_group() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            timeout_ms: 200,
            ..sh("sleep 30")
        },
    );
    let t = Instant::now();
    let (_, x) = to_exit(&subscribe(&a.socket, pid));
    assert!(x.timed_out);
    assert_eq!(x.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_terminal_has_its_size_and_can_be_resized() {
    if !Path::new("/usr/bin/stty").exists() && !Path::new("/bin/stty").exists() {
        eprintln!("skipped: no stty on this host");
        return;
    }
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            argv: vec!["/bin/sh".into()],
            pty: Some(PtySize { cols: 80, rows: 24 }),
            tag: Some("term".into()),
            ..Default::default()
        },
    );
    let rx = subscribe(&a.socket, pid);
    let send = |s: &str| {
        let ev = ask(
            &a.socket,
            &Request::SendInput {
                pid,
                data_b64: b64(s.as_bytes()),
            },
        );
        assert_eq!(ev, Event::Done);
    };
    let mut out = Vec::new();
    send("stty size; echo TERM=$TERM\n");
    read_until(&rx, &mut out, |o| {
        let o = String::from_utf8_lossy(o);
        o.contains("24 80") && o.contains("TERM=xterm-256color\r\n")
    });
    let ev = ask(
        &a.socket,
        &Request::Resize {
            pid,
            cols: 120,
            rows: 50,
        },
    );
    assert_eq!(ev, Event::Done);
    send("stty size\n");
    read_until(&rx, &mut out, |o| {
        String::from_utf8_lossy(o).contains("50 120")
    });
    // A terminal is its own session: the shell is its leader.
    send("exit 3\n");
    let (_, x) = to_exit(&rx);
    assert_eq!(x.exit_code, 3);
    let p = list(&a.socket).into_iter().find(|p| p.pid == pid).unwrap();
    assert!(p.pty && !p.running);
}

#[test]
fn a_terminal_gets_end_of_file_and_frames_of_its_own() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            argv: vec!["cat".into()],
            pty: Some(PtySize { cols: 80, rows: 24 }),
            ..Default::default()
        },
    );
    let rx = subscribe(&a.socket, pid);
    let ev = ask(
        &a.socket,
        &Request::SendInput {
            pid,
            data_b64: b64(b"hi\n"),
        },
    );
    assert_eq!(ev, Event::Done);
    let mut out = Vec::new();
    read_until(&rx, &mut out, |o| {
        o.windows(4).filter(|w| w == b"hi\r\n").count() >= 2
    });
    assert_eq!(ask(&a.socket, &Request::CloseStdin { pid }), Event::Done);
    loop {
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Got::Out(k, _) => assert_eq!(k, FrameKind::Pty),
            Got::Ev(Event::Exited(x)) => {
                assert_eq!(x.exit_code, 0);
                break;
            }
            Got::Ev(ev) => panic!("{ev:?}"),
        }
    }
}

#[test]
fn list_shows_running_then_ended_processes() {
    let a = start();
    let pid = detach(
        &a.socket,
        ExecRequest {
            tag: Some("build".into()),
            env: vec![("A".into(), "1".into())],
            ..sh("sleep 0.5; exit 4")
        },
    );
    let p = list(&a.socket).into_iter().find(|p| p.pid == pid).unwrap();
    assert!(p.running);
    assert_eq!(p.tag.as_deref(), Some("build"));
    assert_eq!(p.argv[0], "/bin/sh");
    assert_eq!(p.env, vec![("A".to_string(), "1".to_string())]);
    assert!(p.exit.is_none());
    assert!(p.started_at_ms > 1_600_000_000_000);
    // An attached exec shows while it runs.
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    write_json(&mut conn, &Request::Exec(sh("sleep 0.3"))).unwrap();
    let (_, ev) = read_frame(&mut conn).unwrap().unwrap();
    let Event::Started { pid: attached } = serde_json::from_slice(&ev).unwrap() else {
        panic!()
    };
    let ps = list(&a.socket);
    assert!(ps.iter().any(|p| p.pid == attached && p.running));
    // Running ones first.
    let first_ended = ps.iter().position(|p| !p.running).unwrap_or(ps.len());
    assert!(ps[first_ended..].iter().all(|p| !p.running));
    let (_, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(x.exit_code, 4);
    while read_frame(&mut conn).unwrap().is_some() {}
    let ps = list(&a.socket);
    let p = ps.iter().find(|p| p.pid == pid).unwrap();
    assert!(!p.running);
    assert_eq!(p.exit.as_ref().unwrap().exit_code, 4);
    assert!(ps.iter().any(|p| p.pid == attached && !p.running));
}

#[test]
fn a_subscriber_that_goes_away_is_dropped() {
    let a = start();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", a.child.id()))
            .unwrap()
            .count()
    };
    // The connection of `start`'s probe is closed by now.
    std::thread::sleep(Duration::from_millis(100));
    let base = fds();
    // Its pipes: stdout, stderr, the exit wake-up (both ends).
    let pid = detach(&a.socket, sh("while :; do echo tick; sleep 0.05; done"));
    for _ in 0..5 {
        let mut conn = connect(&a.socket, pid);
        read_frame(&mut conn).unwrap().unwrap();
        drop(conn);
    }
    // The writers notice at their next write.
    settle(|| fds() == base + 4, "fds of dropped subscribers");
    let rx = subscribe(&a.socket, pid);
    let mut out = Vec::new();
    read_until(&rx, &mut out, |o| o.ends_with(b"tick\ntick\n"));
    assert_eq!(
        ask(&a.socket, &Request::Signal { pid, signal: 9 }),
        Event::Done
    );
    let (_, x) = to_exit(&rx);
    assert_eq!(x.signal, Some(9));
    settle(|| fds() == base, "fds");
}

fn settle(ok: impl Fn() -> bool, what: &str) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what} did not settle"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// File descriptors and threads of the agent.
pub fn counts(pid: u32) -> (usize, usize) {
    let n = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .unwrap()
            .count()
    };
    (n("fd"), n("task"))
}

#[test]
fn a_thousand_detached_processes_leak_nothing() {
    let a = start();
    let agent = a.child.id();
    // Warm up: the pool grows to what one round needs (this connection's thread, the
    // pump's, the subscriber's; the next round's connection may come before a thread of the
    // previous one is back).
    for _ in 0..20 {
        let pid = detach(&a.socket, sh("true"));
        to_exit(&subscribe(&a.socket, pid));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = counts(agent);
    for _ in 0..1000 {
        let pid = detach(
            &a.socket,
            ExecRequest {
                argv: vec!["true".into()],
                stdin: true,
                ..Default::default()
            },
        );
        let (_, x) = to_exit(&subscribe(&a.socket, pid));
        assert_eq!(x.exit_code, 0);
    }
    settle(|| counts(agent).0 == fds, "fds");
    let (_, after) = counts(agent);
    // Idle threads live 60 s; the pool only grows when all its threads are busy, which the
    // warm-up already met; 4 more for the scheduling of a loaded host (a thread finishing its
    // job a moment late makes the next job start one). A leak would be hundreds.
    assert!(
        after <= threads + 4,
        "{threads} threads before, {after} after"
    );
    // The table keeps only the newest ended ones.
    let ps = list(&a.socket);
    assert_eq!(ps.len(), faas_agent::ENDED_KEPT);
}

#[test]
fn terminals_leak_nothing() {
    let a = start();
    let agent = a.child.id();
    let run = || {
        let pid = detach(
            &a.socket,
            ExecRequest {
                pty: Some(PtySize { cols: 80, rows: 24 }),
                ..sh("echo hi")
            },
        );
        let (out, x) = to_exit(&subscribe(&a.socket, pid));
        assert_eq!(out, b"hi\r\n");
        assert_eq!(x.exit_code, 0);
    };
    for _ in 0..10 {
        run();
    }
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = counts(agent);
    for _ in 0..100 {
        run();
    }
    settle(|| counts(agent).0 == fds, "fds");
    assert!(counts(agent).1 <= threads + 2);
}

#[test]
fn a_subscriber_that_does_not_read_stalls_nobody() {
    let a = start();
    // 40 MB, paced so that a subscriber that reads keeps up even on a loaded host (one that
    // reads slower than the process writes is dropped too, once 16 MiB behind).
    let pid = detach(
        &a.socket,
        sh("sleep 0.3; for i in $(seq 40); do head -c 1000000 /dev/zero; sleep 0.02; done"),
    );
    // Never reads (past its acknowledgement).
    let mut stuck = connect(&a.socket, pid);
    let reader = subscribe(&a.socket, pid);
    let t = Instant::now();
    let mut n = 0;
    loop {
        match reader.recv_timeout(Duration::from_secs(20)).unwrap() {
            Got::Out(_, p) => n += p.len(),
            Got::Ev(Event::Exited(x)) => {
                assert_eq!(x.exit_code, 0);
                break;
            }
            Got::Ev(ev) => panic!("{ev:?}"),
        }
    }
    assert_eq!(n, 40_000_000);
    assert!(t.elapsed() < Duration::from_secs(20));
    // The stuck one was dropped: what it gets ends (maybe mid-frame) before the exit.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = 0;
    while let Ok(Some((kind, p))) = read_frame(&mut stuck) {
        assert_ne!(kind, FrameKind::Json, "the dropped subscriber saw the exit");
        got += p.len();
    }
    assert!(got < 40_000_000);
}

#[test]
fn list_answers_with_huge_argv_and_env() {
    // Room for 6 MiB of argv and env per process (the most the kernel allows).
    let a = start_with_stack(Some(64 * 1024));
    // Each argument or variable is at most 128 KiB (the kernel's limit for one string).
    let piece = "x".repeat(120 * 1024);
    let mut argv: Vec<String> = vec!["/bin/sh".into(), "-c".into(), "sleep 5".into()];
    argv.extend(std::iter::repeat_n(piece.clone(), 9));
    let big_args = detach(
        &a.socket,
        ExecRequest {
            argv,
            ..Default::default()
        },
    );
    let env: Vec<(String, String)> = (0..48).map(|i| (format!("V{i}"), piece.clone())).collect();
    let big_envs: Vec<u32> = (0..3)
        .map(|_| {
            detach(
                &a.socket,
                ExecRequest {
                    env: env.clone(),
                    ..sh("sleep 5")
                },
            )
        })
        .collect();
    let ps = list(&a.socket);
    let size = |p: &ProcessInfo| {
        p.argv.iter().map(String::len).sum::<usize>()
            + p.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let p = ps.iter().find(|p| p.pid == big_args).unwrap();
    assert!(p.env.is_empty());
    assert_eq!(size(p), faas_agent::LISTED_ARGS_BYTES);
    assert_eq!(p.argv[..3], ["/bin/sh", "-c", "sleep 5"]);
    for pid in &big_envs {
        let p = ps.iter().find(|p| p.pid == *pid).unwrap();
        assert!(p.env.is_empty(), "env of {pid} kept");
        assert_eq!(p.argv, ["/bin/sh", "-c", "sleep 5"]);
    }
    for pid in std::iter::once(big_args).chain(big_envs) {
        assert_eq!(
            ask(&a.socket, &Request::Signal { pid, signal: 9 }),
            Event::Done
        );
    }
}

#[test]
fn small_writes_are_replayed_in_few_frames() {
    let a = start();
    // 3,000 writes of one byte, then one to stderr, then one more to stdout.
    let pid = detach(
        &a.socket,
        sh("i=0; while [ $i -lt 3000 ]; do printf x; i=$((i+1)); done; printf e >&2; printf y"),
    );
    let (out, x) = to_exit(&subscribe(&a.socket, pid));
    assert_eq!(x.exit_code, 0);
    assert_eq!(out.len(), 3002);
    // Replayed once ended: the kept output is merged by kind (the order between the two
    // pipes is the order the agent read them in).
    let rx = subscribe(&a.socket, pid);
    let mut frames = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Got::Out(k, p) => frames.push((k, p)),
            Got::Ev(Event::Exited(_)) => break,
            Got::Ev(ev) => panic!("{ev:?}"),
        }
    }
    assert!(frames.len() <= 3, "{} frames", frames.len());
    let of = |kind| -> Vec<u8> {
        frames
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, p)| p.clone())
            .collect()
    };
    let mut want = vec![b'x'; 3000];
    want.push(b'y');
    assert!(of(FrameKind::Stdout) == want, "stdout differs");
    assert_eq!(of(FrameKind::Stderr), b"e");
}
