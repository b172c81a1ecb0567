//! The `native` backend: OCI runtimes driven directly, no daemon in between.
//!
//! `<root>` (`<data dir>/native`) is a tmpfs the backend mounts (see [`mount_scratch`]). Each
//! sandbox is a bundle directory `<root>/sandboxes/<id>/`:
//!
//! ```text
//! config.json   made by `spec::build`
//! rootfs/       overlayfs: the image's layers (lower, read-only, shared) + upper/ + work/
//! upper/ work/  the sandbox's own writes
//! sock/         bind-mounted at /run/faas: the agent's socket
//! ```
//!
//! started with `crun`/`runc`/`runsc run --detach` (state in `<root>/state/<runtime>`, cgroups
//! under `faas/<deployment>/<id>`). Destroying deletes the container (which removes its
//! cgroups), unmounts the overlay and removes the directory. On start, whatever a killed earlier
//! run left (containers in our state dirs, mounts under our root, bundle dirs) is removed.

pub mod cgroups;
mod instances;
pub mod layer;
pub mod netns;
mod reuse;
pub mod runtime;
pub mod seccomp;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use faas_agent::SOCKET_NAME;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use self::cgroups::{CgroupSlots, Slot};
use self::runtime::{OciRuntime, RuntimeKind, Start};
use crate::error::{Error, Result};
use crate::sandbox::agent::AgentClient;
use crate::sandbox::backends::usage::CgroupUsage;
use crate::sandbox::images::{ImageRecord, ImageStore};
use crate::sandbox::net::{BoxNet, Net};
use crate::sandbox::steps::{self, Step};
use crate::sandbox::{Backend, BoxUsage, DeathCause, Isolation, Sandbox, SandboxSpec};

#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub agent_path: PathBuf,
    /// `<data dir>/native`.
    pub root: PathBuf,
    /// The runtime for `isolation: container` (the default).
    pub runtime: RuntimeKind,
    /// Its binary; found in `PATH` when `None`.
    pub runtime_path: Option<PathBuf>,
    /// The `runsc` binary for `isolation: gvisor`; found in `PATH` when `None`.
    pub runsc_path: Option<PathBuf>,
    /// Identifies this deployment in cgroup paths.
    pub owner: String,
    /// On disk: instances' files (`instances/<id>/`), snapshots (`snapshots/<id>/`) and the
    /// state of the runtimes that run instances (`instances/.state/<runtime>`).
    pub persist_root: PathBuf,
    pub ready_timeout: Duration,
    /// Boxes' egress (`None`: only `network: none` is offered).
    pub net: Option<Arc<Net>>,
}

struct Shared {
    cfg: NativeConfig,
    /// Reusable cgroups for crun boxes (see `cgroups.rs`); `None` when the runtime manages them.
    slots: Option<CgroupSlots>,
    /// Tear-downs finishing in the background (see `NativeSandbox::destroy`).
    cleanups: tokio_util::task::TaskTracker,
    store: Arc<ImageStore>,
    /// Network namespaces made ahead for crun and runc boxes (see `netns.rs`).
    netns: Option<Arc<netns::NetnsPool>>,
    /// Namespaces made ahead with their veth, address and plain-internet rules, for boxes
    /// asking for `network: "internet"` (made once the first such box is asked for).
    plumbed: Mutex<Vec<(PathBuf, Arc<BoxNet>)>>,
    refilling: std::sync::atomic::AtomicBool,
}

/// Plumbed namespaces kept ready.
const PLUMBED_READY: usize = 2;

impl Shared {
    fn take_plumbed(self: &Arc<Self>) -> Option<(PathBuf, Arc<BoxNet>)> {
        let taken = self.plumbed.lock().unwrap_or_else(|e| e.into_inner()).pop();
        self.refill_plumbed();
        taken
    }

