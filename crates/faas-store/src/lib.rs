//! What the platform keeps: instances, snapshots, executions, functions and invocations, and
//! tenants, API keys, usage and the audit trail. Every object row has its tenant; a query
//! given `Some(tenant)` sees only that tenant's rows (`None` is the platform's own view).
//!
//! A SQLite file in the data dir by default (zero set-up, WAL mode, migrations applied on open).
//! Queries are plain SQL checked at run time; every write is a single statement or transaction,
//! so a crash never leaves half a record.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

mod functions;
mod tenants;
pub use functions::{
    FunctionRecord, InvocationFilter, InvocationRecord, NewVersion, VersionRecord,
};
pub use tenants::{AuditRecord, KeyRecord, TenantRecord, UsageGroup, UsageRecord, UsageSum};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Url(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored record {what} is malformed: {message}")]
    Malformed { what: String, message: String },
}

/// A database URL for messages: the password left out.
pub fn url_without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub backend: String,
    pub image: String,
    /// `running`, `stopped` or `lost`.
    pub status: String,
    pub status_reason: Option<String>,
    /// What it was made with (limits, env, isolation, idle timeout), as the service wrote it.
    pub spec: serde_json::Value,
    pub source_snapshot: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub last_used_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub instance_id: Option<String>,
    pub parent_id: Option<String>,
    pub backend: String,
    pub image: String,
    /// `filesystem` or `memory`.
    pub kind: String,
    pub size_bytes: i64,
    pub tags: Vec<String>,
    /// Where the backend keeps the state.
    pub artifact: serde_json::Value,
    /// The instance spec it was taken from (restores start with it).
    pub spec: serde_json::Value,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub tenant: String,
    pub mode: String,
    pub backend: Option<String>,
    pub instance_id: Option<String>,
    pub snapshot_id: Option<String>,
    /// `running`, `finished` or `failed`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

fn json_col(row: &AnyRow, col: &str, what: &str) -> Result<serde_json::Value> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Malformed {
        what: format!("{what}.{col}"),
        message: e.to_string(),
    })
}

