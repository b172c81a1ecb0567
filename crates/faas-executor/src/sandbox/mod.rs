//! The sandbox layer. Its two levels: a [`Backend`] makes isolated boxes; a [`Sandbox`] is one
//! box, running the agent as PID 1, that the host execs into through its [`AgentClient`].
//! It knows nothing of instances as records, functions or the store.
//!
//! - [`backends`]: the implementations (`docker` on the Docker Engine API, `native` on OCI
//!   runtimes), and [`images`], the native backend's image store.
//! - [`agent`]: the host side of the in-sandbox agent protocol ([`AgentClient`]);
//!   [`exec::run_agent`] runs one exec through it with a host-side guard.
//! - [`pool`]: warm pools of started, clean sandboxes per image.
//! - [`reaper`]: the child subreaper that reaps the native backend's orphans.
//! - [`sandboxes::Sandboxes`]: the handle the services hold: the backends, their image store,
//!   the warm pools, the metrics and the tracker of background clean-ups.

pub mod agent;
pub mod backends;
pub mod exec;
pub mod images;
pub mod net;
pub mod pool;
pub mod reaper;
pub mod sandboxes;
pub mod steps;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::sandbox::agent::AgentClient;

/// Resource limits of one sandbox; every backend enforces all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 512,
            cpu_cores: 1.0,
            pids: 256,
        }
    }
}

/// A backend-neutral description of a box. Each backend turns it into its own form.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub image: String,
    /// Environment of the box (every exec inherits it).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub network: Network,
    pub isolation: Isolation,
    /// Host directories made visible in the box, read-only (a function's code).
    pub mounts: Vec<ReadOnlyMount>,
}

/// A host directory bound read-only into a box.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadOnlyMount {
    pub host: std::path::PathBuf,
    /// An absolute path inside the box.
    pub guest: String,
}

/// How strongly the box is isolated from the host kernel (the API's type).
pub use faas_common::IsolationLevel as Isolation;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// A network namespace with loopback alone.
    #[default]
    None,
    /// A veth, an address and egress under these rules (see [`net`]).
    Egress(std::sync::Arc<net::EgressPolicy>),
}

