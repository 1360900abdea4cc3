-- +goose Up
-- Container archives are stored as three streams (meta records, payload,
-- volatile header fields); fetching one file later needs its position in
-- each. A path may appear twice in one archive (PVE archives "./" and then
-- each mount point), so entries are keyed by their offset in the tar
-- stream; the later entry of a path is the one tar extraction keeps.
ALTER TABLE files
    ADD COLUMN meta_offset     bigint NOT NULL DEFAULT 0 CHECK (meta_offset >= 0),
    ADD COLUMN payload_offset  bigint NOT NULL DEFAULT 0 CHECK (payload_offset >= 0),
    ADD COLUMN volatile_offset bigint NOT NULL DEFAULT 0 CHECK (volatile_offset >= 0);
ALTER TABLE files DROP CONSTRAINT files_pkey;
ALTER TABLE files ADD PRIMARY KEY (snapshot_id, archive, stream_offset);
CREATE INDEX files_path_idx ON files (snapshot_id, archive, path);

-- +goose Down
DROP INDEX files_path_idx;
ALTER TABLE files DROP CONSTRAINT files_pkey;
ALTER TABLE files ADD PRIMARY KEY (snapshot_id, archive, path);
ALTER TABLE files DROP COLUMN meta_offset, DROP COLUMN payload_offset, DROP COLUMN volatile_offset;
