//! Running one exec through a box's agent, with a host-side guard.

use std::time::Duration;

use faas_agent::{ExecRequest, FrameKind};

use crate::error::{Error, Result};
use crate::sandbox::agent::ExecOutcome;
use crate::sandbox::{DeathCause, Sandbox};

/// How long past a command's own timeout the host waits for the agent before giving up on it.
pub(crate) const AGENT_GRACE: Duration = Duration::from_secs(10);

/// Runs `exec` through the sandbox's agent, giving up after `guard`. `on_output` sees each
/// chunk of output as it comes.
pub(crate) async fn run_agent(
    sandbox: &dyn Sandbox,
    exec: ExecRequest,
    stdin: Option<Vec<u8>>,
    guard: Duration,
    on_output: impl FnMut(FrameKind, &[u8]) + Send,
) -> Result<ExecOutcome> {
    let t = std::time::Instant::now();
    match tokio::time::timeout(guard, sandbox.agent().exec(exec, stdin, on_output)).await {
        Ok(r) => {
            crate::sandbox::steps::record(crate::sandbox::steps::Step::Exec, t.elapsed());
            r
        }
        Err(_) => Err(Error::Internal(format!(
            "the agent of sandbox {} did not report within {guard:?}; the sandbox was destroyed",
            sandbox.id()
        ))),
    }
}

/// The outcome of a command whose whole box the kernel killed: everything in it ended by
/// SIGKILL when the box went, so that is the status reported.
pub(crate) fn died(cause: DeathCause, ran_for: Duration) -> ExecOutcome {
    let message = match cause {
        DeathCause::OutOfMemory => "memory limit exceeded: the OOM killer ended the sandbox",
        DeathCause::ProcessLimit => "process limit reached: the sandbox could not fork and ended",
    };
    ExecOutcome {
        exit: faas_agent::ExitInfo {
            exit_code: 128 + 9,
            signal: Some(9),
            oom_killed: cause == DeathCause::OutOfMemory,
            duration_us: ran_for.as_micros() as u64,
            ..Default::default()
        },
        sandbox_error: Some(message.to_string()),
        ..Default::default()
    }
}