impl Network {
    pub fn policy(&self) -> Option<&std::sync::Arc<net::EgressPolicy>> {
        match self {
            Network::None => None,
            Network::Egress(p) => Some(p),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// `docker`, `native`...
    fn name(&self) -> &'static str;

    /// Creates and starts a box; it returns once the agent inside answers.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>>;

    /// Fails with `ImageNotFound` when the backend cannot make boxes of `image`.
    async fn check_image(&self, image: &str) -> Result<()>;

    /// Removes the boxes an earlier, killed run of this deployment left behind.
    async fn remove_leftovers(&self) -> Result<usize>;

    /// Called once when the server stops, after every box is destroyed.
    async fn shutdown(&self) {}

    // ---- instances: boxes whose files outlive their processes ----

    /// Makes the files of instance `id` (from its image, or from a snapshot's `artifact`) and
    /// starts its box. The box's [`Sandbox::destroy`] stops it and keeps its files.
    async fn instance_create(
        &self,
        id: &str,
        spec: &SandboxSpec,
        from: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Sandbox>> {
        let _ = (id, spec, from);
        Err(Error::Unsupported(format!(
            "the {} backend has no instances",
            self.name()
        )))
    }

    /// Starts a new box over the kept files of a stopped (or lost) instance.
    async fn instance_start(&self, id: &str, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let _ = (id, spec);
        Err(Error::Unsupported(format!(
            "the {} backend has no instances",
            self.name()
        )))
    }

    /// The running box of an instance, found again after a server restart; `None` when it is
    /// gone. `spec` is what it was made with (a networked one gets its network again).
    async fn instance_attach(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Option<Box<dyn Sandbox>>> {
        let _ = (id, spec);
        Ok(None)
    }

    /// Removes an instance's files (its box is stopped first if it runs).
    async fn instance_remove(&self, id: &str) -> Result<()> {
        let _ = id;
        Ok(())
    }

    /// Captures instance `id`'s files (and, with `memory`, its processes' memory) as snapshot
    /// `snapshot`. `running` is its box when it runs. Returns where the state is kept and its
    /// size in bytes.
    async fn snapshot(
        &self,
        id: &str,
        running: Option<&dyn Sandbox>,
        snapshot: &str,
        memory: bool,
    ) -> Result<(serde_json::Value, u64)> {
        let _ = (id, running, snapshot, memory);
        Err(Error::Unsupported(format!(
            "the {} backend has no snapshots",
            self.name()
        )))
    }

    /// Removes what [`Backend::snapshot`] kept.
    async fn snapshot_remove(&self, snapshot: &str, artifact: &serde_json::Value) -> Result<()> {
        let _ = (snapshot, artifact);
        Ok(())
    }
}

#[async_trait]
pub trait Sandbox: Send + Sync {
    fn id(&self) -> &str;
    fn backend(&self) -> &'static str;
    /// The box itself, for its backend's own use.
    fn as_any(&self) -> &dyn std::any::Any;
    fn agent(&self) -> &AgentClient;
    /// Kills everything in the box and removes it and all its host-side state.
    async fn destroy(&self) -> Result<()>;

    /// Makes a used box as clean as a new one, for its next request: every process of the last
    /// one gone, its file system back to the image's, nothing of its IPC, mounts or limits
    /// left. An error means it could not be (or may not be) made so, and the caller destroys
    /// it. Backends that cannot reset a box say `unsupported`.
    async fn reset(&self) -> Result<()> {
        Err(Error::Unsupported(format!(
            "the {} backend does not reset boxes",
            self.backend()
        )))
    }

    /// When the box died under a command (its agent went away), what the host saw: an OOM kill
    /// or a process limit hit in its cgroups. `None` when nothing explains it.
    async fn death_cause(&self) -> Option<DeathCause> {
        None
    }

    /// What the box has used so far (see [`BoxUsage`]); backends that cannot measure say
    /// `unsupported`.
    async fn usage(&self) -> Result<BoxUsage> {
        Err(Error::Unsupported(format!(
            "the {} backend does not measure what a box used",
            self.backend()
        )))
    }
}

/// What a box has used since it was created or last reset, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BoxUsage {
    /// CPU time of everything in the box (user + system), nanoseconds.
    pub cpu_ns: u64,
    /// Peak memory of the box, bytes (0 when the backend cannot tell).
    pub memory_peak_bytes: u64,
    /// Memory of the box now, bytes, page cache included (0 when the backend cannot tell).
    pub memory_bytes: u64,
    /// The page cache part of `memory_bytes` (0 when the backend cannot tell).
    pub memory_cache_bytes: u64,
}

/// Why a box died, as recorded by the host kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// The memory cgroup's OOM killer ended it.
    OutOfMemory,
    /// The pids cgroup refused a fork and the box ended.
    ProcessLimit,
}

/// Creates a box and counts it.
pub(crate) async fn create_counted(
    metrics: &crate::metrics::Metrics,
    backend: &dyn Backend,
    spec: &SandboxSpec,
) -> Result<Box<dyn Sandbox>> {
    let sb = backend.create(spec).await?;
    crate::metrics::inc(&metrics.sandboxes_created);
    Ok(sb)
}

/// Destroys a box and counts it; a failure is logged (the box may be left behind) and returned.
pub(crate) async fn destroy_counted(
    metrics: &crate::metrics::Metrics,
    sandbox: Box<dyn Sandbox>,
) -> Result<()> {
    let r = sandbox.destroy().await;
    match &r {
        Ok(()) => crate::metrics::inc(&metrics.sandboxes_destroyed),
        Err(e) => tracing::error!(sandbox = sandbox.id(), error = %e.chain(), "destroy failed"),
    }
    r
}
