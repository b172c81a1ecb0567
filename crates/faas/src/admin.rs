//! `faas keys|tenants|usage|audit|whoami`: API keys, tenants and their quotas, what a tenant
//! used, and the audit trail, from the command line. Tables by default (times in UTC), `--json`
//! for the answers as they are.

use clap::{Args, Subcommand, ValueEnum};
use faas_common::{KeyCreateRequest, Quotas, Role, TenantCreateRequest, TenantUpdateRequest};
use serde_json::Value;

use crate::http::{print_json, Api, ApiArgs};

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: KeysCmd,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Make a key; prints its secret, which is not shown again.
    Create {
        name: String,
        /// The tenant it acts for [default: yours].
        #[arg(long)]
        tenant: Option<String>,
        /// `admin` or `member` [default: member].
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// It stops working this many seconds from now.
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    /// The keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key: it stops working at once.
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: TenantsCmd,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCmd {
    /// Make a tenant, with the quotas given (the others are the server's defaults).
    Create {
        /// Lowercase letters, digits, `-` and `_` [default: generated].
        id: Option<String>,
        /// A name to show.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// The tenants and the limits in force.
    List,
    /// A tenant's quotas: its own settings and the limits in force.
    Get { id: String },
    /// Replace a tenant's quotas with these: one not given goes back to the server's default.
    Set {
        id: String,
        /// A name to show.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
}

/// A tenant's quota settings; 0 is no limit.
#[derive(Args, Debug)]
#[command(next_help_heading = "Quotas (0: no limit)")]
pub struct QuotaArgs {
    /// Sandboxes alive at once (executions, running instances, function sandboxes).
    #[arg(long, value_name = "N")]
    pub concurrent_sandboxes: Option<u64>,
    /// Instances, running or stopped.
    #[arg(long, value_name = "N")]
    pub instances: Option<u64>,
    /// Total memory limit of the live sandboxes (MiB).
    #[arg(long, value_name = "N")]
    pub memory_mb: Option<u64>,
    /// Bytes of snapshots kept.
    #[arg(long, value_name = "N")]
    pub snapshot_bytes: Option<u64>,
    /// Functions deployed.
    #[arg(long, value_name = "N")]
    pub functions: Option<u64>,
    /// Async invocations queued or running.
    #[arg(long, value_name = "N")]
    pub queued_invocations: Option<u64>,
    /// Requests per second (the refill rate of the tenant's token bucket).
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<u64>,
    /// Requests at once (the bucket's size) [server default: the rate].
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// Its networked sandboxes may reach the private ranges (10/8, 172.16/12, 192.168/16,
    /// 100.64/10).
    #[arg(long, value_name = "BOOL")]
    pub private_egress: Option<bool>,
}

impl QuotaArgs {
    fn quotas(&self) -> Quotas {
        Quotas {
            concurrent_sandboxes: self.concurrent_sandboxes,
            instances: self.instances,
            memory_mb: self.memory_mb,
            snapshot_bytes: self.snapshot_bytes,
            functions: self.functions,
            queued_invocations: self.queued_invocations,
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            private_egress: self.private_egress,
        }
    }
}

/// The quota fields, in the order tables show them.
const QUOTAS: [&str; 8] = [
    "concurrent_sandboxes",
    "instances",
    "memory_mb",
    "snapshot_bytes",
    "functions",
    "queued_invocations",
    "requests_per_second",
    "burst",
];

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GroupBy {
    Day,
    Function,
    Instance,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Function => "function",
            GroupBy::Instance => "instance",
        }
    }
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// From this time: YYYY-MM-DD (UTC midnight) or ms since the epoch [default: 30 days
    /// before --to].
    #[arg(long, value_name = "DATE|MS")]
    pub from: Option<String>,
    /// Up to this time, excluded: YYYY-MM-DD (UTC midnight) or ms [default: now].
    #[arg(long, value_name = "DATE|MS")]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "day")]
    pub group_by: GroupBy,
    /// Another tenant's (admin) [default: yours].
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// At most this many events, newest first [server default: 100].
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Args, Debug)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("expected admin or member, got {s:?}"))
}

/// A time of the API (ms since the epoch) as `YYYY-MM-DDTHH:MMZ`; `-` for none.
fn utc(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return "-".into();
    };
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000) / 1000);
    let (year, month, day) = faas_common::time::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60
    )
}

fn str_or<'a>(v: &'a Value, or: &'a str) -> &'a str {
    v.as_str().unwrap_or(or)
}

/// A limit in force: `-` for none (0).
fn limit(v: &Value) -> String {
    match v.as_u64() {
        Some(0) | None => "-".into(),
        Some(n) => n.to_string(),
    }
}

fn key_header() {
    println!(
        "{:<20} {:<16} {:<16} {:<6} {:<9} {:<17} {:<17} {:<17} STATUS",
        "ID", "NAME", "TENANT", "ROLE", "PREFIX", "CREATED", "EXPIRES", "LAST USED"
    );
}

