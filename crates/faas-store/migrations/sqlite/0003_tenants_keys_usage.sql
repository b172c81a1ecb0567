-- Tenants: every object belongs to one. What existed before tenants belongs to `default`.
ALTER TABLE instances ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE snapshots ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE invocations ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX instances_tenant ON instances (tenant, created_ms);
CREATE INDEX snapshots_tenant ON snapshots (tenant, created_ms);

-- Execution ids may be the caller's (`request_id`): unique per tenant.
CREATE TABLE executions_by_tenant (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    mode        TEXT NOT NULL,
    backend     TEXT,
    instance_id TEXT,
    snapshot_id TEXT,
    status      TEXT NOT NULL,
    exit_code   INTEGER,
    stdout      BLOB,
    stderr      BLOB,
    error       TEXT,
    duration_ms DOUBLE PRECISION,
    created_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    PRIMARY KEY (tenant, id)
);
INSERT INTO executions_by_tenant (tenant, id, mode, backend, instance_id, snapshot_id, status,
    exit_code, stdout, stderr, error, duration_ms, created_ms, finished_ms)
    SELECT 'default', id, mode, backend, instance_id, snapshot_id, status, exit_code, stdout,
    stderr, error, duration_ms, created_ms, finished_ms FROM executions;
DROP TABLE executions;
ALTER TABLE executions_by_tenant RENAME TO executions;

-- Function names are unique per tenant: the keys become (tenant, name).
CREATE TABLE functions_by_tenant (
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    latest_version BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
INSERT INTO functions_by_tenant (tenant, name, latest_version, created_ms, updated_ms)
    SELECT 'default', name, latest_version, created_ms, updated_ms FROM functions;
DROP TABLE functions;
ALTER TABLE functions_by_tenant RENAME TO functions;

CREATE TABLE function_versions_by_tenant (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT NOT NULL,
    code        BLOB NOT NULL,
    code_sha256 TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);
INSERT INTO function_versions_by_tenant
    SELECT 'default', name, version, config, code, code_sha256, created_ms FROM function_versions;
DROP TABLE function_versions;
ALTER TABLE function_versions_by_tenant RENAME TO function_versions;

DROP INDEX invocations_idempotency;
DROP INDEX invocations_function;
CREATE UNIQUE INDEX invocations_idempotency ON invocations (tenant, function_name, idempotency_key);
CREATE INDEX invocations_function ON invocations (tenant, function_name, created_ms);

-- `quotas` is the JSON of the tenant's own limits (missing = the server's default).
CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT,
    quotas     TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- API keys: only the SHA-256 of the secret is kept; `prefix` is its first characters, for
-- people to tell keys apart.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    revoked_ms BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- Usage: one row per execution, instance exec, instance run (start to stop) and invocation
-- attempt, keyed by what it measures so nothing is counted twice. `kind` is `execution`,
-- `instance_exec`, `instance` or `invocation`; `subject` the function name or instance id.
CREATE TABLE usage (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    subject           TEXT,
    wall_ms           DOUBLE PRECISION NOT NULL,
    cpu_ms            DOUBLE PRECISION NOT NULL,
    memory_mib_s      DOUBLE PRECISION NOT NULL,
    peak_memory_bytes BIGINT NOT NULL,
    at_ms             BIGINT NOT NULL
);
CREATE INDEX usage_tenant_at ON usage (tenant, at_ms);

-- What admins did: keys made and revoked, tenants made and their quotas changed.
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms        BIGINT NOT NULL,
    actor_tenant TEXT NOT NULL,
    actor_key_id TEXT,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    detail       TEXT NOT NULL
);
