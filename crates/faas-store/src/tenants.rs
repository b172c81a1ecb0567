//! Tenants, API keys, usage and the audit trail.
//!
//! A key is kept only as the SHA-256 of its secret (the lookup is by that hash, so the secret
//! itself is never compared or stored). Usage rows are keyed by what they measure: writing one
//! twice (a retry, a restart) counts it once.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{json_col, now_ms, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub id: String,
    pub name: Option<String>,
    /// The tenant's own quota settings, as the service wrote them.
    pub quotas: serde_json::Value,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// `admin` or `member`.
    pub role: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub prefix: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// What one execution, instance exec, instance run or invocation attempt used.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageRecord {
    /// What it measures (`exec:<execution id>`, `inst:<id>:<started ms>`, `inv:<id>:<attempt>`).
    pub id: String,
    pub tenant: String,
    /// `execution`, `instance_exec`, `instance` or `invocation`.
    pub kind: String,
    /// The function name or instance id.
    pub subject: Option<String>,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub memory_mib_s: f64,
    pub peak_memory_bytes: i64,
    pub at_ms: i64,
}

/// Sums of usage rows, per group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageSum {
    /// The group: a day's start (ms), a function name or an instance id, as text.
    pub key: String,
    pub executions: i64,
    pub instance_execs: i64,
    pub invocations: i64,
    pub instance_ms: f64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub memory_mib_s: f64,
    pub peak_memory_bytes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Day,
    Function,
    Instance,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor_tenant: String,
    pub actor_key_id: Option<String>,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

