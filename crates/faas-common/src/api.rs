//! Bodies of the HTTP API (v1).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// What to run: a string run by `sh -c`, or an argv array run as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The argv the agent runs.
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            CommandSpec::Argv(v) => v.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Shell(s) => s.trim().is_empty(),
            CommandSpec::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
        }
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Ephemeral,
    Cached,
    Checkpointed,
    Branched,
    Persistent,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Ephemeral,
        Mode::Cached,
        Mode::Checkpointed,
        Mode::Branched,
        Mode::Persistent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ephemeral => "ephemeral",
            Mode::Cached => "cached",
            Mode::Checkpointed => "checkpointed",
            Mode::Branched => "branched",
            Mode::Persistent => "persistent",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend a request asks for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    #[default]
    Auto,
    Docker,
    Native,
    Firecracker,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Auto => "auto",
            Runtime::Docker => "docker",
            Runtime::Native => "native",
            Runtime::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How strongly a sandbox is isolated from the host kernel.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Namespaces, cgroups and a reduced capability set.
    #[default]
    Container,
    /// gVisor (`runsc`), on the native backend.
    Gvisor,
}

/// Environment variables: a JSON object, or the reference SDKs' list of `[key, value]` pairs.
/// Numbers and booleans are taken as their text.
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
#[schema(value_type = Object, example = json!({"KEY": "value"}))]
pub struct EnvVars(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for EnvVars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn text<E: de::Error>(key: &str, v: &serde_json::Value) -> Result<String, E> {
            match v {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => Err(E::custom(format!(
                    "env_vars: value of {key:?} must be a string"
                ))),
            }
        }
        let v = serde_json::Value::deserialize(d)?;
        let pairs = match v {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), text(k, v)?)))
                .collect::<Result<_, _>>()?,
            serde_json::Value::Array(items) => items
                .iter()
                .map(|item| match item.as_array().map(Vec::as_slice) {
                    Some([serde_json::Value::String(k), v]) => Ok((k.clone(), text(k, v)?)),
                    _ => Err(de::Error::custom(
                        "env_vars: each list item must be a [key, value] pair of strings",
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(de::Error::custom(
                    "env_vars must be an object or a list of [key, value] pairs",
                ))
            }
        };
        for (k, _) in &pairs {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(de::Error::custom(format!("env_vars: invalid name {k:?}")));
            }
        }
        Ok(EnvVars(pairs))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecuteRequest {
    pub command: CommandSpec,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub runtime: Option<Runtime>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub env_vars: EnvVars,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub stdin_b64: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub branch_from: Option<String>,
    /// `persistent`: the instance to run in (a new one when absent).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// An id the client chooses, so it can follow the output at `/api/v1/logs/{id}/stream`
    /// while the execution runs (1-64 of `A-Za-z0-9_-`; a new uuid when absent).
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub cache_key: Option<String>,
    /// `"none"` (the default), `"internet"`, or egress rules.
    #[serde(default)]
    pub network: Option<NetworkRequest>,
    #[serde(default)]
    pub isolation: Option<IsolationLevel>,
}

/// What a sandbox may reach: `"none"` (loopback only, the default), `"internet"` (everything
/// but the always-denied: the host, other sandboxes, link-local and metadata addresses and,
/// unless the tenant may, the private ranges), or rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NetworkRequest {
    /// `none` or `internet`.
    Named(String),
    Rules(EgressRules),
}

impl Default for NetworkRequest {
    fn default() -> Self {
        NetworkRequest::Named("none".into())
    }
}

impl NetworkRequest {
    pub fn internet() -> Self {
        NetworkRequest::Named("internet".into())
    }

    /// `none`, given or meant.
    pub fn is_none(&self) -> bool {
        matches!(self, NetworkRequest::Named(n) if n == "none")
    }
}

/// `{"egress": "allow", "deny": [...]}`: everything but what `deny` lists; `{"egress": "deny",
/// "allow": [...]}`: nothing but what `allow` lists (`deny` still wins). Entries are IPv4
/// addresses, CIDRs, or domain names (`example.com`, or `*.example.com` for the names under
/// it); a domain rule holds for the addresses the platform's DNS answers the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRules {
    pub egress: EgressDefault,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressDefault {
    Allow,
    Deny,
}

impl ExecuteRequest {
    pub fn new(command: CommandSpec) -> Self {
        ExecuteRequest {
            command,
            image: None,
            runtime: None,
            mode: None,
            env_vars: EnvVars::default(),
            working_dir: None,
            timeout_ms: None,
            memory_mb: None,
            cpu_cores: None,
            stdin: None,
            stdin_b64: None,
            snapshot_id: None,
            branch_from: None,
            instance_id: None,
            request_id: None,
            cache_key: None,
            network: None,
            isolation: None,
        }
    }

    /// The stdin bytes, from `stdin` (text) or `stdin_b64`; both at once is an error.
    pub fn stdin_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        decode_stdin(&self.stdin, &self.stdin_b64)
    }
}

