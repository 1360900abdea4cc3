-- +goose Up
-- The history of backup sessions (Postgres: 00006_backup_runs.sql). A run
-- outlives its session and snapshot rows.
CREATE TABLE backup_runs (
    id          TEXT PRIMARY KEY, -- the session id (snapshots.id while it exists)
    ns          TEXT NOT NULL,
    name        TEXT NOT NULL,
    vmid        INTEGER NOT NULL CHECK (vmid > 0),
    type        TEXT NOT NULL CHECK (type IN ('qemu', 'lxc')),
    storage     TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'failed')),
    error       TEXT NOT NULL DEFAULT '',
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    size        INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
    new_bytes   INTEGER NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    CHECK ((state = 'running') = (finished_at IS NULL))
) STRICT;
CREATE INDEX backup_runs_ns_idx ON backup_runs (ns, started_at DESC);
CREATE INDEX backup_runs_guest_idx ON backup_runs (ns, vmid, started_at DESC);

INSERT INTO backup_runs (id, ns, name, vmid, type, storage, state, started_at, finished_at, size, new_bytes)
SELECT id, ns, name, vmid, type, storage,
       CASE state WHEN 'committed' THEN 'ok' ELSE 'running' END,
       created_at, committed_at, size, new_bytes
FROM snapshots;

CREATE INDEX tasks_created_idx ON tasks (created_at DESC);

-- +goose Down
DROP INDEX tasks_created_idx;
DROP TABLE backup_runs;
