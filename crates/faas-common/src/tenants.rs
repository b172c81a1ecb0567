//! Tenants, API keys, quotas, usage and the audit trail: the bodies of their API, and the
//! [`Caller`] that authentication makes and every service call carries.

use serde::{Deserialize, Serialize};

/// The tenant a store made before it had any: the first admin key's.
pub const DEFAULT_TENANT: &str = "default";

/// Who is asking: made once per request by authentication, passed to every service call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
    /// The key it authenticated with; `None` with `--auth none` and inside the platform.
    pub key_id: Option<String>,
}

impl Caller {
    /// The caller with `--auth none`: an admin of the default tenant.
    pub fn unauthenticated_admin() -> Caller {
        Caller {
            tenant: DEFAULT_TENANT.into(),
            role: Role::Admin,
            key_id: None,
        }
    }

    /// The platform itself acting on a tenant's objects (its reapers and queue workers).
    pub fn platform_for(tenant: &str) -> Caller {
        Caller {
            tenant: tenant.into(),
            role: Role::Member,
            key_id: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: keys, tenants, quotas, usage and the audit trail of every tenant.
    Admin,
    /// Its own tenant's objects.
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A tenant's limits. In a tenant's settings a missing field is the server's default; in
/// `effective` every field is resolved, and 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Sandboxes alive at once: executions running, instances running, function sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_sandboxes: Option<u64>,
    /// Instances, running or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    /// Total memory limit (MiB) of the live sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Bytes of snapshots kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u64>,
    /// Async invocations queued or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_invocations: Option<u64>,
    /// Requests per second: the refill rate of the tenant's token bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// The bucket's size (0: the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Its sandboxes with a network may reach the private ranges (10/8, 172.16/12,
    /// 192.168/16, 100.64/10), denied to others. Set by an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_egress: Option<bool>,
}

impl Quotas {
    /// These settings over `defaults`, every field set.
    pub fn over(&self, defaults: &Quotas) -> Quotas {
        let pick = |a: Option<u64>, b: Option<u64>| Some(a.or(b).unwrap_or(0));
        Quotas {
            concurrent_sandboxes: pick(self.concurrent_sandboxes, defaults.concurrent_sandboxes),
            instances: pick(self.instances, defaults.instances),
            memory_mb: pick(self.memory_mb, defaults.memory_mb),
            snapshot_bytes: pick(self.snapshot_bytes, defaults.snapshot_bytes),
            functions: pick(self.functions, defaults.functions),
            queued_invocations: pick(self.queued_invocations, defaults.queued_invocations),
            requests_per_second: pick(self.requests_per_second, defaults.requests_per_second),
            burst: pick(self.burst, defaults.burst),
            private_egress: Some(
                self.private_egress
                    .or(defaults.private_egress)
                    .unwrap_or(false),
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreateRequest {
    /// Lowercase letters, digits, `-` and `_`, up to 64; generated when missing.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub quotas: Quotas,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdateRequest {
    /// Replaces the tenant's settings: a missing field goes back to the server's default.
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantInfo {
    pub id: String,
    pub name: Option<String>,
    pub created_at_ms: i64,
    /// The tenant's own settings.
    pub quotas: Quotas,
    /// Every limit as enforced (its settings over the server's defaults; 0 = no limit).
    pub effective: Quotas,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantsResponse {
    pub tenants: Vec<TenantInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreateRequest {
    pub name: String,
    /// Default: the caller's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Default: `member`.
    #[serde(default)]
    pub role: Option<Role>,
    /// The key stops working this many seconds after it is made.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub role: Role,
    /// The secret's first characters, to tell keys apart; never enough to use it.
    pub prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// The secret: only in the answer that made the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeysResponse {
    pub keys: Vec<KeyInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoamiResponse {
    pub tenant: String,
    pub role: Role,
    pub key_id: Option<String>,
}

/// One line of a usage report (or its total).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The day (`YYYY-MM-DD`, UTC), function name or instance id; `total` for the total.
    pub key: String,
    /// One-shot executions.
    pub executions: u64,
    /// Commands run in instances.
    pub instance_execs: u64,
    /// Function invocations (sync and async attempts that ran).
    pub invocations: u64,
    /// Seconds instances were running.
    pub instance_seconds: f64,
    pub wall_ms: f64,
    /// CPU time, from the boxes' cgroups.
    pub cpu_ms: f64,
    /// Memory limit × wall time (what the box held), MiB-seconds.
    pub memory_mib_s: f64,
    /// The largest peak memory of one box, MiB.
    pub peak_memory_mb: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageResponse {
    pub tenant: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: String,
    pub rows: Vec<UsageRow>,
    pub total: UsageRow,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub at_ms: i64,
    pub actor_tenant: String,
    pub actor_key_id: Option<String>,
    /// `key.create`, `key.revoke`, `tenant.create`, `tenant.update`.
    pub action: String,
    /// The key or tenant acted on.
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditResponse {
    pub events: Vec<AuditEvent>,
}
