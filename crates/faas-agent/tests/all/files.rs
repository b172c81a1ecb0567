//! File requests: stat, list, make, move, remove, watch.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use faas_agent::{read_frame, write_json, ErrorKind, Event, FileEntry, FileType, FsOp, Request};

use crate::procs::{ask, counts};
use crate::start;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn stat(socket: &Path, path: &str) -> Result<FileEntry, (ErrorKind, String)> {
    match ask(socket, &Request::Stat { path: path.into() }) {
        Event::Entry { entry } => Ok(entry),
        Event::Error { kind, message } => Err((kind, message)),
        other => panic!("{other:?}"),
    }
}

fn error_kind(ev: Event) -> ErrorKind {
    match ev {
        Event::Error { kind, .. } => kind,
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn stat_describes_files_dirs_and_links() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f.txt");
    std::fs::write(&f, b"hello").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = stat(&a.socket, &s(&f)).unwrap();
    assert_eq!(e.name, "f.txt");
    assert_eq!(e.path, s(&f));
    assert_eq!(e.file_type, FileType::File);
    assert_eq!(e.size, 5);
    assert_eq!(e.mode, 0o640);
    assert_eq!(e.permissions, "-rw-r-----");
    assert_eq!((e.uid, e.owner.as_str()), (0, "root"));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now_ms - e.mtime_ms).abs() < 60_000, "{}", e.mtime_ms);
    assert_eq!(e.symlink_target, None);

    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o1755)).unwrap();
    let e = stat(&a.socket, &s(&sub)).unwrap();
    assert_eq!(e.file_type, FileType::Dir);
    assert_eq!(e.permissions, "drwxr-xr-t");

    // A link is described, not followed (even a dangling one).
    let l = d.path().join("link");
    std::os::unix::fs::symlink(&f, &l).unwrap();
    let e = stat(&a.socket, &s(&l)).unwrap();
    assert_eq!(e.file_type, FileType::Symlink);
    assert_eq!(e.symlink_target.as_deref(), Some(s(&f).as_str()));
    assert!(e.permissions.starts_with('l'));
    let dangling = d.path().join("dangling");
    std::os::unix::fs::symlink("/no/such/target", &dangling).unwrap();
    let e = stat(&a.socket, &s(&dangling)).unwrap();
    assert_eq!(e.symlink_target.as_deref(), Some("/no/such/target"));

    let (kind, message) = stat(&a.socket, &s(&d.path().join("missing"))).unwrap_err();
    assert_eq!(kind, ErrorKind::NotFound);
    assert!(message.contains("missing"), "{message}");
    assert_eq!(
        stat(&a.socket, "relative/path").unwrap_err().0,
        ErrorKind::Invalid
    );
    let (kind, _) = stat(&a.socket, &format!("{}/x", s(&f))).unwrap_err();
    assert_eq!(kind, ErrorKind::NotDir);
}

#[test]
fn list_dir_goes_as_deep_as_asked_and_not_through_links() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let root = s(d.path());
    std::fs::create_dir_all(d.path().join("b/c")).unwrap();
    std::fs::write(d.path().join("a"), b"").unwrap();
    std::fs::write(d.path().join("b/x"), b"").unwrap();
    std::fs::write(d.path().join("b/c/deep"), b"").unwrap();
    std::os::unix::fs::symlink(d.path().join("b"), d.path().join("lb")).unwrap();
    let list = |depth| match ask(
        &a.socket,
        &Request::ListDir {
            path: root.clone(),
            depth,
        },
    ) {
        Event::Entries { entries } => entries
            .into_iter()
            .map(|e| e.path.strip_prefix(&root).unwrap().to_string())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(list(0), ["/a", "/b", "/lb"]);
    assert_eq!(list(1), ["/a", "/b", "/lb"]);
    assert_eq!(list(2), ["/a", "/b", "/b/c", "/b/x", "/lb"]);
    assert_eq!(list(5), ["/a", "/b", "/b/c", "/b/c/deep", "/b/x", "/lb"]);
    let ev = ask(
        &a.socket,
        &Request::ListDir {
            path: s(&d.path().join("a")),
            depth: 1,
        },
    );
    assert_eq!(error_kind(ev), ErrorKind::NotDir);
    let ev = ask(
        &a.socket,
        &Request::ListDir {
            path: s(&d.path().join("none")),
            depth: 1,
        },
    );
    assert_eq!(error_kind(ev), ErrorKind::NotFound);
}

