-- +goose Up
-- Chunks with a single reference: what deleting the snapshot that holds it
-- frees. Few rows (what changed lately, what only the oldest snapshots
-- still hold), so "what would deleting this snapshot free" reads these
-- instead of looking up every chunk of a large snapshot.
CREATE INDEX chunks_single_ref_idx ON chunks (id) INCLUDE (stored_size) WHERE refs = 1;

-- +goose Down
DROP INDEX chunks_single_ref_idx;
