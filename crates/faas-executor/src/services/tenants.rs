//! Tenants and their keys, quotas, request rates, usage and audit trail.
//!
//! - Authentication: a key is `faas_` and 64 hex digits (256 random bits). Only its SHA-256 is
//!   stored; a request's key is hashed and looked up by that hash, then the hashes are compared
//!   in constant time. Keys found are cached for [`KEY_CACHE_TTL`]; a revocation through this
//!   server drops the cached key at once, one through another server sharing the store is seen
//!   within that time.
//! - Quotas: each tenant's effective limits (its settings over the server's defaults) and its
//!   live counters are kept in memory; a [`SandboxLease`] holds one live sandbox and its memory
//!   until it drops. Counts kept in the store (instances, functions, queued invocations,
//!   snapshot bytes) are checked with [`Tenants::check_count`] before anything is made.
//! - Rates: one token bucket per tenant (`governor`), refilled at `requests_per_second`,
//!   `burst` deep.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_common::{
    AuditEvent, Caller, KeyCreateRequest, KeyInfo, Quotas, Role, TenantCreateRequest, TenantInfo,
    TenantUpdateRequest, UsageResponse, UsageRow, DEFAULT_TENANT,
};
use faas_store::{
    now_ms, AuditRecord, KeyRecord, Store, TenantRecord, UsageGroup, UsageRecord, UsageSum,
};
use governor::{Quota, RateLimiter};
use sha2::Digest;

use crate::error::{Error, Result};

/// How long a key found in the store is trusted without reading it again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// The prefix every key starts with.
pub const KEY_PREFIX: &str = "faas_";

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::DefaultClock,
>;

/// A limit of [`Quotas`] checked against a count the caller reads from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Instances,
    Functions,
    QueuedInvocations,
    SnapshotBytes,
}

impl Counted {
    fn name(self) -> &'static str {
        match self {
            Counted::Instances => "instances",
            Counted::Functions => "functions",
            Counted::QueuedInvocations => "queued_invocations",
            Counted::SnapshotBytes => "snapshot_bytes",
        }
    }

    fn limit(self, q: &Quotas) -> u64 {
        match self {
            Counted::Instances => q.instances,
            Counted::Functions => q.functions,
            Counted::QueuedInvocations => q.queued_invocations,
            Counted::SnapshotBytes => q.snapshot_bytes,
        }
        .unwrap_or(0)
    }
}

/// A tenant's live sandboxes and their memory.
#[derive(Debug, Default)]
struct Live {
    sandboxes: AtomicU64,
    memory_mb: AtomicU64,
}

/// What this server knows of one tenant.
struct TenantState {
    effective: Quotas,
    limiter: Option<Limiter>,
    live: Arc<Live>,
}

struct CachedKey {
    rec: KeyRecord,
    read: Instant,
}

/// One live sandbox of a tenant, counted against its quotas until dropped.
#[derive(Debug)]
pub struct SandboxLease {
    live: Arc<Live>,
    memory_mb: u64,
}

impl Drop for SandboxLease {
    fn drop(&mut self) {
        self.live.sandboxes.fetch_sub(1, Ordering::SeqCst);
        self.live
            .memory_mb
            .fetch_sub(self.memory_mb, Ordering::SeqCst);
    }
}

pub struct Tenants {
    store: Option<Store>,
    defaults: Quotas,
    keys: Mutex<HashMap<String, CachedKey>>,
    tenants: Mutex<HashMap<String, Arc<TenantState>>>,
}

/// A new key's secret: the prefix and 32 random bytes in hex.
fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a key: {e}")))?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

fn hash_secret(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

fn key_info(k: &KeyRecord, secret: Option<String>) -> KeyInfo {
    KeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        tenant: k.tenant.clone(),
        role: Role::parse(&k.role).unwrap_or(Role::Member),
        prefix: k.prefix.clone(),
        created_at_ms: k.created_ms,
        expires_at_ms: k.expires_ms,
        revoked_at_ms: k.revoked_ms,
        secret,
    }
}

