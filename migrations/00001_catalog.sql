-- The catalog: everything Backstop keeps about backups except the chunk data
-- and the binary indexes, which live in the chunk store.

-- +goose Up

-- Namespaces are created on first use (a PVE cluster or tenant). Snapshots
-- keep theirs alive: a namespace with snapshots cannot be dropped.
CREATE TABLE namespaces (
    name        text PRIMARY KEY CHECK (name ~ '^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$'),
    quota_bytes bigint CHECK (quota_bytes >= 0), -- NULL: no quota
    created_at  timestamptz NOT NULL
);

-- API tokens. Only a hash of the secret is stored.
CREATE TABLE tokens (
    id          text PRIMARY KEY CHECK (id <> ''),
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'backup', 'read')),
    namespaces  text[] NOT NULL DEFAULT '{}', -- empty: all namespaces
    secret_hash bytea NOT NULL CHECK (length(secret_hash) > 0),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz
);

-- vzdump runs (job_init … job_cleanup).
CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    node        text NOT NULL,
    storage     text NOT NULL,
    start_time  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz
);

-- Backup sessions and the snapshots they become on commit. A session is
-- invisible to listings until state = 'committed'. Its name is reserved from
-- the start, so names are unique per namespace whatever the state.
CREATE TABLE snapshots (
    id           uuid PRIMARY KEY,
    ns           text NOT NULL REFERENCES namespaces (name),
    name         text NOT NULL,
    job_id       uuid REFERENCES jobs (id) ON DELETE SET NULL,
    storage      text NOT NULL,
    vmid         integer NOT NULL CHECK (vmid > 0),
    type         text NOT NULL CHECK (type IN ('qemu', 'lxc')),
    backup_time  timestamptz NOT NULL,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'committed')),
    notes        text NOT NULL DEFAULT '',
    protected    boolean NOT NULL DEFAULT false,
    verify_state text NOT NULL DEFAULT 'none' CHECK (verify_state IN ('none', 'ok', 'failed')),
    verified_at  timestamptz,
    size         bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    new_bytes    bigint NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    created_at   timestamptz NOT NULL,
    committed_at timestamptz,
    -- The distinct chunk ids the snapshot references, 32 bytes each, sorted,
    -- set on commit. Each one holds one count in chunks.refs, given back when
    -- the snapshot is deleted. One blob instead of one row per chunk: a 1 TiB
    -- disk has 262,144 chunks.
    refs         bytea NOT NULL DEFAULT '' CHECK (length(refs) % 32 = 0),
    -- Byte-exact texts from PVE; NULL: none was sent.
    config       bytea,
    firewall     bytea,
    log          bytea,
    UNIQUE (ns, name),
    CHECK ((state = 'committed') = (committed_at IS NOT NULL))
);

-- Listings, LastSnapshot and prune walk a guest's snapshots newest first.
CREATE INDEX snapshots_guest_idx ON snapshots (ns, vmid, type, backup_time DESC)
    WHERE state = 'committed';
CREATE INDEX snapshots_job_idx ON snapshots (job_id) WHERE job_id IS NOT NULL;
-- Finding stale sessions (crashed backups) to clean up.
CREATE INDEX snapshots_open_idx ON snapshots (created_at) WHERE state = 'open';

-- VM disks of a snapshot, each with its fixed index in the chunk store.
CREATE TABLE disks (
    snapshot_id uuid NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    device      text NOT NULL CHECK (device <> ''),
    size        bigint NOT NULL CHECK (size >= 0),
    chunk_size  integer NOT NULL CHECK (chunk_size > 0),
    bitmap_mode text NOT NULL CHECK (bitmap_mode IN ('none', 'new', 'reuse')),
    index_key   text NOT NULL,
    index_sum   bytea NOT NULL CHECK (length(index_sum) = 32),
    new_bytes   bigint NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    PRIMARY KEY (snapshot_id, device)
);

