package sqlitecat

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"slices"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Accounting from the reference counts, as the Postgres catalog does it:
// the refs blobs are read and taken apart here, and the chunks they name
// are looked up in sorted batches, all in one read transaction (one
// consistent state of the file). Memory: one entry (about 80 bytes) per
// distinct chunk of what is counted.

// lookupBatch is how many ids one chunk lookup sends.
const lookupBatch = 20000

// fewRefs is the size below which ExclusiveBytes looks the snapshot's
// chunks up; above it, it reads the chunks with a single reference.
const fewRefs = 16384

// ExclusiveBytes sums the stored sizes of the snapshot's chunks that have a
// single reference: its own.
func (s *Store) ExclusiveBytes(ctx context.Context, id string) (int64, error) {
	uid, ok := parseID(id)
	if !ok {
		return 0, wrapf(notFoundSession(id), "exclusive bytes of snapshot %s", id)
	}
	var n int64
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var blob []byte
		err := tx.QueryRowContext(ctx, `SELECT refs FROM snapshots WHERE id = ? AND state = 'committed'`, uid).Scan(&blob)
		if err != nil {
			return err
		}
		if len(blob)/len(backup.ChunkID{}) <= fewRefs {
			return tx.QueryRowContext(ctx, `SELECT COALESCE(sum(stored_size), 0) FROM chunks
				WHERE id IN `+idSet+` AND refs = 1`, packed(blob)).Scan(&n)
		}
		refs := splitRefs(blob)
		rows, err := tx.QueryContext(ctx, `SELECT id, stored_size FROM chunks WHERE refs = 1`)
		if err != nil {
			return err
		}
		return eachRow(rows, func(r *sql.Rows) error {
			var cid []byte
			var size int64
			if err := r.Scan(&cid, &size); err != nil {
				return err
			}
			if _, found := slices.BinarySearchFunc(refs, backup.ChunkID(cid), func(a, b backup.ChunkID) int {
				return bytes.Compare(a[:], b[:])
			}); found {
				n += size
			}
			return nil
		})
	})
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("snapshot %s not found", id), err)
	}
	if err != nil {
		return 0, wrapf(err, "exclusive bytes of snapshot %s", id)
	}
	return n, nil
}

// eachSnapshotRefs calls fn with each committed snapshot of ns (vmid 0:
// all), by guest.
func eachSnapshotRefs(ctx context.Context, q querier, ns string, vmid int, fn func(backup.SnapshotRefs)) error {
	rows, err := q.QueryContext(ctx, `SELECT vmid, type, size, new_bytes, refs FROM snapshots
		WHERE ns = ?1 AND state = 'committed' AND (?2 = 0 OR vmid = ?2) ORDER BY vmid, type`, ns, vmid)
	if err != nil {
		return err
	}
	return eachRow(rows, func(r *sql.Rows) error {
		var s backup.SnapshotRefs
		var typ string
		if err := r.Scan(&s.VMID, &typ, &s.Size, &s.NewBytes, &s.Refs); err != nil {
			return err
		}
		s.Type = backup.GuestType(typ)
		fn(s)
		return nil
	})
}

// lookupChunks fills in the stored size and reference count of every chunk
// in tally, in sorted batches.
func lookupChunks(ctx context.Context, q querier, tally *backup.UsageTally) error {
	for batch := range slices.Chunk(tally.IDs(), lookupBatch) {
		rows, err := q.QueryContext(ctx, `SELECT id, stored_size, refs FROM chunks WHERE id IN `+idSet, packIDs(batch))
		if err != nil {
			return err
		}
		err = eachRow(rows, func(r *sql.Rows) error {
			var id []byte
			var stored int64
			var refs int32
			if err := r.Scan(&id, &stored, &refs); err != nil {
				return err
			}
			tally.SetChunk(backup.ChunkID(id), stored, refs)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Usage computes a namespace's figures (vmid > 0: one guest's) in one read
// transaction (backup.ComputeUsage adds up).
func (s *Store) Usage(ctx context.Context, ns string, vmid int) (backup.Usage, error) {
	var u backup.Usage
	err := s.readTx(ctx, func(tx *sql.Tx) error {
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
	err := s.readTx(ctx, func(tx *sql.Tx) error {
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
