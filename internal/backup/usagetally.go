package backup

import (
	"bytes"
	"slices"
)

// Accounting over snapshots' reference blobs, shared by the catalog
// backends: they read the blobs and look chunks up, this adds up.

// SnapshotRefs is a committed snapshot as accounting reads it. Refs is its
// blob of sorted 32-byte chunk ids, valid only during the callback.
type SnapshotRefs struct {
	VMID     int
	Type     GuestType
	Size     int64
	NewBytes int64
	Refs     []byte
}

// UsageTally knows, for each distinct chunk of the snapshots counted, how
// many references they hold and (once looked up) its stored size and total
// reference count. Memory: about 80 bytes per distinct chunk.
type UsageTally struct {
	chunks map[ChunkID]*tallied
}

type tallied struct {
	n      int32 // references from the snapshots counted
	refs   int32 // all committed references (chunks.refs)
	stored int64
	found  bool
}

// NewUsageTally returns an empty tally.
func NewUsageTally() *UsageTally { return &UsageTally{chunks: map[ChunkID]*tallied{}} }

// Add counts the references in a refs blob.
func (t *UsageTally) Add(refs []byte) {
	for len(refs) >= len(ChunkID{}) {
		id := ChunkID(refs[:len(ChunkID{})])
		refs = refs[len(ChunkID{}):]
		c := t.chunks[id]
		if c == nil {
			c = &tallied{}
			t.chunks[id] = c
		}
		c.n++
	}
}

// Len says how many distinct chunks are tallied.
func (t *UsageTally) Len() int { return len(t.chunks) }

// IDs returns the tallied chunks, sorted (lookups in id order).
func (t *UsageTally) IDs() []ChunkID {
	ids := make([]ChunkID, 0, len(t.chunks))
	for id := range t.chunks {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b ChunkID) int { return bytes.Compare(a[:], b[:]) })
	return ids
}

// SetChunk records a looked-up chunk; ids not tallied are ignored (a
// backend may scan the whole table).
func (t *UsageTally) SetChunk(id ChunkID, stored int64, refs int32) {
	if c := t.chunks[id]; c != nil {
		c.stored, c.refs, c.found = stored, refs, true
	}
}

// StoredBytes sums the stored size of the tallied chunks.
func (t *UsageTally) StoredBytes() int64 {
	var n int64
	for _, c := range t.chunks {
		n += c.stored
	}
	return n
}

// figures adds up the chunks in counts (references per chunk from a set of
// snapshots). A chunk is exclusive to the set when all its references are
// theirs.
func (t *UsageTally) figures(f *UsageFigures, counts map[ChunkID]int32) {
	for id, n := range counts {
		c := t.chunks[id]
		if c == nil || !c.found {
			continue // cannot be: a committed snapshot holds a reference
		}
		f.Chunks++
		f.StoredBytes += c.stored
		if c.refs == n {
			f.ExclusiveBytes += c.stored
		}
	}
}

// ComputeUsage computes a namespace's figures and each guest's. each must
// call fn for every committed snapshot counted, ordered by guest (vmid,
// type), the same way each time it is called; it is called twice: once to
// find the distinct chunks, which lookup then fills in (SetChunk), once to
// count them per guest. Both backends call it inside one read transaction.
func ComputeUsage(ns string, each func(fn func(SnapshotRefs)) error, lookup func(*UsageTally) error) (Usage, error) {
	u := Usage{Namespace: ns, Guests: []GuestUsage{}}
	tally := NewUsageTally()
	err := each(func(s SnapshotRefs) {
		u.Snapshots++
		u.LogicalBytes += s.Size
		u.NewBytes += s.NewBytes
		tally.Add(s.Refs)
	})
	if err != nil {
		return Usage{}, err
	}
	if err := lookup(tally); err != nil {
		return Usage{}, err
	}
	counts := make(map[ChunkID]int32, len(tally.chunks))
	for id, c := range tally.chunks {
		counts[id] = c.n
	}
	tally.figures(&u.UsageFigures, counts)

	var cur *GuestUsage
	clear(counts)
	flush := func() {
		if cur != nil {
			tally.figures(&cur.UsageFigures, counts)
			u.Guests = append(u.Guests, *cur)
			clear(counts)
		}
	}
	err = each(func(s SnapshotRefs) {
		if cur == nil || cur.VMID != s.VMID || cur.Type != s.Type {
			flush()
			cur = &GuestUsage{VMID: s.VMID, Type: s.Type}
		}
		cur.Snapshots++
		cur.LogicalBytes += s.Size
		cur.NewBytes += s.NewBytes
		refs := s.Refs
		for len(refs) >= len(ChunkID{}) {
			counts[ChunkID(refs[:len(ChunkID{})])]++
			refs = refs[len(ChunkID{}):]
		}
	})
	if err != nil {
		return Usage{}, err
	}
	flush()
	return u, nil
}
