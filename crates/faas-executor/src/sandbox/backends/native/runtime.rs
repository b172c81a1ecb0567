//! A typed client of an OCI runtime binary (`crun`, `runc`, `runsc`), with a configurable path so
//! tests can point it at a real binary or a failing one.

use std::ffi::CString;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Crun,
    Runc,
    Runsc,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 3] = [RuntimeKind::Crun, RuntimeKind::Runc, RuntimeKind::Runsc];

    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
            RuntimeKind::Runsc => "runsc",
        }
    }

    pub fn parse(s: &str) -> Option<RuntimeKind> {
        RuntimeKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How long one runtime command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub kind: RuntimeKind,
    pub binary: PathBuf,
    /// What is executed: a sealed in-memory copy of `binary` where one could be made (see
    /// [`SealedCopy`]), else `binary` itself.
    exec: std::sync::Arc<Executable>,
    /// The runtime's state directory (`--root`): this deployment's containers only.
    pub state_root: PathBuf,
    /// Run the binary in a private mount namespace without `/sys/fs/cgroup/unified` (see
    /// [`hybrid_cgroups`]).
    hide_unified: bool,
    /// Cgroups are the caller's (crun `--cgroup-manager=disabled`, runsc `--ignore-cgroups`;
    /// see `cgroups.rs`).
    caller_cgroups: bool,
    /// runsc: give the sandbox the interfaces of its network namespace (`--network=sandbox`)
    /// instead of loopback alone.
    networked: bool,
}

/// How [`OciRuntime::start_detached`] starts a box.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// `run`: a fresh box from its bundle.
    Run,
    /// `restore` (runsc only): the box saved by a checkpoint in this directory.
    Restore(&'a Path),
}

/// True on a "hybrid" cgroup host: v1 controllers, plus a cgroup2 mount at
/// `/sys/fs/cgroup/unified` with a controller in it. crun refuses to run there ("cgroups in
/// hybrid mode not supported") even with `--cgroup-manager=disabled`; run in a mount namespace
/// where that mount is gone, crun sees a plain v1 host and manages v1 cgroups itself, exactly as
/// runc does on the same host.
pub fn hybrid_cgroups() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false)
        && Path::new("/sys/fs/cgroup/memory").is_dir()
}

impl OciRuntime {
    pub fn new(kind: RuntimeKind, binary: PathBuf, state_root: PathBuf) -> Self {
        let hide_unified = kind == RuntimeKind::Crun && hybrid_cgroups();
        let exec = std::sync::Arc::new(Executable::for_runtime(kind, &binary));
        OciRuntime {
            kind,
            binary,
            exec,
            state_root,
            hide_unified,
            caller_cgroups: false,
            networked: false,
        }
    }

