//! Processes, terminals and files inside a running instance: each call is one request to the
//! instance's agent (its process table and its view of the files), checked here first.

use std::sync::Arc;

use faas_agent::{ExecRequest, FsOp};
use faas_common::{
    Caller, FileEntry, FileType, ProcessExit, ProcessInfo, ProcessStartRequest, ProcessStarted,
    PtySize,
};

use super::{check_path, Instances, LiveBox};
use crate::error::{Error, Result};
use crate::sandbox::agent::{Subscription, Watch};
use crate::services::run;

/// How long the idle reaper waits for a box's process table.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes of argv and environment a process may be started with.
const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// Largest `depth` of a directory listing.
const MAX_LIST_DEPTH: u32 = 32;
/// Longest tag of a process.
const MAX_TAG: usize = 256;

/// A terminal's size must be something a terminal can be.
fn check_size(size: PtySize) -> Result<PtySize> {
    if size.cols == 0 || size.rows == 0 || size.cols > 1000 || size.rows > 1000 {
        return Err(Error::InvalidRequest(format!(
            "a terminal is 1 to 1000 columns and rows, got {}x{}",
            size.cols, size.rows
        )));
    }
    Ok(size)
}

fn entry(e: faas_agent::FileEntry) -> FileEntry {
    FileEntry {
        name: e.name,
        path: e.path,
        file_type: match e.file_type {
            faas_agent::FileType::File => FileType::File,
            faas_agent::FileType::Dir => FileType::Dir,
            faas_agent::FileType::Symlink => FileType::Symlink,
            faas_agent::FileType::Other => FileType::Other,
        },
        size: e.size,
        mode: e.mode,
        permissions: e.permissions,
        owner: e.owner,
        group: e.group,
        uid: e.uid,
        gid: e.gid,
        mtime_ms: e.mtime_ms,
        symlink_target: e.symlink_target,
    }
}

/// The `exit` event of a process's stream.
pub fn process_exit(x: &faas_agent::ExitInfo) -> ProcessExit {
    ProcessExit {
        exit_code: x.exit_code,
        signal: x.signal,
        timed_out: x.timed_out,
        oom_killed: x.oom_killed,
        duration_ms: x.duration_us as f64 / 1000.0,
    }
}

/// The name of a watch event's operation.
pub fn fs_op_name(op: FsOp) -> &'static str {
    match op {
        FsOp::Create => "create",
        FsOp::Write => "write",
        FsOp::Remove => "remove",
        FsOp::Rename => "rename",
        FsOp::Chmod => "chmod",
    }
}

impl Instances {
    /// The running box of instance `id`: 404 for an unknown instance, 409 for one that is not
    /// running.
    pub(super) async fn running_box(&self, caller: &Caller, id: &str) -> Result<Arc<LiveBox>> {
        if let Some(live) = self.live_of(caller, id) {
            return Ok(live);
        }
        let rec = self.instance_record(caller, id).await?;
        Err(Error::Conflict(format!(
            "instance {id} is {}: start it first",
            rec.status
        )))
    }

    /// Whether a process started in the box (not an exec, which counts as activity itself)
    /// still runs.
    pub(super) async fn runs_processes(&self, live: &LiveBox) -> bool {
        // Bounded: one box that does not answer must not hold up the reaper of all the others
        // (it is stopped as idle, which it is: nothing can be done with it).
        let list = tokio::time::timeout(IDLE_CHECK, live.sandbox.agent().processes()).await;
        list.is_ok_and(|l| l.is_ok_and(|l| l.iter().any(|p| p.running)))
    }

    /// A box whose agent cannot be reached is gone: the instance is not running.
    pub(super) fn box_gone(id: &str, e: Error) -> Error {
        match e {
            Error::AgentUnreachable { message, .. } => {
                Error::Conflict(format!("instance {id} is not running ({message})"))
            }
            e => e,
        }
    }

    /// What the agent refuses for the process's state (input to one without stdin, a resize
    /// of one without a terminal) is a conflict, not bad input.
    fn state_conflict(id: &str, e: Error) -> Error {
        match Self::box_gone(id, e) {
            Error::InvalidRequest(m) => Error::Conflict(m),
            e => e,
        }
    }