/// Stdin given as text or as base64 (not both).
fn decode_stdin(text: &Option<String>, b64: &Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err("give either stdin or stdin_b64, not both".into()),
        (Some(s), None) => Ok(Some(s.clone().into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("stdin_b64 is not valid base64: {e}")),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecuteResponse {
    pub request_id: String,
    /// The command's real exit status; 128 + N when signal N ended it.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Same as `stdout` (the reference SDKs' name).
    pub output: String,
    /// Same as `stderr` (the reference SDKs' name).
    pub logs: String,
    /// The command's own wall time, from spawn to exit, measured inside the sandbox.
    pub duration_ms: f64,
    /// The whole request on the server: sandbox acquisition, run and clean-up.
    pub total_ms: f64,
    pub error: Option<String>,
    pub timed_out: bool,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub truncated: bool,
    pub backend: String,
    pub mode: Mode,
    pub warm: bool,
    /// The sandbox the command ran in (destroyed by the time the answer is sent, unless it is
    /// an instance's).
    pub sandbox_id: String,
    /// The snapshot this execution made (`checkpointed` without `snapshot_id`).
    pub snapshot_id: Option<String>,
    /// The instance it ran in (`persistent`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// CPU time (user + system) the sandbox used for the command, from its cgroup; `null`
    /// when the backend cannot measure it.
    #[serde(default)]
    pub cpu_ms: Option<f64>,
    /// The sandbox's peak memory, MiB, from its cgroup (for an instance: since it started).
    #[serde(default)]
    pub peak_memory_mb: Option<f64>,
    /// The sandbox's memory limit, MiB.
    #[serde(default)]
    pub memory_mb: u64,
}

/// `POST /api/v1/instances`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceCreateRequest {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub runtime: Option<Runtime>,
    #[serde(default)]
    pub isolation: Option<IsolationLevel>,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub env_vars: EnvVars,
    /// Stop the instance after this many seconds without an exec (0 or absent: never).
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// `"none"` (the default), `"internet"`, or egress rules.
    #[serde(default)]
    pub network: Option<NetworkRequest>,
    /// The caller's labels: string keys and values, at most 4 KiB in all; list filters on
    /// them with `?metadata.KEY=VALUE`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Its ports answer without an API key to whoever has its `ports_token` (in the
    /// `faas_token` query parameter or the `X-Faas-Ports-Token` header).
    #[serde(default)]
    pub public_ports: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    Running,
    Stopped,
    /// Its box was gone when the server started (`status_reason` says why); its files are kept
    /// and `start` brings it back.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    pub id: String,
    pub name: Option<String>,
    pub status: InstanceStatus,
    pub status_reason: Option<String>,
    pub backend: String,
    pub image: String,
    pub isolation: IsolationLevel,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub idle_timeout_s: Option<u64>,
    /// What it may reach (`"none"`, `"internet"` or its rules).
    #[serde(default)]
    pub network: NetworkRequest,
    /// The snapshot it was restored or branched from.
    pub source_snapshot: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Its ports answer without a key to requests with `ports_token`.
    #[serde(default)]
    pub public_ports: bool,
    /// The unguessable token (256 bits, hex) of an instance with `public_ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_token: Option<String>,
    /// When it ends by itself, and how (an E2B sandbox's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<InstanceDeadline>,
    /// The template it was made from (the E2B surface's name of its image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The envd access token of an E2B sandbox (256 bits, hex): it opens its processes and
    /// files on the E2B surface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// When an instance ends by itself, and what then happens to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceDeadline {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub then: DeadlineAction,
}

/// What an instance's deadline does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineAction {
    /// Deleted, files and all.
    Delete,
    /// Stopped, its files kept (an E2B sandbox's `autoPause`).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstancesResponse {
    pub instances: Vec<InstanceInfo>,
}

/// A TCP port something listens on inside an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortInfo {
    pub port: u16,
    /// The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`...).
    pub address: String,
    /// Where the port proxy serves it: `/api/v1/instances/{id}/ports/{port}/`.
    pub path: String,
    /// Its host name with `--sandbox-domain`: `{port}-{id}.{domain}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `GET /api/v1/instances/{id}/ports`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortsResponse {
    pub ports: Vec<PortInfo>,
}

/// `POST /api/v1/instances/{id}/exec`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceExecRequest {
    pub command: CommandSpec,
    #[serde(default)]
    pub env_vars: EnvVars,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub stdin_b64: Option<String>,
}

impl InstanceExecRequest {
    /// The stdin bytes, from `stdin` (text) or `stdin_b64`; both at once is an error.
    pub fn stdin_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        decode_stdin(&self.stdin, &self.stdin_b64)
    }
}

