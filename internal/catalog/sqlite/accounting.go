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

// groupKey is a guest.
type groupKey struct {
	vmid int
	typ  string
}

// chunkTally is what accounting knows of one distinct chunk.
type chunkTally struct {
	n      int32 // references from the snapshots counted
	refs   int32 // all committed references (chunks.refs)
	stored int64
	found  bool
}

// eachSnapshotRefs calls fn with the refs of each committed snapshot of ns
// (vmid 0: all), by guest.
func eachSnapshotRefs(ctx context.Context, q querier, ns string, vmid int,
	fn func(g groupKey, size, newBytes int64, refs []byte)) error {
	rows, err := q.QueryContext(ctx, `SELECT vmid, type, size, new_bytes, refs FROM snapshots
		WHERE ns = ?1 AND state = 'committed' AND (?2 = 0 OR vmid = ?2) ORDER BY vmid, type`, ns, vmid)
	if err != nil {
		return err
	}
	return eachRow(rows, func(r *sql.Rows) error {
		var g groupKey
		var size, newBytes int64
		var blob []byte
		if err := r.Scan(&g.vmid, &g.typ, &size, &newBytes, &blob); err != nil {
			return err
		}
		fn(g, size, newBytes, blob)
		return nil
	})
}

// lookupChunks fills in the stored size and reference count of every chunk
// in tally, in sorted batches.
func lookupChunks(ctx context.Context, q querier, tally map[backup.ChunkID]*chunkTally) error {
	ids := make([]backup.ChunkID, 0, len(tally))
	for id := range tally {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b backup.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	for batch := range slices.Chunk(ids, lookupBatch) {
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
			if t := tally[backup.ChunkID(id)]; t != nil {
				t.stored, t.refs, t.found = stored, refs, true
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// figures adds up tallied chunks. A chunk is exclusive to the snapshots
// counted when all of its references are theirs.
func figures(f *backup.UsageFigures, tally map[backup.ChunkID]*chunkTally, counts map[backup.ChunkID]int32) {
	for id, n := range counts {
		t := tally[id]
		if !t.found {
			continue // cannot be: a committed snapshot holds a reference
		}
		f.Chunks++
		f.StoredBytes += t.stored
		if t.refs == n {
			f.ExclusiveBytes += t.stored
		}
	}
}

// Usage computes a namespace's figures (vmid > 0: one guest's) in one read
// transaction. The refs are read twice: once to find the distinct chunks
// (looked up once), once per guest to count them.
func (s *Store) Usage(ctx context.Context, ns string, vmid int) (backup.Usage, error) {
	var u backup.Usage
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		u = backup.Usage{Namespace: ns, Guests: []backup.GuestUsage{}}
		tally := map[backup.ChunkID]*chunkTally{}
		err := eachSnapshotRefs(ctx, tx, ns, vmid, func(_ groupKey, size, newBytes int64, refs []byte) {
			u.Snapshots++
			u.LogicalBytes += size
			u.NewBytes += newBytes
			for _, id := range splitRefs(refs) {
				t := tally[id]
				if t == nil {
					t = &chunkTally{}
					tally[id] = t
				}
				t.n++
			}
		})
		if err != nil {
			return err
		}
		if err := lookupChunks(ctx, tx, tally); err != nil {
			return err
		}
		counts := make(map[backup.ChunkID]int32, len(tally))
		for id, t := range tally {
			counts[id] = t.n
		}
		figures(&u.UsageFigures, tally, counts)
		var cur *backup.GuestUsage
		clear(counts)
		flush := func() {
			if cur != nil {
				figures(&cur.UsageFigures, tally, counts)
				u.Guests = append(u.Guests, *cur)
				clear(counts)
			}
		}
		err = eachSnapshotRefs(ctx, tx, ns, vmid, func(g groupKey, size, newBytes int64, refs []byte) {
			if cur == nil || cur.VMID != g.vmid || string(cur.Type) != g.typ {
				flush()
				cur = &backup.GuestUsage{VMID: g.vmid, Type: backup.GuestType(g.typ)}
			}
			cur.Snapshots++
			cur.LogicalBytes += size
			cur.NewBytes += newBytes
			for _, id := range splitRefs(refs) {
				counts[id]++
			}
		})
		flush()
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
		n = 0
		tally := map[backup.ChunkID]*chunkTally{}
		err := eachSnapshotRefs(ctx, tx, ns, 0, func(_ groupKey, _, _ int64, refs []byte) {
			for _, id := range splitRefs(refs) {
				if tally[id] == nil {
					tally[id] = &chunkTally{}
				}
			}
		})
		if err != nil {
			return err
		}
		if err := lookupChunks(ctx, tx, tally); err != nil {
			return err
		}
		for _, t := range tally {
			n += t.stored
		}
		return nil
	})
	if err != nil {
		return 0, wrapf(err, "stored bytes of namespace %s", ns)
	}
	return n, nil
}