fn check_tenant_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(
            "a tenant id is 1 to 64 lowercase letters, digits, '-' or '_'".into(),
        ))
    }
}

fn admin_only(caller: &Caller) -> Result<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden("this needs an admin key".into()))
    }
}

impl Tenants {
    pub fn new(store: Option<Store>, defaults: Quotas) -> Arc<Self> {
        Arc::new(Tenants {
            store,
            defaults,
            keys: Default::default(),
            tenants: Default::default(),
        })
    }

    fn store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or_else(|| {
            Error::Unsupported("this server has no store: no tenants or keys".into())
        })
    }

    fn audit(
        caller: &Caller,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> AuditRecord {
        AuditRecord {
            id: 0,
            at_ms: now_ms(),
            actor_tenant: caller.tenant.clone(),
            actor_key_id: caller.key_id.clone(),
            action: action.into(),
            target: target.into(),
            detail,
        }
    }

    // ---- authentication ----

    /// The caller a key belongs to; `unauthenticated` for a key that is unknown, expired or
    /// revoked. The key itself is never put in an error.
    pub async fn authenticate(&self, secret: &str) -> Result<Caller> {
        let unknown = || Error::Unauthenticated("unknown API key".into());
        if !secret.starts_with(KEY_PREFIX) || secret.len() > 256 {
            return Err(unknown());
        }
        let hash = hash_secret(secret);
        let cached = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.get(&hash)
                .filter(|c| c.read.elapsed() < KEY_CACHE_TTL)
                .map(|c| c.rec.clone())
        };
        let rec = match cached {
            Some(rec) => rec,
            None => {
                let rec = self
                    .store()?
                    .key_by_hash(&hash)
                    .await?
                    .ok_or_else(unknown)?;
                self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    hash.clone(),
                    CachedKey {
                        rec: rec.clone(),
                        read: Instant::now(),
                    },
                );
                rec
            }
        };
        use subtle::ConstantTimeEq;
        if !bool::from(rec.hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(unknown());
        }
        if rec.revoked_ms.is_some() {
            return Err(Error::Unauthenticated("this API key was revoked".into()));
        }
        if rec.expires_ms.is_some_and(|t| t <= now_ms()) {
            return Err(Error::Unauthenticated("this API key has expired".into()));
        }
        Ok(Caller {
            tenant: rec.tenant,
            role: Role::parse(&rec.role).unwrap_or(Role::Member),
            key_id: Some(rec.id),
        })
    }

    /// On a store with no key yet: makes the default tenant and an admin key for it, and
    /// returns the key's secret (to be written where the operator finds it).
    pub async fn bootstrap_admin_key(&self) -> Result<Option<String>> {
        let store = self.store()?;
        self.ensure_default_tenant().await?;
        if store.count_keys().await? > 0 {
            return Ok(None);
        }
        let secret = new_secret()?;
        store
            .insert_key(
                &self.key_record("admin", DEFAULT_TENANT, Role::Admin, None, &secret),
                None,
            )
            .await?;
        Ok(Some(secret))
    }

    async fn ensure_default_tenant(&self) -> Result<()> {
        let store = self.store()?;
        if store.get_tenant(DEFAULT_TENANT).await?.is_none() {
            let t = TenantRecord {
                id: DEFAULT_TENANT.into(),
                name: Some("Default".into()),
                quotas: serde_json::json!({}),
                created_ms: now_ms(),
            };
            let system = Caller::unauthenticated_admin();
            store
                .insert_tenant(
                    &t,
                    &Self::audit(
                        &system,
                        "tenant.create",
                        DEFAULT_TENANT,
                        serde_json::json!({"bootstrap": true}),
                    ),
                )
                .await?;
        }
        Ok(())
    }

    fn key_record(
        &self,
        name: &str,
        tenant: &str,
        role: Role,
        expires_ms: Option<i64>,
        secret: &str,
    ) -> KeyRecord {
        KeyRecord {
            id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            tenant: tenant.into(),
            name: name.into(),
            role: role.as_str().into(),
            hash: hash_secret(secret),
            // `faas_` and four hex digits: enough to tell keys apart, nothing to guess with.
            prefix: secret[..KEY_PREFIX.len() + 4].to_string(),
            created_ms: now_ms(),
            expires_ms,
            revoked_ms: None,
        }
    }

    // ---- keys ----

    pub async fn key_create(&self, caller: &Caller, req: KeyCreateRequest) -> Result<KeyInfo> {
        admin_only(caller)?;
        let store = self.store()?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(Error::InvalidRequest(
                "a key's name is 1 to 128 characters".into(),
            ));
        }
        let tenant = req.tenant.unwrap_or_else(|| caller.tenant.clone());
        if store.get_tenant(&tenant).await?.is_none() {
            return Err(Error::NotFound(format!("no tenant {tenant}")));
        }
        let expires_ms = match req.expires_in_s {
            Some(0) => {
                return Err(Error::InvalidRequest(
                    "expires_in_s must be at least 1".into(),
                ))
            }
            Some(s) => Some(now_ms().saturating_add((s.min(i64::MAX as u64 / 1000) * 1000) as i64)),
            None => None,
        };
        let role = req.role.unwrap_or(Role::Member);
        let secret = new_secret()?;
        let rec = self.key_record(name, &tenant, role, expires_ms, &secret);
        let audit = Self::audit(
            caller,
            "key.create",
            &rec.id,
            serde_json::json!({"name": rec.name, "tenant": rec.tenant, "role": rec.role, "expires_at_ms": rec.expires_ms}),
        );
        store.insert_key(&rec, Some(&audit)).await?;
        Ok(key_info(&rec, Some(secret)))
    }

    pub async fn key_list(&self, caller: &Caller, tenant: Option<&str>) -> Result<Vec<KeyInfo>> {
        admin_only(caller)?;
        Ok(self
            .store()?
            .list_keys(tenant)
            .await?
            .iter()
            .map(|k| key_info(k, None))
            .collect())
    }

    /// Revokes a key; it stops working at once on this server.
    pub async fn key_revoke(&self, caller: &Caller, id: &str) -> Result<()> {
        admin_only(caller)?;
        let store = self.store()?;
        let rec = store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no key {id}")))?;
        let audit = Self::audit(
            caller,
            "key.revoke",
            id,
            serde_json::json!({"name": rec.name, "tenant": rec.tenant}),
        );
        store.revoke_key(id, &audit).await?;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| c.rec.id != id);
        Ok(())
    }

    // ---- tenants ----

    fn tenant_info(&self, t: &TenantRecord) -> Result<TenantInfo> {
        let quotas: Quotas = serde_json::from_value(t.quotas.clone())
            .map_err(|e| Error::Internal(format!("tenant {} quotas: {e}", t.id)))?;
        Ok(TenantInfo {
            id: t.id.clone(),
            name: t.name.clone(),
            created_at_ms: t.created_ms,
            effective: quotas.over(&self.defaults),
            quotas,
        })
    }

    pub async fn tenant_create(
        &self,
        caller: &Caller,
        req: TenantCreateRequest,
    ) -> Result<TenantInfo> {
        admin_only(caller)?;
        let id = match req.id {
            Some(id) => id,
            None => format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        check_tenant_id(&id)?;
        let t = TenantRecord {
            id: id.clone(),
            name: req.name,
            quotas: serde_json::to_value(req.quotas).expect("serializable"),
            created_ms: now_ms(),
        };
        let audit = Self::audit(
            caller,
            "tenant.create",
            &id,
            serde_json::json!({"quotas": t.quotas}),
        );
        if !self.store()?.insert_tenant(&t, &audit).await? {
            return Err(Error::Conflict(format!("tenant {id} exists")));
        }
        self.forget_tenant(&id);
        self.tenant_info(&t)
    }

    pub async fn tenant_list(&self, caller: &Caller) -> Result<Vec<TenantInfo>> {
        admin_only(caller)?;
        self.store()?
            .list_tenants()
            .await?
            .iter()
            .map(|t| self.tenant_info(t))
            .collect()
    }

    /// A tenant and its quotas: an admin sees any, a member its own.
    pub async fn tenant_get(&self, caller: &Caller, id: &str) -> Result<TenantInfo> {
        if !caller.is_admin() && caller.tenant != id {
            return Err(Error::NotFound(format!("no tenant {id}")));
        }
        let t = self
            .store()?
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no tenant {id}")))?;
        self.tenant_info(&t)
    }

    pub async fn tenant_update(
        &self,
        caller: &Caller,
        id: &str,
        req: TenantUpdateRequest,
    ) -> Result<TenantInfo> {
        admin_only(caller)?;
        let store = self.store()?;
        let mut t = store
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no tenant {id}")))?;
        let before = t.quotas.clone();
        t.quotas = serde_json::to_value(req.quotas).expect("serializable");
        if req.name.is_some() {
            t.name = req.name;
        }
        let audit = Self::audit(
            caller,
            "tenant.update",
            id,
            serde_json::json!({"quotas_before": before, "quotas": t.quotas}),
        );
        if !store.update_tenant(&t, &audit).await? {
            return Err(Error::NotFound(format!("no tenant {id}")));
        }
        self.forget_tenant(id);
        self.tenant_info(&t)
    }

    /// Makes the next use of `id` read its settings again (its live counters stay).
    fn forget_tenant(&self, id: &str) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tenants.remove(id) {
            // Kept apart so the new state counts the same live sandboxes.
            tenants.insert(format!("\0live:{id}"), old);
        }
    }

    /// What this server knows of tenant `id` (its settings read once, then kept).
    async fn state(&self, id: &str) -> Result<Arc<TenantState>> {
        if let Some(s) = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(s.clone());
        }
        let settings: Quotas = match &self.store {
            Some(store) => match store.get_tenant(id).await? {
                Some(t) => serde_json::from_value(t.quotas).unwrap_or_default(),
                None => Quotas::default(),
            },
            None => Quotas::default(),
        };
        let effective = settings.over(&self.defaults);
        let limiter = match effective
            .requests_per_second
            .and_then(|r| NonZeroU32::new(r.min(u32::MAX as u64) as u32))
        {
            Some(rate) => {
                let burst = effective
                    .burst
                    .and_then(|b| NonZeroU32::new(b.min(u32::MAX as u64) as u32))
                    .unwrap_or(rate);
                Some(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            }
            None => None,
        };
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = tenants.get(id) {
            return Ok(s.clone());
        }
        let live = tenants
            .remove(&format!("\0live:{id}"))
            .map(|old| old.live.clone())
            .unwrap_or_default();
        let s = Arc::new(TenantState {
            effective,
            limiter,
            live,
        });
        tenants.insert(id.to_string(), s.clone());
        Ok(s)
    }

    // ---- quotas and rates ----

    /// Takes one request from the tenant's bucket; `Err(wait)` when it is empty.
    pub async fn check_rate(&self, tenant: &str) -> Result<std::result::Result<(), Duration>> {
        let s = self.state(tenant).await?;
        Ok(match &s.limiter {
            None => Ok(()),
            Some(l) => l.check().map_err(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            }),
        })
    }

    /// Counts one live sandbox of `memory_mb` against the tenant's `concurrent_sandboxes` and
    /// `memory_mb` quotas, until the lease drops; `quota_exceeded` when either is used up.
    pub async fn lease_sandbox(&self, tenant: &str, memory_mb: u64) -> Result<SandboxLease> {
        let s = self.state(tenant).await?;
        let max_boxes = s.effective.concurrent_sandboxes.unwrap_or(0);
        let max_mem = s.effective.memory_mb.unwrap_or(0);
        let live = &s.live;
        let n = live.sandboxes.fetch_add(1, Ordering::SeqCst) + 1;
        let mem = live.memory_mb.fetch_add(memory_mb, Ordering::SeqCst) + memory_mb;
        let lease = SandboxLease {
            live: live.clone(),
            memory_mb,
        };
        if max_boxes > 0 && n > max_boxes {
            return Err(Error::QuotaExceeded(format!(
                "quota concurrent_sandboxes of {max_boxes} reached: wait for one to end"
            )));
        }
        if max_mem > 0 && mem > max_mem {
            return Err(Error::QuotaExceeded(format!(
                "quota memory_mb of {max_mem} MiB reached ({} MiB live, {memory_mb} asked)",
                mem - memory_mb
            )));
        }
        Ok(lease)
    }

    /// The tenant's limits as enforced (0: none).
    pub async fn effective(&self, tenant: &str) -> Result<Quotas> {
        Ok(self.state(tenant).await?.effective)
    }

    /// Counts a live sandbox whatever the quotas say (one found running after a restart).
    pub async fn lease_sandbox_unchecked(
        &self,
        tenant: &str,
        memory_mb: u64,
    ) -> Result<SandboxLease> {
        let s = self.state(tenant).await?;
        s.live.sandboxes.fetch_add(1, Ordering::SeqCst);
        s.live.memory_mb.fetch_add(memory_mb, Ordering::SeqCst);
        Ok(SandboxLease {
            live: s.live.clone(),
            memory_mb,
        })
    }

    /// Fails with `quota_exceeded` when `current + adding` passes the tenant's limit of `what`.
    pub async fn check_count(
        &self,
        tenant: &str,
        what: Counted,
        current: u64,
        adding: u64,
    ) -> Result<()> {
        let s = self.state(tenant).await?;
        let limit = what.limit(&s.effective);
        if limit > 0 && current.saturating_add(adding) > limit {
            return Err(Error::QuotaExceeded(format!(
                "quota {} of {limit} reached (using {current})",
                what.name()
            )));
        }
        Ok(())
    }

    // ---- usage and audit ----

    /// Usage of a tenant (the caller's own; an admin may name any) in `[from_ms, to_ms)`.
    pub async fn usage(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        group_by: Option<&str>,
    ) -> Result<UsageResponse> {
        let tenant = match tenant {
            Some(t) if t != caller.tenant => {
                admin_only(caller)?;
                t.to_string()
            }
            _ => caller.tenant.clone(),
        };
        let group_name = group_by.unwrap_or("day");
        let group = match group_name {
            "day" => UsageGroup::Day,
            "function" => UsageGroup::Function,
            "instance" => UsageGroup::Instance,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "group_by {other:?}: use day, function or instance"
                )))
            }
        };
        let to_ms = to_ms.unwrap_or_else(|| now_ms() + 1);
        let from_ms = from_ms.unwrap_or(to_ms - 30 * 86_400_000);
        if from_ms > to_ms {
            return Err(Error::InvalidRequest("from is after to".into()));
        }
        let sums = self
            .store()?
            .usage_sums(&tenant, from_ms, to_ms, group)
            .await?;
        let row = |key: String, s: &UsageSum| UsageRow {
            key,
            executions: s.executions.max(0) as u64,
            instance_execs: s.instance_execs.max(0) as u64,
            invocations: s.invocations.max(0) as u64,
            instance_seconds: s.instance_ms / 1000.0,
            wall_ms: s.wall_ms,
            cpu_ms: s.cpu_ms,
            memory_mib_s: s.memory_mib_s,
            peak_memory_mb: s.peak_memory_bytes as f64 / (1024.0 * 1024.0),
        };
        let mut total = UsageSum::default();
        let mut rows = Vec::new();
        for s in &sums {
            total.executions += s.executions;
            total.instance_execs += s.instance_execs;
            total.invocations += s.invocations;
            total.instance_ms += s.instance_ms;
            total.wall_ms += s.wall_ms;
            total.cpu_ms += s.cpu_ms;
            total.memory_mib_s += s.memory_mib_s;
            total.peak_memory_bytes = total.peak_memory_bytes.max(s.peak_memory_bytes);
            let key = match group {
                UsageGroup::Day => day_of(s.key.parse().unwrap_or(0)),
                _ => s.key.clone(),
            };
            rows.push(row(key, s));
        }
        Ok(UsageResponse {
            tenant,
            from_ms,
            to_ms,
            group_by: group_name.into(),
            rows,
            total: row("total".into(), &total),
        })
    }

    pub async fn audit_list(&self, caller: &Caller, limit: Option<i64>) -> Result<Vec<AuditEvent>> {
        admin_only(caller)?;
        let limit = limit.unwrap_or(100).clamp(1, 10_000);
        Ok(self
            .store()?
            .list_audit(limit)
            .await?
            .into_iter()
            .map(|a| AuditEvent {
                id: a.id,
                at_ms: a.at_ms,
                actor_tenant: a.actor_tenant,
                actor_key_id: a.actor_key_id,
                action: a.action,
                target: a.target,
                detail: a.detail,
            })
            .collect())
    }
}

