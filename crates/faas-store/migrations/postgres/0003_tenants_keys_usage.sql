-- Tenants: every object belongs to one. What existed before tenants belongs to `default`.
ALTER TABLE instances ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE snapshots ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE executions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
-- Execution ids may be the caller's (`request_id`): unique per tenant.
ALTER TABLE executions DROP CONSTRAINT executions_pkey;
ALTER TABLE executions ADD PRIMARY KEY (tenant, id);
ALTER TABLE invocations ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX instances_tenant ON instances (tenant, created_ms);
CREATE INDEX snapshots_tenant ON snapshots (tenant, created_ms);

-- Function names are unique per tenant: the keys become (tenant, name).
ALTER TABLE functions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE functions DROP CONSTRAINT functions_pkey;
ALTER TABLE functions ADD PRIMARY KEY (tenant, name);
ALTER TABLE function_versions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE function_versions DROP CONSTRAINT function_versions_pkey;
ALTER TABLE function_versions ADD PRIMARY KEY (tenant, name, version);

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
    id           BIGSERIAL PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    actor_tenant TEXT NOT NULL,
    actor_key_id TEXT,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    detail       TEXT NOT NULL
);