    /// Starts a process in instance `id` and returns at once; it runs until it ends, whoever
    /// listens.
    pub async fn process_start(
        &self,
        caller: &Caller,
        id: &str,
        req: ProcessStartRequest,
    ) -> Result<ProcessStarted> {
        self.start_process(caller, id, req, false)
            .await
            .map(|(started, _)| started)
    }

    /// [`InstancesService::process_start`] and [`InstancesService::process_subscribe`] in
    /// one round trip to the box: the process and its output from the first byte.
    pub async fn process_start_subscribed(
        &self,
        caller: &Caller,
        id: &str,
        req: ProcessStartRequest,
    ) -> Result<(ProcessStarted, Subscription)> {
        let (started, sub) = self.start_process(caller, id, req, true).await?;
        Ok((started, sub.expect("asked for")))
    }

    async fn start_process(
        &self,
        caller: &Caller,
        id: &str,
        req: ProcessStartRequest,
        subscribe: bool,
    ) -> Result<(ProcessStarted, Option<Subscription>)> {
        if req.command.is_empty() {
            return Err(Error::InvalidRequest("command is empty".into()));
        }
        let argv = req.command.to_argv();
        let size: usize = argv.iter().map(String::len).sum::<usize>()
            + req
                .env_vars
                .0
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_COMMAND_BYTES {
            return Err(Error::InvalidRequest(format!(
                "command and env_vars are {size} bytes; at most {MAX_COMMAND_BYTES} are taken"
            )));
        }
        if let Some(dir) = &req.working_dir {
            check_path("working_dir", dir)?;
        }
        if req.tag.as_ref().is_some_and(|t| t.len() > MAX_TAG) {
            return Err(Error::InvalidRequest(format!(
                "tag is longer than {MAX_TAG} bytes"
            )));
        }
        let timeout_ms = match req.timeout_ms {
            Some(t) => run::timeout(&self.cfg, Some(t))?,
            None => 0,
        };
        let pty = req.pty.map(check_size).transpose()?;
        let live = self.running_box(caller, id).await?;
        let exec = ExecRequest {
            argv,
            env: req.env_vars.0,
            cwd: req.working_dir,
            timeout_ms,
            stdin: req.stdin || pty.is_some(),
            pty: pty.map(|p| faas_agent::PtySize {
                cols: p.cols,
                rows: p.rows,
            }),
            tag: req.tag.clone(),
            ..Default::default()
        };
        let agent = live.sandbox.agent();
        let started = if subscribe {
            agent
                .start_subscribed(exec)
                .await
                .map(|(p, s)| (p, Some(s)))
        } else {
            agent.start(exec).await.map(|p| (p, None))
        };
        let (pid, sub) = started.map_err(|e| Self::box_gone(id, e))?;
        live.touch();
        Ok((ProcessStarted { pid, tag: req.tag }, sub))
    }

