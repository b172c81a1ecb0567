//! Functions, their versions, and invocations (which are also the async queue).
//!
//! An async invocation is one row: recording it and queueing it is a single statement. Workers
//! claim due rows by writing a lease (owner and expiry) and counting the attempt; on PostgreSQL
//! the claim skips rows other nodes hold (`FOR UPDATE SKIP LOCKED`). Every later write of an
//! attempt's outcome is fenced by (owner, attempt), so a worker whose lease was taken over can
//! never overwrite the newer attempt.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::tenants::insert_usage_tx;
use crate::{json_col, now_ms, DbKind, Result, Store, StoreError, UsageRecord};

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub tenant: String,
    pub name: String,
    pub version: i64,
    /// Runtime, handler, image, env and limits, as the service wrote them.
    pub config: serde_json::Value,
    /// The deployed bytes; empty in lists.
    #[serde(skip)]
    pub code: Vec<u8>,
    pub code_sha256: String,
    pub created_ms: i64,
}

/// A function with its latest version.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRecord {
    pub tenant: String,
    pub name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub latest: VersionRecord,
}

/// What a deploy or update brings.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub config: serde_json::Value,
    pub code: Vec<u8>,
    pub code_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub tenant: String,
    pub function_name: String,
    pub version: i64,
    pub is_async: bool,
    /// `queued`, `running`, `succeeded`, `error`, `timeout` or `dead_letter`.
    pub status: String,
    pub payload: Vec<u8>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub logs: Option<String>,
    pub duration_ms: Option<f64>,
    pub cold: Option<bool>,
    pub attempts: i64,
    pub max_attempts: i64,
    /// One entry per finished or lost attempt.
    pub attempt_log: Vec<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    pub next_run_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub tenant: String,
    pub function: Option<String>,
    pub status: Option<String>,
    /// At most this many, newest first; 0 means 100.
    pub limit: i64,
}

const VERSION_COLS: &str = "tenant, name, version, config, code_sha256, created_ms";
const INVOCATION_COLS: &str =
    "id, tenant, function_name, version, is_async, status, payload, result, \
     error, logs, duration_ms, cold, attempts, max_attempts, attempt_log, idempotency_key, \
     callback_url, next_run_ms, lease_owner, lease_until_ms, created_ms, started_ms, finished_ms";

fn version_row(row: &AnyRow, with_code: bool) -> Result<VersionRecord> {
    Ok(VersionRecord {
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        config: json_col(row, "config", "function_version")?,
        code: if with_code {
            row.try_get("code")?
        } else {
            Vec::new()
        },
        code_sha256: row.try_get("code_sha256")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn function_record(row: &AnyRow) -> Result<FunctionRecord> {
    let latest = version_row(row, false)?;
    Ok(FunctionRecord {
        tenant: latest.tenant.clone(),
        name: latest.name.clone(),
        created_ms: row.try_get("f_created")?,
        updated_ms: row.try_get("f_updated")?,
        latest,
    })
}

fn opt_json(row: &AnyRow, col: &str) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Malformed {
            what: format!("invocation.{col}"),
            message: e.to_string(),
        })
    })
    .transpose()
}

fn invocation_row(row: &AnyRow) -> Result<InvocationRecord> {
    let log = json_col(row, "attempt_log", "invocation")?;
    Ok(InvocationRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        function_name: row.try_get("function_name")?,
        version: row.try_get("version")?,
        is_async: row.try_get::<i64, _>("is_async")? != 0,
        status: row.try_get("status")?,
        payload: row.try_get("payload")?,
        result: opt_json(row, "result")?,
        error: opt_json(row, "error")?,
        logs: row.try_get("logs")?,
        duration_ms: row.try_get("duration_ms")?,
        cold: row.try_get::<Option<i64>, _>("cold")?.map(|c| c != 0),
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        attempt_log: match log {
            serde_json::Value::Array(a) => a,
            _ => Vec::new(),
        },
        idempotency_key: row.try_get("idempotency_key")?,
        callback_url: row.try_get("callback_url")?,
        next_run_ms: row.try_get("next_run_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        created_ms: row.try_get("created_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
    })
}

fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

impl Store {
    // ---- functions ----

    /// Adds a version of function `name`: version 1 when it is new (only with `create`), the
    /// next number otherwise. `None` when `create` is false and there is no such function.
    pub async fn add_version(
        &self,
        tenant: &str,
        name: &str,
        new: &NewVersion,
        create: bool,
    ) -> Result<Option<VersionRecord>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The write comes first, so concurrent deploys of one function serialise on its row.
        let bumped: Option<i64> = sqlx::query_scalar(
            "UPDATE functions SET latest_version = latest_version + 1, updated_ms = $1 \
             WHERE tenant = $2 AND name = $3 RETURNING latest_version",
        )
        .bind(now)
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let version = match bumped {
            Some(v) => v,
            None if create => {
                sqlx::query(
                    "INSERT INTO functions (tenant, name, latest_version, created_ms, updated_ms) \
                     VALUES ($1, $2, 1, $3, $3)",
                )
                .bind(tenant)
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(
                        format!("function {name} is being deployed by another request"),
                    ),
                    e => e.into(),
                })?;
                1
            }
            None => return Ok(None),
        };
        let rec = VersionRecord {
            tenant: tenant.to_string(),
            name: name.to_string(),
            version,
            config: new.config.clone(),
            code: Vec::new(),
            code_sha256: new.code_sha256.clone(),
            created_ms: now,
        };
        sqlx::query(
            "INSERT INTO function_versions (tenant, name, version, config, code, code_sha256, \
             created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .bind(rec.config.to_string())
        .bind(&new.code)
        .bind(&new.code_sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn function_rows(&self, tenant: &str, name: Option<&str>) -> Result<Vec<FunctionRecord>> {
        let sql = format!(
            "SELECT f.created_ms AS f_created, f.updated_ms AS f_updated, v.tenant, v.name, \
             v.version, v.config, v.code_sha256, v.created_ms FROM functions f \
             JOIN function_versions v ON v.tenant = f.tenant AND v.name = f.name \
             AND v.version = f.latest_version WHERE f.tenant = $1 {} ORDER BY f.name",
            if name.is_some() {
                "AND f.name = $2"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        if let Some(n) = name {
            q = q.bind(n);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(function_record).collect()
    }

    pub async fn get_function(&self, tenant: &str, name: &str) -> Result<Option<FunctionRecord>> {
        Ok(self
            .function_rows(tenant, Some(name))
            .await?
            .into_iter()
            .next())
    }

    pub async fn list_functions(&self, tenant: &str) -> Result<Vec<FunctionRecord>> {
        self.function_rows(tenant, None).await
    }

    /// Every tenant's functions (for the platform's own use: the idle reaper).
    pub async fn list_all_functions(&self) -> Result<Vec<FunctionRecord>> {
        let rows = sqlx::query(
            "SELECT f.created_ms AS f_created, f.updated_ms AS f_updated, v.tenant, v.name, \
             v.version, v.config, v.code_sha256, v.created_ms FROM functions f \
             JOIN function_versions v ON v.tenant = f.tenant AND v.name = f.name \
             AND v.version = f.latest_version ORDER BY f.tenant, f.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(function_record).collect()
    }

    /// How many functions `tenant` has.
    pub async fn count_functions(&self, tenant: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM functions WHERE tenant = $1")
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// How many async invocations of `tenant` are queued or running.
    pub async fn count_pending_invocations(&self, tenant: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM invocations WHERE tenant = $1 AND is_async = 1 \
             AND status IN ('queued', 'running')",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?)
    }

    /// One version with its code.
    pub async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLS}, code FROM function_versions \
             WHERE tenant = $1 AND name = $2 AND version = $3"
        ))
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| version_row(&r, true)).transpose()
    }

    /// One version without its code.
    pub async fn version_meta(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<VersionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM function_versions \
             WHERE tenant = $1 AND name = $2 AND version = $3"
        ))
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| version_row(&r, false)).transpose()
    }

    pub async fn list_versions(&self, tenant: &str, name: &str) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM function_versions WHERE tenant = $1 AND name = $2 \
             ORDER BY version"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| version_row(r, false)).collect()
    }

    /// Deletes a function and its versions, and fails its queued invocations with `error`.
    /// Returns how many were failed, or `None` when there is no such function.
    pub async fn delete_function(
        &self,
        tenant: &str,
        name: &str,
        error: &serde_json::Value,
    ) -> Result<Option<u64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM functions WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM function_versions WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let failed = sqlx::query(
            "UPDATE invocations SET status = 'error', error = $1, finished_ms = $2, \
             lease_owner = NULL, lease_until_ms = NULL \
             WHERE tenant = $3 AND function_name = $4 AND status = 'queued'",
        )
        .bind(error.to_string())
        .bind(now)
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(failed.rows_affected()))
    }

    // ---- invocations ----

    fn insert_sql() -> String {
        format!(
            "INSERT INTO invocations ({INVOCATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        )
    }

    fn bind_invocation<'q>(
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        r: &'q InvocationRecord,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(&r.id)
            .bind(&r.tenant)
            .bind(&r.function_name)
            .bind(r.version)
            .bind(i64::from(r.is_async))
            .bind(&r.status)
            .bind(&r.payload)
            .bind(json_text(&r.result))
            .bind(json_text(&r.error))
            .bind(&r.logs)
            .bind(r.duration_ms)
            .bind(r.cold.map(i64::from))
            .bind(r.attempts)
            .bind(r.max_attempts)
            .bind(serde_json::Value::from(r.attempt_log.clone()).to_string())
            .bind(&r.idempotency_key)
            .bind(&r.callback_url)
            .bind(r.next_run_ms)
            .bind(&r.lease_owner)
            .bind(r.lease_until_ms)
            .bind(r.created_ms)
            .bind(r.started_ms)
            .bind(r.finished_ms)
    }

    /// Records (and, when it is `queued`, enqueues) an invocation in one statement. With an
    /// idempotency key already used for this function, nothing is written and the earlier
    /// invocation is returned instead.
    pub async fn insert_invocation(&self, r: &InvocationRecord) -> Result<InvocationRecord> {
        let sql = format!(
            "{} ON CONFLICT (tenant, function_name, idempotency_key) DO NOTHING",
            Self::insert_sql()
        );
        let done = Self::bind_invocation(sqlx::query(&sql), r)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(r.clone());
        }
        let existing = match &r.idempotency_key {
            Some(k) => {
                self.invocation_by_key(&r.tenant, &r.function_name, k)
                    .await?
            }
            None => None,
        };
        match existing {
            Some(found) => Ok(found),
            None => Err(StoreError::Conflict(format!(
                "invocation {} was not recorded (its id is taken)",
                r.id
            ))),
        }
    }

    /// Records finished invocations together with what each used, in one transaction. One
    /// whose id or idempotency key is already recorded is left out (the first one stands).
    pub async fn insert_invocations(
        &self,
        records: &[(InvocationRecord, Option<UsageRecord>)],
    ) -> Result<()> {
        let sql = format!("{} ON CONFLICT DO NOTHING", Self::insert_sql());
        let mut tx = self.pool.begin().await?;
        for (r, usage) in records {
            Self::bind_invocation(sqlx::query(&sql), r)
                .execute(&mut *tx)
                .await?;
            if let Some(u) = usage {
                insert_usage_tx(&mut tx, u).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The invocation of `function` recorded with idempotency key `key`.
    pub async fn invocation_by_key(
        &self,
        tenant: &str,
        function: &str,
        key: &str,
    ) -> Result<Option<InvocationRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {INVOCATION_COLS} FROM invocations \
             WHERE tenant = $1 AND function_name = $2 AND idempotency_key = $3"
        ))
        .bind(tenant)
        .bind(function)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| invocation_row(&r)).transpose()
    }

    pub async fn get_invocation(&self, tenant: &str, id: &str) -> Result<Option<InvocationRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {INVOCATION_COLS} FROM invocations WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| invocation_row(&r)).transpose()
    }

    /// Newest first.
    pub async fn list_invocations(&self, f: &InvocationFilter) -> Result<Vec<InvocationRecord>> {
        let mut sql = format!("SELECT {INVOCATION_COLS} FROM invocations WHERE tenant = $1");
        let mut n = 1;
        if f.function.is_some() {
            n += 1;
            sql.push_str(&format!(" AND function_name = ${n}"));
        }
        if f.status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        sql.push_str(&format!(
            " ORDER BY created_ms DESC, id DESC LIMIT ${}",
            n + 1
        ));
        let mut q = sqlx::query(&sql).bind(&f.tenant);
        if let Some(v) = &f.function {
            q = q.bind(v);
        }
        if let Some(v) = &f.status {
            q = q.bind(v);
        }
        let limit = if f.limit <= 0 { 100 } else { f.limit };
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(invocation_row).collect()
    }

    /// How many invocations of each status (of one function, or all).
    pub async fn count_invocations(
        &self,
        tenant: &str,
        function: Option<&str>,
    ) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT status, COUNT(*) AS n FROM invocations WHERE tenant = $1 {} \
             GROUP BY status ORDER BY status",
            if function.is_some() {
                "AND function_name = $2"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        if let Some(f) = function {
            q = q.bind(f);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Claims up to `n` due invocations for `owner` until `lease_until_ms`: queued ones whose
    /// time has come, and running ones whose lease ended (their worker is gone). Each claim
    /// counts an attempt.
    pub async fn claim_invocations(
        &self,
        owner: &str,
        n: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<InvocationRecord>> {
        let now = now_ms();
        let lock = match self.kind {
            DbKind::Postgres => "FOR UPDATE SKIP LOCKED",
            DbKind::Sqlite => "",
        };
        let sql = format!(
            "UPDATE invocations SET status = 'running', lease_owner = $1, lease_until_ms = $2, \
             attempts = attempts + 1, started_ms = $3 WHERE id IN (SELECT id FROM invocations \
             WHERE (status = 'queued' AND next_run_ms <= $3) \
             OR (status = 'running' AND lease_until_ms < $3) \
             ORDER BY next_run_ms LIMIT $4 {lock}) RETURNING {INVOCATION_COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until_ms)
            .bind(now)
            .bind(n)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed: Vec<InvocationRecord> =
            rows.iter().map(invocation_row).collect::<Result<_>>()?;
        claimed.sort_by_key(|r| (r.next_run_ms, r.created_ms));
        Ok(claimed)
    }

    /// Extends the leases `owner` holds.
    pub async fn renew_leases(&self, owner: &str, lease_until_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE invocations SET lease_until_ms = $1 \
             WHERE lease_owner = $2 AND status = 'running'",
        )
        .bind(lease_until_ms)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Ends every lease at once: for a SQLite store at start-up, when no other server can hold
    /// one.
    pub async fn expire_leases(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE invocations SET lease_until_ms = 0 WHERE status = 'running' AND is_async = 1",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Writes the outcome of attempt `r.attempts` (status, result, error, logs, next run,
    /// attempt log), if `owner` still holds that attempt's lease. False when it does not (the
    /// attempt was taken over, or the function was deleted meanwhile).
    pub async fn settle_invocation(
        &self,
        owner: &str,
        r: &InvocationRecord,
        usage: Option<&UsageRecord>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE invocations SET status = $1, result = $2, error = $3, logs = $4, \
             duration_ms = $5, cold = $6, attempt_log = $7, next_run_ms = $8, \
             finished_ms = $9, lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = $10 AND lease_owner = $11 AND attempts = $12 AND status = 'running'",
        )
        .bind(&r.status)
        .bind(json_text(&r.result))
        .bind(json_text(&r.error))
        .bind(&r.logs)
        .bind(r.duration_ms)
        .bind(r.cold.map(i64::from))
        .bind(serde_json::Value::from(r.attempt_log.clone()).to_string())
        .bind(r.next_run_ms)
        .bind(r.finished_ms)
        .bind(&r.id)
        .bind(owner)
        .bind(r.attempts)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(u) = usage {
            insert_usage_tx(&mut tx, u).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::stores;

    fn invocation(id: &str, key: Option<&str>) -> InvocationRecord {
        InvocationRecord {
            id: id.into(),
            tenant: "t".into(),
            function_name: "f".into(),
            version: 1,
            is_async: true,
            status: "queued".into(),
            payload: b"{}".to_vec(),
            result: None,
            error: None,
            logs: None,
            duration_ms: None,
            cold: None,
            attempts: 0,
            max_attempts: 3,
            attempt_log: vec![],
            idempotency_key: key.map(String::from),
            callback_url: None,
            next_run_ms: 0,
            lease_owner: None,
            lease_until_ms: None,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
        }
    }

    fn version(code: &[u8]) -> NewVersion {
        NewVersion {
            config: serde_json::json!({"runtime": "python"}),
            code: code.to_vec(),
            code_sha256: "x".into(),
        }
    }

    #[tokio::test]
    async fn versions_count_up_and_delete_fails_queued_invocations() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            assert!(s
                .add_version("t", "f", &version(b"a"), false)
                .await
                .unwrap()
                .is_none());
            assert_eq!(
                s.add_version("t", "f", &version(b"a"), true)
                    .await
                    .unwrap()
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                s.add_version("t", "f", &version(b"b"), false)
                    .await
                    .unwrap()
                    .unwrap()
                    .version,
                2
            );
            let f = s.get_function("t", "f").await.unwrap().unwrap();
            assert_eq!(f.latest.version, 2);
            assert_eq!(
                s.get_version("t", "f", 1).await.unwrap().unwrap().code,
                b"a"
            );
            assert_eq!(s.list_versions("t", "f").await.unwrap().len(), 2);
            assert_eq!(s.list_functions("t").await.unwrap().len(), 1);
            s.insert_invocation(&invocation("i1", None)).await.unwrap();
            let err = serde_json::json!({"type": "function_deleted"});
            assert_eq!(s.delete_function("t", "f", &err).await.unwrap(), Some(1));
            assert_eq!(s.delete_function("t", "f", &err).await.unwrap(), None);
            let i = s.get_invocation("t", "i1").await.unwrap().unwrap();
            assert_eq!(i.status, "error");
            assert_eq!(i.error.unwrap()["type"], "function_deleted");
            assert!(s.get_version("t", "f", 1).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn idempotency_keys_return_the_first_invocation() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            let a = s
                .insert_invocation(&invocation("a", Some("k")))
                .await
                .unwrap();
            let b = s
                .insert_invocation(&invocation("b", Some("k")))
                .await
                .unwrap();
            assert_eq!((a.id.as_str(), b.id.as_str()), ("a", "a"));
            // No key: never merged.
            s.insert_invocation(&invocation("c", None)).await.unwrap();
            s.insert_invocation(&invocation("d", None)).await.unwrap();
            assert!(s.get_invocation("t", "b").await.unwrap().is_none());
            assert_eq!(
                s.count_invocations("t", Some("f")).await.unwrap(),
                vec![("queued".into(), 3)]
            );
            // A batch of finished sync invocations with a key already taken: the rest is kept.
            let mut dup = invocation("e", Some("k"));
            dup.is_async = false;
            dup.status = "succeeded".into();
            let mut fresh = invocation("f", Some("k2"));
            fresh.status = "succeeded".into();
            s.insert_invocations(&[(dup, None), (fresh, None)])
                .await
                .unwrap();
            assert!(s.get_invocation("t", "e").await.unwrap().is_none());
            assert_eq!(
                s.invocation_by_key("t", "f", "k2")
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
                "f"
            );
        }
    }

    #[tokio::test]
    async fn claims_are_exclusive_leased_and_fenced() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            for i in 0..10 {
                s.insert_invocation(&invocation(&format!("q{i}"), None))
                    .await
                    .unwrap();
            }
            let far = now_ms() + 60_000;
            // Two workers claiming at once never get the same invocation.
            let (a, b) = tokio::join!(
                s.claim_invocations("w1", 6, far),
                s.claim_invocations("w2", 6, far)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.len() + b.len(), 10);
            let mut ids: Vec<_> = a.iter().chain(&b).map(|r| r.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 10);
            assert!(s.claim_invocations("w3", 10, far).await.unwrap().is_empty());

            // A lease that ends makes the invocation claimable again, as a new attempt; the
            // old owner can no longer settle it.
            let mut lost = a[0].clone();
            s.renew_leases("w1", now_ms() - 1).await.unwrap();
            let again = s.claim_invocations("w3", 10, far).await.unwrap();
            assert_eq!(again.len(), a.len());
            let taken = again.iter().find(|r| r.id == lost.id).unwrap();
            assert_eq!(taken.attempts, 2);
            lost.status = "succeeded".into();
            assert!(!s.settle_invocation("w1", &lost, None).await.unwrap());
            let mut done = taken.clone();
            done.status = "succeeded".into();
            done.result = Some(serde_json::json!({"ok": true}));
            assert!(s.settle_invocation("w3", &done, None).await.unwrap());
            let got = s.get_invocation("t", &lost.id).await.unwrap().unwrap();
            assert_eq!((got.status.as_str(), got.attempts), ("succeeded", 2));
            assert_eq!(got.result.unwrap()["ok"], true);

            // Retry later: not claimable before its time.
            let mut later = b[0].clone();
            later.status = "queued".into();
            later.next_run_ms = now_ms() + 60_000;
            assert!(s.settle_invocation("w2", &later, None).await.unwrap());
            s.expire_leases().await.unwrap();
            let rest = s.claim_invocations("w4", 100, far).await.unwrap();
            assert!(rest.iter().all(|r| r.id != later.id));
            let list = s
                .list_invocations(&InvocationFilter {
                    tenant: "t".into(),
                    function: Some("f".into()),
                    status: Some("queued".into()),
                    limit: 0,
                })
                .await
                .unwrap();
            assert_eq!(list.len(), 1);
        }
    }

    #[tokio::test]
    async fn one_name_in_two_tenants_is_two_functions() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            s.add_version("a", "f", &version(b"a's"), true)
                .await
                .unwrap()
                .unwrap();
            let b = s
                .add_version("b", "f", &version(b"b's"), true)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(b.version, 1, "B's first version, not A's second");
            assert_eq!(
                s.get_version("a", "f", 1).await.unwrap().unwrap().code,
                b"a's"
            );
            assert_eq!(
                s.get_version("b", "f", 1).await.unwrap().unwrap().code,
                b"b's"
            );
            assert!(s.get_function("c", "f").await.unwrap().is_none());
            assert_eq!(s.list_functions("a").await.unwrap().len(), 1);
            let mut inv = invocation("ia", Some("k"));
            inv.tenant = "a".into();
            s.insert_invocation(&inv).await.unwrap();
            // The same idempotency key in B is B's own invocation.
            let mut other = invocation("ib", Some("k"));
            other.tenant = "b".into();
            assert_eq!(s.insert_invocation(&other).await.unwrap().id, "ib");
            assert!(s.get_invocation("b", "ia").await.unwrap().is_none());
            assert_eq!(s.count_pending_invocations("a").await.unwrap(), 1);
            assert_eq!(s.count_functions("b").await.unwrap(), 1);
            let err = serde_json::json!({"type": "function_deleted"});
            assert_eq!(s.delete_function("b", "f", &err).await.unwrap(), Some(1));
            assert!(s.get_function("a", "f").await.unwrap().is_some());
            assert_eq!(
                s.get_invocation("a", "ia").await.unwrap().unwrap().status,
                "queued"
            );
        }
    }
}
