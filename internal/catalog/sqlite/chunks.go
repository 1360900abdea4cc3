package sqlitecat

import (
	"context"
	"database/sql"
	"strconv"

	"github.com/backstop-pve/backstop/internal/backup"
)

// KnownChunks returns which of ids are stored, not pending, not bad and not
// being deleted by GC (true; others are absent from the map), and refreshes
// their touch time, in one statement.
func (s *Store) KnownChunks(ctx context.Context, ids []backup.ChunkID) (map[backup.ChunkID]bool, error) {
	known := make(map[backup.ChunkID]bool)
	if len(ids) == 0 {
		return known, nil
	}
	rows, err := s.wdb.QueryContext(ctx, `UPDATE chunks SET touched_at = ?2
		WHERE id IN `+idSet+` AND NOT bad AND NOT pending AND NOT deleting
		RETURNING id`, packIDs(distinctIDs(ids)), touchNow())
	if err == nil {
		err = eachRow(rows, func(r *sql.Rows) error {
			var id []byte
			if err := r.Scan(&id); err != nil {
				return err
			}
			known[backup.ChunkID(id)] = true
			return nil
		})
	}
	if err != nil {
		return nil, wrapf(err, "known chunks (%d ids)", len(ids))
	}
	return known, nil
}

// eachRow calls fn for each row and closes rows.
func eachRow(rows *sql.Rows, fn func(*sql.Rows) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ReserveChunks records chunks about to be uploaded as pending. A row that
// exists already (pending from an earlier attempt, stored, or bad) is
// touched; one that GC is deleting is left alone and reported
// (ErrChunksDeleting) while the others are reserved.
func (s *Store) ReserveChunks(ctx context.Context, chunks []backup.ChunkInfo) error {
	return s.upsertChunks(ctx, "reserve", chunks, `
		INSERT INTO chunks (id, size, stored_size, pending, created_at, touched_at)
		SELECT substr(?1, j.key * 32 + 1, 32), j.value ->> 0, 0, 1, ?3, ?3 FROM json_each(?2) AS j WHERE true
		ON CONFLICT (id) DO UPDATE SET touched_at = ?3 WHERE NOT deleting`)
}

// AddChunks records durable chunks. A chunk already recorded gets its touch
// time refreshed; a pending one becomes stored; one marked bad was stored
// again by the caller, so it is good again with its new stored size. One
// that GC is deleting is left alone and reported (ErrChunksDeleting).
func (s *Store) AddChunks(ctx context.Context, chunks []backup.ChunkInfo) error {
	return s.upsertChunks(ctx, "add", chunks, `
		INSERT INTO chunks (id, size, stored_size, created_at, touched_at)
		SELECT substr(?1, j.key * 32 + 1, 32), j.value ->> 0, j.value ->> 1, ?3, ?3 FROM json_each(?2) AS j WHERE true
		ON CONFLICT (id) DO UPDATE SET touched_at = ?3, bad = 0, pending = 0,
			size = CASE WHEN pending THEN excluded.size ELSE size END,
			stored_size = CASE WHEN bad OR pending THEN excluded.stored_size ELSE stored_size END
		WHERE NOT deleting`)
}

// upsertChunks runs an INSERT … SELECT … ON CONFLICT DO UPDATE … WHERE NOT
// deleting over the distinct chunks, in one statement: ?1 is their ids
// packed, ?2 a JSON array of [size, stored size] in the same order, ?3 the
// touch time ("WHERE true" keeps the parser from reading ON CONFLICT as a
// join constraint). A row it neither inserted nor updated is deleting.
func (s *Store) upsertChunks(ctx context.Context, what string, chunks []backup.ChunkInfo, query string) error {
	if len(chunks) == 0 {
		return nil
	}
	seen := make(map[backup.ChunkID]bool, len(chunks))
	ids := make([]byte, 0, len(chunks)*len(backup.ChunkID{}))
	sizes := make([]byte, 0, len(chunks)*24)
	sizes = append(sizes, '[')
	var distinct int64
	for i := range chunks {
		c := &chunks[i]
		if c.Size < 0 || c.StoredSize < 0 {
			return wrapf(invalid("chunk %s: negative size", c.ID), "%s chunks", what)
		}
		if seen[c.ID] {
			continue
		}
		seen[c.ID] = true
		if distinct > 0 {
			sizes = append(sizes, ',')
		}
		distinct++
		ids = append(ids, c.ID[:]...)
		sizes = append(sizes, '[')
		sizes = strconv.AppendInt(sizes, c.Size, 10)
		sizes = append(sizes, ',')
		sizes = strconv.AppendInt(sizes, c.StoredSize, 10)
		sizes = append(sizes, ']')
	}
	sizes = append(sizes, ']')
	affected, err := execN(ctx, s.wdb, query, ids, string(sizes), touchNow())
	if err == nil && affected < distinct {
		err = backup.Errorf(backup.ErrChunksDeleting, "%d of %d chunks are being deleted by garbage collection; store them again once it is done",
			distinct-affected, distinct)
	}
	if err != nil {
		return wrapf(err, "%s chunks (%d)", what, len(chunks))
	}
	return nil
}

// ChunkRefs returns the reference count of each of ids that has a row.
// It is for checks and maintenance, not the backup path.
func (s *Store) ChunkRefs(ctx context.Context, ids []backup.ChunkID) (map[backup.ChunkID]int64, error) {
	out := make(map[backup.ChunkID]int64)
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, refs FROM chunks WHERE id IN `+idSet, packIDs(distinctIDs(ids)))
	if err == nil {
		err = eachRow(rows, func(r *sql.Rows) error {
			var id []byte
			var refs int64
			if err := r.Scan(&id, &refs); err != nil {
				return err
			}
			out[backup.ChunkID(id)] = refs
			return nil
		})
	}
	if err != nil {
		return nil, wrapf(err, "chunk refs (%d ids)", len(ids))
	}
	return out, nil
}

// MarkChunksBad flags chunks that verification found damaged or missing:
// KnownChunks stops counting them, and commits refuse them until a writer
// stores them again. Unknown ids are ignored.
func (s *Store) MarkChunksBad(ctx context.Context, ids []backup.ChunkID) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.wdb.ExecContext(ctx, `UPDATE chunks SET bad = 1 WHERE id IN `+idSet,
		packIDs(distinctIDs(ids))); err != nil {
		return wrapf(err, "mark %d chunks bad", len(ids))
	}
	return nil
}
