-- Functions: one row per name; every deploy or update adds an immutable version.
CREATE TABLE functions (
    name           TEXT PRIMARY KEY,
    latest_version BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL
);

-- `config` is the JSON of runtime, handler, image, env and limits; `code` the deployed bytes
-- (one source file or an archive) so any node can unpack them.
CREATE TABLE function_versions (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT NOT NULL,
    code        BLOB NOT NULL,
    code_sha256 TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

-- Invocations, sync and async. An async one is its own queue entry: recorded and queued in
-- one statement. Workers claim `queued` rows (or `running` rows whose lease ended) by setting
-- a lease; `attempts` counts claims; `attempt_log` keeps every attempt's error.
CREATE TABLE invocations (
    id              TEXT PRIMARY KEY,
    function_name   TEXT NOT NULL,
    version         BIGINT NOT NULL,
    is_async        BIGINT NOT NULL,
    status          TEXT NOT NULL,
    payload         BLOB NOT NULL,
    result          TEXT,
    error           TEXT,
    logs            TEXT,
    duration_ms     DOUBLE PRECISION,
    cold            BIGINT,
    attempts        BIGINT NOT NULL,
    max_attempts    BIGINT NOT NULL,
    attempt_log     TEXT NOT NULL,
    idempotency_key TEXT,
    callback_url    TEXT,
    next_run_ms     BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until_ms  BIGINT,
    created_ms      BIGINT NOT NULL,
    started_ms      BIGINT,
    finished_ms     BIGINT
);
CREATE UNIQUE INDEX invocations_idempotency ON invocations (function_name, idempotency_key);
CREATE INDEX invocations_queue ON invocations (status, next_run_ms);
CREATE INDEX invocations_function ON invocations (function_name, created_ms);
