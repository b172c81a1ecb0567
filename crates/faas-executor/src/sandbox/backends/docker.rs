//! The `docker` backend: one container per sandbox, made through the Docker Engine API.
//!
//! The container's entrypoint is the agent, bind-mounted read-only from the host; a per-sandbox
//! host directory is bind-mounted at `/run/faas` and holds the agent's socket. Containers carry
//! the label `faas.owner=<owner>` so a restarted server finds and removes what a killed one left.
//! What a box used is read from its container's cgroup files when they are reachable from here
//! (found once through its first process's `/proc/<pid>/cgroup`), else from the Engine API's
//! one-shot stats.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::models::HostConfig;
use bollard::Docker;
use faas_agent::{GUEST_AGENT_PATH, GUEST_SOCKET_DIR, SOCKET_NAME};

use crate::error::{Error, Result};
use crate::sandbox::agent::AgentClient;
use crate::sandbox::backends::usage::CgroupUsage;
use crate::sandbox::net::{BoxNet, Net};
use crate::sandbox::{Backend, BoxUsage, DeathCause, Isolation, Network, Sandbox, SandboxSpec};

pub const LABEL_MANAGED: &str = "faas.managed";
pub const LABEL_OWNER: &str = "faas.owner";
/// On an instance's container: the instance id. Such containers outlive a server restart.
pub const LABEL_INSTANCE: &str = "faas.instance";
/// The repository of snapshot images (`docker commit` of an instance), tagged by snapshot id.
const SNAPSHOT_REPO: &str = "faas-snapshot";

/// Capabilities a normal process needs (file ownership, setuid for `su`-style tools, signals to
/// its own children, binding low ports in its own network namespace). Everything else, including
/// `MKNOD`, `NET_RAW`, `SYS_CHROOT`, `SETFCAP` and `AUDIT_WRITE`, is dropped.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The static agent binary on the host.
    pub agent_path: PathBuf,
    /// Per-sandbox directories (holding the agent socket) live here.
    pub run_dir: PathBuf,
    /// Value of the `faas.owner` label: identifies this deployment (its data dir).
    pub owner: String,
    /// Instances' socket directories live in `instances/<id>/` here.
    pub persist_root: PathBuf,
    /// How long a new container's agent may take to answer.
    pub ready_timeout: Duration,
    /// Boxes' egress (`None`: only `network: none` is offered).
    pub net: Option<Arc<Net>>,
}

pub struct DockerBackend {
    docker: Docker,
    cfg: DockerConfig,
}