-- Container tar streams of a snapshot, each with its dynamic index.
CREATE TABLE archives (
    snapshot_id uuid NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name <> ''),
    size        bigint NOT NULL CHECK (size >= 0),
    index_key   text NOT NULL,
    index_sum   bytea NOT NULL CHECK (length(index_sum) = 32),
    files       bigint NOT NULL DEFAULT 0 CHECK (files >= 0),
    new_bytes   bigint NOT NULL DEFAULT 0 CHECK (new_bytes >= 0),
    PRIMARY KEY (snapshot_id, name)
);

-- The file catalog of container archives. Paths are bytes because Linux
-- file names need not be UTF-8; they are absolute and clean ("/etc/hosts"),
-- and parent is the directory they are listed in ("/etc"; "" for "/").
-- Files are written while the tar streams in, before the archive row exists,
-- so they hang off the snapshot rather than the archive.
CREATE TABLE files (
    snapshot_id uuid NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    archive     text NOT NULL,
    path        bytea NOT NULL,
    parent      bytea NOT NULL,
    type        text NOT NULL CHECK (type IN ('file', 'dir', 'symlink', 'hardlink', 'chardev', 'blockdev', 'fifo')),
    size        bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    mode        bigint NOT NULL DEFAULT 0,
    uid         bigint NOT NULL DEFAULT 0,
    gid         bigint NOT NULL DEFAULT 0,
    mtime       bigint NOT NULL DEFAULT 0, -- Unix seconds (tar allows values timestamptz does not)
    mtime_nsec  integer NOT NULL DEFAULT 0 CHECK (mtime_nsec BETWEEN 0 AND 999999999),
    link_target bytea,
    -- Offset in the archive stream of the entry's first header block (PAX
    -- and GNU long-name headers included): a tar reader started there
    -- yields this entry.
    stream_offset bigint NOT NULL CHECK (stream_offset >= 0),
    PRIMARY KEY (snapshot_id, archive, path)
);

CREATE INDEX files_dir_idx ON files (snapshot_id, parent, path);

-- One row per chunk in the chunk store. refs counts committed snapshots
-- referencing the chunk; GC considers rows with refs = 0 whose touched_at is
-- older than its grace period (running backups keep touching what they use).
-- touched_at is in no index, so the frequent touches are HOT updates; the
-- spare page room (fillfactor) lets them stay on their page.
CREATE TABLE chunks (
    id          bytea PRIMARY KEY CHECK (length(id) = 32),
    size        bigint NOT NULL CHECK (size >= 0),
    stored_size bigint NOT NULL CHECK (stored_size >= 0),
    refs        integer NOT NULL DEFAULT 0 CHECK (refs >= 0),
    bad         boolean NOT NULL DEFAULT false, -- verify found it damaged or missing
    created_at  timestamptz NOT NULL DEFAULT now(),
    touched_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 90);

CREATE INDEX chunks_unreferenced_idx ON chunks (id) WHERE refs = 0;
CREATE INDEX chunks_bad_idx ON chunks (id) WHERE bad;

-- Long-running work (disk pulls, GC, verify). Progress is updated every
-- second or so; the columns it touches are not indexed, so those updates
-- stay HOT, and the spare page room (fillfactor) lets them.
CREATE TABLE tasks (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind <> ''),
    ns          text NOT NULL DEFAULT '',
    snapshot_id uuid REFERENCES snapshots (id) ON DELETE SET NULL,
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'error')),
    done        bigint NOT NULL DEFAULT 0,
    total       bigint NOT NULL DEFAULT 0,
    error       text NOT NULL DEFAULT '',
    log_seq     bigint NOT NULL DEFAULT 0, -- last task_log.seq handed out
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz,
    CHECK ((state = 'running') = (finished_at IS NULL))
) WITH (fillfactor = 80);

CREATE INDEX tasks_snapshot_idx ON tasks (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX tasks_running_idx ON tasks (created_at) WHERE state = 'running';

CREATE TABLE task_log (
    task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     bigint NOT NULL CHECK (seq > 0),
    ts      timestamptz NOT NULL,
    text    text NOT NULL,
    PRIMARY KEY (task_id, seq)
);

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
