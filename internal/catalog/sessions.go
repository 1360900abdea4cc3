package catalog

import (
	"bytes"
	"context"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// blobColumns maps a blob kind to its column. Only these names ever reach
// SQL text.
var blobColumns = map[string]string{"config": "config", "firewall": "firewall", "log": "log"}

// PutSnapshotBlob stores a byte-exact text of an open session, or the log
// of a committed snapshot. Storing again replaces it.
func (s *Store) PutSnapshotBlob(ctx context.Context, id, kind string, data []byte) error {
	col, ok := blobColumns[kind]
	if !ok {
		return wrapf(invalid("blob kind %q: want config, firewall or log", kind), "put %s of snapshot %s", kind, id)
	}
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundSession(id), "put %s of snapshot %s", kind, id)
	}
	if data == nil {
		data = []byte{} // empty, not absent
	}
	ok, err := exec1(ctx, s.pool, `UPDATE snapshots SET `+col+` = $2
		WHERE id = $1 AND (state = 'open' OR $3)`, uid, data, kind == "log")
	if err == nil && !ok {
		err = s.whyNotOpen(ctx, uid, id)
	}
	if err != nil {
		return wrapf(err, "put %s of snapshot %s", kind, id)
	}
	return nil
}

// GetSnapshotBlob returns a stored text; none stored is ErrNotFound.
func (s *Store) GetSnapshotBlob(ctx context.Context, id, kind string) ([]byte, error) {
	col, ok := blobColumns[kind]
	if !ok {
		return nil, wrapf(invalid("blob kind %q: want config, firewall or log", kind), "get %s of snapshot %s", kind, id)
	}
	uid, ok := parseID(id)
	if !ok {
		return nil, wrapf(notFoundSession(id), "get %s of snapshot %s", kind, id)
	}
	var present bool
	var data []byte
	err := s.pool.QueryRow(ctx, `SELECT `+col+` IS NOT NULL, COALESCE(`+col+`, '') FROM snapshots WHERE id = $1`,
		uid).Scan(&present, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = because(notFoundSession(id), err)
	case err == nil && !present:
		err = notFound("snapshot %s has no %s", id, kind)
	}
	if err != nil {
		return nil, wrapf(err, "get %s of snapshot %s", kind, id)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// The insert goes through a locked read of the session so that it cannot
// slip in beside a commit: FOR SHARE waits for a committing transaction and
// then sees state 'committed'.
const lockOpenSession = `WITH s AS (SELECT id FROM snapshots WHERE id = $1::uuid AND state = 'open' FOR SHARE) `

// AddDisk attaches a disk and its index to an open session. A device added
// twice is ErrConflict.
func (s *Store) AddDisk(ctx context.Context, d backup.Disk) error {
	uid, ok := parseID(d.SnapshotID)
	if !ok {
		return wrapf(notFoundSession(d.SnapshotID), "add disk %s to snapshot %s", d.Device, d.SnapshotID)
	}
	ok, err := exec1(ctx, s.pool, lockOpenSession+`
		INSERT INTO disks (snapshot_id, device, size, chunk_size, bitmap_mode, index_key, index_sum, new_bytes)
		SELECT s.id, $2::text, $3::bigint, $4::integer, $5::text, $6::text, $7::bytea, $8::bigint FROM s`,
		uid, d.Device, d.Size, d.ChunkSize, d.BitmapMode, d.IndexKey, d.IndexSum[:], d.NewBytes)
	switch {
	case pgCode(err) == "23505":
		err = because(conflict("disk %s already added to snapshot %s", d.Device, d.SnapshotID), err)
	case pgCode(err) == "23514":
		err = because(invalid("disk %s: bad size, chunk size or bitmap mode", d.Device), err)
	case err == nil && !ok:
		err = s.whyNotOpen(ctx, uid, d.SnapshotID)
	}
	if err != nil {
		return wrapf(err, "add disk %s to snapshot %s", d.Device, d.SnapshotID)
	}
	return nil
}

// AddArchive attaches a container archive and its index to an open
// session. An archive name added twice is ErrConflict.
func (s *Store) AddArchive(ctx context.Context, a backup.Archive) error {
	uid, ok := parseID(a.SnapshotID)
	if !ok {
		return wrapf(notFoundSession(a.SnapshotID), "add archive %s to snapshot %s", a.Name, a.SnapshotID)
	}
	ok, err := exec1(ctx, s.pool, lockOpenSession+`
		INSERT INTO archives (snapshot_id, name, size, index_key, index_sum, files, new_bytes)
		SELECT s.id, $2::text, $3::bigint, $4::text, $5::bytea, $6::bigint, $7::bigint FROM s`,
		uid, a.Name, a.Size, a.IndexKey, a.IndexSum[:], a.Files, a.NewBytes)
	switch {
	case pgCode(err) == "23505":
		err = because(conflict("archive %s already added to snapshot %s", a.Name, a.SnapshotID), err)
	case pgCode(err) == "23514":
		err = because(invalid("archive %s: bad name, size or file count", a.Name), err)
	case err == nil && !ok:
		err = s.whyNotOpen(ctx, uid, a.SnapshotID)
	}
	if err != nil {
		return wrapf(err, "add archive %s to snapshot %s", a.Name, a.SnapshotID)
	}
	return nil
}

// ListDisks returns the disks of a session or snapshot by device name.
func (s *Store) ListDisks(ctx context.Context, snapshotID string) ([]backup.Disk, error) {
	return listAttached(ctx, s, snapshotID, "disks", `SELECT snapshot_id::text, device, size, chunk_size,
		bitmap_mode, index_key, index_sum, new_bytes FROM disks WHERE snapshot_id = $1 ORDER BY device`,
		func(r pgx.CollectableRow) (backup.Disk, error) {
			var d backup.Disk
			var sum []byte
			err := r.Scan(&d.SnapshotID, &d.Device, &d.Size, &d.ChunkSize, &d.BitmapMode, &d.IndexKey, &sum, &d.NewBytes)
			copy(d.IndexSum[:], sum)
			return d, err
		})
}

// ListArchives returns the archives of a session or snapshot by name.
func (s *Store) ListArchives(ctx context.Context, snapshotID string) ([]backup.Archive, error) {
	return listAttached(ctx, s, snapshotID, "archives", `SELECT snapshot_id::text, name, size, index_key,
		index_sum, files, new_bytes FROM archives WHERE snapshot_id = $1 ORDER BY name`,
		func(r pgx.CollectableRow) (backup.Archive, error) {
			var a backup.Archive
			var sum []byte
			err := r.Scan(&a.SnapshotID, &a.Name, &a.Size, &a.IndexKey, &sum, &a.Files, &a.NewBytes)
			copy(a.IndexSum[:], sum)
			return a, err
		})
}

// listAttached lists rows hanging off a snapshot; an empty list is checked
// against the snapshot so a missing one is ErrNotFound.
// The query's $1 is the snapshot id, extra args follow.
func listAttached[T any](ctx context.Context, s *Store, snapshotID, what, sql string, scan pgx.RowToFunc[T], extra ...any) ([]T, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return nil, wrapf(notFoundSession(snapshotID), "list %s of snapshot %s", what, snapshotID)
	}
	rows, _ := s.pool.Query(ctx, sql, append([]any{uid}, extra...)...)
	out, err := pgx.CollectRows(rows, scan)
	if err == nil && len(out) == 0 {
		err = s.pool.QueryRow(ctx, `SELECT 1 FROM snapshots WHERE id = $1`, uid).Scan(new(int))
		if errors.Is(err, pgx.ErrNoRows) {
			err = because(notFoundSession(snapshotID), err)
		}
	}
	if err != nil {
		return nil, wrapf(err, "list %s of snapshot %s", what, snapshotID)
	}
	return out, nil
}

// CommitSnapshot makes an open session a visible snapshot, in one
// transaction: lock the session, count one reference on each distinct ref
// (locking chunk rows in id order, so concurrent commits, deletes and
// KnownChunks calls cannot deadlock), refuse if any ref is not a known good
// chunk (pending, bad or being deleted by GC), store the refs and flip the
// state.
func (s *Store) CommitSnapshot(ctx context.Context, id string, size, newBytes int64, refs []backup.ChunkID) (backup.Snapshot, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Snapshot{}, wrapf(notFoundSession(id), "commit snapshot %s", id)
	}
	if size < 0 || newBytes < 0 {
		return backup.Snapshot{}, wrapf(invalid("size %d, new bytes %d: want >= 0", size, newBytes), "commit snapshot %s", id)
	}
	ids := distinctIDs(refs)
	params := idParams(ids)
	var out backup.Snapshot
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM snapshots WHERE id = $1 FOR UPDATE`, uid).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return because(notFoundSession(id), err)
		}
		if err != nil {
			return err
		}
		if state != string(backup.SnapshotOpen) {
			return conflict("snapshot %s is already committed", id)
		}
		tag, err := tx.Exec(ctx, `UPDATE chunks SET refs = refs + 1 WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) AND NOT bad AND NOT pending AND NOT deleting
			ORDER BY id FOR UPDATE)`, params)
		if err != nil {
			return err
		}
		if n := tag.RowsAffected(); n != int64(len(ids)) {
			return unknownRefs(ctx, tx, id, ids, params)
		}
		out, err = scanSnapshot(tx.QueryRow(ctx, `
			UPDATE snapshots SET state = 'committed', size = $2, new_bytes = $3, committed_at = $4, refs = $5
			WHERE id = $1 RETURNING `+snapCols, uid, size, newBytes, s.nowUTC(), bytes.Join(params, nil)))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE backup_runs SET state = 'ok', finished_at = $2, size = $3, new_bytes = $4
			WHERE id = $1`, uid, out.CommittedAt, size, newBytes)
		return err
	})
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "commit snapshot %s", id)
	}
	return out, nil
}

