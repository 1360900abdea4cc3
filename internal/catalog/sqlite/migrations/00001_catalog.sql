-- The embedded catalog: the Postgres schema (/migrations, as of 00005) on
-- SQLite. Tables and columns carry the Postgres names so a catalog can be
-- copied table by table (CopyToPostgres). Differences:
--   * times are INTEGER unix microseconds, UTC (Postgres timestamptz keeps
--     microseconds too, so a copy is exact and comparisons are integer ones);
--   * uuids are TEXT in canonical form, booleans INTEGER 0/1;
--   * tokens.namespaces is a JSON array of strings (Postgres: text[]);
--   * chunk ids are BLOB, and chunks is clustered by id (WITHOUT ROWID).
-- Tables are STRICT, so a value of the wrong type is an error, as in
-- Postgres, rather than stored as whatever it was.

-- +goose Up

CREATE TABLE namespaces (
    name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    quota_bytes INTEGER CHECK (quota_bytes >= 0), -- NULL: no quota
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY CHECK (id <> ''),
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'backup', 'read')),
    namespaces  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(namespaces)), -- empty: all namespaces
    secret_hash BLOB NOT NULL CHECK (length(secret_hash) > 0),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
) STRICT;

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    storage     TEXT NOT NULL,
    start_time  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;

CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    ns           TEXT NOT NULL REFERENCES namespaces (name),
    name         TEXT NOT NULL,
    job_id       TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    storage      TEXT NOT NULL,
    vmid         INTEGER NOT NULL CHECK (vmid > 0),
    type         TEXT NOT NULL CHECK (type IN ('qemu', 'lxc')),
    backup_time  INTEGER NOT NULL,
    state        TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'committed')),
    notes        TEXT NOT NULL DEFAULT '',
    protected    INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1)),
    verify_state TEXT NOT NULL DEFAULT 'none' CHECK (verify_state IN ('none', 'ok', 'failed')),
    verified_at  INTEGER,
    size         INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
    new_bytes    INTEGER NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    created_at   INTEGER NOT NULL,
    committed_at INTEGER,
    -- The distinct chunk ids the snapshot references, 32 bytes each,
    -- sorted, set on commit; each holds one count in chunks.refs.
    refs         BLOB NOT NULL DEFAULT x'' CHECK (length(refs) % 32 = 0),
    config       BLOB,
    firewall     BLOB,
    log          BLOB,
    -- When the session was opened, on the clock chunk touch times use.
    opened_at    INTEGER NOT NULL,
    UNIQUE (ns, name),
    CHECK ((state = 'committed') = (committed_at IS NOT NULL))
) STRICT;

CREATE INDEX snapshots_guest_idx ON snapshots (ns, vmid, type, backup_time DESC)
    WHERE state = 'committed';
