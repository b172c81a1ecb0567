//! Bodies of the processes, terminal and files API inside an instance
//! (`/api/v1/instances/{id}/processes`, `/terminal`, `/fs`).

use serde::{Deserialize, Serialize};

use crate::api::{CommandSpec, EnvVars};

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// `POST /api/v1/instances/{id}/processes`: start a process and return at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessStartRequest {
    pub command: CommandSpec,
    #[serde(default)]
    pub env_vars: EnvVars,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Keep its stdin open for `POST .../stdin` (otherwise it reads `/dev/null`). A process
    /// with a PTY always takes input.
    #[serde(default)]
    pub stdin: bool,
    /// Run it under a terminal of this size; its output then comes as `pty` events.
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// A label of the caller's, shown in the list.
    #[serde(default)]
    pub tag: Option<String>,
    /// Kill its process group after this long (absent: no limit).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// 201 answer of a process start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessStarted {
    /// Its process id inside the instance.
    pub pid: u32,
    pub tag: Option<String>,
}

/// One process of an instance, running or ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    /// Its argv.
    pub command: Vec<String>,
    pub env_vars: std::collections::BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub pty: bool,
    pub running: bool,
    /// Set once it ended (128 + N when signal N ended it).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessesResponse {
    pub processes: Vec<ProcessInfo>,
}

/// `POST .../processes/{pid}/signal`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignalRequest {
    /// A name (`SIGTERM`, `TERM`, `sigkill`...) or a number from 1 to 31.
    #[schema(value_type = String, example = "SIGTERM")]
    pub signal: serde_json::Value,
}

/// Signal names the API accepts (with or without `SIG`, any case), and their numbers on Linux.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("WINCH", 28),
];

impl SignalRequest {
    /// The signal's number, or why it is not one.
    pub fn number(&self) -> Result<i32, String> {
        let bad = || {
            format!(
                "signal must be a signal name such as SIGTERM or a number from 1 to 31, got {}",
                self.signal
            )
        };
        match &self.signal {
            serde_json::Value::Number(n) => n
                .as_i64()
                .filter(|n| (1..=31).contains(n))
                .map(|n| n as i32)
                .ok_or_else(bad),
            serde_json::Value::String(s) => {
                let up = s.trim().to_ascii_uppercase();
                let name = up.strip_prefix("SIG").unwrap_or(&up);
                if let Ok(n) = name.parse::<i32>() {
                    return (1..=31).contains(&n).then_some(n).ok_or_else(bad);
                }
                SIGNALS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }
}

/// `POST .../processes/{pid}/resize` (PTY processes only)
pub type ResizeRequest = PtySize;

/// One SSE event of `GET .../processes/{pid}/events`: `stdout`, `stderr` and `pty` carry
/// `{"data": "<base64>"}`; the last one, `exit`, carries [`ProcessExit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessData {
    /// The bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// The `exit` event of a process's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessExit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub duration_ms: f64,
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file as the instance sees it (`GET .../fs/stat`, the items of `.../fs/list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits, e.g. 420 (0o644).
    pub mode: u32,
    /// `-rw-r--r--`, as `ls -l` shows them.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    /// Milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsListResponse {
    pub entries: Vec<FileEntry>,
}

/// `POST .../fs/mkdir`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MkdirRequest {
    pub path: String,
}

/// `POST .../fs/move`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
}

/// One SSE event of `GET .../fs/watch`: the event name is the operation (`create`, `write`,
/// `remove`, `rename`, `chmod`); a rename is the old path's `rename` then the new path's
/// `create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsEvent {
    pub op: String,
    pub path: String,
}

/// Largest total size of an instance's `metadata` (keys and values).
pub const MAX_METADATA_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn number(v: serde_json::Value) -> Result<i32, String> {
        SignalRequest { signal: v }.number()
    }

    #[test]
    fn signals_by_name_or_number() {
        for (v, want) in [
            (serde_json::json!("SIGTERM"), 15),
            (serde_json::json!("term"), 15),
            (serde_json::json!(" sigkill "), 9),
            (serde_json::json!(2), 2),
            (serde_json::json!("SIG28"), 28),
        ] {
            assert_eq!(number(v), Ok(want));
        }
        for bad in [
            serde_json::json!("SIGNOPE"),
            serde_json::json!(0),
            serde_json::json!(32),
            serde_json::json!(-9),
            serde_json::json!("99"),
            serde_json::json!(null),
            serde_json::json!([15]),
        ] {
            assert!(number(bad.clone()).is_err(), "{bad}");
        }
    }
}
