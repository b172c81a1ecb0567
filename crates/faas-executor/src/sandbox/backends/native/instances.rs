//! Instances and snapshots on the native backend. An instance's files live in
//! `<persist root>/instances/<id>/` (`upper/`, `work/`, `meta.json` naming the snapshot layers
//! under them, `bundle/`), under their own runtime state directory, so they outlive a server
//! restart; a snapshot is a copy of the upper dir in `<persist root>/snapshots/<id>/layer`
//! (plus, for a gVisor memory snapshot, its checkpoint).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::runtime::{OciRuntime, RuntimeKind, Start};
use super::{
    cgroups, dir_size, layer, remove_bundle, remove_tree, resume_agent, BoxPlan, InitProcess,
    NativeBackend, NativeSandbox,
};
use crate::error::{Error, Result};
use crate::sandbox::{Isolation, Sandbox, SandboxSpec};

/// `instances/<id>/meta.json`: the snapshot layers an instance's files lie on.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct InstanceMeta {
    layers: Vec<PathBuf>,
}

impl InstanceMeta {
    fn read(dir: &Path) -> Result<InstanceMeta> {
        let path = dir.join("meta.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("the files of instance {} are gone", dir.display()))
            } else {
                Error::io(format!("read {}", path.display()), e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Internal(format!("{} is malformed: {e}", path.display())))
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("meta.json");
        let text = serde_json::to_string(self).expect("serializable");
        std::fs::write(&path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }
}

/// A snapshot's artifact on the native backend.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NativeArtifact {
    /// Its own layer first, then the layers under the instance it was taken of.
    layers: Vec<PathBuf>,
    /// The gVisor checkpoint of its processes, for a memory snapshot.
    #[serde(default)]
    checkpoint: Option<PathBuf>,
    /// How long the checkpoint took.
    #[serde(default)]
    checkpoint_ms: Option<f64>,
}

impl NativeBackend {
    fn instance_dir(&self, id: &str) -> PathBuf {
        self.shared.cfg.persist_root.join("instances").join(id)
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.shared.cfg.persist_root.join("snapshots").join(id)
    }

    /// The runtimes instances run under.
    fn inst_runtimes(&self) -> impl Iterator<Item = &OciRuntime> {
        std::iter::once(&self.inst_runtime).chain(self.inst_gvisor.iter())
    }

    /// The runtime whose container `id` runs, if one does.
    async fn running_inst_runtime(&self, id: &str) -> Result<Option<OciRuntime>> {
        for rt in self.inst_runtimes() {
            if rt.status(id).await?.as_deref() == Some("running") {
                return Ok(Some(rt.clone()));
            }
        }
        Ok(None)
    }

    fn instance_runtime(&self, isolation: Isolation) -> Result<&OciRuntime> {
        match isolation {
            Isolation::Container => Ok(&self.inst_runtime),
            Isolation::Gvisor => self.inst_gvisor.as_ref().ok_or_else(|| {
                Error::Unsupported(
                    "isolation gvisor needs runsc, which is not installed on this host".into(),
                )
            }),
        }
    }

    /// Starts the box of instance `id` over its files (`meta.json` says which snapshot layers
    /// lie under them).
    /// Starts the box of instance `id`; `fresh` when the instance was made just now (no box
    /// of it can exist, so none is looked for: a runtime call costs tens of ms with runsc).
    async fn start_instance_box(
        &self,
        id: &str,
        spec: &SandboxSpec,
        restore_from: Option<PathBuf>,
        fresh: bool,
    ) -> Result<NativeSandbox> {
        let dir = self.instance_dir(id);
        let meta = InstanceMeta::read(&dir)?;
        let runtime = self.instance_runtime(spec.isolation)?.clone();
        let (runtime, netns, plumbed) = self.box_network(spec, runtime, true)?;
        if !fresh {
            // A box of an earlier start that was not removed (a crash between the two).
            runtime.delete_force(id).await?;
            remove_bundle(&dir.join("bundle"))?;
        }
        let plan = BoxPlan {
            id: id.to_string(),
            dir: dir.join("bundle"),
            rw: dir.clone(),
            layers: meta.layers,
            runtime,
            cgroup: self.cgroup_of(id),
            netns,
            plumbed,
            persistent: true,
            restore_from,
        };
        self.start_box(spec, plan).await
    }