/// `YYYY-MM-DD` (UTC) of a time in ms since the epoch.
pub fn day_of(ms: i64) -> String {
    let (y, m, d) = faas_common::time::civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// What a box used, as a usage row of `tenant`.
pub fn usage_record(
    id: String,
    tenant: &str,
    kind: &str,
    subject: Option<&str>,
    wall: Duration,
    used: Option<crate::sandbox::BoxUsage>,
    memory_limit_mb: u64,
) -> UsageRecord {
    let used = used.unwrap_or_default();
    UsageRecord {
        id,
        tenant: tenant.into(),
        kind: kind.into(),
        subject: subject.map(str::to_string),
        wall_ms: wall.as_secs_f64() * 1000.0,
        cpu_ms: used.cpu_ns as f64 / 1e6,
        memory_mib_s: memory_limit_mb as f64 * wall.as_secs_f64(),
        peak_memory_bytes: used.memory_peak_bytes.min(i64::MAX as u64) as i64,
        at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_796_256_000_000 + 86_399_999), "2026-12-03");
    }

    #[test]
    fn secrets_are_256_bits_with_the_prefix() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }

    #[test]
    fn tenant_ids_are_checked() {
        for bad in ["", "A", "a b", "../x", "x;drop", &"x".repeat(65)] {
            assert!(check_tenant_id(bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "t-1", "a_b"] {
            check_tenant_id(good).unwrap();
        }
    }

    #[tokio::test]
    async fn leases_count_against_the_quotas_and_drop() {
        let q = Quotas {
            concurrent_sandboxes: Some(2),
            memory_mb: Some(300),
            ..Default::default()
        };
        let t = Tenants::new(None, q);
        let a = t.lease_sandbox("x", 100).await.unwrap();
        let _b = t.lease_sandbox("x", 100).await.unwrap();
        let e = t.lease_sandbox("x", 100).await.unwrap_err();
        assert!(
            matches!(e, Error::QuotaExceeded(ref m) if m.contains("concurrent_sandboxes")),
            "{e}"
        );
        drop(a);
        let e = t.lease_sandbox("x", 250).await.unwrap_err();
        assert!(
            matches!(e, Error::QuotaExceeded(ref m) if m.contains("memory_mb")),
            "{e}"
        );
        t.lease_sandbox("x", 100).await.unwrap();
        // Another tenant has its own counters.
        t.lease_sandbox("y", 100).await.unwrap();
    }

    #[tokio::test]
    async fn a_bucket_serves_its_burst_then_refuses() {
        let q = Quotas {
            requests_per_second: Some(10),
            burst: Some(5),
            ..Default::default()
        };
        let t = Tenants::new(None, q);
        for _ in 0..5 {
            t.check_rate("x").await.unwrap().unwrap();
        }
        let wait = t.check_rate("x").await.unwrap().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        t.check_rate("y").await.unwrap().unwrap();
    }
}
