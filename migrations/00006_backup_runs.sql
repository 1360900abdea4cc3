-- +goose Up
-- The history of backup sessions. A session's snapshot row is deleted when
-- the session is discarded and when the snapshot is pruned, so the run
-- (what ran, when, how it ended and why it failed) lives in its own table:
-- the dashboard and alerting need failed backups, not only snapshots.
-- One row per backup: small next to the snapshot rows it outlives.
CREATE TABLE backup_runs (
    id          uuid PRIMARY KEY, -- the session id (snapshots.id while it exists)
    ns          text NOT NULL,
    name        text NOT NULL,
    vmid        integer NOT NULL CHECK (vmid > 0),
    type        text NOT NULL CHECK (type IN ('qemu', 'lxc')),
    storage     text NOT NULL,
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'failed')),
    error       text NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    size        bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    new_bytes   bigint NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    CHECK ((state = 'running') = (finished_at IS NULL))
);
CREATE INDEX backup_runs_ns_idx ON backup_runs (ns, started_at DESC);
CREATE INDEX backup_runs_guest_idx ON backup_runs (ns, vmid, started_at DESC);

-- Sessions and snapshots that exist already have run rows from the start.
INSERT INTO backup_runs (id, ns, name, vmid, type, storage, state, started_at, finished_at, size, new_bytes)
SELECT id, ns, name, vmid, type, storage,
       CASE state WHEN 'committed' THEN 'ok' ELSE 'running' END,
       created_at, committed_at, size, new_bytes
FROM snapshots;

-- Task listings go newest first.
CREATE INDEX tasks_created_idx ON tasks (created_at DESC);

-- +goose Down
DROP INDEX tasks_created_idx;
DROP TABLE backup_runs;
