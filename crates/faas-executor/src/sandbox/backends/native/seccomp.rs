//! The seccomp filter of a native crun or runc box: everything allowed but the system calls a
//! box has no use for and that widen what its root can reach of the host kernel, which fail
//! with `EPERM` (the docker backend gets Docker's own profile).
//!
//! Without it a box's root (no user namespace) could, among others, add keys to the host root's
//! keyring (`add_key`, `keyctl`: keyrings belong to the uid in the init user namespace), make a
//! user namespace and with it the capabilities the box was denied (`unshare`, `clone` with a
//! namespace flag), and reach kernel subsystems with a long record of local escalations (`bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring`). The agent needs none of these.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::error::{Error, Result};

/// Denied outright.
pub const DENIED: [&str; 49] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "userfaultfd",
    "vhangup",
];

/// `clone` flags that make a namespace: a `clone` with any of them is denied.
const NAMESPACE_FLAGS: [u64; 8] = [
    0x0000_0080, // CLONE_NEWTIME
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn oci(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("building the seccomp filter: {e}"))
}

fn rule(names: &[&str], errno: u32) -> Result<LinuxSyscall> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
        .map_err(oci)
}

pub fn filter() -> Result<LinuxSeccomp> {
    let mut syscalls = vec![rule(&DENIED, EPERM)?];
    for flag in NAMESPACE_FLAGS {
        let mut r = rule(&["clone"], EPERM)?;
        r.set_args(Some(vec![LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(oci)?]));
        syscalls.push(r);
    }
    // clone3 passes its flags in memory a filter cannot read: "not implemented", so libc falls
    // back to clone.
    syscalls.push(rule(&["clone3"], ENOSYS)?);
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
        .map_err(oci)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_denies_what_it_says_and_allows_the_rest() {
        let f = serde_json::to_value(filter().unwrap()).unwrap();
        assert_eq!(f["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = f["syscalls"].as_array().unwrap();
        let denied: Vec<&str> = rules[0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for name in [
            "keyctl", "add_key", "unshare", "mount", "bpf", "ptrace", "setns",
        ] {
            assert!(denied.contains(&name), "{name} not denied");
        }
        for name in ["read", "write", "execve", "clone", "kill", "wait4"] {
            assert!(!denied.contains(&name), "{name} denied");
        }
        // One clone rule per namespace flag, matched under a mask.
        let clones: Vec<&serde_json::Value> =
            rules.iter().filter(|r| r["names"][0] == "clone").collect();
        assert_eq!(clones.len(), NAMESPACE_FLAGS.len());
        assert!(clones
            .iter()
            .any(|r| r["args"][0]["value"] == 0x1000_0000
                && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"));
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == 38));
    }
}