impl DockerBackend {
    /// Connects to the local daemon and agrees on an API version with it.
    pub async fn connect(cfg: DockerConfig) -> Result<Self> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| Error::BackendUnavailable(format!("docker: {e}")))?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| Error::BackendUnavailable("docker daemon did not answer in 5s".into()))?
            .map_err(|e| {
                Error::BackendUnavailable(format!("cannot reach the docker daemon: {e}"))
            })?;
        docker.ping().await.map_err(|e| {
            Error::BackendUnavailable(format!("cannot reach the docker daemon: {e}"))
        })?;
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| Error::io(format!("create {}", cfg.run_dir.display()), e))?;
        Ok(DockerBackend { docker, cfg })
    }

    /// The API client (the native backend imports images through it).
    pub fn client(&self) -> Docker {
        self.docker.clone()
    }

    /// The daemon's version, for `/health` and `faas doctor`.
    pub async fn describe(&self) -> String {
        match self.docker.version().await {
            Ok(v) => format!(
                "docker {} (api {})",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default()
            ),
            Err(e) => format!("docker daemon error: {e}"),
        }
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.cfg.persist_root.join("instances").join(id)
    }

    fn instance_sandbox(&self, id: &str, name: String) -> DockerSandbox {
        let dir = self.instance_dir(id);
        DockerSandbox {
            id: id.to_string(),
            container: name.clone(),
            agent: AgentClient::new(name, dir.join(SOCKET_NAME)),
            dir,
            persistent: true,
            backend: DockerHandle {
                docker: self.docker.clone(),
            },
            cgroup: std::sync::OnceLock::new(),
            net: std::sync::OnceLock::new(),
        }
    }

    /// A started container that asked for a network gets its veth and rules, in the network
    /// namespace of its first process.
    async fn plug(&self, sandbox: &DockerSandbox, spec: &SandboxSpec) -> Result<()> {
        let Some(policy) = spec.network.policy() else {
            return Ok(());
        };
        let net = self.net()?;
        let pid = self
            .docker
            .inspect_container(&sandbox.container, None)
            .await?
            .state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Internal("a started container has no process".into()))?;
        let b = net
            .attach(
                std::path::Path::new(&format!("/proc/{pid}/ns/net")),
                policy.clone(),
            )
            .await?;
        let _ = sandbox.net.set(b);
        Ok(())
    }

    fn net(&self) -> Result<&Arc<Net>> {
        self.cfg.net.as_ref().ok_or_else(|| {
            Error::Unsupported("sandbox networking is not set up on this server".into())
        })
    }

    /// Creates and starts a container of `image` as `spec` says, its agent socket in `dir`.
    /// `instance`: the instance it belongs to (kept when stopped, and across restarts).
    async fn make_container(
        &self,
        id: &str,
        name: &str,
        spec: &SandboxSpec,
        image: &str,
        dir: PathBuf,
        instance: Option<&str>,
    ) -> Result<DockerSandbox> {
        if spec.isolation == Isolation::Gvisor {
            return Err(Error::Unsupported(
                "isolation gvisor is offered by the native backend (runsc), not by docker".into(),
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_OWNER.to_string(), self.cfg.owner.clone()),
        ]);
        if let Some(i) = instance {
            labels.insert(LABEL_INSTANCE.to_string(), i.to_string());
        }
        let config = Config {
            image: Some(image.to_string()),
            entrypoint: Some(vec![
                GUEST_AGENT_PATH.to_string(),
                "--socket".into(),
                format!("{GUEST_SOCKET_DIR}/{SOCKET_NAME}"),
            ]),
            cmd: Some(vec![]),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            network_disabled: Some(false),
            host_config: Some(self.host_config(spec, &dir)),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name,
                    platform: None,
                }),
                config,
            )
            .await;
        let container = match created {
            Ok(c) => c.id,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(match e {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    } => Error::ImageNotFound(image.to_string()),
                    e => e.into(),
                });
            }
        };
        let sandbox = DockerSandbox {
            id: id.to_string(),
            container,
            dir: dir.clone(),
            agent: AgentClient::new(name.to_string(), dir.join(SOCKET_NAME)),
            persistent: false,
            backend: DockerHandle {
                docker: self.docker.clone(),
            },
            cgroup: std::sync::OnceLock::new(),
            net: std::sync::OnceLock::new(),
        };
        let started = async {
            self.docker
                .start_container(&sandbox.container, None::<StartContainerOptions<String>>)
                .await?;
            let (ready, connected) = tokio::join!(
                sandbox.agent.wait_ready(self.cfg.ready_timeout),
                self.plug(&sandbox, spec)
            );
            ready.and(connected)
        }
        .await;
        if let Err(e) = started {
            let _ = sandbox.destroy().await;
            return Err(e);
        }
        Ok(DockerSandbox {
            persistent: instance.is_some(),
            ..sandbox
        })
    }

    fn host_config(&self, spec: &SandboxSpec, dir: &std::path::Path) -> HostConfig {
        let memory = (spec.limits.memory_mb * 1024 * 1024) as i64;
        let mut binds = vec![
            format!("{}:{GUEST_AGENT_PATH}:ro", self.cfg.agent_path.display()),
            format!("{}:{GUEST_SOCKET_DIR}", dir.display()),
        ];
        for m in &spec.mounts {
            binds.push(format!("{}:{}:ro", m.host.display(), m.guest));
        }
        if let (Network::Egress(_), Some(net)) = (&spec.network, &self.cfg.net) {
            binds.push(format!(
                "{}:/etc/resolv.conf:ro",
                net.resolv_conf().display()
            ));
        }
        HostConfig {
            binds: Some(binds),
            // Also with a network: its veth is put in by the platform, not by Docker.
            network_mode: Some("none".into()),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.limits.cpu_cores * 1e9) as i64),
            pids_limit: Some(spec.limits.pids as i64),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        }
    }
}

fn instance_container(id: &str) -> String {
    format!("faas-instance-{id}")
}