CREATE INDEX snapshots_job_idx ON snapshots (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX snapshots_open_idx ON snapshots (created_at) WHERE state = 'open';
CREATE INDEX snapshots_opened_idx ON snapshots (opened_at) WHERE state = 'open';

CREATE TABLE disks (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    device      TEXT NOT NULL CHECK (device <> ''),
    size        INTEGER NOT NULL CHECK (size >= 0),
    chunk_size  INTEGER NOT NULL CHECK (chunk_size > 0),
    bitmap_mode TEXT NOT NULL CHECK (bitmap_mode IN ('none', 'new', 'reuse')),
    index_key   TEXT NOT NULL,
    index_sum   BLOB NOT NULL CHECK (length(index_sum) = 32),
    new_bytes   INTEGER NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    PRIMARY KEY (snapshot_id, device)
) STRICT;

CREATE TABLE archives (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (name <> ''),
    size        INTEGER NOT NULL CHECK (size >= 0),
    index_key   TEXT NOT NULL,
    index_sum   BLOB NOT NULL CHECK (length(index_sum) = 32),
    files       INTEGER NOT NULL DEFAULT 0 CHECK (files >= 0),
    new_bytes   INTEGER NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    PRIMARY KEY (snapshot_id, name)
) STRICT;

-- Paths are bytes (Linux names need not be UTF-8); parent is the directory
-- a path is listed in ("" for "/").
CREATE TABLE files (
    snapshot_id     TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    archive         TEXT NOT NULL,
    path            BLOB NOT NULL,
    parent          BLOB NOT NULL,
    type            TEXT NOT NULL CHECK (type IN ('file', 'dir', 'symlink', 'hardlink', 'chardev', 'blockdev', 'fifo')),
    size            INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
    mode            INTEGER NOT NULL DEFAULT 0,
    uid             INTEGER NOT NULL DEFAULT 0,
    gid             INTEGER NOT NULL DEFAULT 0,
    mtime           INTEGER NOT NULL DEFAULT 0, -- Unix seconds
    mtime_nsec      INTEGER NOT NULL DEFAULT 0 CHECK (mtime_nsec BETWEEN 0 AND 999999999),
    link_target     BLOB,
    stream_offset   INTEGER NOT NULL CHECK (stream_offset >= 0),
    meta_offset     INTEGER NOT NULL DEFAULT 0 CHECK (meta_offset >= 0),
    payload_offset  INTEGER NOT NULL DEFAULT 0 CHECK (payload_offset >= 0),
    volatile_offset INTEGER NOT NULL DEFAULT 0 CHECK (volatile_offset >= 0),
    PRIMARY KEY (snapshot_id, archive, stream_offset)
) STRICT;

CREATE INDEX files_dir_idx ON files (snapshot_id, parent, path);
CREATE INDEX files_path_idx ON files (snapshot_id, archive, path);

-- One row per chunk in the chunk store; see the Postgres schema for the
-- lifecycle (pending → stored → deleting → gone).
CREATE TABLE chunks (
    id          BLOB PRIMARY KEY CHECK (length(id) = 32),
    size        INTEGER NOT NULL CHECK (size >= 0),
    stored_size INTEGER NOT NULL CHECK (stored_size >= 0),
    refs        INTEGER NOT NULL DEFAULT 0 CHECK (refs >= 0),
    bad         INTEGER NOT NULL DEFAULT 0 CHECK (bad IN (0, 1)),
    created_at  INTEGER NOT NULL,
    touched_at  INTEGER NOT NULL,
    pending     INTEGER NOT NULL DEFAULT 0 CHECK (pending IN (0, 1)),
    deleting    INTEGER NOT NULL DEFAULT 0 CHECK (deleting IN (0, 1))
) STRICT, WITHOUT ROWID;

CREATE INDEX chunks_unreferenced_idx ON chunks (id) WHERE refs = 0;
CREATE INDEX chunks_pending_idx ON chunks (touched_at) WHERE pending;
CREATE INDEX chunks_deleting_idx ON chunks (touched_at) WHERE deleting;
CREATE INDEX chunks_single_ref_idx ON chunks (id, stored_size) WHERE refs = 1;

CREATE TABLE tasks (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind <> ''),
    ns          TEXT NOT NULL DEFAULT '',
    snapshot_id TEXT REFERENCES snapshots (id) ON DELETE SET NULL,
    state       TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'error')),
    done        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    error       TEXT NOT NULL DEFAULT '',
    log_seq     INTEGER NOT NULL DEFAULT 0, -- last task_log.seq handed out
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER,
    CHECK ((state = 'running') = (finished_at IS NULL))
) STRICT;

CREATE INDEX tasks_snapshot_idx ON tasks (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX tasks_running_idx ON tasks (created_at) WHERE state = 'running';
CREATE INDEX tasks_kind_idx ON tasks (kind, created_at DESC);

CREATE TABLE task_log (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL CHECK (seq > 0),
    ts      INTEGER NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) STRICT, WITHOUT ROWID;

-- +goose Down
DROP TABLE task_log;
DROP TABLE tasks;
DROP TABLE chunks;
DROP TABLE files;
DROP TABLE archives;
DROP TABLE disks;
DROP TABLE snapshots;
DROP TABLE jobs;
DROP TABLE tokens;
DROP TABLE namespaces;