/// `POST /api/v1/snapshots` (and `/instances/{id}/snapshot`, where `instance_id` is the path's)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotCreateRequest {
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Also capture the memory of its processes (native with gVisor only).
    #[serde(default)]
    pub memory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    Filesystem,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: Option<String>,
    pub instance_id: Option<String>,
    /// The snapshot the instance itself came from, if any.
    pub parent_id: Option<String>,
    pub backend: String,
    pub image: String,
    pub kind: SnapshotKind,
    /// Bytes the snapshot itself keeps (its changes), measured.
    pub size_bytes: u64,
    pub tags: Vec<String>,
    pub created_at_ms: i64,
    /// How long taking it took.
    #[serde(default)]
    pub took_ms: Option<f64>,
    /// For a memory snapshot: how long the checkpoint itself took (the rest of `took_ms` is
    /// the copy of its files and the instance's restore in place).
    #[serde(default)]
    pub checkpoint_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotsResponse {
    pub snapshots: Vec<SnapshotInfo>,
}

/// `POST /api/v1/snapshots/{id}/branch`, `/instances/{id}/fork`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchRequest {
    #[serde(default = "one_u32")]
    pub count: u32,
}

fn one_u32() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchResponse {
    pub instances: Vec<InstanceInfo>,
    /// The snapshot the branches were made from (for a fork, the one taken of the instance).
    pub snapshot_id: String,
    pub took_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrewarmRequest {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default)]
    pub runtime: Option<Runtime>,
    #[serde(default)]
    pub isolation: Option<IsolationLevel>,
    /// The limits of the pool's boxes (a cached request with the same limits uses it);
    /// the server's defaults when absent.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolInfo {
    /// The tenant whose requests the pool's boxes serve (and no other's).
    #[serde(default)]
    pub tenant: String,
    pub image: String,
    pub backend: String,
    /// Started sandboxes waiting in the pool.
    pub ready: usize,
    /// Sandboxes being started right now.
    pub creating: usize,
    /// How many the pool keeps ready.
    pub target: usize,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub isolation: IsolationLevel,
    /// Why the latest creation failed, when it did.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolsResponse {
    pub pools: Vec<PoolInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendStatus {
    pub name: String,
    pub available: bool,
    /// What was found, or what is missing.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
    pub uptime_s: f64,
    /// The backend `auto` resolves to, and why.
    pub default_backend: Option<String>,
    pub default_image: String,
    pub backends: Vec<BackendStatus>,
}

/// An image in the native backend's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInfo {
    pub name: String,
    /// Layer digests (sha256), bottom first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
    pub source: String,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagesResponse {
    pub images: Vec<ImageInfo>,
}

/// JSON metrics: counters since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct MetricsResponse {
    /// `backend` → `mode` → count.
    pub executions: BTreeMap<String, BTreeMap<String, u64>>,
    pub executions_total: u64,
    pub warm_hits: u64,
    pub warm_misses: u64,
    /// Requests that ended in an error (not commands that exited non-zero).
    pub failures: u64,
    pub timeouts: u64,
    pub oom_kills: u64,
    pub sandboxes_created: u64,
    pub sandboxes_destroyed: u64,
    pub sandboxes_live: u64,
    /// Used boxes reset to a clean state and reused (cached mode).
    #[serde(default)]
    pub sandboxes_reset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ExecuteRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn env_vars_in_both_forms() {
        let a =
            parse(serde_json::json!({"command": "env", "env_vars": {"A": "1", "B": 2}})).unwrap();
        let b = parse(serde_json::json!({"command": "env", "env_vars": [["A", "1"], ["B", "2"]]}))
            .unwrap();
        assert_eq!(a.env_vars, b.env_vars);
        assert_eq!(
            a.env_vars.0,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn bad_env_vars_are_refused() {
        for bad in [
            serde_json::json!(["A"]),
            serde_json::json!([["A", "1", "2"]]),
            serde_json::json!({"A=B": "1"}),
            serde_json::json!({"A": {"x": 1}}),
            serde_json::json!("A=1"),
        ] {
            assert!(parse(serde_json::json!({"command": "true", "env_vars": bad})).is_err());
        }
    }

    #[test]
    fn unknown_mode_and_runtime_are_errors() {
        assert!(parse(serde_json::json!({"command": "x", "mode": "turbo"})).is_err());
        assert!(parse(serde_json::json!({"command": "x", "runtime": "lxc"})).is_err());
        let r = parse(serde_json::json!({"command": ["echo", "hi"], "mode": "cached"})).unwrap();
        assert_eq!(r.mode, Some(Mode::Cached));
        assert_eq!(r.command.to_argv(), vec!["echo", "hi"]);
    }

    #[test]
    fn empty_commands() {
        assert!(CommandSpec::Shell("  ".into()).is_empty());
        assert!(CommandSpec::Argv(vec![]).is_empty());
        assert!(CommandSpec::Argv(vec!["".into()]).is_empty());
        assert!(!CommandSpec::Shell("true".into()).is_empty());
    }

    #[test]
    fn stdin_forms() {
        let mut r = ExecuteRequest::new(CommandSpec::Shell("cat".into()));
        r.stdin_b64 = Some("aGk=".into());
        assert_eq!(r.stdin_bytes().unwrap(), Some(b"hi".to_vec()));
        r.stdin = Some("x".into());
        assert!(r.stdin_bytes().is_err());
        r.stdin = None;
        r.stdin_b64 = Some("!!".into());
        assert!(r.stdin_bytes().is_err());
    }
}
