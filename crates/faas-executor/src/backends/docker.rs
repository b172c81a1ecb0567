//! The `docker` backend: one container per sandbox, made through the Docker Engine API.
//!
//! The container's entrypoint is the agent, bind-mounted read-only from the host; a per-sandbox
//! host directory is bind-mounted at `/run/faas` and holds the agent's socket. Containers carry
//! the label `faas.owner=<owner>` so a restarted server finds and removes what a killed one left.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions,
};
use bollard::models::HostConfig;
use bollard::Docker;
use faas_agent::{GUEST_AGENT_PATH, GUEST_SOCKET_DIR, SOCKET_NAME};

use crate::agent::AgentClient;
use crate::backend::{Backend, DeathCause, Isolation, Network, Sandbox, SandboxSpec};
use crate::error::{Error, Result};

pub const LABEL_MANAGED: &str = "faas.managed";
pub const LABEL_OWNER: &str = "faas.owner";

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
    /// How long a new container's agent may take to answer.
    pub ready_timeout: Duration,
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

    fn host_config(&self, spec: &SandboxSpec, dir: &std::path::Path) -> HostConfig {
        let memory = (spec.limits.memory_mb * 1024 * 1024) as i64;
        HostConfig {
            binds: Some(vec![
                format!("{}:{GUEST_AGENT_PATH}:ro", self.cfg.agent_path.display()),
                format!("{}:{GUEST_SOCKET_DIR}", dir.display()),
            ]),
            network_mode: Some(match spec.network {
                Network::None => "none".into(),
            }),
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
        if spec.isolation == Isolation::Gvisor {
            return Err(Error::Unsupported(
                "isolation gvisor is offered by the native backend (runsc), not by docker".into(),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let dir = self.cfg.run_dir.join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_OWNER.to_string(), self.cfg.owner.clone()),
        ]);
        let config = Config {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![
                GUEST_AGENT_PATH.to_string(),
                "--socket".into(),
                format!("{GUEST_SOCKET_DIR}/{SOCKET_NAME}"),
            ]),
            cmd: Some(vec![]),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            network_disabled: Some(matches!(spec.network, Network::None)),
            host_config: Some(self.host_config(spec, &dir)),
            ..Default::default()
        };
        let name = format!("faas-{id}");
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.as_str(),
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
                    } => Error::ImageNotFound(spec.image.clone()),
                    e => e.into(),
                });
            }
        };
        let sandbox = DockerSandbox {
            id,
            container,
            dir: dir.clone(),
            agent: AgentClient::new(name, dir.join(SOCKET_NAME)),
            backend: DockerHandle {
                docker: self.docker.clone(),
            },
        };
        let started = async {
            self.docker
                .start_container(&sandbox.container, None::<StartContainerOptions<String>>)
                .await?;
            sandbox.agent.wait_ready(self.cfg.ready_timeout).await
        }
        .await;
        if let Err(e) = started {
            let _ = sandbox.destroy().await;
            return Err(e);
        }
        Ok(Box::new(sandbox))
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
    backend: DockerHandle,
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "docker"
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

    async fn destroy(&self) -> Result<()> {
        let removed = remove_container(&self.backend.docker, &self.container).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        removed
    }
}