impl Store {
    /// Opens (creating it if needed) the SQLite database at `path` and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        Store::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens `url` (`sqlite://PATH` or `postgres://...`) and applies migrations. SQLite runs in
    /// WAL mode with a 10 s busy timeout.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbKind::Postgres
        } else {
            return Err(StoreError::Url(url_without_password(url)));
        };
        let opts = AnyPoolOptions::new();
        let pool = match kind {
            DbKind::Sqlite => {
                opts.max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            DbKind::Postgres => opts.max_connections(16).connect(url).await?,
        };
        match kind {
            DbKind::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            DbKind::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store { pool, kind })
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    // ---- instances ----

    pub async fn insert_instance(&self, r: &InstanceRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (id, name, backend, image, status, status_reason, spec, \
             source_snapshot, created_ms, updated_ms, last_used_ms, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.backend)
        .bind(&r.image)
        .bind(&r.status)
        .bind(&r.status_reason)
        .bind(r.spec.to_string())
        .bind(&r.source_snapshot)
        .bind(r.created_ms)
        .bind(r.updated_ms)
        .bind(r.last_used_ms)
        .bind(&r.tenant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn instance_row(row: &AnyRow) -> Result<InstanceRecord> {
        Ok(InstanceRecord {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            name: row.try_get("name")?,
            backend: row.try_get("backend")?,
            image: row.try_get("image")?,
            status: row.try_get("status")?,
            status_reason: row.try_get("status_reason")?,
            spec: json_col(row, "spec", "instance")?,
            source_snapshot: row.try_get("source_snapshot")?,
            created_ms: row.try_get("created_ms")?,
            updated_ms: row.try_get("updated_ms")?,
            last_used_ms: row.try_get("last_used_ms")?,
        })
    }

    /// Instance `id`, if it is `tenant`'s (any tenant's with `None`).
    pub async fn get_instance(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<InstanceRecord>> {
        let row =
            sqlx::query("SELECT * FROM instances WHERE id = $1 AND ($2 IS NULL OR tenant = $2)")
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(Self::instance_row).transpose()
    }

    /// `tenant`'s instances (every tenant's with `None`).
    pub async fn list_instances(&self, tenant: Option<&str>) -> Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE ($1 IS NULL OR tenant = $1) ORDER BY created_ms, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::instance_row).collect()
    }

    /// How many instances `tenant` has.
    pub async fn count_instances(&self, tenant: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE tenant = $1")
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Sets an instance's status (and why); false when there is no such instance.
    pub async fn set_instance_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE instances SET status = $1, status_reason = $2, updated_ms = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(reason)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces an instance's spec; false when there is no such instance.
    pub async fn set_instance_spec(&self, id: &str, spec: &serde_json::Value) -> Result<bool> {
        let done = sqlx::query("UPDATE instances SET spec = $1 WHERE id = $2")
            .bind(spec.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_instance(&self, id: &str, at_ms: i64) -> Result<()> {
        sqlx::query("UPDATE instances SET last_used_ms = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_instance(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- snapshots ----

    pub async fn insert_snapshot(&self, r: &SnapshotRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (id, name, instance_id, parent_id, backend, image, kind, \
             size_bytes, tags, artifact, spec, created_ms, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.instance_id)
        .bind(&r.parent_id)
        .bind(&r.backend)
        .bind(&r.image)
        .bind(&r.kind)
        .bind(r.size_bytes)
        .bind(serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into()))
        .bind(r.artifact.to_string())
        .bind(r.spec.to_string())
        .bind(r.created_ms)
        .bind(&r.tenant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn snapshot_row(row: &AnyRow) -> Result<SnapshotRecord> {
        let tags = json_col(row, "tags", "snapshot")?;
        Ok(SnapshotRecord {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            name: row.try_get("name")?,
            instance_id: row.try_get("instance_id")?,
            parent_id: row.try_get("parent_id")?,
            backend: row.try_get("backend")?,
            image: row.try_get("image")?,
            kind: row.try_get("kind")?,
            size_bytes: row.try_get("size_bytes")?,
            tags: serde_json::from_value(tags).map_err(|e| StoreError::Malformed {
                what: "snapshot.tags".into(),
                message: e.to_string(),
            })?,
            artifact: json_col(row, "artifact", "snapshot")?,
            spec: json_col(row, "spec", "snapshot")?,
            created_ms: row.try_get("created_ms")?,
        })
    }

    /// Snapshot `id`, if it is `tenant`'s (any tenant's with `None`).
    pub async fn get_snapshot(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<SnapshotRecord>> {
        let row =
            sqlx::query("SELECT * FROM snapshots WHERE id = $1 AND ($2 IS NULL OR tenant = $2)")
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(Self::snapshot_row).transpose()
    }

    /// `tenant`'s snapshots (every tenant's with `None`).
    pub async fn list_snapshots(&self, tenant: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM snapshots WHERE ($1 IS NULL OR tenant = $1) ORDER BY created_ms, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::snapshot_row).collect()
    }

    /// Bytes of the snapshots `tenant` keeps.
    pub async fn snapshot_bytes(&self, tenant: &str) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(size_bytes) AS BIGINT) FROM snapshots WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unwrap_or(0))
    }

    /// Instances restored or branched from snapshot `id`, and snapshots taken on top of it.
    pub async fn snapshot_dependents(&self, id: &str) -> Result<(i64, i64)> {
        let instances: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE source_snapshot = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        let snapshots: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM snapshots WHERE parent_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        Ok((instances, snapshots))
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- executions ----

    async fn insert_execution_tx(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        r: &ExecutionRecord,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO executions (id, mode, backend, instance_id, snapshot_id, status, \
             exit_code, stdout, stderr, error, duration_ms, created_ms, finished_ms, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&r.id)
        .bind(&r.mode)
        .bind(&r.backend)
        .bind(&r.instance_id)
        .bind(&r.snapshot_id)
        .bind(&r.status)
        .bind(r.exit_code.map(i64::from))
        .bind(&r.stdout)
        .bind(&r.stderr)
        .bind(&r.error)
        .bind(r.duration_ms)
        .bind(r.created_ms)
        .bind(r.finished_ms)
        .bind(&r.tenant)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn insert_execution(&self, r: &ExecutionRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::insert_execution_tx(&mut tx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how an execution ended (inserting it if it was never recorded as running), and
    /// what it used, in one transaction.
    pub async fn finish_execution(
        &self,
        r: &ExecutionRecord,
        usage: Option<&UsageRecord>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE executions SET backend = $1, instance_id = $2, snapshot_id = $3, status = $4, \
             exit_code = $5, stdout = $6, stderr = $7, error = $8, duration_ms = $9, finished_ms = $10 \
             WHERE id = $11 AND tenant = $12",
        )
        .bind(&r.backend)
        .bind(&r.instance_id)
        .bind(&r.snapshot_id)
        .bind(&r.status)
        .bind(r.exit_code.map(i64::from))
        .bind(&r.stdout)
        .bind(&r.stderr)
        .bind(&r.error)
        .bind(r.duration_ms)
        .bind(r.finished_ms)
        .bind(&r.id)
        .bind(&r.tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            Self::insert_execution_tx(&mut tx, r).await?;
        }
        if let Some(u) = usage {
            tenants::insert_usage_tx(&mut tx, u).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Execution `id`, if it is `tenant`'s (any tenant's with `None`).
    pub async fn get_execution(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<ExecutionRecord>> {
        let row =
            sqlx::query("SELECT * FROM executions WHERE id = $1 AND ($2 IS NULL OR tenant = $2)")
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(ExecutionRecord {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                mode: row.try_get("mode")?,
                backend: row.try_get("backend")?,
                instance_id: row.try_get("instance_id")?,
                snapshot_id: row.try_get("snapshot_id")?,
                status: row.try_get("status")?,
                exit_code: row
                    .try_get::<Option<i64>, _>("exit_code")?
                    .map(|c| c as i32),
                stdout: row
                    .try_get::<Option<Vec<u8>>, _>("stdout")?
                    .unwrap_or_default(),
                stderr: row
                    .try_get::<Option<Vec<u8>>, _>("stderr")?
                    .unwrap_or_default(),
                error: row.try_get("error")?,
                duration_ms: row.try_get("duration_ms")?,
                created_ms: row.try_get("created_ms")?,
                finished_ms: row.try_get("finished_ms")?,
            })
        })
        .transpose()
    }

    /// Executions still `running` (after a crash: they will never finish).
    pub async fn fail_running_executions(&self, reason: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE executions SET status = 'failed', error = $1, finished_ms = $2 \
             WHERE status = 'running'",
        )
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Makes an empty database `name` on the PostgreSQL server of `admin_url` and returns its
    /// URL (for tests and set-up scripts).
    pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String> {
        sqlx::any::install_default_drivers();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Url(format!("bad database name {name:?}")));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await?;
        pool.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        pool.close().await;
        let base = match admin_url.rfind('/') {
            Some(i) if i > admin_url.find("://").map_or(0, |s| s + 2) => &admin_url[..i],
            _ => admin_url,
        };
        Ok(format!("{base}/{name}"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            tenant: "default".into(),
            name: Some("n".into()),
            backend: "native".into(),
            image: "img".into(),
            status: "running".into(),
            status_reason: None,
            spec: serde_json::json!({"memory_mb": 64}),
            source_snapshot: None,
            created_ms: 1,
            updated_ms: 1,
            last_used_ms: 1,
        }
    }

    /// A fresh store on SQLite, and one on PostgreSQL when `FAAS_TEST_POSTGRES_URL` names a
    /// server (the test command starts one).
    pub(crate) async fn stores(dir: &Path) -> Vec<Store> {
        let mut out = vec![Store::open_sqlite(&dir.join("faas.db")).await.unwrap()];
        match std::env::var("FAAS_TEST_POSTGRES_URL") {
            Ok(admin) => {
                let name = format!("faas_test_{}", uuid_like());
                let url = Store::create_postgres_database(&admin, &name)
                    .await
                    .unwrap();
                out.push(Store::open(&url).await.unwrap());
            }
            Err(_) => eprintln!("skipped: PostgreSQL (FAAS_TEST_POSTGRES_URL is not set)"),
        }
        out
    }

    fn uuid_like() -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{}_{}_{}",
            std::process::id(),
            now_ms(),
            N.fetch_add(1, Ordering::SeqCst)
        )
    }

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(
            url_without_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(url_without_password("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[tokio::test]
    async fn postgres_records_work_like_sqlite_ones() {
        let dir = tempfile::tempdir().unwrap();
        for s in stores(dir.path()).await {
            s.insert_instance(&instance("p1")).await.unwrap();
            assert!(s
                .set_instance_status("p1", "lost", Some("gone"))
                .await
                .unwrap());
            let got = s.get_instance(None, "p1").await.unwrap().unwrap();
            assert_eq!(got.status, "lost");
            let e = ExecutionRecord {
                id: "e".into(),
                tenant: "default".into(),
                mode: "ephemeral".into(),
                backend: Some("native".into()),
                instance_id: None,
                snapshot_id: None,
                status: "finished".into(),
                exit_code: Some(-3),
                stdout: b"\x00\xff".to_vec(),
                stderr: vec![],
                error: None,
                duration_ms: Some(1.5),
                created_ms: 1,
                finished_ms: Some(2),
            };
            s.finish_execution(&e, None).await.unwrap();
            assert_eq!(s.get_execution(None, "e").await.unwrap().unwrap(), e);
        }
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("faas.db");
        {
            let s = Store::open_sqlite(&db).await.unwrap();
            s.insert_instance(&instance("i1")).await.unwrap();
            assert!(s
                .set_instance_status("i1", "stopped", Some("asked"))
                .await
                .unwrap());
            assert!(!s
                .set_instance_status("nope", "stopped", None)
                .await
                .unwrap());
            s.insert_snapshot(&SnapshotRecord {
                id: "s1".into(),
                tenant: "default".into(),
                name: None,
                instance_id: Some("i1".into()),
                parent_id: None,
                backend: "native".into(),
                image: "img".into(),
                kind: "filesystem".into(),
                size_bytes: 42,
                tags: vec!["a".into()],
                artifact: serde_json::json!({"layers": ["/x"]}),
                spec: serde_json::json!({}),
                created_ms: 2,
            })
            .await
            .unwrap();
            let mut child = instance("i2");
            child.source_snapshot = Some("s1".into());
            s.insert_instance(&child).await.unwrap();
            s.close().await;
        }
        let s = Store::open_sqlite(&db).await.unwrap();
        let i = s.get_instance(None, "i1").await.unwrap().unwrap();
        assert_eq!(i.status, "stopped");
        assert_eq!(i.status_reason.as_deref(), Some("asked"));
        assert_eq!(i.spec["memory_mb"], 64);
        assert_eq!(s.list_instances(None).await.unwrap().len(), 2);
        let snap = s.get_snapshot(None, "s1").await.unwrap().unwrap();
        assert_eq!(snap.tags, vec!["a".to_string()]);
        assert_eq!(s.snapshot_dependents("s1").await.unwrap(), (1, 0));
        assert!(s.delete_instance("i2").await.unwrap());
        assert_eq!(s.snapshot_dependents("s1").await.unwrap(), (0, 0));
        assert!(s.get_instance(None, "missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn executions_are_recorded_and_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_sqlite(&dir.path().join("faas.db"))
            .await
            .unwrap();
        let mut e = ExecutionRecord {
            id: "e1".into(),
            tenant: "default".into(),
            mode: "ephemeral".into(),
            backend: None,
            instance_id: None,
            snapshot_id: None,
            status: "running".into(),
            exit_code: None,
            stdout: vec![],
            stderr: vec![],
            error: None,
            duration_ms: None,
            created_ms: 1,
            finished_ms: None,
        };
        s.insert_execution(&e).await.unwrap();
        e.status = "finished".into();
        e.exit_code = Some(3);
        e.stdout = b"out\xff".to_vec();
        s.finish_execution(&e, None).await.unwrap();
        let got = s.get_execution(None, "e1").await.unwrap().unwrap();
        assert_eq!(got.exit_code, Some(3));
        assert_eq!(got.stdout, b"out\xff".to_vec());
        e.id = "e2".into();
        e.status = "running".into();
        s.insert_execution(&e).await.unwrap();
        assert_eq!(
            s.fail_running_executions("server restarted").await.unwrap(),
            1
        );
        assert_eq!(
            s.get_execution(None, "e2").await.unwrap().unwrap().status,
            "failed"
        );
    }
}