    /// gVisor checkpoint of a running instance plus a copy of its files, taken while it is
    /// stopped (consistent); the instance is then restored from the checkpoint in place and
    /// runs on. The agent stops listening meanwhile (gVisor cannot save a socket bound to a
    /// host path) and listens again when the host makes its resume file.
    async fn memory_snapshot(
        &self,
        id: &str,
        running: Option<&dyn Sandbox>,
        snapshot: &str,
    ) -> Result<(serde_json::Value, u64)> {
        let sandbox = running.ok_or_else(|| {
            Error::Conflict(format!(
                "instance {id} is not running: a memory snapshot needs its processes"
            ))
        })?;
        let native = sandbox
            .as_any()
            .downcast_ref::<NativeSandbox>()
            .ok_or_else(|| Error::Internal("not a native box".into()))?;
        if native.runtime.kind != RuntimeKind::Runsc {
            return Err(Error::Unsupported(
                "memory snapshots need an instance with isolation gvisor (runsc checkpoint); \
                 this one runs in a plain container"
                    .into(),
            ));
        }
        let gvisor = native.runtime.clone();
        let dir = self.instance_dir(id);
        let bundle = dir.join("bundle");
        let meta = InstanceMeta::read(&dir)?;
        let out = self.snapshot_dir(snapshot);
        let image = out.join("checkpoint");
        std::fs::create_dir_all(&image)
            .map_err(|e| Error::io(format!("create {}", image.display()), e))?;
        let _ = std::fs::remove_file(bundle.join("sock").join(faas_agent::RESUME_FILE));
        sandbox.agent().quiesce().await?;
        // It stops listening once the quiesce connection is closed: the socket goes then.
        let socket = sandbox.agent().socket().to_path_buf();
        let waited = std::time::Instant::now();
        while socket.exists() {
            if waited.elapsed() > Duration::from_secs(5) {
                resume_agent(&bundle)?;
                return Err(Error::Internal(format!(
                    "the agent of instance {id} did not stop listening"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = std::time::Instant::now();
        let saved = gvisor.checkpoint(id, &image).await;
        let checkpointed = t.elapsed();
        let copied = match &saved {
            Ok(()) => {
                let (upper, layer) = (dir.join("upper"), out.join("layer"));
                tokio::task::spawn_blocking(move || layer::copy_tree(&upper, &layer))
                    .await
                    .map_err(|e| Error::Internal(format!("snapshot copy: {e}")))
                    .and_then(|r| r)
            }
            Err(_) => Ok(0),
        };
        // The instance runs on: restored from what was just saved, or, when saving failed,
        // told to listen again (a failed checkpoint may have stopped it: then restart it).
        let t = std::time::Instant::now();
        let resumed = match &saved {
            Ok(()) => {
                gvisor.delete_force(id).await?;
                native.start_in_slot(Start::Restore(&image)).await?;
                resume_agent(&bundle)
            }
            Err(_) => resume_agent(&bundle),
        };
        let ready = sandbox
            .agent()
            .wait_ready(self.shared.cfg.ready_timeout)
            .await;
        tracing::debug!(instance = id, ?checkpointed, restored = ?t.elapsed(), "memory snapshot");
        let result = saved
            .and(copied)
            .and_then(|bytes| resumed.and(ready).map(|()| bytes));
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                let _ = remove_tree(&out);
                return Err(e);
            }
        };
        let image_bytes = dir_size(&image);
        let mut layers = vec![out.join("layer")];
        layers.extend(meta.layers);
        let artifact = NativeArtifact {
            layers,
            checkpoint: Some(image),
            checkpoint_ms: Some(checkpointed.as_secs_f64() * 1000.0),
        };
        Ok((
            serde_json::to_value(&artifact).expect("serializable"),
            bytes + image_bytes,
        ))
    }

    /// Pauses (or resumes) the box of instance `id`: runsc pauses its own kernel; crun, which
    /// manages no cgroups here, is frozen through the freezer cgroup of the instance's slot.
    async fn pause(&self, rt: &OciRuntime, id: &str, paused: bool) -> Result<()> {
        if rt.kind == RuntimeKind::Runsc || !rt.caller_cgroups() {
            return match paused {
                true => rt.pause(id).await,
                false => rt.resume(id).await,
            };
        }
        let rel = self.cgroup_of(id);
        tokio::task::spawn_blocking(move || cgroups::freeze(&rel, paused))
            .await
            .map_err(|e| Error::Internal(format!("freezer: {e}")))?
    }

    pub(super) async fn create_instance(
        &self,
        id: &str,
        spec: &SandboxSpec,
        from: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Sandbox>> {
        let artifact: Option<NativeArtifact> = from
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| Error::Internal(format!("snapshot artifact: {e}")))?;
        let checkpoint = artifact.as_ref().and_then(|a| a.checkpoint.clone());
        if checkpoint.is_some() && spec.isolation != Isolation::Gvisor {
            return Err(Error::Internal(
                "a memory snapshot of a box that is not gVisor's".into(),
            ));
        }
        let dir = self.instance_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let meta = InstanceMeta {
            layers: artifact.map(|a| a.layers).unwrap_or_default(),
        };
        let started = async {
            meta.write(&dir)?;
            self.start_instance_box(id, spec, checkpoint, true).await
        }
        .await;
        match started {
            Ok(sb) => Ok(Box::new(sb)),
            Err(e) => {
                let _ = self.remove_instance(id).await;
                Err(e)
            }
        }
    }

    pub(super) async fn start_instance(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>> {
        Ok(Box::new(
            self.start_instance_box(id, spec, None, false).await?,
        ))
    }

    pub(super) async fn attach_instance(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Option<Box<dyn Sandbox>>> {
        let Some(rt) = self.running_inst_runtime(id).await? else {
            return Ok(None);
        };
        let bundle = self.instance_dir(id).join("bundle");
        let sandbox = NativeSandbox::new(
            id.to_string(),
            bundle.clone(),
            rt,
            self.cgroup_of(id),
            None,
            true,
            self.shared.clone(),
        );
        if let Some(p) = InitProcess::read(&bundle.join("init.pid")) {
            let _ = sandbox.init.set(p);
        }
        match sandbox.agent.wait_ready(Duration::from_secs(2)).await {
            Ok(()) => {
                self.reconnect(&sandbox, spec).await;
                Ok(Some(Box::new(sandbox)))
            }
            Err(e) => {
                tracing::warn!(instance = id, error = %e.chain(), "its box runs but its agent does not answer; stopping it");
                let _ = sandbox.destroy().await;
                Ok(None)
            }
        }
    }

    /// A networked instance's box found again after a restart: its veth went with the last
    /// server's rules (every link of the deployment is removed at start), so it gets a new one
    /// in its namespace, with a new address. gVisor reads its interfaces only when it starts:
    /// such an instance has no network until it is stopped and started.
    async fn reconnect(&self, sandbox: &NativeSandbox, spec: &SandboxSpec) {
        let (Some(policy), Some(net), Some(init)) = (
            spec.network.policy(),
            &self.shared.cfg.net,
            sandbox.init.get(),
        ) else {
            return;
        };
        if sandbox.runtime.kind == RuntimeKind::Runsc {
            tracing::warn!(instance = %sandbox.id, "a gVisor instance gets its network again only when it is stopped and started");
            return;
        }
        let ns = PathBuf::from(format!("/proc/{}/ns/net", init.pid));
        match net.attach(&ns, policy.clone()).await {
            Ok(b) => {
                let _ = sandbox.net.set(Arc::new(b));
            }
            Err(e) => {
                tracing::warn!(instance = %sandbox.id, error = %e.chain(), "could not give a found instance its network again");
            }
        }
    }

    pub(super) async fn remove_instance(&self, id: &str) -> Result<()> {
        for rt in self.inst_runtimes() {
            rt.delete_force(id).await?;
        }
        if let Some(slots) = &self.shared.slots {
            slots.remove_named(id);
        }
        let dir = self.instance_dir(id);
        tokio::task::spawn_blocking(move || {
            remove_bundle(&dir.join("bundle"))?;
            remove_tree(&dir)
        })
        .await
        .map_err(|e| Error::Internal(format!("instance removal: {e}")))?
    }

    pub(super) async fn take_snapshot(
        &self,
        id: &str,
        running: Option<&dyn Sandbox>,
        snapshot: &str,
        memory: bool,
    ) -> Result<(serde_json::Value, u64)> {
        if memory {
            return self.memory_snapshot(id, running, snapshot).await;
        }
        let dir = self.instance_dir(id);
        let meta = InstanceMeta::read(&dir)?;
        let out = self.snapshot_dir(snapshot);
        std::fs::create_dir_all(&out)
            .map_err(|e| Error::io(format!("create {}", out.display()), e))?;
        // Frozen while its files are copied, so the copy is one moment's state.
        let runtime = match running {
            Some(_) => self.running_inst_runtime(id).await?,
            None => None,
        };
        if let Some(rt) = &runtime {
            self.pause(rt, id, true).await?;
        }
        let (upper, layer) = (dir.join("upper"), out.join("layer"));
        let copied = tokio::task::spawn_blocking(move || layer::copy_tree(&upper, &layer))
            .await
            .map_err(|e| Error::Internal(format!("snapshot copy: {e}")));
        if let Some(rt) = &runtime {
            self.pause(rt, id, false).await?;
        }
        let bytes = match copied.and_then(|r| r) {
            Ok(b) => b,
            Err(e) => {
                let _ = remove_tree(&out);
                return Err(e);
            }
        };
        let mut layers = vec![out.join("layer")];
        layers.extend(meta.layers);
        let artifact = NativeArtifact {
            layers,
            checkpoint: None,
            checkpoint_ms: None,
        };
        Ok((
            serde_json::to_value(&artifact).expect("serializable"),
            bytes,
        ))
    }

    pub(super) async fn remove_snapshot(
        &self,
        snapshot: &str,
        _artifact: &serde_json::Value,
    ) -> Result<()> {
        let dir = self.snapshot_dir(snapshot);
        tokio::task::spawn_blocking(move || remove_tree(&dir))
            .await
            .map_err(|e| Error::Internal(format!("snapshot removal: {e}")))?
    }
}
