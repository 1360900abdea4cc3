package catalog

import (
	"bytes"
	"context"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Accounting from the reference counts. A snapshot's refs are one blob of
// sorted 32-byte ids; Postgres takes them apart slowly (each substring of a
// TOASTed value is a TOAST lookup), so the blobs are read here, taken apart
// in memory, and the chunks they name are looked up in sorted batches.
// Memory: one entry (about 80 bytes) per distinct chunk of what is counted.

// lookupBatch is how many ids one chunk lookup sends.
const lookupBatch = 20000

// scanRatio: reading every chunk row costs about as much as looking up one
// in scanRatio of them, so past that share of the table a scan is cheaper.
const scanRatio = 8

// fewRefs is the size below which ExclusiveBytes looks the snapshot's
// chunks up; above it, it reads the chunks with a single reference instead
// (a partial index keeps those few), which does not grow with the snapshot.
const fewRefs = 16384

// querier is what a pool and a transaction have in common here.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ExclusiveBytes sums the stored sizes of the snapshot's chunks that have a
// single reference: its own.
func (s *Store) ExclusiveBytes(ctx context.Context, id string) (int64, error) {
	uid, ok := parseID(id)
	if !ok {
		return 0, wrapf(notFoundSession(id), "exclusive bytes of snapshot %s", id)
	}
	var n int64
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var blob []byte
		err := tx.QueryRow(ctx, `SELECT refs FROM snapshots WHERE id = $1 AND state = 'committed'`, uid).Scan(&blob)
		if err != nil {
			return err
		}
		refs := splitRefs(blob)
		if len(refs) <= fewRefs {
			return tx.QueryRow(ctx, `SELECT COALESCE(sum(stored_size), 0)::bigint FROM chunks
				WHERE id = ANY($1) AND refs = 1`, refs).Scan(&n)
		}
		rows, _ := tx.Query(ctx, `SELECT id, stored_size FROM chunks WHERE refs = 1`)
		var cid []byte
		var size int64
		_, err = pgx.ForEachRow(rows, []any{&cid, &size}, func() error {
			if _, found := slices.BinarySearchFunc(refs, cid, bytes.Compare); found {
				n += size
			}
			return nil
		})
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("snapshot %s not found", id), err)
	}
	if err != nil {
		return 0, wrapf(err, "exclusive bytes of snapshot %s", id)
	}
	return n, nil
}

// eachSnapshotRefs calls fn with each committed snapshot of ns (vmid 0:
// all), by guest. The refs blob is only valid during the call.
func eachSnapshotRefs(ctx context.Context, q querier, ns string, vmid int, fn func(backup.SnapshotRefs)) error {
	rows, _ := q.Query(ctx, `SELECT vmid, type, size, new_bytes, refs FROM snapshots
		WHERE ns = $1 AND state = 'committed' AND ($2 = 0 OR vmid = $2) ORDER BY vmid, type`, ns, vmid)
	var s backup.SnapshotRefs
	var typ string
	_, err := pgx.ForEachRow(rows, []any{&s.VMID, &typ, &s.Size, &s.NewBytes, &s.Refs}, func() error {
		s.Type = backup.GuestType(typ)
		fn(s)
		return nil
	})
	return err
}

// lookupChunks fills in the stored size and reference count of every chunk
// in tally: when they are a good part of all chunks, by reading the whole
// table once (a sequential scan streams far faster than lookups); else in
// sorted batches of lookups.
func lookupChunks(ctx context.Context, q querier, tally *backup.UsageTally) error {
	var estimate float64
	if err := q.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = 'chunks'::regclass`).Scan(&estimate); err != nil {
		return err
	}
	fill := func(rows pgx.Rows) error {
		var id []byte
		var stored int64
		var refs int32
		_, err := pgx.ForEachRow(rows, []any{&id, &stored, &refs}, func() error {
			tally.SetChunk(backup.ChunkID(id), stored, refs)
			return nil
		})
		return err
	}
	if float64(tally.Len())*scanRatio >= estimate {
		rows, _ := q.Query(ctx, `SELECT id, stored_size, refs FROM chunks`)
		return fill(rows)
	}
	for batch := range slices.Chunk(tally.IDs(), lookupBatch) {
		rows, _ := q.Query(ctx, `SELECT id, stored_size, refs FROM chunks WHERE id = ANY($1)`, idParams(batch))
		if err := fill(rows); err != nil {
			return err
		}
	}
	return nil
}

// readOnly runs fn in one read-only, repeatable-read transaction: one
// consistent state of the catalog for figures read in several queries.
func (s *Store) readOnly(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// Usage computes a namespace's figures (vmid > 0: one guest's) in one
// read-only snapshot of the catalog (backup.ComputeUsage adds up).
func (s *Store) Usage(ctx context.Context, ns string, vmid int) (backup.Usage, error) {
	var u backup.Usage
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		var err error
		u, err = backup.ComputeUsage(ns,
			func(fn func(backup.SnapshotRefs)) error { return eachSnapshotRefs(ctx, tx, ns, vmid, fn) },
			func(t *backup.UsageTally) error { return lookupChunks(ctx, tx, t) })
		return err
	})
	if err != nil {
		return backup.Usage{}, wrapf(err, "usage of namespace %s", ns)
	}
	return u, nil
}

// NamespaceStoredBytes sums the distinct chunks of a namespace.
func (s *Store) NamespaceStoredBytes(ctx context.Context, ns string) (int64, error) {
	var n int64
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		tally := backup.NewUsageTally()
		if err := eachSnapshotRefs(ctx, tx, ns, 0, func(s backup.SnapshotRefs) { tally.Add(s.Refs) }); err != nil {
			return err
		}
		if err := lookupChunks(ctx, tx, tally); err != nil {
			return err
		}
		n = tally.StoredBytes()
		return nil
	})
	if err != nil {
		return 0, wrapf(err, "stored bytes of namespace %s", ns)
	}
	return n, nil
}
