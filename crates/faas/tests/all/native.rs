//! Native-backend-only checks: runtime selection, gVisor, the image store, and that nothing is
//! left behind (mounts, cgroups, runtime state, bundle dirs). They run when the suite runs
//! against the native backend (`FAAS_TEST_BACKEND=native`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::require_docker;
use crate::support::{backend, native_runtime, shared, Server, IMAGE};

macro_rules! require_native {
    () => {
        require_docker!();
        if backend() != "native" {
            eprintln!("skipped: the suite runs against {}, not native", backend());
            return;
        }
    };
}

/// Mounts, cgroups, runtime state and bundles of `server`'s native backend that still exist.
fn native_leftovers(server: &Server) -> Vec<String> {
    let data = server.data_dir.canonicalize().unwrap();
    let mut left = Vec::new();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in info.lines() {
        if let Some(m) = l.split(' ').nth(4) {
            // The backend's scratch tmpfs itself lives as long as the server.
            if Path::new(m).starts_with(&data) && Path::new(m) != data.join("native") {
                left.push(format!("mount {m}"));
            }
        }
    }
    for dir in [
        "native/sandboxes",
        &format!("native/state/{}", native_runtime()),
    ] {
        for e in std::fs::read_dir(data.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for faas in std::fs::read_dir(ctrl.path().join("faas"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for cg in std::fs::read_dir(faas.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if cg.path().is_dir() {
                    left.push(format!("cgroup {}", cg.path().display()));
                }
            }
        }
    }
    left.retain(|l| !l.starts_with("cgroup") || l.contains(&own_cgroup_marker(server)));
    left
}

/// The per-deployment cgroup directory name the server uses (a hash of its data dir): the
/// cgroups of sandboxes of other servers running at the same time are not ours to count.
fn own_cgroup_marker(server: &Server) -> String {
    let data = server
        .data_dir
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    use std::fmt::Write;
    let digest = sha256(data.as_bytes());
    let mut s = String::new();
    for b in &digest[..6] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sha256(data: &[u8]) -> Vec<u8> {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn health_names_the_oci_runtime() {
    require_native!();
    let (_, v) = shared().client().get("/health").await;
    let native = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "native")
        .unwrap()
        .clone();
    assert_eq!(native["available"], true);
    assert!(
        native["detail"]
            .as_str()
            .unwrap()
            .starts_with(native_runtime()),
        "{native}"
    );
}

#[tokio::test]
async fn gvisor_isolation_runs_on_its_own_kernel() {
    require_native!();
    let c = shared().client();
    let host = c.exec(json!({"command": "uname -r"})).await;
    let g = c
        .exec(json!({"command": "uname -r; dmesg 2>/dev/null | head -1", "isolation": "gvisor"}))
        .await;
    assert_eq!(g["exit_code"], 0, "{g}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        g["stdout"].as_str().unwrap().lines().next(),
        Some(host_kernel.trim()),
        "{g}"
    );
    if native_runtime() != "runsc" {
        assert_eq!(host["stdout"].as_str().unwrap().trim(), host_kernel.trim());
    }
    // The pool keys gVisor boxes apart from container boxes.
    let (s, p) = c
        .post(
            "/api/v1/prewarm",
            json!({"image": IMAGE, "count": 1, "isolation": "gvisor"}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["isolation"], "gvisor");
    c.post(
        "/api/v1/prewarm",
        json!({"image": IMAGE, "count": 0, "isolation": "gvisor"}),
    )
    .await;
}

#[tokio::test]
async fn every_box_gets_a_fresh_network_namespace_with_loopback_up() {
    require_native!();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    // Boxes alive at the same time (a namespace's number is reused once it is gone).
    let runs = (0..4).map(|_| async {
        shared()
            .client()
            .exec(json!({"command": "readlink /proc/self/ns/net; (sleep 5 | nc -l -p 7000 > /tmp/got &); for i in $(seq 100); do echo ping | nc -w 1 127.0.0.1 7000 && break; sleep 0.05; done; for i in $(seq 100); do [ -s /tmp/got ] && break; sleep 0.05; done; cat /tmp/got"}))
            .await
    });
    let mut seen = std::collections::HashSet::new();
    for v in futures::future::join_all(runs).await {
        let out = v["stdout"].as_str().unwrap();
        let mut lines = out.lines();
        let ns = lines.next().unwrap_or_default().to_string();
        assert!(ns.starts_with("net:["), "{v}");
        // gVisor's network stack is its own: the namespace it shows is the sentry's.
        if native_runtime() != "runsc" {
            assert_ne!(
                ns,
                host.to_string_lossy(),
                "a box shares the host's network"
            );
            assert!(seen.insert(ns), "two boxes share a network namespace: {v}");
        }
        assert_eq!(lines.last(), Some("ping"), "loopback does not work: {v}");
    }
}

#[tokio::test]
async fn nothing_is_left_behind_after_many_executions() {
    require_native!();
    let server = Server::start();
    let c = server.client();
    // Bundles and runtime state live on the backend's own tmpfs while the server runs.
    let scratch = server.data_dir.canonicalize().unwrap().join("native");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        info.lines()
            .any(|l| l.split(' ').nth(4) == scratch.to_str() && l.contains(" - tmpfs ")),
        "no tmpfs at {}",
        scratch.display()
    );
    for i in 0..30 {
        let v = c
            .exec(json!({"command": format!("echo {i} > /tmp/f; cat /tmp/f")}))
            .await;
        assert_eq!(v["stdout"], format!("{i}\n"));
    }
    c.exec(json!({"command": "sleep 10", "timeout_ms": 100}))
        .await;
    let start = Instant::now();
    loop {
        // While the server runs, crun boxes' cgroups are reusable slots (`s<N>`): a few idle
        // ones stay, empty or holding their zygote; everything else must be gone.
        let mut left = native_leftovers(&server);
        let slots: Vec<String> = left.iter().filter(|l| is_idle_slot(l)).cloned().collect();
        assert!(slots.len() <= 8 * 4, "cgroup slots pile up: {slots:?}");
        left.retain(|l| !is_idle_slot(l));
        // Network namespaces made ahead for the next boxes (a handful) stay too.
        let ahead = left.iter().filter(|l| l.contains("/native/netns/")).count();
        left.retain(|l| !l.contains("/native/netns/"));
        if left.is_empty() {
            assert!(ahead <= 4, "namespaces made ahead pile up: {ahead}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());
    assert_eq!(native_leftovers(&server), Vec::<String>::new());
}

/// A cgroup slot directory holding nothing but, possibly, its zygote.
fn is_idle_slot(entry: &str) -> bool {
    let Some(path) = entry.strip_prefix("cgroup ") else {
        return false;
    };
    let name = Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let Ok(procs) = std::fs::read_to_string(Path::new(path).join("cgroup.procs")) else {
        return false;
    };
    name.starts_with('s')
        && procs.split_whitespace().all(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--zygote"))
        })
}

fn faas(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_faas"))
        .env("FAAS_API_KEY", &crate::support::shared().admin_key)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn images_import_list_and_remove_through_the_cli() {
    require_native!();
    let server = shared();
    let data = server.data_dir.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    // A rootfs with one static program: the host's busybox.
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).unwrap();
    let tarball = tmp.path().join("mini.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = faas(&[
        "images",
        "import",
        tarball.to_str().unwrap(),
        "--name",
        "test/mini:1",
        "--data-dir",
        &data,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = server.client();
    let v = c
        .exec(
            json!({"image": "test/mini:1", "command": ["/bin/busybox", "echo", "from the store"]}),
        )
        .await;
    assert_eq!(v["stdout"], "from the store\n", "{v}");
    // The absolute link was made relative (neutralised), and works in the box.
    let v = c
        .exec(json!({"image": "test/mini:1", "command": "echo via sh"}))
        .await;
    assert_eq!(v["stdout"], "via sh\n", "{v}");
    let (_, list) = c.get("/api/v1/images").await;
    assert!(
        list["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "test/mini:1"),
        "{list}"
    );
    let out = faas(&["images", "list", "--data-dir", &data]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("test/mini:1"));
    let out = faas(&["images", "rm", "test/mini:1", "--data-dir", &data]);
    assert!(out.status.success());
    let (s, v) = c
        .post(
            "/api/v1/execute",
            json!({"image": "test/mini:1", "command": "true"}),
        )
        .await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn a_hostile_tarball_is_refused_through_the_cli() {
    require_native!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let evil = tmp.path().join("evil.tar");
    // ../../etc/x, an absolute symlink, a device node: built with raw headers.
    let mut b = tar_raw::Builder::default();
    b.file("../../escaped", b"pwned");
    b.symlink("abs", "/etc/passwd");
    b.chardev("null");
    std::fs::write(&evil, b.finish()).unwrap();
    let out = faas(&[
        "images",
        "import",
        evil.to_str().unwrap(),
        "--name",
        "evil",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("../../escaped"), "{err}");
    assert!(!tmp.path().join("escaped").exists() && !Path::new("/escaped").exists());
    let layers = std::fs::read_dir(data.join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 0);
}

/// Just enough of the tar format to write entries no well-behaved tool would.
mod tar_raw {
    #[derive(Default)]
    pub struct Builder {
        out: Vec<u8>,
    }

    impl Builder {
        fn header(&mut self, name: &str, kind: u8, link: &str, size: usize) {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = kind;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            self.out.extend_from_slice(&h);
        }

        pub fn file(&mut self, name: &str, data: &[u8]) {
            self.header(name, b'0', "", data.len());
            self.out.extend_from_slice(data);
            self.out.resize(self.out.len().div_ceil(512) * 512, 0);
        }

        pub fn symlink(&mut self, name: &str, target: &str) {
            self.header(name, b'2', target, 0);
        }

        pub fn chardev(&mut self, name: &str) {
            self.header(name, b'3', "", 0);
        }

        pub fn finish(mut self) -> Vec<u8> {
            self.out.extend_from_slice(&[0u8; 1024]);
            self.out
        }
    }
}

/// What a command sees of its box's state: processes, mounts, `/dev`, and files the next test
/// leaves behind.
const FINGERPRINT: &str = r#"
echo "procs: $(for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 99')"
echo "mounts:"; awk '{for(i=7;i<=NF;i++) if($i=="-") {print $5, $(i+1); break}}' /proc/self/mountinfo | sort
echo "dev:"; stat -c '%n %F %a %u %g %t %T' /dev/* /dev/shm /dev/mqueue | sort
echo "shm: $( (ls -A /dev/shm; ls -A /dev/mqueue) | wc -l)"
echo "left: $(ls -d /leak /tmp/leak /tmp/fifo /dev/leak /run/faas/leak 2>/dev/null | wc -l)"
echo "passwd: $(md5sum < /etc/passwd)"
echo "ls: $(ls -l /bin/ls | cut -c1)"
echo "nice: $(cut -d' ' -f19 /proc/1/stat)"
"#;

/// A used box of a cached pool is reset and reused: the next request sees nothing the last one
/// left (daemons, files written or deleted, /dev, /dev/shm, the socket directory), as in a new
/// box; and a box whose agent was tampered with (its priority changed) is destroyed instead.
#[tokio::test]
async fn a_reused_cached_box_keeps_nothing_of_the_last_request() {
    require_native!();
    if native_runtime() == "runsc" {
        eprintln!("skipped: gVisor boxes are not reset (each cached request gets a new box)");
        return;
    }
    let c = shared().client();
    // A pool of its own (its memory limit is the key), one box: the box comes back to it.
    let pool = json!({"image": IMAGE, "count": 1, "runtime": "native", "memory_mb": 200});
    let (status, p) = c.post("/api/v1/prewarm", pool.clone()).await;
    assert_eq!(status, 200, "{p}");
    let run = |cmd: String| {
        let c = c.clone();
        async move {
            c.wait_pool_ready_for(IMAGE, 200, 1).await;
            let v = c
                .exec(json!({"command": cmd, "mode": "cached", "runtime": "native", "memory_mb": 200}))
                .await;
            assert_eq!(v["warm"], true, "{v}");
            assert_eq!(v["exit_code"], 0, "{v}");
            v
        }
    };
    let fresh = run(FINGERPRINT.to_string()).await;
    let leave = r#"
        setsid sleep 991 >/dev/null 2>&1 < /dev/null &
        (sleep 992 >/dev/null 2>&1 &)
        sh -c 'sleep 993 >/dev/null 2>&1 &'
        echo x > /leak; echo y > /tmp/leak; mkfifo /tmp/fifo; touch /dev/leak /run/faas/leak
        head -c 1048576 /dev/zero > /dev/shm/leak
        echo 'intruder:x:0:0::/:/bin/sh' >> /etc/passwd
        rm /bin/ls; chmod 600 /dev/null
        sleep 0.3
    "#;
    let used = run(format!("{leave}\n{FINGERPRINT}")).await;
    let used_out = used["stdout"].as_str().unwrap();
    assert!(
        used_out.contains("left: 5"),
        "the state was not left: {used}"
    );
    assert!(
        used_out.contains("procs: 3"),
        "the daemons did not start: {used}"
    );
    let next = run(FINGERPRINT.to_string()).await;
    assert_eq!(
        next["sandbox_id"], used["sandbox_id"],
        "the box was not reused: {next}"
    );
    assert_eq!(
        next["stdout"], fresh["stdout"],
        "a reused box differs from a new one"
    );
    // The agent's priority lowered from inside: the box is not reused.
    let reniced = run("renice -n 7 -p 1 >/dev/null; echo done".into()).await;
    let after = run(FINGERPRINT.to_string()).await;
    assert_ne!(
        after["sandbox_id"], reniced["sandbox_id"],
        "a box whose agent was reniced was reused: {after}"
    );
    assert!(
        after["stdout"].as_str().unwrap().contains("nice: 0"),
        "{after}"
    );
    let (_, m) = c.get("/api/v1/metrics").await;
    assert!(m["sandboxes_reset"].as_u64().unwrap() >= 2, "{m}");
    let (status, _) = c
        .post(
            "/api/v1/prewarm",
            json!({"image": IMAGE, "count": 0, "runtime": "native", "memory_mb": 200}),
        )
        .await;
    assert_eq!(status, 200);
}

/// crun and runc boxes run under the seccomp filter (`native/seccomp.rs`): no user namespace,
/// no keyring, no mount, even for the box's root; ordinary work goes on.
#[tokio::test]
async fn native_boxes_run_under_the_seccomp_filter() {
    require_native!();
    if native_runtime() == "runsc" {
        eprintln!("skipped: gVisor filters system calls in its own kernel");
        return;
    }
    let v = shared()
        .client()
        .exec(
            json!({"command": "grep '^Seccomp:' /proc/self/status | tr -d ' \\t'; \
            unshare -U true 2>/dev/null; echo unshare=$?; \
            mount -t tmpfs t /mnt 2>/dev/null; echo mount=$?; \
            (sleep 0.1 &); echo child=ok; wait",
            "runtime": "native"}),
        )
        .await;
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("Seccomp:2"), "no seccomp filter: {v}");
    assert!(!out.contains("unshare=0"), "a user namespace was made: {v}");
    assert!(!out.contains("mount=0"), "a mount was made: {v}");
    assert!(out.contains("child=ok"), "{v}");
}