    /// Makes plumbed namespaces in the background until [`PLUMBED_READY`] are ready.
    fn refill_plumbed(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let (Some(net), Some(pool)) = (self.cfg.net.clone(), self.netns.clone()) else {
            return;
        };
        if self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.clone();
        self.cleanups.spawn(async move {
            while !shared.cleanups.is_closed()
                && shared.plumbed.lock().unwrap_or_else(|e| e.into_inner()).len() < PLUMBED_READY
            {
                let p = pool.clone();
                let ns = match tokio::task::spawn_blocking(move || p.take_or_make()).await {
                    Ok(Ok(ns)) => ns,
                    _ => break,
                };
                match net
                    .attach(&ns, Arc::new(crate::sandbox::net::EgressPolicy::internet()))
                    .await
                {
                    Ok(b) => shared
                        .plumbed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((ns, Arc::new(b))),
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "could not make a networked namespace ahead");
                        pool.release(&ns);
                        break;
                    }
                }
            }
            shared.refilling.store(false, Ordering::SeqCst);
        });
    }

    /// Releases the plumbed namespaces not handed out.
    async fn drop_plumbed(&self) {
        let ready: Vec<_> =
            std::mem::take(&mut *self.plumbed.lock().unwrap_or_else(|e| e.into_inner()));
        for (ns, b) in ready {
            b.release().await;
            if let Some(pool) = &self.netns {
                pool.release(&ns);
            }
        }
    }
}

/// What differs between an ephemeral box and an instance's box.
struct BoxPlan {
    /// The runtime's container id.
    id: String,
    /// The bundle: `config.json`, `rootfs/` (the overlay), `sock/`.
    dir: PathBuf,
    /// Holds `upper/` and `work/`: the bundle itself for an ephemeral box (on the scratch
    /// tmpfs), the instance's own directory on disk for an instance.
    rw: PathBuf,
    /// Snapshot layers under `upper/`, top first (the image's layers go below them).
    layers: Vec<PathBuf>,
    runtime: OciRuntime,
    cgroup: String,
    netns: Option<PathBuf>,
    /// The namespace's veth and rules, when they were made ahead.
    plumbed: Option<Arc<BoxNet>>,
    /// Keep `rw` when the box goes (an instance's).
    persistent: bool,
    /// Restore the box from this gVisor checkpoint instead of starting it fresh.
    restore_from: Option<PathBuf>,
}

pub struct NativeBackend {
    shared: Arc<Shared>,
    runtime: OciRuntime,
    gvisor: Option<OciRuntime>,
    /// The same runtimes for instances: their state on disk, cgroups their own (an instance
    /// outlives a server restart; slots and the scratch tmpfs do not).
    inst_runtime: OciRuntime,
    inst_gvisor: Option<OciRuntime>,
    docker: Option<bollard::Docker>,
    imports: tokio::sync::Mutex<()>,
    cgroup_parent: String,
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))[..12].to_string()
}