#[test]
fn make_move_and_remove() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let deep = d.path().join("x/y/z");
    assert_eq!(
        ask(&a.socket, &Request::MakeDir { path: s(&deep) }),
        Event::Done
    );
    assert!(deep.is_dir());
    let ev = ask(&a.socket, &Request::MakeDir { path: s(&deep) });
    assert_eq!(error_kind(ev), ErrorKind::Exists);
    let ev = ask(&a.socket, &Request::MakeDir { path: "x/y".into() });
    assert_eq!(error_kind(ev), ErrorKind::Invalid);

    std::fs::write(deep.join("f"), b"data").unwrap();
    let to = d.path().join("moved");
    let ev = ask(
        &a.socket,
        &Request::Move {
            from: s(&d.path().join("x")),
            to: s(&to),
        },
    );
    let Event::Entry { entry } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (entry.path.as_str(), entry.file_type),
        (s(&to).as_str(), FileType::Dir)
    );
    assert_eq!(std::fs::read(to.join("y/z/f")).unwrap(), b"data");
    assert!(!d.path().join("x").exists());
    let ev = ask(
        &a.socket,
        &Request::Move {
            from: s(&d.path().join("x")),
            to: s(&to),
        },
    );
    assert_eq!(error_kind(ev), ErrorKind::NotFound);

    // A link is removed, not what it points to; a tree goes whole.
    let l = d.path().join("l");
    std::os::unix::fs::symlink(&to, &l).unwrap();
    assert_eq!(
        ask(&a.socket, &Request::Remove { path: s(&l) }),
        Event::Done
    );
    assert!(to.join("y/z/f").exists());
    assert_eq!(
        ask(&a.socket, &Request::Remove { path: s(&to) }),
        Event::Done
    );
    assert!(!to.exists());
    let ev = ask(&a.socket, &Request::Remove { path: s(&to) });
    assert_eq!(error_kind(ev), ErrorKind::NotFound);
    let ev = ask(&a.socket, &Request::Remove { path: "rel".into() });
    assert_eq!(error_kind(ev), ErrorKind::Invalid);
}

#[test]
fn a_move_across_file_systems_copies() {
    use std::os::unix::fs::MetadataExt;
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    if dev(d.path()) == dev(other.path()) {
        eprintln!("skipped: /dev/shm is on the same file system as the temp dir");
        return;
    }
    let from = d.path().join("tree");
    std::fs::create_dir_all(from.join("sub")).unwrap();
    std::fs::write(from.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        from.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    std::fs::set_permissions(from.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("sub/run.sh", from.join("link")).unwrap();
    let to = other.path().join("tree");
    let ev = ask(
        &a.socket,
        &Request::Move {
            from: s(&from),
            to: s(&to),
        },
    );
    assert!(matches!(ev, Event::Entry { .. }), "{ev:?}");
    assert!(!from.exists());
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&to.join("sub/run.sh")), 0o751);
    assert_eq!(mode(&to.join("sub")), 0o700);
    assert_eq!(
        std::fs::read_link(to.join("link")).unwrap(),
        Path::new("sub/run.sh")
    );
    assert_eq!(std::fs::read(to.join("link")).unwrap(), b"#!/bin/sh\n");
}

/// A watch's connection, after its `Done`.
fn watch(socket: &Path, path: &Path, recursive: bool) -> UnixStream {
    let mut conn = UnixStream::connect(socket).unwrap();
    write_json(
        &mut conn,
        &Request::Watch {
            path: s(path),
            recursive,
        },
    )
    .unwrap();
    let (_, p) = read_frame(&mut conn).unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<Event>(&p).unwrap(), Event::Done);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

