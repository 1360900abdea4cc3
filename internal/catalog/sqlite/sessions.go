package sqlitecat

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"slices"

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
	ok, err := exec1(ctx, s.wdb, `UPDATE snapshots SET `+col+` = ?2
		WHERE id = ?1 AND (state = 'open' OR ?3)`, uid, data, kind == "log")
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
	err := s.rdb.QueryRowContext(ctx, `SELECT `+col+` IS NOT NULL, COALESCE(`+col+`, x'') FROM snapshots WHERE id = ?`,
		uid).Scan(&present, &data)
	switch {
	case errors.Is(err, sql.ErrNoRows):
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

// AddDisk attaches a disk and its index to an open session. A device added
// twice is ErrConflict. The insert selects the session in the same
// statement; with one writer nothing can commit it in between.
func (s *Store) AddDisk(ctx context.Context, d backup.Disk) error {
	uid, ok := parseID(d.SnapshotID)
	if !ok {
		return wrapf(notFoundSession(d.SnapshotID), "add disk %s to snapshot %s", d.Device, d.SnapshotID)
	}
	ok, err := exec1(ctx, s.wdb, `
		INSERT INTO disks (snapshot_id, device, size, chunk_size, bitmap_mode, index_key, index_sum, new_bytes)
		SELECT id, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM snapshots WHERE id = ?1 AND state = 'open'`,
		uid, d.Device, d.Size, d.ChunkSize, d.BitmapMode, d.IndexKey, d.IndexSum[:], d.NewBytes)
	switch {
	case err != nil && isUniqueErr(err):
		err = because(conflict("disk %s already added to snapshot %s", d.Device, d.SnapshotID), err)
	case isCheck(err):
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
	ok, err := exec1(ctx, s.wdb, `
		INSERT INTO archives (snapshot_id, name, size, index_key, index_sum, files, new_bytes)
		SELECT id, ?2, ?3, ?4, ?5, ?6, ?7 FROM snapshots WHERE id = ?1 AND state = 'open'`,
		uid, a.Name, a.Size, a.IndexKey, a.IndexSum[:], a.Files, a.NewBytes)
	switch {
	case err != nil && isUniqueErr(err):
		err = because(conflict("archive %s already added to snapshot %s", a.Name, a.SnapshotID), err)
	case isCheck(err):
		err = because(invalid("archive %s: bad name, size or file count", a.Name), err)
	case err == nil && !ok:
		err = s.whyNotOpen(ctx, uid, a.SnapshotID)
	}
	if err != nil {
		return wrapf(err, "add archive %s to snapshot %s", a.Name, a.SnapshotID)
	}
	return nil
}

func isUniqueErr(err error) bool { ok, _ := isUnique(err); return ok }

// ListDisks returns the disks of a session or snapshot by device name.
func (s *Store) ListDisks(ctx context.Context, snapshotID string) ([]backup.Disk, error) {
	return listAttached(ctx, s, snapshotID, "disks", `SELECT snapshot_id, device, size, chunk_size,
		bitmap_mode, index_key, index_sum, new_bytes FROM disks WHERE snapshot_id = ? ORDER BY device`,
		func(r *sql.Rows) (backup.Disk, error) {
			var d backup.Disk
			var sum []byte
			err := r.Scan(&d.SnapshotID, &d.Device, &d.Size, &d.ChunkSize, &d.BitmapMode, &d.IndexKey, &sum, &d.NewBytes)
			copy(d.IndexSum[:], sum)
			return d, err
		})
}

// ListArchives returns the archives of a session or snapshot by name.
func (s *Store) ListArchives(ctx context.Context, snapshotID string) ([]backup.Archive, error) {
	return listAttached(ctx, s, snapshotID, "archives", `SELECT snapshot_id, name, size, index_key,
		index_sum, files, new_bytes FROM archives WHERE snapshot_id = ? ORDER BY name`,
		func(r *sql.Rows) (backup.Archive, error) {
			var a backup.Archive
			var sum []byte
			err := r.Scan(&a.SnapshotID, &a.Name, &a.Size, &a.IndexKey, &sum, &a.Files, &a.NewBytes)
			copy(a.IndexSum[:], sum)
			return a, err
		})
}

// listAttached lists rows hanging off a snapshot, in one read transaction;
// an empty list is checked against the snapshot so a missing one is
// ErrNotFound. The query's first parameter is the snapshot id.
func listAttached[T any](ctx context.Context, s *Store, snapshotID, what, query string, scan func(*sql.Rows) (T, error), extra ...any) ([]T, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return nil, wrapf(notFoundSession(snapshotID), "list %s of snapshot %s", what, snapshotID)
	}
	var out []T
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = collect(ctx, tx, scan, query, append([]any{uid}, extra...)...)
		if err == nil && len(out) == 0 {
			err = tx.QueryRowContext(ctx, `SELECT 1 FROM snapshots WHERE id = ?`, uid).Scan(new(int))
			if errors.Is(err, sql.ErrNoRows) {
				err = because(notFoundSession(snapshotID), err)
			}
		}
		return err
	})
	if err != nil {
		return nil, wrapf(err, "list %s of snapshot %s", what, snapshotID)
	}
	return out, nil
}