fn key_row(k: &Value, now_ms: i64) {
    let status = if !k["revoked_at_ms"].is_null() {
        "revoked"
    } else if k["expires_at_ms"].as_i64().is_some_and(|t| t <= now_ms) {
        "expired"
    } else {
        "active"
    };
    println!(
        "{:<20} {:<16} {:<16} {:<6} {:<9} {:<17} {:<17} {:<17} {status}",
        str_or(&k["id"], ""),
        str_or(&k["name"], ""),
        str_or(&k["tenant"], ""),
        str_or(&k["role"], ""),
        str_or(&k["prefix"], ""),
        utc(&k["created_at_ms"]),
        utc(&k["expires_at_ms"]),
        utc(&k["last_used_at_ms"]),
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn keys(a: KeysArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let (_, v) = match &a.cmd {
        KeysCmd::Create {
            name,
            tenant,
            role,
            expires_in,
        } => {
            let body = KeyCreateRequest {
                name: name.clone(),
                tenant: tenant.clone(),
                role: *role,
                expires_in_s: *expires_in,
            };
            api.send(api.http.post(api.url("/api/v1/keys")).json(&body))
                .await?
        }
        KeysCmd::List { tenant } => {
            let mut req = api.http.get(api.url("/api/v1/keys"));
            if let Some(t) = tenant {
                req = req.query(&[("tenant", t)]);
            }
            api.send(req).await?
        }
        KeysCmd::Revoke { id } => {
            api.send(api.http.delete(api.url(&format!("/api/v1/keys/{id}"))))
                .await?
        }
    };
    if a.api.json {
        print_json(&v)?;
        return Ok(0);
    }
    match &a.cmd {
        KeysCmd::Create { .. } => {
            println!(
                "made key {} ({}): tenant {}, role {}, expires {}",
                str_or(&v["id"], ""),
                str_or(&v["name"], ""),
                str_or(&v["tenant"], ""),
                str_or(&v["role"], ""),
                match utc(&v["expires_at_ms"]).as_str() {
                    "-" => "never".to_string(),
                    t => t.to_string(),
                }
            );
            println!();
            println!("    {}", str_or(&v["secret"], ""));
            println!();
            println!("This is the key's secret. Keep it now: it is not shown again.");
        }
        KeysCmd::List { .. } => {
            let now = now_ms();
            key_header();
            for k in v["keys"].as_array().into_iter().flatten() {
                key_row(k, now);
            }
        }
        KeysCmd::Revoke { id } => println!("revoked {id}"),
    }
    Ok(0)
}

fn tenant_header() {
    println!(
        "{:<16} {:<20} {:<17} {:>9} {:>9} {:>8} {:>14} {:>9} {:>8} {:>6} {:>6}",
        "ID",
        "NAME",
        "CREATED",
        "SANDBOXES",
        "INSTANCES",
        "MEM_MB",
        "SNAPSHOT_BYTES",
        "FUNCTIONS",
        "QUEUED",
        "RPS",
        "BURST"
    );
}

/// A tenant with the limits in force (`-`: none).
fn tenant_row(t: &Value) {
    let e = |name: &str| limit(&t["effective"][name]);
    println!(
        "{:<16} {:<20} {:<17} {:>9} {:>9} {:>8} {:>14} {:>9} {:>8} {:>6} {:>6}",
        str_or(&t["id"], ""),
        str_or(&t["name"], "-"),
        utc(&t["created_at_ms"]),
        e(QUOTAS[0]),
        e(QUOTAS[1]),
        e(QUOTAS[2]),
        e(QUOTAS[3]),
        e(QUOTAS[4]),
        e(QUOTAS[5]),
        e(QUOTAS[6]),
        e(QUOTAS[7]),
    );
}

/// One tenant: its row, then each quota's own setting and the limit in force.
fn tenant_detail(t: &Value) {
    println!(
        "tenant {} ({}), created {}",
        str_or(&t["id"], ""),
        str_or(&t["name"], "no name"),
        utc(&t["created_at_ms"])
    );
    println!("{:<22} {:>14} {:>14}", "QUOTA", "SETTING", "IN FORCE");
    for name in QUOTAS {
        let setting = match t["quotas"][name].as_u64() {
            None => "default".to_string(),
            Some(n) => n.to_string(),
        };
        let in_force = match limit(&t["effective"][name]).as_str() {
            "-" => "none".to_string(),
            n => n.to_string(),
        };
        println!("{name:<22} {setting:>14} {in_force:>14}");
    }
}

pub async fn tenants(a: TenantsArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let path = |id: &str| api.url(&format!("/api/v1/tenants/{id}"));
    let (_, v) = match &a.cmd {
        TenantsCmd::Create { id, name, quotas } => {
            let body = TenantCreateRequest {
                id: id.clone(),
                name: name.clone(),
                quotas: quotas.quotas(),
            };
            api.send(api.http.post(api.url("/api/v1/tenants")).json(&body))
                .await?
        }
        TenantsCmd::List => api.send(api.http.get(api.url("/api/v1/tenants"))).await?,
        TenantsCmd::Get { id } => api.send(api.http.get(path(id))).await?,
        TenantsCmd::Set { id, name, quotas } => {
            let body = TenantUpdateRequest {
                quotas: quotas.quotas(),
                name: name.clone(),
            };
            api.send(api.http.put(path(id)).json(&body)).await?
        }
    };
    if a.api.json {
        print_json(&v)?;
    } else if let TenantsCmd::List = a.cmd {
        tenant_header();
        v["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(tenant_row);
    } else {
        tenant_detail(&v);
    }
    Ok(0)
}

fn usage_line(key: &str, r: &Value) {
    let n = |f: &str| r[f].as_u64().unwrap_or(0);
    let x = |f: &str| r[f].as_f64().unwrap_or(0.0);
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>8.0}",
        key,
        n("executions"),
        n("instance_execs"),
        n("invocations"),
        x("instance_seconds"),
        x("wall_ms") / 1000.0,
        x("cpu_ms") / 1000.0,
        x("memory_mib_s"),
        x("peak_memory_mb"),
    );
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let mut query = vec![("group_by", a.group_by.as_str().to_string())];
    for (name, v) in [("from", &a.from), ("to", &a.to), ("tenant", &a.tenant)] {
        if let Some(v) = v {
            query.push((name, v.clone()));
        }
    }
    let (_, v) = api
        .send(api.http.get(api.url("/api/v1/usage")).query(&query))
        .await?;
    if a.api.json {
        print_json(&v)?;
        return Ok(0);
    }
    println!(
        "tenant {}, {} to {}",
        str_or(&v["tenant"], ""),
        utc(&v["from_ms"]),
        utc(&v["to_ms"])
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}",
        a.group_by.as_str().to_uppercase(),
        "EXECS",
        "INST_EXECS",
        "INVOKES",
        "INSTANCE_S",
        "WALL_S",
        "CPU_S",
        "MEM_MIB_S",
        "PEAK_MB"
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        usage_line(str_or(&r["key"], ""), r);
    }
    usage_line("total", &v["total"]);
    Ok(0)
}