impl NativeBackend {
    /// Checks that the runtime works here (root, binary, overlayfs) and opens the image store.
    /// `docker`, when given, is where images missing from the store are imported from.
    pub async fn new(
        cfg: NativeConfig,
        store: Arc<ImageStore>,
        docker: Option<bollard::Docker>,
    ) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::BackendUnavailable(
                "the native backend needs root".into(),
            ));
        }
        crate::sandbox::reaper::start();
        let overlay = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !overlay.lines().any(|l| l.trim_end().ends_with("overlay")) {
            return Err(Error::BackendUnavailable(
                "the kernel has no overlayfs".into(),
            ));
        }
        let make = |kind: RuntimeKind, path: &Option<PathBuf>| -> Result<OciRuntime> {
            let binary = path
                .clone()
                .or_else(|| OciRuntime::find(kind))
                .ok_or_else(|| {
                    Error::BackendUnavailable(format!(
                        "{} is not installed (apt-get install {})",
                        kind.name(),
                        kind.name()
                    ))
                })?;
            Ok(OciRuntime::new(
                kind,
                binary,
                cfg.root.join("state").join(kind.name()),
            ))
        };
        let cgroup_parent = format!("/faas/{}", short_hash(&cfg.owner));
        let mut runtime = make(cfg.runtime, &cfg.runtime_path)?;
        runtime.version().await?;
        let mut gvisor = match cfg.runtime {
            RuntimeKind::Runsc => None,
            _ => make(RuntimeKind::Runsc, &cfg.runsc_path).ok(),
        };
        // Slots serve crun and runsc boxes (runc manages its cgroups itself).
        let slots = match cfg.runtime {
            RuntimeKind::Runc if gvisor.is_none() => None,
            _ => CgroupSlots::new(&cgroup_parent),
        };
        let caller_cgroups = |rt: OciRuntime| match slots {
            Some(_) => rt.with_caller_cgroups(),
            None => rt,
        };
        runtime = caller_cgroups(runtime);
        if cfg.runtime == RuntimeKind::Runsc {
            gvisor = Some(runtime.clone());
        }
        let gvisor = gvisor.map(caller_cgroups);
        let inst_state = cfg.persist_root.join("instances").join(".state");
        let inst_runtime = caller_cgroups(OciRuntime::new(
            runtime.kind,
            runtime.binary.clone(),
            inst_state.join(runtime.kind.name()),
        ));
        let inst_gvisor = gvisor.as_ref().map(|g| {
            caller_cgroups(OciRuntime::new(
                g.kind,
                g.binary.clone(),
                inst_state.join(g.kind.name()),
            ))
        });
        mount_scratch(&cfg.root)?;
        for d in ["sandboxes", "state"] {
            std::fs::create_dir_all(cfg.root.join(d))
                .map_err(|e| Error::io(format!("create {}", cfg.root.join(d).display()), e))?;
        }
        let netns = match netns::NetnsPool::start(cfg.root.join("netns")) {
            Ok(pool) => Some(pool),
            Err(e) => {
                tracing::warn!(error = %e, "no network namespaces made ahead; the runtime makes each");
                None
            }
        };
        Ok(NativeBackend {
            shared: Arc::new(Shared {
                cfg,
                slots,
                store,
                cleanups: tokio_util::task::TaskTracker::new(),
                netns,
                plumbed: Mutex::new(Vec::new()),
                refilling: std::sync::atomic::AtomicBool::new(false),
            }),
            runtime,
            gvisor,
            inst_runtime,
            inst_gvisor,
            docker,
            imports: tokio::sync::Mutex::new(()),
            cgroup_parent,
        })
    }

    /// Refills the spare cgroup slots (with their zygotes) in the background.
    fn prepare_slots(&self) {
        prepare_slots(&self.shared);
    }

    pub async fn describe(&self) -> String {
        let v = self.runtime.version().await.unwrap_or_default();
        let mut s = format!("{} ({v})", self.runtime.kind.name());
        let note = self.runtime.mode_note();
        if !note.is_empty() {
            s.push_str("; ");
            s.push_str(note);
        }
        match &self.gvisor {
            Some(g) => s.push_str(&format!(
                "; gvisor: {}",
                g.version().await.unwrap_or_default()
            )),
            None => s.push_str("; gvisor: runsc not installed"),
        }
        s
    }

    /// Prepares a bundle as `plan` says and starts its box; returns once its agent answers.
    async fn start_box(&self, spec: &SandboxSpec, plan: BoxPlan) -> Result<NativeSandbox> {
        let image = self.image(&spec.image).await?;
        let BoxPlan {
            id,
            dir,
            rw,
            layers,
            runtime,
            cgroup,
            netns,
            plumbed,
            persistent,
            restore_from,
        } = plan;
        let sandbox = NativeSandbox::new(
            id.clone(),
            dir.clone(),
            runtime,
            cgroup,
            netns,
            persistent,
            self.shared.clone(),
        );
        let t0 = std::time::Instant::now();
        let mut with_net;
        let spec = match (spec.network.policy(), &self.shared.cfg.net) {
            (Some(_), Some(net)) => {
                with_net = spec.clone();
                with_net.mounts.push(crate::sandbox::ReadOnlyMount {
                    host: net.resolv_conf().to_path_buf(),
                    guest: "/etc/resolv.conf".into(),
                });
                &with_net
            }
            _ => spec,
        };
        let made = async {
            // The box's veth and rules, made while its bundle is.
            if let Some(b) = plumbed {
                let _ = sandbox.net.set(b);
            }
            let plumbed = async {
                match (spec.network.policy(), &self.shared.cfg.net, &sandbox.netns) {
                    _ if sandbox.net.get().is_some() => Ok(()),
                    (Some(p), Some(net), Some(ns)) => {
                        let b = net.attach(ns, p.clone()).await?;
                        let _ = sandbox.net.set(Arc::new(b));
                        steps::record(Step::Network, t0.elapsed());
                        Ok(())
                    }
                    (Some(_), _, _) => Err(Error::Unsupported(
                        "sandbox networking is not set up on this server".into(),
                    )),
                    _ => Ok(()),
                }
            };
            let mut oci = spec::build(
                spec,
                &image.env,
                &self.shared.cfg.agent_path,
                &dir.join("sock"),
                &sandbox.cgroup,
                sandbox.netns.as_deref(),
            )?;
            // gVisor filters system calls in its own kernel; crun and runc load this filter.
            if sandbox.runtime.kind != RuntimeKind::Runsc {
                if let Some(linux) = oci.linux_mut() {
                    linux.set_seccomp(Some(seccomp::filter()?));
                }
            }
            let mut lower = layers;
            lower.extend(self.shared.store.lower_dirs(&image));
            let lower = lower
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let _ = sandbox.lower.set(lower.clone());
            let bundle = dir.clone();
            // Directories, the overlay mount and config.json: blocking calls, off the workers.
            let prepared = tokio::task::spawn_blocking(move || {
                for d in [
                    bundle.join("rootfs"),
                    bundle.join("sock"),
                    rw.join("upper"),
                    rw.join("work"),
                ] {
                    std::fs::create_dir_all(&d)
                        .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
                }
                mount_overlay(&lower, &rw, &bundle.join("rootfs"))?;
                oci.save(bundle.join("config.json"))
                    .map_err(|e| Error::Internal(format!("write config.json: {e}")))
            })
            ;
            let (prepared, plumbed) = tokio::join!(prepared, plumbed);
            prepared.map_err(|e| Error::Internal(format!("bundle preparation: {e}")))??;
            plumbed?;
            steps::record(Step::Rootfs, t0.elapsed());
            let t = std::time::Instant::now();
            let how = match restore_from.as_deref() {
                Some(image) => {
                    let _ = std::fs::remove_file(dir.join("sock").join(faas_agent::RESUME_FILE));
                    Start::Restore(image)
                }
                None => Start::Run,
            };
            match &self.shared.slots {
                Some(slots) if sandbox.runtime.caller_cgroups() => {
                    let mut slot = slots.acquire(&spec.limits)?;
                    steps::record(Step::Cgroup, t.elapsed());
                    let t = std::time::Instant::now();
                    // An instance's box keeps its slot, under the instance's name.
                    let named = match persistent {
                        true => slots.name(&mut slot, &id),
                        false => Ok(()),
                    };
                    *sandbox.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
                    named?;
                    sandbox.start_in_slot(how).await?;
                    steps::record(Step::Runtime, t.elapsed());
                    self.prepare_slots();
                }
                _ => {
                    sandbox
                        .runtime
                        .start_detached(&id, &dir, how, Vec::new())
                        .await?;
                    steps::record(Step::Runtime, t.elapsed());
                }
            }
            let t_ready = std::time::Instant::now();
            if restore_from.is_some() {
                resume_agent(&dir)?;
            }
            let ran = t.elapsed();
            if let Some(p) = InitProcess::read(&dir.join("init.pid")) {
                let _ = sandbox.init.set(p);
            }
            sandbox
                .agent
                .wait_ready(self.shared.cfg.ready_timeout)
                .await?;
            steps::record(Step::AgentReady, t_ready.elapsed());
            // Instances are what pile up; a short-lived box's mounts go at its tear-down,
            // off its request's path.
            if persistent && sandbox.runtime.kind != RuntimeKind::Runsc {
                forget_host_mounts(&self.shared, &dir, sandbox.netns.clone());
            }
            tracing::debug!(sandbox = %id, prepared = ?(t - t0), run = ?ran, ready = ?t.elapsed(), "started");
            Ok(())
        }
        .await;
        if let Err(e) = made {
            if let Err(d) = sandbox.destroy().await {
                tracing::error!(sandbox = %id, error = %d.chain(), "clean-up after a failed create");
            }
            return Err(e);
        }
        Ok(sandbox)
    }

    /// The runtime and network namespace file for a box of `spec`: a networked box needs a
    /// namespace to plumb before it starts; others take one made ahead when there is one
    /// (crun and runc; `instance`s make their own).
    fn box_network(
        &self,
        spec: &SandboxSpec,
        runtime: OciRuntime,
        instance: bool,
    ) -> Result<(OciRuntime, Option<PathBuf>, Option<Arc<BoxNet>>)> {
        let Some(policy) = spec.network.policy() else {
            let netns = match (&self.shared.netns, runtime.kind, instance) {
                (Some(pool), RuntimeKind::Crun | RuntimeKind::Runc, false) => pool.take(),
                _ => None,
            };
            return Ok((runtime, netns, None));
        };
        let (Some(_), Some(pool)) = (&self.shared.cfg.net, &self.shared.netns) else {
            return Err(Error::Unsupported(
                "sandbox networking is not set up on this server".into(),
            ));
        };
        let runtime = match runtime.kind {
            RuntimeKind::Runsc => runtime.networked(),
            _ => runtime,
        };
        // Plain internet: a namespace plumbed ahead, when one is ready.
        if policy.is_plain() {
            if let Some((ns, b)) = self.shared.take_plumbed() {
                return Ok((runtime, Some(ns), Some(b)));
            }
        }
        let ns = pool
            .take_or_make()
            .map_err(|e| Error::io("make a network namespace", e))?;
        Ok((runtime, Some(ns), None))
    }

    /// The cgroup path (under each v1 controller) of box or instance `id`.
    fn cgroup_of(&self, id: &str) -> String {
        format!("{}/{id}", self.cgroup_parent)
    }

    fn runtime_for(&self, isolation: Isolation) -> Result<&OciRuntime> {
        match isolation {
            Isolation::Container => Ok(&self.runtime),
            Isolation::Gvisor => self.gvisor.as_ref().ok_or_else(|| {
                Error::Unsupported(
                    "isolation gvisor needs runsc, which is not installed on this host".into(),
                )
            }),
        }
    }

    /// The image from the store, imported from the local Docker daemon on first use.
    async fn image(&self, name: &str) -> Result<ImageRecord> {
        if let Some(rec) = self.shared.store.get(name)? {
            return Ok(rec);
        }
        let _one_import_at_a_time = self.imports.lock().await;
        if let Some(rec) = self.shared.store.get(name)? {
            return Ok(rec);
        }
        match &self.docker {
            Some(d) => {
                tracing::info!(image = name, "importing image from the docker daemon");
                self.shared.store.import_docker(d, name).await
            }
            None => Err(Error::ImageNotFound(name.to_string())),
        }
    }
}

