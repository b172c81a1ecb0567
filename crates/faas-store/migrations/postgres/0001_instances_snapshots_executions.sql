-- Instances: long-lived boxes. `spec` is the JSON of what they were made with (limits, env,
-- isolation, idle timeout); `source_snapshot` the snapshot they were restored or branched from.
CREATE TABLE instances (
    id              TEXT PRIMARY KEY,
    name            TEXT,
    backend         TEXT NOT NULL,
    image           TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_reason   TEXT,
    spec            TEXT NOT NULL,
    source_snapshot TEXT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    last_used_ms    BIGINT NOT NULL
);
CREATE INDEX instances_source ON instances (source_snapshot);

-- Snapshots of an instance's files (kind `filesystem`) or files and memory (`memory`).
-- `artifact` is the backend's JSON description of where the state is kept.
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    instance_id TEXT,
    parent_id   TEXT,
    backend     TEXT NOT NULL,
    image       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    tags        TEXT NOT NULL,
    artifact    TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX snapshots_parent ON snapshots (parent_id);

-- Executions: one row per command run through execute or instance exec.
CREATE TABLE executions (
    id          TEXT PRIMARY KEY,
    mode        TEXT NOT NULL,
    backend     TEXT,
    instance_id TEXT,
    snapshot_id TEXT,
    status      TEXT NOT NULL,
    exit_code   BIGINT,
    stdout      BYTEA,
    stderr      BYTEA,
    error       TEXT,
    duration_ms DOUBLE PRECISION,
    created_ms  BIGINT NOT NULL,
    finished_ms BIGINT
);
