//! Bodies of the functions and invocations API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{CommandSpec, EnvVars, IsolationLevel, Runtime};

/// What runs a function's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunctionRuntime {
    /// Python 3: `handler` is `module.function`; a shim imports it once and serves invocation
    /// after invocation.
    Python,
    /// Node.js 18 or later: `handler` is `module.function` (CommonJS or ES module).
    Node,
    /// A shell script: the payload on stdin, the result on stdout.
    Shell,
    /// A static executable: the payload on stdin, the result on stdout.
    Binary,
    /// Any image and a `command`: the payload on stdin, the result on stdout.
    Image,
}

impl FunctionRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionRuntime::Python => "python",
            FunctionRuntime::Node => "node",
            FunctionRuntime::Shell => "shell",
            FunctionRuntime::Binary => "binary",
            FunctionRuntime::Image => "image",
        }
    }
}

/// `POST /api/v1/functions` (with `name`) and `PUT /api/v1/functions/{name}` (a new version;
/// what it leaves out is taken from the latest version).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FunctionRuntime>,
    /// `module.function` for python and node; the file name for shell and binary code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// One source file (or executable), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_b64: Option<String>,
    /// A zip or tar(.gz) archive of the code, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For the `image` runtime: what to run per invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<EnvVars>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_warm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The backend its sandboxes run on (`auto` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationLevel>,
    /// What its sandboxes may reach: `"none"` (the default), `"internet"`, or egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::NetworkRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    /// The latest version (or the one asked for).
    pub version: i64,
    pub runtime: FunctionRuntime,
    pub handler: Option<String>,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env_vars: BTreeMap<String, String>,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub timeout_ms: u64,
    pub min_warm: u32,
    pub max_concurrency: u32,
    pub backend: String,
    /// What its sandboxes may reach.
    #[serde(default)]
    pub network: crate::NetworkRequest,
    pub code_sha256: String,
    pub code_size: u64,
    /// Every version number, oldest first (in `GET /functions/{name}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<i64>,
    /// Started sandboxes of this version on this server (idle and busy).
    pub warm: usize,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionsResponse {
    pub functions: Vec<FunctionInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDeleted {
    pub name: String,
    /// Queued invocations that were failed with `function_deleted`.
    pub failed_invocations: u64,
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationError {
    /// The exception's type (`ZeroDivisionError`, `TypeError`...), or one of the platform's:
    /// `timeout`, `runtime_exited`, `exit_code`, `function_deleted`, `worker_lost`,
    /// `sandbox_failed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// A sync invocation's answer, and `GET /api/v1/invocations/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationInfo {
    pub invocation_id: String,
    pub function: String,
    pub version: i64,
    /// `succeeded`, `error`, `timeout`; for async ones also `queued`, `running`,
    /// `dead_letter`.
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<InvocationError>,
    /// What the function printed (stdout and stderr, in order).
    pub logs: String,
    pub duration_ms: Option<f64>,
    /// A sandbox had to be started for it.
    pub cold: Option<bool>,
    #[serde(rename = "async")]
    pub is_async: bool,
    pub attempts: i64,
    pub max_attempts: i64,
    /// Each failed attempt's error, oldest first.
    pub attempt_errors: Vec<serde_json::Value>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationsResponse {
    pub invocations: Vec<InvocationInfo>,
}

/// `202` answer of `?async=true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationAccepted {
    pub invocation_id: String,
    pub status: String,
}

/// Query of `POST /api/v1/functions/{name}/invoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    #[serde(default, rename = "async")]
    pub is_async: bool,
    /// A version number; the latest when absent.
    #[serde(default)]
    pub version: Option<i64>,
    /// Async: where the final result is POSTed.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Async: attempts before the dead-letter list (default 3).
    #[serde(default)]
    pub max_attempts: Option<i64>,
}

/// Query of `GET /api/v1/invocations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvocationsQuery {
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}