fn prepare_slots(shared: &Arc<Shared>) {
    if shared.slots.is_some() {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(slots) = &shared.slots {
                slots.prepare(&shared.cfg.agent_path);
            }
        });
    }
}

/// Mounts a tmpfs at `root` (`<data dir>/native`) unless one is there already (left by a
/// killed earlier run). Bundles (upper dirs included) and runtime state live in memory: nothing
/// of a box outlives it, creating and removing a bundle costs no disk I/O, journal or discard,
/// and unmounting an overlay does not sync a disk. A box's writes are charged to its memory
/// cgroup, so they count against its memory limit and cannot fill the host's disk.
fn mount_scratch(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root)
        .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
    if is_tmpfs_mount(root) {
        return Ok(());
    }
    mount(
        Some("faas-native"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(|e| Error::io(format!("mount a tmpfs at {}", root.display()), e.into()))
}

/// Whether `path` is itself the mount point of a tmpfs.
fn is_tmpfs_mount(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        let mut fields = l.split(' ');
        let point = fields.nth(4);
        // After the optional fields, ` - <fstype> ...`.
        let fstype = l.split(" - ").nth(1).and_then(|t| t.split(' ').next());
        point.map(Path::new) == Some(path) && fstype == Some("tmpfs")
    })
}

/// Mounts the overlay of `lowerdir` (`:`-separated, top first) with `rw/upper` and `rw/work` at `rootfs`.
fn mount_overlay(lowerdir: &str, rw: &Path, rootfs: &Path) -> Result<()> {
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        rw.join("upper").display(),
        rw.join("work").display()
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| Error::io(format!("mount overlay at {}", rootfs.display()), e.into()))
}