fn next_fs(conn: &mut UnixStream) -> (FsOp, String) {
    let (_, p) = read_frame(conn).unwrap().expect("an event");
    match serde_json::from_slice(&p).unwrap() {
        Event::Fs { op, path } => (op, path),
        other => panic!("{other:?}"),
    }
}

/// The next `n` events, consecutive duplicate writes merged (writes may come in separate
/// batches).
fn fs_events(conn: &mut UnixStream, n: usize) -> Vec<(FsOp, String)> {
    let mut out: Vec<(FsOp, String)> = Vec::new();
    while out.len() < n {
        let ev = next_fs(conn);
        if ev.0 == FsOp::Write && out.last() == Some(&ev) {
            continue;
        }
        out.push(ev);
    }
    out
}

#[test]
fn a_watch_reports_changes_in_order() {
    use std::io::Write;
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let mut conn = watch(&a.socket, d.path(), false);
    let f = d.path().join("f");
    let g = d.path().join("g");
    let mut file = std::fs::File::create(&f).unwrap();
    file.write_all(b"one").unwrap();
    file.write_all(b"two").unwrap();
    drop(file);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&f, &g).unwrap();
    std::fs::remove_file(&g).unwrap();
    assert_eq!(
        fs_events(&mut conn, 6),
        [
            (FsOp::Create, s(&f)),
            (FsOp::Write, s(&f)),
            (FsOp::Chmod, s(&f)),
            (FsOp::Rename, s(&f)),
            (FsOp::Create, s(&g)),
            (FsOp::Remove, s(&g)),
        ]
    );
    // Not recursive: a subdirectory's changes are not seen, the subdirectory itself is.
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inner"), b"").unwrap();
    std::fs::write(d.path().join("after"), b"").unwrap();
    assert_eq!(next_fs(&mut conn), (FsOp::Create, s(&sub)));
    assert_eq!(
        next_fs(&mut conn),
        (FsOp::Create, s(&d.path().join("after")))
    );

    // The watched directory goes: the stream ends.
    std::fs::remove_dir_all(d.path()).unwrap();
    let mut last = None;
    while let Some((_, p)) = read_frame(&mut conn).unwrap() {
        last = Some(serde_json::from_slice::<Event>(&p).unwrap());
    }
    assert_eq!(
        last,
        Some(Event::Fs {
            op: FsOp::Remove,
            path: s(d.path())
        })
    );

    let ev = ask(
        &a.socket,
        &Request::Watch {
            path: "/no/such/dir".into(),
            recursive: false,
        },
    );
    assert_eq!(error_kind(ev), ErrorKind::NotFound);
}

#[test]
fn a_recursive_watch_follows_new_directories() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("old")).unwrap();
    let mut conn = watch(&a.socket, d.path(), true);
    // In a directory there before the watch.
    std::fs::write(d.path().join("old/f"), b"").unwrap();
    assert_eq!(
        next_fs(&mut conn),
        (FsOp::Create, s(&d.path().join("old/f")))
    );
    // In one made after it, at once (before the agent could watch it) and later.
    let new = d.path().join("new/deeper");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("early"), b"").unwrap();
    let mut seen = Vec::new();
    let want = [
        (FsOp::Create, s(&d.path().join("new"))),
        (FsOp::Create, s(&new)),
        (FsOp::Create, s(&new.join("early"))),
    ];
    let t = Instant::now();
    while !want.iter().all(|w| seen.contains(w)) {
        assert!(t.elapsed() < Duration::from_secs(5), "{seen:?}");
        seen.push(next_fs(&mut conn));
    }
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(new.join("late"), b"").unwrap();
    loop {
        let ev = next_fs(&mut conn);
        if ev == (FsOp::Create, s(&new.join("late"))) {
            break;
        }
        assert!(want.contains(&ev) || ev.0 == FsOp::Write, "{ev:?}");
    }
}

