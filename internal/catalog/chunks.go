package catalog

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// KnownChunks returns which of ids are stored, not pending, not bad and not
// being deleted by GC (true; others are absent from the map), and refreshes
// their touch time, in one statement.
// Rows are locked in id order, as everywhere chunk rows are written.
func (s *Store) KnownChunks(ctx context.Context, ids []backup.ChunkID) (map[backup.ChunkID]bool, error) {
	known := make(map[backup.ChunkID]bool)
	if len(ids) == 0 {
		return known, nil
	}
	err := s.retry(ctx, func() error {
		clear(known)
		rows, _ := s.pool.Query(ctx, `UPDATE chunks SET touched_at = now() WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) AND NOT bad AND NOT pending AND NOT deleting
			ORDER BY id FOR UPDATE)
			RETURNING id`, idParams(distinctIDs(ids)))
		var id []byte
		_, err := pgx.ForEachRow(rows, []any{&id}, func() error {
			known[backup.ChunkID(id)] = true
			return nil
		})
		return err
	})
	if err != nil {
		return nil, wrapf(err, "known chunks (%d ids)", len(ids))
	}
	return known, nil
}

// ReserveChunks records chunks about to be uploaded as pending, in one
// statement. A row that exists already (pending from an earlier attempt,
// stored, or bad) is touched, so GC leaves it alone while the upload runs;
// one that GC is deleting is left alone and reported (ErrChunksDeleting).
func (s *Store) ReserveChunks(ctx context.Context, chunks []backup.ChunkInfo) error {
	return s.upsertChunks(ctx, "reserve", chunks, `
		INSERT INTO chunks AS c (id, size, stored_size, pending)
		SELECT id, size, 0, true FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS u(id, size, stored) ORDER BY 1
		ON CONFLICT (id) DO UPDATE SET touched_at = now() WHERE NOT c.deleting`)
}

// AddChunks records durable chunks in one statement. A chunk already
// recorded gets its touch time refreshed; a pending one becomes stored; one
// marked bad was stored again by the caller (KnownChunks did not count it),
// so it is good again with its new stored size. One that GC is deleting is
// left alone and reported (ErrChunksDeleting): its object may be deleted
// after this upload, so it must not count as stored.
func (s *Store) AddChunks(ctx context.Context, chunks []backup.ChunkInfo) error {
	return s.upsertChunks(ctx, "add", chunks, `
		INSERT INTO chunks AS c (id, size, stored_size)
		SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) ORDER BY 1
		ON CONFLICT (id) DO UPDATE SET touched_at = now(), bad = false, pending = false,
			size = CASE WHEN c.pending THEN EXCLUDED.size ELSE c.size END,
			stored_size = CASE WHEN c.bad OR c.pending THEN EXCLUDED.stored_size ELSE c.stored_size END
		WHERE NOT c.deleting`)
}

// upsertChunks runs an INSERT … ON CONFLICT DO UPDATE … WHERE NOT c.deleting
// over distinct chunks; a row it neither inserted nor updated is deleting.
func (s *Store) upsertChunks(ctx context.Context, what string, chunks []backup.ChunkInfo, sql string) error {
	if len(chunks) == 0 {
		return nil
	}
	// Distinct ids: ON CONFLICT DO UPDATE may not touch a row twice.
	seen := make(map[backup.ChunkID]bool, len(chunks))
	ids := make([][]byte, 0, len(chunks))
	sizes := make([]int64, 0, len(chunks))
	stored := make([]int64, 0, len(chunks))
	for i := range chunks {
		c := &chunks[i]
		if seen[c.ID] {
			continue
		}
		if c.Size < 0 || c.StoredSize < 0 {
			return wrapf(invalid("chunk %s: negative size", c.ID), "%s chunks", what)
		}
		seen[c.ID] = true
		ids, sizes, stored = append(ids, c.ID[:]), append(sizes, c.Size), append(stored, c.StoredSize)
	}
	var affected int64
	err := s.retry(ctx, func() error {
		tag, err := s.pool.Exec(ctx, sql, ids, sizes, stored)
		affected = tag.RowsAffected()
		return err
	})
	if err == nil && affected < int64(len(ids)) {
		err = backup.Errorf(backup.ErrChunksDeleting, "%d of %d chunks are being deleted by garbage collection; store them again once it is done",
			int64(len(ids))-affected, len(ids))
	}
	if err != nil {
		return wrapf(err, "%s chunks (%d)", what, len(ids))
	}
	return nil
}

// ChunkRefs returns the reference count of each of ids that has a row.
// It is for checks and maintenance, not the backup path.
func (s *Store) ChunkRefs(ctx context.Context, ids []backup.ChunkID) (map[backup.ChunkID]int64, error) {
	out := make(map[backup.ChunkID]int64)
	rows, _ := s.pool.Query(ctx, `SELECT id, refs FROM chunks WHERE id = ANY($1)`, idParams(ids))
	var id []byte
	var refs int64
	_, err := pgx.ForEachRow(rows, []any{&id, &refs}, func() error {
		out[backup.ChunkID(id)] = refs
		return nil
	})
	if err != nil {
		return nil, wrapf(err, "chunk refs (%d ids)", len(ids))
	}
	return out, nil
}

// MarkChunksBad flags chunks that verification found damaged or missing:
// KnownChunks stops counting them, so the next backup stores them again,
// and commits refuse them until then. Unknown ids are ignored.
func (s *Store) MarkChunksBad(ctx context.Context, ids []backup.ChunkID) error {
	if len(ids) == 0 {
		return nil
	}
	err := s.retry(ctx, func() error {
		_, err := s.pool.Exec(ctx, `UPDATE chunks SET bad = true WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) ORDER BY id FOR UPDATE)`, idParams(distinctIDs(ids)))
		return err
	})
	if err != nil {
		return wrapf(err, "mark %d chunks bad", len(ids))
	}
	return nil
}