/// Once a crun or runc instance's box runs, the host's own mounts of its root and of its
/// network namespace file are of no more use: the box's mount namespace has its own copy of the root,
/// and its processes keep the namespace. They are unmounted in the background, so the host's
/// mount table does not grow with the boxes (every runtime start copies that table into a new
/// mount namespace, so a start would get slower with each box alive). gVisor's gofer serves the
/// root from the host's mount: kept for runsc.
fn forget_host_mounts(shared: &Arc<Shared>, dir: &Path, netns: Option<PathBuf>) {
    let (pool, dir) = (shared.netns.clone(), dir.to_path_buf());
    let task = tokio::task::spawn_blocking(move || {
        if let Err(e) = unmount_rootfs(&dir) {
            tracing::warn!(error = %e.chain(), "unmount a running box's root on the host");
        }
        if let (Some(pool), Some(ns)) = (pool, netns) {
            pool.release(&ns);
        }
    });
    shared.cleanups.spawn(async move {
        let _ = task.await;
    });
}

/// Unmounts (lazily) the host's mount of a bundle's first root, if it is still there.
fn unmount_rootfs(dir: &Path) -> Result<()> {
    match umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(
            format!("unmount {}", dir.join("rootfs").display()),
            e.into(),
        )),
    }
}

/// Unmounts (lazily) and removes a bundle directory.
fn remove_bundle(dir: &Path) -> Result<()> {
    unmount_rootfs(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

/// Lets a quiesced agent listen again (see `faas_agent::Request::Quiesce`).
fn resume_agent(bundle: &Path) -> Result<()> {
    let path = bundle.join("sock").join(faas_agent::RESUME_FILE);
    std::fs::write(&path, b"").map_err(|e| Error::io(format!("create {}", path.display()), e))
}

/// Bytes of the regular files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Removes a directory tree; one that is gone is fine.
fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

/// Mount points under `root`, deepest first, from /proc/self/mountinfo.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

#[async_trait]
impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let runtime = self.runtime_for(spec.isolation)?.clone();
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let dir = self.shared.cfg.root.join("sandboxes").join(&id);
        // gVisor gives its sandbox a network stack of its own (a networked one takes the
        // interfaces of the namespace it is given).
        let (runtime, netns, plumbed) = self.box_network(spec, runtime, false)?;
        let plan = BoxPlan {
            cgroup: self.cgroup_of(&id),
            id,
            rw: dir.clone(),
            dir,
            layers: Vec::new(),
            runtime,
            netns,
            plumbed,
            persistent: false,
            restore_from: None,
        };
        Ok(Box::new(self.start_box(spec, plan).await?))
    }

    async fn check_image(&self, image: &str) -> Result<()> {
        self.image(image).await.map(drop)
    }

    async fn instance_create(
        &self,
        id: &str,
        spec: &SandboxSpec,
        from: Option<&serde_json::Value>,
    ) -> Result<Box<dyn Sandbox>> {
        self.create_instance(id, spec, from).await
    }

    async fn instance_start(&self, id: &str, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        self.start_instance(id, spec).await
    }

    async fn instance_attach(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Option<Box<dyn Sandbox>>> {
        self.attach_instance(id, spec).await
    }

    async fn instance_remove(&self, id: &str) -> Result<()> {
        self.remove_instance(id).await
    }

    async fn snapshot(
        &self,
        id: &str,
        running: Option<&dyn Sandbox>,
        snapshot: &str,
        memory: bool,
    ) -> Result<(serde_json::Value, u64)> {
        self.take_snapshot(id, running, snapshot, memory).await
    }

    async fn snapshot_remove(&self, snapshot: &str, artifact: &serde_json::Value) -> Result<()> {
        self.remove_snapshot(snapshot, artifact).await
    }

    async fn remove_leftovers(&self) -> Result<usize> {
        let mut n = 0;
        let runtimes = std::iter::once(&self.runtime).chain(self.gvisor.iter());
        for rt in runtimes {
            for id in rt.list().await? {
                rt.delete_force(&id).await?;
                n += 1;
            }
        }
        let root = &self.shared.cfg.root;
        for m in mounts_under(&root.join("sandboxes")) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        if let Ok(rd) = std::fs::read_dir(root.join("sandboxes")) {
            for e in rd.flatten() {
                remove_bundle(&e.path())?;
            }
        }
        // Cgroups the runtimes did not get to remove (empty ones only; rmdir refuses others).
        cgroups::remove_empty(&self.cgroup_parent);
        Ok(n)
    }

    async fn shutdown(&self) {
        self.shared.cleanups.close();
        self.shared.cleanups.wait().await;
        self.shared.drop_plumbed().await;
        if let Some(slots) = &self.shared.slots {
            slots.close();
        }
        if let Some(pool) = &self.shared.netns {
            pool.close();
        }
        // The per-deployment cgroups (`faas/<deployment>` and what is under it), once empty.
        cgroups::remove_empty(&self.cgroup_parent);
        let root = &self.shared.cfg.root;
        if is_tmpfs_mount(root) {
            if let Err(e) = umount2(root, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %root.display(), error = %e, "unmount the scratch tmpfs");
            }
        }
    }
}