#[test]
fn watches_leak_nothing() {
    let a = start();
    let agent = a.child.id();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("a/b/c")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = counts(agent);
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let mut conn = watch(&a.socket, d.path(), i % 2 == 0);
        std::fs::write(d.path().join("a/b/c/f"), b"x").unwrap();
        if i % 2 == 0 {
            let _ = next_fs(&mut conn);
        }
        drop(conn);
        // Each watch ends (its inotify fd is closed) once its host went away.
        let t = Instant::now();
        while counts(agent).0 != fds {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{fds} fds before, {} after",
                counts(agent).0
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest watch end: {slowest:?}");
    let after = counts(agent).1;
    assert!(
        after <= threads + 2,
        "{threads} threads before, {after} after"
    );
}

/// `levels` nested directories `d/d/...` under `root`: the deepest one.
fn nest(root: &Path, levels: usize) -> std::path::PathBuf {
    let deepest = root.join(vec!["d"; levels].join("/"));
    std::fs::create_dir_all(&deepest).unwrap();
    deepest
}

#[test]
fn deep_trees_crash_nothing() {
    let a = start();
    let alive = || assert!(matches!(ask(&a.socket, &Request::Ping), Event::Pong { .. }));
    let d = tempfile::tempdir().unwrap();
    let deepest = nest(d.path(), 300);

    // A recursive watch: set, down to 256 levels; a change 100 levels down is seen.
    let mut conn = watch(&a.socket, d.path(), true);
    let mid = d.path().join(vec!["d"; 100].join("/")).join("f");
    std::fs::write(&mid, b"").unwrap();
    assert_eq!(next_fs(&mut conn), (FsOp::Create, s(&mid)));
    // A deep tree moved into the watch: its scan stops at the cap, the agent stays.
    let outside = tempfile::tempdir().unwrap();
    nest(outside.path(), 300);
    std::fs::rename(outside.path().join("d"), d.path().join("moved")).unwrap();
    assert_eq!(
        next_fs(&mut conn),
        (FsOp::Create, s(&d.path().join("moved")))
    );
    drop(conn);
    alive();

    // Listed as deep as asked.
    match ask(
        &a.socket,
        &Request::ListDir {
            path: s(d.path()),
            depth: u32::MAX,
        },
    ) {
        Event::Entries { entries } => {
            assert!(entries.iter().any(|e| e.path == s(&deepest)));
        }
        other => panic!("{other:?}"),
    }

    // Across file systems: too deep to copy, and nothing is left half-copied.
    if let Ok(other) = tempfile::tempdir_in("/dev/shm") {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(d.path()) != dev(other.path()) {
            let to = other.path().join("d");
            let ev = ask(
                &a.socket,
                &Request::Move {
                    from: s(&d.path().join("d")),
                    to: s(&to),
                },
            );
            match ev {
                Event::Error { kind, message } => {
                    assert_eq!(kind, ErrorKind::Invalid);
                    assert!(message.contains("too deep"), "{message}");
                }
                other => panic!("{other:?}"),
            }
            assert!(!to.exists());
            assert!(deepest.is_dir());
        }
    }

    // Removed whole, not through links.
    let keep = tempfile::tempdir().unwrap();
    std::fs::write(keep.path().join("kept"), b"").unwrap();
    std::os::unix::fs::symlink(keep.path(), deepest.join("link")).unwrap();
    assert_eq!(
        ask(&a.socket, &Request::Remove { path: s(d.path()) }),
        Event::Done
    );
    assert!(!d.path().exists());
    assert!(keep.path().join("kept").exists());
    alive();

    // As deep as absolute paths go (about 1,900 levels): listed, watched and removed, and
    // the agent stays.
    let d = tempfile::tempdir().unwrap();
    let levels = (4000 - s(d.path()).len()) / 2;
    nest(d.path(), levels);
    let conn = watch(&a.socket, d.path(), true);
    drop(conn);
    assert!(matches!(
        ask(
            &a.socket,
            &Request::ListDir {
                path: s(d.path()),
                depth: u32::MAX,
            },
        ),
        Event::Entries { .. }
    ));
    assert_eq!(
        ask(&a.socket, &Request::Remove { path: s(d.path()) }),
        Event::Done
    );
    alive();
}

#[test]
fn remove_refuses_dot_dotdot_and_the_root() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    for path in [
        "/".to_string(),
        "//".to_string(),
        "/.".to_string(),
        "/tmp/..".to_string(),
        format!("{}/sub/.", s(d.path())),
        format!("{}/sub/../", s(d.path())),
        format!("{}/.//", s(d.path())),
    ] {
        let ev = ask(&a.socket, &Request::Remove { path: path.clone() });
        assert_eq!(error_kind(ev), ErrorKind::Invalid, "{path}");
    }
    assert!(d.path().join("sub").is_dir());
    // A link named with a trailing slash: the link goes, not what it points to.
    std::fs::write(d.path().join("sub/f"), b"").unwrap();
    std::os::unix::fs::symlink(d.path().join("sub"), d.path().join("l")).unwrap();
    let ev = ask(
        &a.socket,
        &Request::Remove {
            path: format!("{}/l/", s(d.path())),
        },
    );
    assert_eq!(ev, Event::Done);
    assert!(d.path().join("sub/f").exists());
    assert!(std::fs::symlink_metadata(d.path().join("l")).is_err());
}

