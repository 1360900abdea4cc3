-- Garbage collection, verification and accounting (issue #7).

-- +goose Up

-- A chunk that GC has claimed: its object is being deleted, then its row.
-- Deleting chunks are invisible to dedup (KnownChunks), refused by commits,
-- and a writer that wants to store one again waits until the row is gone.
-- The claim sets touched_at, so a claim left by a GC that died is known by
-- its age. Almost no row is ever deleting: the partial index stays tiny.
ALTER TABLE chunks ADD COLUMN deleting boolean NOT NULL DEFAULT false;
CREATE INDEX chunks_deleting_idx ON chunks (touched_at) WHERE deleting;

-- When a backup session was opened, on the database clock (the one chunk
-- touch times use; created_at comes from the server's clock). GC never
-- collects a chunk touched after the oldest open session was opened, since
-- that session may reference it. Sessions open during the upgrade keep the
-- earlier of the two clocks, which only makes GC more careful.
ALTER TABLE snapshots ADD COLUMN opened_at timestamptz NOT NULL DEFAULT now();
UPDATE snapshots SET opened_at = LEAST(opened_at, created_at) WHERE state = 'open';
CREATE INDEX snapshots_opened_idx ON snapshots (opened_at) WHERE state = 'open';

-- Schedules ask when a maintenance task of a kind last ran.
CREATE INDEX tasks_kind_idx ON tasks (kind, created_at DESC);

-- +goose Down
DROP INDEX tasks_kind_idx;
DROP INDEX snapshots_opened_idx;
ALTER TABLE snapshots DROP COLUMN opened_at;
DROP INDEX chunks_deleting_idx;
ALTER TABLE chunks DROP COLUMN deleting;