/// How many times (5 ms apart) a tear-down looks for its cgroup to be empty: up to 3 s.
const EMPTY_WAIT_TRIES: usize = 600;

pub struct NativeSandbox {
    id: String,
    dir: PathBuf,
    agent: AgentClient,
    runtime: OciRuntime,
    /// The cgroup path the runtime made (under each v1 controller, or in the v2 tree).
    cgroup: String,
    /// The box's first process on the host, once it runs.
    init: std::sync::OnceLock<InitProcess>,
    /// Its cgroup slot, when the backend manages cgroups itself.
    slot: Mutex<Option<Slot>>,
    /// The network namespace made ahead that it joined, if any.
    netns: Option<PathBuf>,
    /// Its veth and rules, when it has a network.
    net: std::sync::OnceLock<Arc<BoxNet>>,
    /// An instance's box: its upper dir stays, and it is torn down before `destroy` returns.
    persistent: bool,
    /// The overlay's lower dirs, `:`-separated, top first (for a reset's new root).
    lower: std::sync::OnceLock<String>,
    /// How many times the box was reset: its root's writes are in `g<N>/upper` from the first.
    resets: Mutex<u32>,
    /// Its cgroup's usage files, found on first use.
    usage: std::sync::OnceLock<CgroupUsage>,
    shared: Arc<Shared>,
    destroyed: std::sync::atomic::AtomicBool,
}