// unknownRefs builds the ErrInvalid for a commit whose refs are not all
// known good chunks, naming the first one missing.
func unknownRefs(ctx context.Context, tx pgx.Tx, id string, ids []backup.ChunkID, params [][]byte) error {
	rows, _ := tx.Query(ctx, `SELECT id FROM chunks WHERE id = ANY($1) AND NOT bad AND NOT pending AND NOT deleting`, params)
	known, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return err
	}
	have := make(map[backup.ChunkID]bool, len(known))
	for _, k := range known {
		have[backup.ChunkID(k)] = true
	}
	for _, c := range ids {
		if !have[c] {
			return invalid("snapshot %s references %d chunks that are not in the repository or are damaged, e.g. %s",
				id, len(ids)-len(known), c)
		}
	}
	return invalid("snapshot %s references chunks that are not in the repository", id)
}

// distinctIDs returns ids sorted and without duplicates.
func distinctIDs(ids []backup.ChunkID) []backup.ChunkID {
	out := slices.Clone(ids)
	slices.SortFunc(out, func(a, b backup.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(out)
}

// idParams turns ids into a bytea[] parameter, sharing their memory.
func idParams(ids []backup.ChunkID) [][]byte {
	out := make([][]byte, len(ids))
	for i := range ids {
		out[i] = ids[i][:]
	}
	return out
}

// splitRefs cuts a stored refs blob into bytea[] parameter items.
func splitRefs(blob []byte) [][]byte {
	out := make([][]byte, 0, len(blob)/len(backup.ChunkID{}))
	for len(blob) >= len(backup.ChunkID{}) {
		out = append(out, blob[:len(backup.ChunkID{})])
		blob = blob[len(backup.ChunkID{}):]
	}
	return out
}