    /// Finds `kind` in `PATH`.
    pub fn find(kind: RuntimeKind) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(kind.name()))
            .find(|p| p.is_file())
    }

    /// Leaves cgroups to the caller, who starts the runtime in the box's cgroups (through a
    /// zygote living there, or by handing [`OciRuntime::start_detached`] the cgroup files to
    /// join). crun and runsc can run without managing cgroups; runc cannot.
    pub fn with_caller_cgroups(mut self) -> Self {
        self.caller_cgroups = matches!(self.kind, RuntimeKind::Crun | RuntimeKind::Runsc);
        self
    }

    /// The same runtime for a box with a network (runsc reads it from the box's namespace).
    pub fn networked(mut self) -> Self {
        self.networked = true;
        self
    }

    /// A networked runsc runs with an empty `/proc/sys/net`: runsc 20221219 takes any network
    /// namespace that has `/proc/sys/net/core/rmem_default` for the host's own and refuses to
    /// copy its interfaces, and on this kernel every namespace has it. runsc reads nothing else
    /// there (gVisor's network stack is its own).
    fn hide_sysnet(&self) -> bool {
        self.kind == RuntimeKind::Runsc && self.networked
    }

    pub fn caller_cgroups(&self) -> bool {
        self.caller_cgroups
    }

    /// A note for `/health` on how the runtime is driven on this host.
    pub fn mode_note(&self) -> &'static str {
        if self.hide_unified {
            "hybrid cgroups: run in a private mount namespace without the unified hierarchy, v1 limits"
        } else {
            ""
        }
    }

    fn command(&self) -> tokio::process::Command {
        self.command_joining(Vec::new())
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::RuntimeTimeout {
            command: what.to_string(),
            after: COMMAND_TIMEOUT,
        }
    }

    /// Options that come before every subcommand.
    fn global_args(&self) -> Vec<String> {
        let mut v = vec!["--root".to_string(), self.state_root.display().to_string()];
        match self.kind {
            RuntimeKind::Crun if self.caller_cgroups => {
                v.push("--cgroup-manager=disabled".into());
            }
            // Neither made nor joined by runsc: its sandbox and gofer are born in the box's
            // cgroups (each join or return of a v1 cgroup by runsc waited ~15 ms for RCU).
            RuntimeKind::Runsc if self.caller_cgroups => v.push("--ignore-cgroups".into()),
            _ => {}
        }
        if self.kind == RuntimeKind::Runsc {
            // Let the agent's unix socket in the bind-mounted directory be reachable from the
            // host, and give the sandbox no network but loopback, or its namespace's veth.
            v.push("--host-uds=all".into());
            v.push(match self.networked {
                true => "--network=sandbox".into(),
                false => "--network=none".into(),
            });
        }
        v
    }

    /// The runtime command; its process first joins the cgroups whose `cgroup.procs` files are
    /// given (so the container starts in them).
    fn command_joining(&self, join: Vec<CString>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.exec.path());
        cmd.args(self.global_args());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.hide_unified || self.hide_sysnet() || !join.is_empty() {
            prepare_child(&mut cmd, self.hide_unified, self.hide_sysnet(), join);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let what = format!("{} {}", self.kind.name(), args.join(" "));
        let out = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let (child, _guard) = crate::sandbox::reaper::spawn(&mut cmd)?;
            child.wait_with_output().await
        })
        .await
        .map_err(|_| self.timed_out(&what))?
        .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        if !out.status.success() {
            return Err(Error::Runtime {
                command: what,
                status: out.status.to_string(),
                stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn version(&self) -> Result<String> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let out = async {
            let (child, _guard) = crate::sandbox::reaper::spawn(&mut cmd)?;
            child.wait_with_output().await
        }
        .await
        .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    }

    /// Creates and starts (or restores) container `id` from the bundle at `bundle`, detached,
    /// writing the host pid of its first process to `bundle/init.pid`; the runtime process
    /// first joins the cgroups whose `cgroup.procs` files are in `join`. The container
    /// inherits the runtime's stdout and stderr, so they go to `bundle/runtime.log` (a pipe would
    /// stay open as long as the container lives); a failure quotes that log.
    pub async fn start_detached(
        &self,
        id: &str,
        bundle: &Path,
        how: Start<'_>,
        join: Vec<CString>,
    ) -> Result<()> {
        let args = self.start_args(id, bundle, how);
        self.detached(args, bundle, join).await
    }

    /// Saves the state of container `id` (memory and processes) to `image`; the container
    /// stops (runsc only).
    pub async fn checkpoint(&self, id: &str, image: &Path) -> Result<()> {
        let image = image.display().to_string();
        self.run(&["checkpoint", "-image-path", &image, id])
            .await
            .map(drop)
    }

    async fn detached(&self, args: Vec<String>, bundle: &Path, join: Vec<CString>) -> Result<()> {
        let log_path = bundle.join("runtime.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::io(format!("create {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("clone a file handle", e))?;
        let mut cmd = self.command_joining(join);
        cmd.args(&args).stdout(log).stderr(log2);
        let spawned = crate::sandbox::reaper::spawn(&mut cmd)
            .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        self.finish_run(spawned, &args, &log_path).await
    }

    /// Like [`OciRuntime::start_detached`], through a zygote (see [`spawn_zygote`]) living in
    /// the box's cgroups: the runtime is born there, nothing is migrated.
    pub async fn start_detached_via(
        &self,
        zygote: &mut Zygote,
        id: &str,
        bundle: &Path,
        how: Start<'_>,
    ) -> Result<()> {
        let log_path = bundle.join("runtime.log");
        let args = self.start_args(id, bundle, how);
        let what = format!("{} {}", self.kind.name(), args.join(" "));
        let command: Vec<String> = std::iter::once(self.exec.path().display().to_string())
            .chain(self.global_args())
            .chain(args)
            .collect();
        let flags = if self.hide_unified {
            "hide-unified"
        } else if self.hide_sysnet() {
            "hide-sysnet"
        } else {
            ""
        };
        zygote.request(&log_path, flags, &command, what).await
    }

    /// Waits for a `run --detach` and turns a failure into an error quoting its log.
    async fn finish_run(
        &self,
        spawned: (tokio::process::Child, crate::sandbox::reaper::PidGuard),
        args: &[String],
        log_path: &Path,
    ) -> Result<()> {
        let (mut child, _guard) = spawned;
        let what = format!("{} {}", self.kind.name(), args.join(" "));
        let status = tokio::time::timeout(COMMAND_TIMEOUT, child.wait())
            .await
            .map_err(|_| self.timed_out(&what))?
            .map_err(|e| Error::io(format!("run {}", self.binary.display()), e))?;
        if status.success() {
            return Ok(());
        }
        Err(failed_run(what, status.to_string(), log_path))
    }

    /// The arguments of `run --detach` (or runsc's `restore -detach`), writing the host pid of
    /// the box's first process to `bundle/init.pid`.
    fn start_args(&self, id: &str, bundle: &Path, how: Start<'_>) -> Vec<String> {
        let (detach, pid_file) = match self.kind {
            RuntimeKind::Runsc => ("-detach", "-pid-file"),
            _ => ("--detach", "--pid-file"),
        };
        let mut args = match how {
            Start::Run => vec!["run".to_string()],
            Start::Restore(image) => vec![
                "restore".to_string(),
                "-image-path".into(),
                image.display().to_string(),
            ],
        };
        args.extend([
            detach.into(),
            pid_file.into(),
            bundle.join("init.pid").display().to_string(),
            "--bundle".into(),
            bundle.display().to_string(),
            id.into(),
        ]);
        args
    }

    /// Kills and deletes container `id`; one that does not exist is fine.
    pub async fn delete_force(&self, id: &str) -> Result<()> {
        let force = if self.kind == RuntimeKind::Runsc {
            "-force"
        } else {
            "--force"
        };
        match self.run(&["delete", force, id]).await {
            Ok(_) => Ok(()),
            Err(Error::Runtime { stderr, .. })
                if stderr.contains("does not exist")
                    || stderr.contains("not exist")
                    || stderr.contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes what the runtime keeps of container `id` once its processes are dead: for crun
    /// with caller-managed cgroups that is only its state directory (`delete` would start a
    /// second crun to do just that), otherwise `delete --force`.
    pub async fn delete_dead(&self, id: &str) -> Result<()> {
        if !(self.caller_cgroups && self.kind == RuntimeKind::Crun) {
            return self.delete_force(id).await;
        }
        let dir = self.state_root.join(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// Sends SIGKILL to the container's processes; a container that is gone or stopped is fine.
    pub async fn kill(&self, id: &str) -> Result<()> {
        match self.run(&["kill", id, "KILL"]).await {
            Ok(_) => Ok(()),
            Err(Error::Runtime { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Freezes every process of container `id` (its freezer cgroup).
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.run(&["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.run(&["resume", id]).await.map(drop)
    }

    /// The container's status (`running`, `paused`, `stopped`...), `None` when it does not
    /// exist.
    pub async fn status(&self, id: &str) -> Result<Option<String>> {
        match self.run(&["state", id]).await {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_str(&out)
                    .map_err(|e| Error::Internal(format!("{} state: {e}", self.kind.name())))?;
                Ok(v["status"].as_str().map(str::to_string))
            }
            Err(Error::Runtime { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ids of the containers in this runtime's state directory.
    pub async fn list(&self) -> Result<Vec<String>> {
        if !self.state_root.is_dir() {
            return Ok(Vec::new());
        }
        let quiet = if self.kind == RuntimeKind::Runsc {
            "-quiet"
        } else {
            "--quiet"
        };
        let out = self.run(&["list", quiet]).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// The file a runtime is executed from.
#[derive(Debug)]
enum Executable {
    Path(PathBuf),
    Sealed(SealedCopy),
}

impl Executable {
    fn for_runtime(kind: RuntimeKind, binary: &Path) -> Executable {
        // runsc re-executes itself by design (sandbox, gofer) and copies nothing.
        if kind == RuntimeKind::Runsc {
            return Executable::Path(binary.to_path_buf());
        }
        match SealedCopy::of(binary) {
            Ok(copy) => Executable::Sealed(copy),
            Err(e) => {
                tracing::warn!(binary = %binary.display(), error = %e, "no sealed copy of the runtime; it copies itself on every start");
                Executable::Path(binary.to_path_buf())
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            Executable::Path(p) => p,
            Executable::Sealed(c) => &c.path,
        }
    }
}

/// A runtime binary copied once into a sealed memfd (write, grow, shrink and further sealing
/// forbidden), executed as `/proc/<server pid>/fd/<n>`.
///
/// crun and runc defend against a container overwriting the host's runtime binary through
/// `/proc/self/exe` (CVE-2019-5736) by copying themselves into such a memfd and re-executing
/// from it on every start, unless they already run from one: that copy and second dynamic link
/// cost about 3 ms per crun start on these machines, and runc copies 8 MiB. A sealed copy made
/// once gives the same protection (nothing can write to it) without the per-start cost.
#[derive(Debug)]
struct SealedCopy {
    _fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl SealedCopy {
    fn of(binary: &Path) -> std::io::Result<SealedCopy> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let bytes = std::fs::read(binary)?;
        let name = CString::new("faas-runtime").expect("no NUL");
        let fd = memfd_create(
            &name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, &bytes)?;
        let fd = std::os::fd::OwnedFd::from(file);
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SEAL
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE,
            ),
        )?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        Ok(SealedCopy { _fd: fd, path })
    }
}

/// A failed `run --detach`, quoting the end of its log (where the runtime wrote why).
fn failed_run(command: String, status: String, log_path: &Path) -> Error {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let mut tail = text.len().saturating_sub(2000);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    Error::Runtime {
        command,
        status,
        stdout: String::new(),
        stderr: text[tail..].trim().to_string(),
    }
}

/// Starts a zygote (`faas-agent --zygote`) that first joins the cgroups of `join`; the
/// runtime commands it starts later are born in them.
pub fn spawn_zygote(agent: &Path, join: Vec<CString>) -> Result<Zygote> {
    let mut cmd = tokio::process::Command::new(agent);
    cmd.arg("--zygote")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // Only the cgroups here: the zygote makes each command's mount namespace itself.
    prepare_child(&mut cmd, false, false, join);
    let (mut child, guard) = crate::sandbox::reaper::spawn(&mut cmd)
        .map_err(|e| Error::io(format!("start {}", agent.display()), e))?;
    let (Some(stdin), Some(stdout), Some(pid)) =
        (child.stdin.take(), child.stdout.take(), child.id())
    else {
        return Err(Error::Internal("zygote without pipes".into()));
    };
    Ok(Zygote {
        child,
        guard,
        stdin,
        stdout,
        pid,
    })
}

/// A process living in a cgroup slot that starts runtime commands as its children.
pub struct Zygote {
    child: tokio::process::Child,
    #[allow(dead_code)]
    guard: crate::sandbox::reaper::PidGuard,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    pub pid: u32,
}

impl Zygote {
    /// Hands it one request (see `faas-agent --zygote`): `args` run with `flags`, output to
    /// `log_path`; waits for its status. A failure quotes the log.
    async fn request(
        &mut self,
        log_path: &Path,
        flags: &str,
        args: &[String],
        what: String,
    ) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // `LOG\nFLAGS\nARG\0ARG...`, length first.
        let mut msg = log_path.as_os_str().as_encoded_bytes().to_vec();
        msg.push(b'\n');
        msg.extend_from_slice(flags.as_bytes());
        msg.push(b'\n');
        for a in args {
            msg.extend_from_slice(a.as_bytes());
            msg.push(0);
        }
        let msg = &msg;
        let exchange = async {
            self.stdin
                .write_all(&(msg.len() as u32).to_be_bytes())
                .await?;
            self.stdin.write_all(msg).await?;
            self.stdin.flush().await?;
            let mut status = [0u8; 4];
            self.stdout.read_exact(&mut status).await?;
            Ok::<_, std::io::Error>(i32::from_be_bytes(status))
        };
        let status = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::RuntimeTimeout {
                command: what.clone(),
                after: COMMAND_TIMEOUT,
            })?
            .map_err(|e| Error::io("hand the command to the zygote", e))?;
        if status == 0 {
            return Ok(());
        }
        Err(failed_run(what, format!("exit status: {status}"), log_path))
    }

    /// `faas-agent --reset-root ARGS...`, done by the zygote in a forked child.
    pub async fn reset_root(&mut self, args: &[String], log_path: &Path) -> Result<()> {
        let what = format!("reset-root {}", args.join(" "));
        self.request(log_path, "reset-root", args, what).await
    }

    /// Whether it still serves (it may have been killed with a box, or from outside).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills and reaps it (a zombie still counts as a member of its v1 cgroups, which could
    /// then not be removed).
    pub fn kill_and_reap(mut self) {
        let _ = self.child.start_kill();
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Between fork and exec of `cmd`: join the cgroups of `join` (by writing 0, "this process",
/// to each `cgroup.procs`), then, when `hide_unified`, move to a private mount namespace where
/// `/sys/fs/cgroup/unified` is unmounted.
#[allow(unsafe_code)]
fn prepare_child(
    cmd: &mut tokio::process::Command,
    hide_unified: bool,
    hide_sysnet: bool,
    join: Vec<CString>,
) {
    use nix::fcntl::{open, OFlag};
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::stat::Mode;
    use std::ffi::CStr;
    // Made before the fork: nothing below allocates.
    let root = CString::new("/").expect("no NUL");
    let unified = CString::new("/sys/fs/cgroup/unified").expect("no NUL");
    let sysnet = CString::new("/proc/sys/net").expect("no NUL");
    let tmpfs = CString::new("tmpfs").expect("no NUL");
    // SAFETY: the closure runs in the forked child before exec. It only makes system calls
    // (open, write, close, unshare, mount, umount2) through nix on C strings built before the
    // fork: no allocation, no locks, nothing that is not async-signal-safe. `from_raw_fd` takes
    // the descriptor `open` just returned, owned by nothing else.
    unsafe {
        cmd.pre_exec(move || {
            for procs in &join {
                let fd = open(
                    procs.as_c_str(),
                    OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                nix::unistd::write(&fd, b"0")?;
            }
            if hide_unified {
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&CStr>,
                    root.as_c_str(),
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&CStr>,
                )?;
                umount2(unified.as_c_str(), MntFlags::MNT_DETACH)?;
            }
            if hide_sysnet {
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&CStr>,
                    root.as_c_str(),
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&CStr>,
                )?;
                mount(
                    Some(tmpfs.as_c_str()),
                    sysnet.as_c_str(),
                    Some(tmpfs.as_c_str()),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&CStr>,
                )?;
            }
            Ok(())
        });
    }
}