// CommitSnapshot makes an open session a visible snapshot, in one write
// transaction: check the session, count one reference on each distinct
// ref, refuse if any ref is not a known good chunk (pending, bad or being
// deleted by GC), store the refs and flip the state.
func (s *Store) CommitSnapshot(ctx context.Context, id string, size, newBytes int64, refs []backup.ChunkID) (backup.Snapshot, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Snapshot{}, wrapf(notFoundSession(id), "commit snapshot %s", id)
	}
	if size < 0 || newBytes < 0 {
		return backup.Snapshot{}, wrapf(invalid("size %d, new bytes %d: want >= 0", size, newBytes), "commit snapshot %s", id)
	}
	ids := distinctIDs(refs)
	blob := packIDs(ids)
	var out backup.Snapshot
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM snapshots WHERE id = ?`, uid).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return because(notFoundSession(id), err)
		}
		if err != nil {
			return err
		}
		if state != string(backup.SnapshotOpen) {
			return conflict("snapshot %s is already committed", id)
		}
		if len(ids) > 0 {
			n, err := execN(ctx, tx, `UPDATE chunks SET refs = refs + 1
				WHERE id IN `+idSet+` AND NOT bad AND NOT pending AND NOT deleting`, blob)
			if err != nil {
				return err
			}
			if n != int64(len(ids)) {
				return unknownRefs(ctx, tx, id, ids, blob)
			}
		}
		out, err = scanSnapshot(tx.QueryRowContext(ctx, `
			UPDATE snapshots SET state = 'committed', size = ?2, new_bytes = ?3, committed_at = ?4, refs = ?5
			WHERE id = ?1 RETURNING `+snapCols, uid, size, newBytes, micros(s.nowUTC()), blob))
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE backup_runs SET state = 'ok', finished_at = ?2, size = ?3, new_bytes = ?4
			WHERE id = ?1`, uid, micros(*out.CommittedAt), size, newBytes)
		return err
	})
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "commit snapshot %s", id)
	}
	return out, nil
}

// unknownRefs builds the ErrInvalid for a commit whose refs are not all
// known good chunks, naming the first one missing.
func unknownRefs(ctx context.Context, q querier, id string, ids []backup.ChunkID, blob []byte) error {
	known, err := collect(ctx, q, func(r *sql.Rows) (backup.ChunkID, error) {
		var b []byte
		err := r.Scan(&b)
		return backup.ChunkID(b), err
	}, `SELECT id FROM chunks WHERE id IN `+idSet+` AND NOT bad AND NOT pending AND NOT deleting`, blob)
	if err != nil {
		return err
	}
	have := make(map[backup.ChunkID]bool, len(known))
	for _, k := range known {
		have[k] = true
	}
	for _, c := range ids {
		if !have[c] {
			return invalid("snapshot %s references %d chunks that are not in the repository or are damaged, e.g. %s",
				id, len(ids)-len(known), c)
		}
	}
	return invalid("snapshot %s references chunks that are not in the repository", id)
}

// idSet is a subquery yielding the 32-byte ids packed one after the other
// in the blob parameter ?1: one statement whatever the number of ids
// (SQLite has no array parameters).
const idSet = `(WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < length(?1) / 32)
	SELECT substr(?1, i * 32 + 1, 32) FROM k)`

// packed returns a stored refs blob as an idSet parameter; an empty one
// names no id.
func packed(blob []byte) []byte {
	if blob == nil {
		return []byte{}
	}
	return blob
}

// packIDs concatenates ids.
func packIDs(ids []backup.ChunkID) []byte {
	out := make([]byte, 0, len(ids)*len(backup.ChunkID{}))
	for i := range ids {
		out = append(out, ids[i][:]...)
	}
	return out
}

// distinctIDs returns ids sorted and without duplicates.
func distinctIDs(ids []backup.ChunkID) []backup.ChunkID {
	out := slices.Clone(ids)
	slices.SortFunc(out, func(a, b backup.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(out)
}

// splitRefs cuts a refs blob into ids.
func splitRefs(blob []byte) []backup.ChunkID {
	out := make([]backup.ChunkID, 0, len(blob)/len(backup.ChunkID{}))
	for len(blob) >= len(backup.ChunkID{}) {
		out = append(out, backup.ChunkID(blob[:len(backup.ChunkID{})]))
		blob = blob[len(backup.ChunkID{}):]
	}
	return out
}