#[test]
fn errors_have_the_kinds_the_host_maps() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    // A directory into itself: EINVAL.
    let ev = ask(
        &a.socket,
        &Request::Move {
            from: s(&dir),
            to: s(&dir.join("inside")),
        },
    );
    assert_eq!(error_kind(ev), ErrorKind::Invalid);
    // A name too long.
    let long = d.path().join("n".repeat(300));
    let (kind, message) = stat(&a.socket, &s(&long)).unwrap_err();
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(message.contains("nnnn"), "{message}");
    // A loop of links.
    std::os::unix::fs::symlink(d.path().join("b"), d.path().join("a")).unwrap();
    std::os::unix::fs::symlink(d.path().join("a"), d.path().join("b")).unwrap();
    let (kind, _) = stat(&a.socket, &s(&d.path().join("a/x"))).unwrap_err();
    assert_eq!(kind, ErrorKind::Invalid);
    // A fifo across file systems cannot be copied.
    if let Ok(other) = tempfile::tempdir_in("/dev/shm") {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(d.path()) != dev(other.path()) {
            let fifo = d.path().join("fifo");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|st| st.success());
            if made {
                let ev = ask(
                    &a.socket,
                    &Request::Move {
                        from: s(&fifo),
                        to: s(&other.path().join("fifo")),
                    },
                );
                assert_eq!(error_kind(ev), ErrorKind::Denied);
                assert!(fifo.exists());
            }
        }
    }
}

#[test]
fn a_watch_whose_changes_overflow_ends_with_an_error() {
    let a = start();
    let d = tempfile::tempdir().unwrap();
    let mut conn = watch(&a.socket, d.path(), false);
    // Not read meanwhile: the agent's writes block, the kernel's queue (16,384 events by
    // default) overflows.
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    if max > 100_000 {
        eprintln!("skipped: max_queued_events is {max}");
        return;
    }
    for i in 0..max * 2 + 50_000 {
        let f = d.path().join(i.to_string());
        std::fs::write(&f, b"").unwrap();
        std::fs::remove_file(&f).unwrap();
    }
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut last = None;
    while let Some((_, p)) = read_frame(&mut conn).unwrap() {
        last = Some(serde_json::from_slice::<Event>(&p).unwrap());
    }
    match last {
        Some(Event::Error { kind, message }) => {
            assert_eq!(kind, ErrorKind::Other);
            assert!(message.contains("watch again"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Its inotify instance is gone with it; the agent serves on.
    assert!(matches!(ask(&a.socket, &Request::Ping), Event::Pong { .. }));
}
