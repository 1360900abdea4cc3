-- +goose Up
-- A chunk is reserved (pending) before its upload starts and becomes stored
-- once the upload is durable. A crash in between leaves a pending row, so
-- GC can find and delete what the crash left in the store without listing
-- the bucket. Pending chunks never count for dedup or commits.
ALTER TABLE chunks ADD COLUMN pending boolean NOT NULL DEFAULT false;
CREATE INDEX chunks_pending_idx ON chunks (touched_at) WHERE pending;

-- +goose Down
DROP INDEX chunks_pending_idx;
ALTER TABLE chunks DROP COLUMN pending;
