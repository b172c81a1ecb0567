//! The OCI `config.json` of a native sandbox, made from a [`SandboxSpec`] with `oci-spec`.

use std::collections::HashSet;
use std::path::Path;

use faas_agent::{GUEST_AGENT_PATH, GUEST_SOCKET_DIR, SOCKET_NAME};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

use crate::error::{Error, Result};
use crate::sandbox::SandboxSpec;

/// The capabilities a normal process needs; the same set as the docker backend keeps.
pub const KEPT: [Capability; 8] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::NetBindService,
];

const CPU_PERIOD_US: u64 = 100_000;

fn oci(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("building the OCI spec: {e}"))
}

fn bind(dest: &str, source: &Path, ro: bool) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            if ro { "ro" } else { "rw" }.to_string(),
        ])
        .build()
        .map_err(oci)
}

/// The runtime spec: the agent as PID 1, the rootfs at `rootfs` (relative to the bundle), the
/// agent binary and the socket directory bind-mounted, fresh namespaces (network included: only
/// loopback; `netns` names one made ahead), all limits as cgroup resources under `cgroups_path`.
pub fn build(
    spec: &SandboxSpec,
    image_env: &[(String, String)],
    agent: &Path,
    socket_dir: &Path,
    cgroups_path: &str,
    netns: Option<&Path>,
) -> Result<Spec> {
    // The runtime cannot raise the hard limit above its own.
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(65536))
        .unwrap_or(1024);
    let caps: HashSet<Capability> = KEPT.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(oci)?;
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
    ];
    for (k, v) in image_env.iter().chain(&spec.env) {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(oci)?,
        )
        .args(vec![
            GUEST_AGENT_PATH.to_string(),
            "--socket".into(),
            format!("{GUEST_SOCKET_DIR}/{SOCKET_NAME}"),
        ])
        .env(env)
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()
            .map_err(oci)?])
        .build()
        .map_err(oci)?;

    let memory = (spec.limits.memory_mb * 1024 * 1024) as i64;
    let resources = LinuxResourcesBuilder::default()
        // Deny every device but the runtime's defaults (null, zero, random, tty...).
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(oci)?])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(memory)
                .build()
                .map_err(oci)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota((spec.limits.cpu_cores * CPU_PERIOD_US as f64) as i64)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(oci)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(spec.limits.pids as i64)
                .build()
                .map_err(oci)?,
        )
        .build()
        .map_err(oci)?;
    let defaults = oci_spec::runtime::Linux::default();
    let mut namespaces = defaults.namespaces().clone().unwrap_or_default();
    if let Some(path) = netns {
        // A fresh namespace made ahead (see `netns.rs`): joined instead of made here.
        for ns in &mut namespaces {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(path.to_path_buf()));
            }
        }
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .resources(resources)
        .cgroups_path(cgroups_path)
        .build()
        .map_err(oci)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    mounts.push(bind(GUEST_AGENT_PATH, agent, true)?);
    mounts.push(bind(GUEST_SOCKET_DIR, socket_dir, false)?);
    for m in &spec.mounts {
        mounts.push(bind(&m.guest, &m.host, true)?);
    }

    let mut s = Spec::default();
    s.set_hostname(Some("sandbox".into()));
    s.set_process(Some(process));
    s.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(oci)?,
    ));
    s.set_mounts(Some(mounts));
    s.set_linux(Some(linux));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Limits, Network};

    #[test]
    fn limits_and_lockdown_are_in_the_spec() {
        let spec = SandboxSpec {
            image: "x".into(),
            env: vec![("A".into(), "1".into())],
            limits: Limits {
                memory_mb: 64,
                cpu_cores: 0.5,
                pids: 100,
            },
            network: Network::None,
            isolation: Default::default(),
            mounts: vec![crate::sandbox::ReadOnlyMount {
                host: "/code".into(),
                guest: "/var/task".into(),
            }],
        };
        let s = build(
            &spec,
            &[("PATH".into(), "/bin".into())],
            Path::new("/a"),
            Path::new("/s"),
            "/faas/x",
            None,
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PATH=/bin") && env.contains(&"A=1"),
            "{env:?}"
        );
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        assert_eq!(v["process"]["args"][0], GUEST_AGENT_PATH);
        let code = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/var/task")
            .unwrap();
        assert_eq!(code["source"], "/code");
        assert!(code["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "ro"));
        let joined = build(
            &spec,
            &[],
            Path::new("/a"),
            Path::new("/s"),
            "/faas/x",
            Some(Path::new("/run/n1")),
        )
        .unwrap();
        let v = serde_json::to_value(&joined).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/n1"));
        // Only the network namespace is joined; the others are still made new.
        assert_eq!(ns.iter().filter(|n| n.get("path").is_some()).count(), 1);
    }
}
