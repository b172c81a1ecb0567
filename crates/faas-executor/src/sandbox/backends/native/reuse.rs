//! Resetting a used crun or runc box so a warm pool can hand it out again (`Sandbox::reset`).
//!
//! 1. Nothing the kernel recorded may be carried over: a box with an OOM kill or a refused fork
//!    in its cgroups is not reset (those counters cannot be zeroed).
//! 2. The agent kills every other process of the box (PID 1's `kill(-1)`: daemons that left
//!    their session included), waits for them and for their connections, and forgets them.
//! 3. `faas-agent --reset-root` (see the agent's `rootswap.rs`), run on the host, gives the box
//!    a new overlay root over the image's layers with an empty upper dir `g<N>/upper`, makes
//!    `/dev` again, empties `/dev/shm` and `/dev/mqueue`, and removes every System V IPC object.
//! 4. The host removes the old upper dir (and, the first time, unmounts its copy of the first
//!    root), empties the socket directory but for the agent's socket, and zeroes the cgroup's
//!    resettable counters, CPU time and peak memory among them: what the box is seen to use
//!    (`Sandbox::usage`) starts again.
//! 5. The agent checks it is as it was when the box started (limits, priority, affinity, OOM
//!    score, mounts, open files) and alone.
//!
//! Any failure returns an error and the caller destroys the box. The box keeps its namespaces,
//! cgroup slot and agent process: a reset costs a helper process and a few mounts instead of a
//! whole start and tear-down.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::runtime::RuntimeKind;
use super::{remove_tree, unmount_rootfs, NativeSandbox};
use crate::error::{Error, Result};
use crate::sandbox::steps::{self, Step};
use crate::sandbox::Sandbox;

/// How long the root swap may take before the box counts as broken.
const SWAP_TIMEOUT: Duration = Duration::from_secs(10);

impl NativeSandbox {
    pub(super) async fn reset_box(&self) -> Result<()> {
        if self.persistent || self.runtime.kind == RuntimeKind::Runsc {
            return Err(Error::Unsupported(
                "only an ephemeral crun or runc box can be reset".into(),
            ));
        }
        let t = Instant::now();
        if let Some(cause) = self.death_cause().await {
            return Err(Error::Internal(format!(
                "not reset: the box's cgroups recorded {cause:?}"
            )));
        }
        let (Some(init), Some(lower)) = (self.init.get(), self.lower.get()) else {
            return Err(Error::Internal(
                "not reset: the box's init is unknown".into(),
            ));
        };
        self.agent.reset().await?;
        let t_killed = t.elapsed();
        let n = {
            let mut r = self.resets.lock().unwrap_or_else(|e| e.into_inner());
            *r += 1;
            *r
        };
        // The namespaces are found by pid: it must still be the box's init, not a recycled pid.
        if super::InitProcess::start_time(init.pid) != Some(init.start) {
            return Err(Error::Internal("not reset: the box's init is gone".into()));
        }
        let gen = self.dir.join(format!("g{n}"));
        let (upper, work) = (gen.join("upper"), gen.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let args = [
            init.pid.to_string(),
            lower.clone(),
            upper.display().to_string(),
            work.display().to_string(),
        ];
        // Through the slot's zygote (a fork, no exec) when it has one.
        let zygote = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.as_mut()
                .and_then(|s| s.zygote.take())
                .and_then(|mut z| z.alive().then_some(z))
        };
        match zygote {
            Some(mut z) => {
                let swapped = z.reset_root(&args, &self.dir.join("reset.log")).await;
                if swapped.is_ok() {
                    if let Some(slot) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                    {
                        slot.zygote = Some(z);
                    }
                }
                swapped?;
            }
            None => self.swap_by_helper(&args).await?,
        }
        let t_swapped = t.elapsed();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || clean_host_side(&dir, n))
            .await
            .map_err(|e| Error::Internal(format!("reset: {e}")))??;
        // A few small writes to cgroupfs: the slot's counters, or those of the cgroup runc
        // made (one without CPU accounting has nothing to start again).
        let in_slot = match (
            &self.shared.slots,
            self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref(),
        ) {
            (Some(slots), Some(slot)) => Some(slots.reset_counters(slot)),
            _ => None,
        };
        match in_slot {
            Some(reset) => reset?,
            None => {
                if let Ok(usage) = self.cgroup_usage() {
                    usage.reset()?;
                }
            }
        }
        let t_cleaned = t.elapsed();
        self.agent.check_clean().await?;
        tracing::debug!(sandbox = %self.id, killed = ?t_killed, swapped = ?t_swapped, cleaned = ?t_cleaned, checked = ?t.elapsed(), "reset");
        steps::record(Step::Reset, t.elapsed());
        Ok(())
    }

    /// The root swap by `faas-agent --reset-root` (a box without a zygote: runc's).
    async fn swap_by_helper(&self, args: &[String]) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.shared.cfg.agent_path);
        cmd.arg("--reset-root")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let swapped = tokio::time::timeout(SWAP_TIMEOUT, async {
            let (child, _guard) = crate::sandbox::reaper::spawn(&mut cmd)?;
            child.wait_with_output().await
        })
        .await
        .map_err(|_| Error::Internal(format!("the root swap took over {SWAP_TIMEOUT:?}")))?
        .map_err(|e| Error::io("run faas-agent --reset-root", e))?;
        if !swapped.status.success() {
            return Err(Error::Internal(format!(
                "the root swap failed ({}): {}",
                swapped.status,
                String::from_utf8_lossy(&swapped.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// After the `n`th root swap: the previous root's writes go (the first root's host mount with
/// them), and the socket directory keeps only the agent's socket.
fn clean_host_side(dir: &Path, n: u32) -> Result<()> {
    if n == 1 {
        unmount_rootfs(dir)?;
        remove_tree(&dir.join("upper"))?;
        remove_tree(&dir.join("work"))?;
    } else {
        remove_tree(&dir.join(format!("g{}", n - 1)))?;
    }
    let sock = dir.join("sock");
    let entries =
        std::fs::read_dir(&sock).map_err(|e| Error::io(format!("read {}", sock.display()), e))?;
    for e in entries.flatten() {
        if e.file_name() == faas_agent::SOCKET_NAME {
            continue;
        }
        let p = e.path();
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        removed.map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
    }
    Ok(())
}