impl NativeSandbox {
    fn new(
        id: String,
        dir: PathBuf,
        runtime: OciRuntime,
        cgroup: String,
        netns: Option<PathBuf>,
        persistent: bool,
        shared: Arc<Shared>,
    ) -> NativeSandbox {
        NativeSandbox {
            agent: AgentClient::new(format!("native-{id}"), dir.join("sock").join(SOCKET_NAME)),
            id,
            dir,
            runtime,
            cgroup,
            init: std::sync::OnceLock::new(),
            slot: Mutex::new(None),
            netns,
            net: std::sync::OnceLock::new(),
            persistent,
            lower: std::sync::OnceLock::new(),
            resets: Mutex::new(0),
            usage: std::sync::OnceLock::new(),
            shared,
            destroyed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The usage files of the box's cgroup: its slot's, or the one the runtime made. The
    /// processes of a gVisor box (its sentry, the stubs that run the sandboxed code, its gofer)
    /// are born in its slot like a crun box's, so its CPU time and memory are counted there
    /// too.
    fn cgroup_usage(&self) -> Result<&CgroupUsage> {
        if let Some(u) = self.usage.get() {
            return Ok(u);
        }
        let rel = match &*self.slot.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(slot) => slot.rel().to_string(),
            None => self.cgroup.clone(),
        };
        let found = CgroupUsage::of(&rel)?;
        Ok(self.usage.get_or_init(|| found))
    }

    /// Starts (or restores) the box in its cgroups: through its slot's zygote, or, when it has
    /// none (killed, or the slot's box was started by an earlier server), by moving the runtime
    /// into them on the way.
    async fn start_in_slot(&self, how: Start<'_>) -> Result<()> {
        let zygote = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.as_mut()
                .and_then(|s| s.zygote.take())
                .and_then(|mut z| z.alive().then_some(z))
        };
        let Some(mut z) = zygote else {
            let join = {
                let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                match (slot.as_ref(), &self.shared.slots) {
                    (Some(slot), Some(slots)) => slots.procs_files(slot),
                    _ if self.runtime.caller_cgroups() => cgroups::procs_files_of(&self.cgroup),
                    _ => Vec::new(),
                }
            };
            return self
                .runtime
                .start_detached(&self.id, &self.dir, how, join)
                .await;
        };
        let started = self
            .runtime
            .start_detached_via(&mut z, &self.id, &self.dir, how)
            .await;
        if started.is_ok() {
            if let Some(slot) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                slot.zygote = Some(z);
            }
        }
        started
    }
}

/// A host process, identified by pid and start time so that a recycled pid is never signalled.
#[derive(Debug, Clone, Copy)]
struct InitProcess {
    pid: i32,
    start: u64,
}

impl InitProcess {
    fn start_time(pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22, counted after the `(comm)` field, which may hold spaces.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()
    }

    fn read(pid_file: &Path) -> Option<InitProcess> {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(InitProcess {
            pid,
            start: Self::start_time(pid)?,
        })
    }

    /// SIGKILL, if the process is still the one recorded; false when it is not (or is gone).
    fn kill(&self) -> bool {
        if Self::start_time(self.pid) != Some(self.start) {
            return false;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
    }
}

#[async_trait]
impl Sandbox for NativeSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "native"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn agent(&self) -> &AgentClient {
        &self.agent
    }

