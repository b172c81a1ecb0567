//! The `faas` command line: `run` exits with the command's code; `doctor` reports backends.

use std::process::Command;

use crate::require_docker;
use crate::support::{shared, IMAGE};

#[test]
fn run_exits_with_the_commands_code() {
    require_docker!();
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args([
            "run",
            "--server",
            &shared().url,
            "--image",
            IMAGE,
            "--",
            "echo from-cli; echo e >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "e\n");
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args([
            "run",
            "--server",
            &shared().url,
            "--image",
            "faas/none:x",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image_not_found"));
}

#[test]
fn doctor_reports_docker() {
    require_docker!();
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("docker") && l.contains(" ok ")),
        "{text}"
    );
    assert!(text.contains("firecracker"), "{text}");
}