    /// The processes of instance `id`: running ones first, then recently ended ones.
    pub async fn process_list(&self, caller: &Caller, id: &str) -> Result<Vec<ProcessInfo>> {
        let live = self.running_box(caller, id).await?;
        let list = live
            .sandbox
            .agent()
            .processes()
            .await
            .map_err(|e| Self::box_gone(id, e))?;
        Ok(list
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                tag: p.tag,
                command: p.argv,
                env_vars: p.env.into_iter().collect(),
                working_dir: p.cwd,
                pty: p.pty,
                running: p.running,
                exit_code: p.exit.as_ref().map(|x| x.exit_code),
                signal: p.exit.as_ref().and_then(|x| x.signal),
                started_at_ms: p.started_at_ms,
            })
            .collect())
    }

    /// Process `pid`'s kept output, then its live output, then its exit.
    pub async fn process_subscribe(
        &self,
        caller: &Caller,
        id: &str,
        pid: u32,
    ) -> Result<Subscription> {
        let live = self.running_box(caller, id).await?;
        live.sandbox
            .agent()
            .subscribe(pid)
            .await
            .map_err(|e| Self::box_gone(id, e))
    }

    pub async fn process_input(
        &self,
        caller: &Caller,
        id: &str,
        pid: u32,
        data: &[u8],
    ) -> Result<()> {
        let live = self.running_box(caller, id).await?;
        live.touch();
        live.sandbox
            .agent()
            .send_input(pid, data)
            .await
            .map_err(|e| Self::state_conflict(id, e))
    }

    pub async fn process_close_stdin(&self, caller: &Caller, id: &str, pid: u32) -> Result<()> {
        let live = self.running_box(caller, id).await?;
        live.sandbox
            .agent()
            .close_stdin(pid)
            .await
            .map_err(|e| Self::box_gone(id, e))
    }

    pub async fn process_signal(
        &self,
        caller: &Caller,
        id: &str,
        pid: u32,
        signal: i32,
    ) -> Result<()> {
        let live = self.running_box(caller, id).await?;
        live.sandbox
            .agent()
            .signal(pid, signal)
            .await
            .map_err(|e| Self::box_gone(id, e))
    }

    pub async fn process_resize(
        &self,
        caller: &Caller,
        id: &str,
        pid: u32,
        size: PtySize,
    ) -> Result<()> {
        let size = check_size(size)?;
        let live = self.running_box(caller, id).await?;
        live.sandbox
            .agent()
            .resize(pid, size.cols, size.rows)
            .await
            .map_err(|e| Self::state_conflict(id, e))
    }

    pub async fn fs_stat(&self, caller: &Caller, id: &str, path: &str) -> Result<FileEntry> {
        check_path("path", path)?;
        let live = self.running_box(caller, id).await?;
        let e = live.sandbox.agent().stat(path).await;
        e.map(entry).map_err(|e| Self::box_gone(id, e))
    }

    pub async fn fs_list(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<FileEntry>> {
        check_path("path", path)?;
        if depth == 0 || depth > MAX_LIST_DEPTH {
            return Err(Error::InvalidRequest(format!(
                "depth must be between 1 and {MAX_LIST_DEPTH}, got {depth}"
            )));
        }
        let live = self.running_box(caller, id).await?;
        let list = live.sandbox.agent().list_dir(path, depth).await;
        Ok(list
            .map_err(|e| Self::box_gone(id, e))?
            .into_iter()
            .map(entry)
            .collect())
    }

    /// Makes directory `path` (and its missing parents); its entry.
    pub async fn fs_mkdir(&self, caller: &Caller, id: &str, path: &str) -> Result<FileEntry> {
        check_path("path", path)?;
        let live = self.running_box(caller, id).await?;
        let agent = live.sandbox.agent();
        agent
            .make_dir(path)
            .await
            .map_err(|e| Self::box_gone(id, e))?;
        agent
            .stat(path)
            .await
            .map(entry)
            .map_err(|e| Self::box_gone(id, e))
    }

    pub async fn fs_move(
        &self,
        caller: &Caller,
        id: &str,
        from: &str,
        to: &str,
    ) -> Result<FileEntry> {
        check_path("from", from)?;
        check_path("to", to)?;
        let live = self.running_box(caller, id).await?;
        let e = live.sandbox.agent().rename(from, to).await;
        e.map(entry).map_err(|e| Self::box_gone(id, e))
    }

    pub async fn fs_remove(&self, caller: &Caller, id: &str, path: &str) -> Result<()> {
        check_path("path", path)?;
        // As `rm` does: not the root, not `.` or `..` (`/.` and `/tmp/..` are the root too).
        let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if matches!(last, "" | "." | "..") {
            return Err(Error::InvalidRequest(format!(
                "{path:?} cannot be removed: the root, `.` and `..` are refused"
            )));
        }
        let live = self.running_box(caller, id).await?;
        let r = live.sandbox.agent().remove(path).await;
        r.map_err(|e| Self::box_gone(id, e))
    }

    /// Changes under directory `path` from when this returns.
    pub async fn fs_watch(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Watch> {
        check_path("path", path)?;
        let live = self.running_box(caller, id).await?;
        let w = live.sandbox.agent().watch(path, recursive).await;
        w.map_err(|e| Self::box_gone(id, e))
    }
}