pub async fn audit(a: AuditArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let mut req = api.http.get(api.url("/api/v1/audit"));
    if let Some(n) = a.limit {
        req = req.query(&[("limit", n)]);
    }
    let (_, v) = api.send(req).await?;
    if a.api.json {
        print_json(&v)?;
        return Ok(0);
    }
    println!(
        "{:<17} {:<16} {:<20} {:<14} {:<20} DETAIL",
        "AT", "TENANT", "KEY", "ACTION", "TARGET"
    );
    for e in v["events"].as_array().into_iter().flatten() {
        let detail = match &e["detail"] {
            Value::Null => "-".to_string(),
            Value::Object(o) if o.is_empty() => "-".to_string(),
            d => d.to_string(),
        };
        println!(
            "{:<17} {:<16} {:<20} {:<14} {:<20} {detail}",
            utc(&e["at_ms"]),
            str_or(&e["actor_tenant"], ""),
            str_or(&e["actor_key_id"], "-"),
            str_or(&e["action"], ""),
            str_or(&e["target"], ""),
        );
    }
    Ok(0)
}

pub async fn whoami(a: WhoamiArgs) -> anyhow::Result<u8> {
    let api = Api::new(&a.api.connect)?;
    let (_, v) = api
        .send(api.http.get(api.url("/api/v1/auth/whoami")))
        .await?;
    if a.api.json {
        print_json(&v)?;
    } else {
        println!(
            "tenant {}, role {}, key {}",
            str_or(&v["tenant"], ""),
            str_or(&v["role"], ""),
            str_or(&v["key_id"], "none")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(&json!(0)), "1970-01-01T00:00Z");
        assert_eq!(utc(&json!(951_782_400_000_i64)), "2000-02-29T00:00Z");
        assert_eq!(utc(&json!(1_714_567_890_123_i64)), "2024-05-01T12:51Z");
        assert_eq!(utc(&Value::Null), "-");
    }

    #[test]
    fn quota_flags_set_only_what_is_given() {
        let q = QuotaArgs {
            concurrent_sandboxes: None,
            instances: Some(5),
            memory_mb: None,
            snapshot_bytes: None,
            functions: None,
            queued_invocations: None,
            requests_per_second: Some(0),
            burst: None,
            private_egress: None,
        }
        .quotas();
        assert_eq!(
            serde_json::to_value(q).unwrap(),
            json!({"instances": 5, "requests_per_second": 0})
        );
    }
}