fn tenant_row(row: &AnyRow) -> Result<TenantRecord> {
    Ok(TenantRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        quotas: json_col(row, "quotas", "tenant")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn key_row(row: &AnyRow) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

/// Writes `u` in `tx` (nothing when a row of that id exists).
pub(crate) async fn insert_usage_tx(tx: &mut Transaction<'_, Any>, u: &UsageRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO usage (id, tenant, kind, subject, wall_ms, cpu_ms, memory_mib_s, \
         peak_memory_bytes, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&u.id)
    .bind(&u.tenant)
    .bind(&u.kind)
    .bind(&u.subject)
    .bind(u.wall_ms)
    .bind(u.cpu_ms)
    .bind(u.memory_mib_s)
    .bind(u.peak_memory_bytes)
    .bind(u.at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    // ---- tenants ----

    /// False when a tenant of that id exists.
    pub async fn insert_tenant(&self, t: &TenantRecord, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO tenants (id, name, quotas, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.quotas.to_string())
        .bind(t.created_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<TenantRecord>> {
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_row).transpose()
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY created_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_row).collect()
    }

    /// Replaces a tenant's name and quotas; false when there is no such tenant.
    pub async fn update_tenant(&self, t: &TenantRecord, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE tenants SET name = $1, quotas = $2 WHERE id = $3")
            .bind(&t.name)
            .bind(t.quotas.to_string())
            .bind(&t.id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- keys ----

    /// Records a key (and, when given, the audit event of its making) in one transaction.
    pub async fn insert_key(&self, k: &KeyRecord, audit: Option<&AuditRecord>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, role, hash, prefix, created_ms, expires_ms, \
             revoked_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&k.id)
        .bind(&k.tenant)
        .bind(&k.name)
        .bind(&k.role)
        .bind(&k.hash)
        .bind(&k.prefix)
        .bind(k.created_ms)
        .bind(k.expires_ms)
        .bind(k.revoked_ms)
        .execute(&mut *tx)
        .await?;
        if let Some(a) = audit {
            insert_audit_tx(&mut tx, a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    pub async fn count_keys(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Keys of `tenant`, or of every tenant.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query("SELECT * FROM api_keys WHERE tenant = $1 ORDER BY created_ms, id")
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM api_keys ORDER BY created_ms, id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(key_row).collect()
    }

    /// Marks a key revoked (keeping the first time); false when there is no such key.
    pub async fn revoke_key(&self, id: &str, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- usage ----

    pub async fn insert_usage(&self, u: &UsageRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_usage_tx(&mut tx, u).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Usage of `tenant` in `[from_ms, to_ms)`, summed per group (days start at UTC midnight).
    pub async fn usage_sums(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        group: UsageGroup,
    ) -> Result<Vec<UsageSum>> {
        const DAY_MS: i64 = 86_400_000;
        let key = match group {
            UsageGroup::Day => format!("CAST((at_ms / {DAY_MS}) * {DAY_MS} AS TEXT)"),
            UsageGroup::Function | UsageGroup::Instance => "COALESCE(subject, '')".to_string(),
        };
        let only = match group {
            UsageGroup::Day => "",
            UsageGroup::Function => " AND kind = 'invocation'",
            UsageGroup::Instance => " AND kind IN ('instance', 'instance_exec')",
        };
        let sql = format!(
            "SELECT {key} AS k, \
             SUM(CASE WHEN kind = 'execution' THEN 1 ELSE 0 END) AS executions, \
             SUM(CASE WHEN kind = 'instance_exec' THEN 1 ELSE 0 END) AS instance_execs, \
             SUM(CASE WHEN kind = 'invocation' THEN 1 ELSE 0 END) AS invocations, \
             SUM(CASE WHEN kind = 'instance' THEN wall_ms ELSE 0.0 END) AS instance_ms, \
             SUM(CASE WHEN kind = 'instance' THEN 0.0 ELSE wall_ms END) AS wall_ms, \
             SUM(cpu_ms) AS cpu_ms, SUM(memory_mib_s) AS memory_mib_s, \
             MAX(peak_memory_bytes) AS peak \
             FROM usage WHERE tenant = $1 AND at_ms >= $2 AND at_ms < $3{only} \
             GROUP BY {key} ORDER BY MIN(at_ms), {key}"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageSum {
                    key: r.try_get("k")?,
                    executions: r.try_get("executions")?,
                    instance_execs: r.try_get("instance_execs")?,
                    invocations: r.try_get("invocations")?,
                    instance_ms: r.try_get("instance_ms")?,
                    wall_ms: r.try_get("wall_ms")?,
                    cpu_ms: r.try_get("cpu_ms")?,
                    memory_mib_s: r.try_get("memory_mib_s")?,
                    peak_memory_bytes: r.try_get("peak")?,
                })
            })
            .collect()
    }

    // ---- audit ----

    /// The newest `limit` events, newest first.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor_tenant: r.try_get("actor_tenant")?,
                    actor_key_id: r.try_get("actor_key_id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: json_col(r, "detail", "audit")?,
                })
            })
            .collect()
    }
}

async fn insert_audit_tx(tx: &mut Transaction<'_, Any>, a: &AuditRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at_ms, actor_tenant, actor_key_id, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.at_ms)
    .bind(&a.actor_tenant)
    .bind(&a.actor_key_id)
    .bind(&a.action)
    .bind(&a.target)
    .bind(a.detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::stores;

    fn usage(id: &str, kind: &str, subject: Option<&str>, at_ms: i64) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            tenant: "t".into(),
            kind: kind.into(),
            subject: subject.map(str::to_string),
            wall_ms: 100.0,
            cpu_ms: 50.0,
            memory_mib_s: 12.8,
            peak_memory_bytes: 1 << 20,
            at_ms,
        }
    }

    #[tokio::test]
    async fn usage_is_counted_once_and_summed_per_group() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            let day = 86_400_000;
            s.insert_usage(&usage("a", "execution", None, day))
                .await
                .unwrap();
            // The same row again (a retry, a restart): counted once.
            s.insert_usage(&usage("a", "execution", None, day))
                .await
                .unwrap();
            s.insert_usage(&usage("b", "invocation", Some("f"), day + 5))
                .await
                .unwrap();
            s.insert_usage(&usage("c", "instance", Some("i"), 2 * day))
                .await
                .unwrap();
            let mut other = usage("d", "execution", None, day);
            other.tenant = "u".into();
            s.insert_usage(&other).await.unwrap();
            let days = s
                .usage_sums("t", 0, 3 * day, UsageGroup::Day)
                .await
                .unwrap();
            assert_eq!(days.len(), 2, "{days:?}");
            assert_eq!(days[0].key, day.to_string());
            assert_eq!((days[0].executions, days[0].invocations), (1, 1));
            assert_eq!(days[0].cpu_ms, 100.0);
            assert_eq!(days[1].instance_ms, 100.0);
            assert_eq!(days[1].wall_ms, 0.0);
            assert_eq!(days[0].peak_memory_bytes, 1 << 20);
            let f = s
                .usage_sums("t", 0, 3 * day, UsageGroup::Function)
                .await
                .unwrap();
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].key, "f");
            let none = s.usage_sums("t", 0, day, UsageGroup::Day).await.unwrap();
            assert!(none.is_empty());
        }
    }

    #[tokio::test]
    async fn keys_are_found_by_hash_and_revoked_with_an_audit_event() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            let k = KeyRecord {
                id: "k1".into(),
                tenant: "t".into(),
                name: "n".into(),
                role: "member".into(),
                hash: "h1".into(),
                prefix: "faas_ab".into(),
                created_ms: 1,
                expires_ms: None,
                revoked_ms: None,
            };
            s.insert_key(&k, None).await.unwrap();
            assert_eq!(s.key_by_hash("h1").await.unwrap().unwrap(), k);
            assert!(s.key_by_hash("h2").await.unwrap().is_none());
            let a = AuditRecord {
                id: 0,
                at_ms: 2,
                actor_tenant: "default".into(),
                actor_key_id: None,
                action: "key.revoke".into(),
                target: "k1".into(),
                detail: serde_json::json!({"name": "n"}),
            };
            assert!(s.revoke_key("k1", &a).await.unwrap());
            assert!(!s.revoke_key("k2", &a).await.unwrap());
            assert!(s.get_key("k1").await.unwrap().unwrap().revoked_ms.is_some());
            let events = s.list_audit(10).await.unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].action, "key.revoke");
            assert_eq!(s.count_keys().await.unwrap(), 1);
        }
    }
}