    async fn reset(&self) -> Result<()> {
        // What its DNS answers allowed and its connections' state are the last request's.
        if self.net.get().is_some() {
            return Err(Error::Unsupported(
                "a box with a network is not reused".into(),
            ));
        }
        self.reset_box().await
    }

    async fn usage(&self) -> Result<BoxUsage> {
        // A destroyed box's slot may hold the next box already.
        if self.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Conflict(format!(
                "sandbox {} is destroyed: its usage is gone",
                self.id
            )));
        }
        self.cgroup_usage()?.read()
    }

    async fn death_cause(&self) -> Option<DeathCause> {
        if let Some(slots) = &self.shared.slots {
            let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slot.as_ref() {
                if slots.oom_killed(slot) {
                    return Some(DeathCause::OutOfMemory);
                }
                return slots.fork_refused(slot).then_some(DeathCause::ProcessLimit);
            }
        }
        let cg = Path::new("/sys/fs/cgroup");
        let rel = self.cgroup.trim_start_matches('/');
        let oom = [
            cg.join("memory").join(rel).join("memory.oom_control"),
            cg.join(rel).join("memory.events"),
        ];
        if oom
            .iter()
            .any(|p| cgroups::counter(p, "oom_kill").is_some_and(|n| n > 0))
        {
            return Some(DeathCause::OutOfMemory);
        }
        let pids = [
            cg.join("pids").join(rel).join("pids.events"),
            cg.join(rel).join("pids.events"),
        ];
        if pids
            .iter()
            .any(|p| cgroups::counter(p, "max").is_some_and(|n| n > 0))
        {
            return Some(DeathCause::ProcessLimit);
        }
        None
    }

    /// Kills the box's processes before returning; the rest of the tear-down (runtime state,
    /// cgroups, overlay mount, bundle directory) finishes in the background, and the backend's
    /// shutdown waits for it.
    async fn destroy(&self) -> Result<()> {
        if self
            .destroyed
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        // Killing the first process of the box's pid namespace ends every process in it. Done
        // directly when we know that process, else through the runtime.
        let (killed, init_killed) = match self.init.get() {
            Some(p) if p.kill() => (Ok(()), true),
            _ => (self.runtime.kill(&self.id).await, false),
        };
        let (runtime, id, dir) = (self.runtime.clone(), self.id.clone(), self.dir.clone());
        let shared = self.shared.clone();
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let netns = self.netns.clone();
        let persistent = self.persistent;
        let net = self.net.get().cloned();
        let teardown = async move {
            if let Some(n) = net {
                n.release().await;
            }
            let t = std::time::Instant::now();
            let deleted = if init_killed {
                runtime.delete_dead(&id).await
            } else {
                runtime.delete_force(&id).await
            };
            // Before the bundle goes: once the bundle is gone, nothing of the box is left.
            if let (Some(pool), Some(ns)) = (&shared.netns, &netns) {
                pool.release(ns);
            }
            // Unmounting and removing the upper dir block: not on the runtime's workers.
            let bundle = dir.clone();
            let removed = tokio::task::spawn_blocking(move || remove_bundle(&bundle))
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("bundle removal: {e}"))));
            if let Err(e) = deleted.and(removed) {
                tracing::error!(sandbox = %id, error = %e.chain(), "tear-down failed; `faas serve` removes it on its next start");
            }
            if let (Some(slots), Some(slot)) = (&shared.slots, slot) {
                // The box's processes die with its pid namespace, a moment after its init (on a
                // loaded host, a second or more): a slot is released only once empty, and an
                // instance's named cgroup is removed then, before it can be started again.
                for _ in 0..EMPTY_WAIT_TRIES {
                    if slots.is_empty(&slot) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(slots) = &s.slots {
                        slots.release(slot);
                    }
                })
                .await;
                prepare_slots(&shared);
            } else if let Some(slots) = shared
                .slots
                .as_ref()
                .filter(|_| persistent && runtime.caller_cgroups())
            {
                // An instance's box a former server started: its named cgroup goes with it.
                for _ in 0..EMPTY_WAIT_TRIES {
                    if slots.remove_named(&id) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            steps::record(Step::Teardown, t.elapsed());
            tracing::debug!(sandbox = %id, took = ?t.elapsed(), "torn down");
        };
        if self.persistent {
            // The instance may be started again at once, under the same container id.
            teardown.await;
        } else {
            self.shared.cleanups.spawn(teardown);
        }
        killed
    }
}