/// Force-removes a container and its anonymous volumes; one that is already gone is fine.
async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let dir = self.cfg.run_dir.join(&id);
        let sb = self
            .make_container(&id, &format!("faas-{id}"), spec, &spec.image, dir, None)
            .await?;
        Ok(Box::new(sb))
    }

    async fn instance_create(
        &self,
        id: &str,
        spec: &SandboxSpec,
        from: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Sandbox>> {
        let image = match from {
            Some(a) => a["image"]
                .as_str()
                .ok_or_else(|| Error::Internal("snapshot artifact without an image".into()))?
                .to_string(),
            None => spec.image.clone(),
        };
        let dir = self.instance_dir(id);
        let sb = self
            .make_container(id, &instance_container(id), spec, &image, dir, Some(id))
            .await?;
        Ok(Box::new(sb))
    }

    async fn instance_start(&self, id: &str, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let name = instance_container(id);
        match self
            .docker
            .start_container(&name, None::<StartContainerOptions<String>>)
            .await
        {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(Error::NotFound(format!(
                    "the container of instance {id} is gone"
                )))
            }
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        let sb = self.instance_sandbox(id, name);
        let (ready, connected) = tokio::join!(
            sb.agent.wait_ready(self.cfg.ready_timeout),
            self.plug(&sb, spec)
        );
        if let Err(e) = ready.and(connected) {
            let _ = sb.destroy().await;
            return Err(e);
        }
        Ok(Box::new(sb))
    }

    async fn instance_attach(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Option<Box<dyn Sandbox>>> {
        let name = instance_container(id);
        let running = match self.docker.inspect_container(&name, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => return Err(e.into()),
        };
        if !running {
            return Ok(None);
        }
        let sb = self.instance_sandbox(id, name);
        match sb.agent.wait_ready(Duration::from_secs(2)).await {
            Ok(()) => {
                // Its veth went with the last server's rules: a new one, a new address.
                if let Err(e) = self.plug(&sb, spec).await {
                    tracing::warn!(instance = id, error = %e.chain(), "could not give a found instance its network again");
                }
                Ok(Some(Box::new(sb)))
            }
            Err(_) => {
                let _ = sb.destroy().await;
                Ok(None)
            }
        }
    }

    async fn instance_remove(&self, id: &str) -> Result<()> {
        remove_container(&self.docker, &instance_container(id)).await?;
        let _ = std::fs::remove_dir_all(self.instance_dir(id));
        Ok(())
    }

    async fn snapshot(
        &self,
        id: &str,
        _running: Option<&dyn Sandbox>,
        snapshot: &str,
        memory: bool,
    ) -> Result<(serde_json::Value, u64)> {
        if memory {
            return Err(Error::Unsupported(
                "the docker backend cannot snapshot memory (docker checkpoint needs CRIU, which \
                 does not work on this kernel); use the native backend with isolation gvisor"
                    .into(),
            ));
        }
        let name = instance_container(id);
        let base = self
            .docker
            .inspect_container(&name, None)
            .await?
            .image
            .unwrap_or_default();
        let opts = bollard::image::CommitContainerOptions {
            container: name.clone(),
            repo: SNAPSHOT_REPO.to_string(),
            tag: snapshot.to_string(),
            pause: true,
            ..Default::default()
        };
        self.docker
            .commit_container(opts, Config::<String>::default())
            .await?;
        let image = format!("{SNAPSHOT_REPO}:{snapshot}");
        // Its own size: the committed image's minus the one it was made from.
        let size = |i: bollard::models::ImageInspect| i.size.unwrap_or(0);
        let total = size(self.docker.inspect_image(&image).await?);
        let under = match self.docker.inspect_image(&base).await {
            Ok(i) => size(i),
            Err(_) => 0,
        };
        Ok((
            serde_json::json!({ "image": image }),
            total.saturating_sub(under) as u64,
        ))
    }

    async fn snapshot_remove(&self, _snapshot: &str, artifact: &serde_json::Value) -> Result<()> {
        let Some(image) = artifact["image"].as_str() else {
            return Ok(());
        };
        match self.docker.remove_image(image, None, None).await {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn check_image(&self, image: &str) -> Result<()> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(Error::ImageNotFound(image.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_leftovers(&self) -> Result<usize> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_OWNER}={}", self.cfg.owner)],
        )]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await?;
        let mut n = 0;
        for c in found {
            // Instances' containers outlive a restart: the instance service re-attaches them.
            if c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(LABEL_INSTANCE))
            {
                continue;
            }
            if let Some(id) = c.id {
                remove_container(&self.docker, &id).await?;
                n += 1;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.cfg.run_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(n)
    }
}

/// What a sandbox needs of its backend to remove itself.
struct DockerHandle {
    docker: Docker,
}

pub struct DockerSandbox {
    id: String,
    container: String,
    dir: PathBuf,
    agent: AgentClient,
    /// An instance's: `destroy` stops the container and keeps it.
    persistent: bool,
    backend: DockerHandle,
    /// Its cgroup's usage files, once looked for; `None` when they are not reachable from
    /// here (the stats API answers instead).
    cgroup: std::sync::OnceLock<Option<CgroupUsage>>,
    /// Its veth and rules, when it has a network.
    net: std::sync::OnceLock<BoxNet>,
}

impl DockerSandbox {
    /// The usage files of the container's cgroup, through its first process; `None` when they
    /// are not reachable from here (another cgroup namespace, or no cgroupfs mounted).
    async fn find_cgroup(&self) -> Result<Option<CgroupUsage>> {
        let state = self
            .backend
            .docker
            .inspect_container(&self.container, None)
            .await?
            .state;
        let pid = match state.and_then(|s| s.pid) {
            Some(pid) if pid > 0 => pid as u32,
            _ => {
                return Err(Error::Conflict(format!(
                    "container {} is not running: its usage is gone",
                    self.container
                )))
            }
        };
        match CgroupUsage::of_process(pid) {
            Ok(u) => Ok(Some(u)),
            Err(e) => {
                tracing::debug!(container = %self.container, error = %e.chain(), "cgroup files not reachable; usage through the stats API");
                Ok(None)
            }
        }
    }

    /// What the box used, through the Engine API's one-shot stats (a round trip to the daemon,
    /// which reads the same cgroup files): for when they are not reachable from here.
    pub async fn usage_from_stats(&self) -> Result<BoxUsage> {
        use futures::StreamExt;
        let opts = bollard::container::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = self
            .backend
            .docker
            .stats(&self.container, Some(opts))
            .next()
            .await
            .ok_or_else(|| {
                Error::Internal(format!("no stats from docker for {}", self.container))
            })??;
        // A stopped container's stats are all zeros: nothing is known of what it used.
        if stats.pids_stats.current.is_none() {
            return Err(Error::Conflict(format!(
                "container {} is not running: its usage is gone",
                self.container
            )));
        }
        Ok(BoxUsage {
            cpu_ns: stats.cpu_stats.cpu_usage.total_usage,
            // cgroup v2 hosts report no peak.
            memory_peak_bytes: stats.memory_stats.max_usage.unwrap_or(0),
            memory_bytes: stats.memory_stats.usage.unwrap_or(0),
            memory_cache_bytes: 0,
        })
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "docker"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn agent(&self) -> &AgentClient {
        &self.agent
    }

    async fn death_cause(&self) -> Option<DeathCause> {
        // Docker learns of the OOM kill from an event: give it a moment once the box stopped.
        for _ in 0..10 {
            let state = self
                .backend
                .docker
                .inspect_container(&self.container, None)
                .await
                .ok()?
                .state?;
            if state.oom_killed == Some(true) {
                return Some(DeathCause::OutOfMemory);
            }
            if state.running != Some(true)
                && state.status != Some(bollard::models::ContainerStateStatusEnum::RUNNING)
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            } else {
                return None;
            }
        }
        None
    }

    /// Since the container started: a docker box is not reset.
    async fn usage(&self) -> Result<BoxUsage> {
        if self.cgroup.get().is_none() {
            let found = self.find_cgroup().await?;
            let _ = self.cgroup.set(found);
        }
        match self.cgroup.get() {
            Some(Some(files)) => files.read(),
            _ => self.usage_from_stats().await,
        }
    }

    async fn destroy(&self) -> Result<()> {
        let result = self.stop_or_remove().await;
        if let Some(n) = self.net.get() {
            n.release().await;
        }
        result
    }
}

impl DockerSandbox {
    async fn stop_or_remove(&self) -> Result<()> {
        if self.persistent {
            let opts = bollard::container::StopContainerOptions { t: 0 };
            return match self
                .backend
                .docker
                .stop_container(&self.container, Some(opts))
                .await
            {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let removed = remove_container(&self.backend.docker, &self.container).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        removed
    }
}
