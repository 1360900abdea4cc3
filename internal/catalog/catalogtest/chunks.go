package catalogtest

import (
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
)

func wantKnown(t *testing.T, c backup.Catalog, ids []backup.ChunkID, want map[backup.ChunkID]bool) {
	t.Helper()
	got, err := c.KnownChunks(t.Context(), ids)
	if err != nil {
		t.Fatalf("KnownChunks: %v", err)
	}
	for _, id := range ids {
		if got[id] != want[id] {
			t.Fatalf("KnownChunks[%.8s]: got %v, want %v", id, got[id], want[id])
		}
	}
	for id, ok := range got {
		if ok && !want[id] {
			t.Fatalf("KnownChunks reports %.8s, which was not asked for or is unknown", id)
		}
	}
}

func testKnownChunks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	got, err := c.KnownChunks(ctx, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("KnownChunks(nil): %v, %v", got, err)
	}
	ids := chunkIDs("known", 4)
	wantKnown(t, c, ids, nil)
	mustAddChunks(t, c, ids[:2])
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true, ids[1]: true})
	// Duplicates in a batch are fine, in both calls.
	dup := []backup.ChunkID{ids[2], ids[2], ids[0]}
	mustAddChunks(t, c, dup)
	wantKnown(t, c, append(dup, ids[3]), map[backup.ChunkID]bool{ids[0]: true, ids[2]: true})
	// Adding a known chunk again changes nothing else.
	if err := c.AddChunks(ctx, nil); err != nil {
		t.Fatalf("AddChunks(nil): %v", err)
	}
	mustAddChunks(t, c, ids[:1])
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true, ids[1]: true, ids[2]: true})
	if st, err := c.Stats(ctx); err != nil || st.Chunks != 3 {
		t.Fatalf("Stats after adds: %+v, %v", st, err)
	}
}

func testKnownChunksBad(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	in := inspector(t, c)
	ids := chunkIDs("badknown", 3)
	mustAddChunks(t, c, ids)
	if err := in.MarkChunksBad(ctx, []backup.ChunkID{ids[1], chunkID("unknown")}); err != nil {
		t.Fatalf("MarkChunksBad: %v", err)
	}
	// A bad chunk is not known, so the next backup stores it again...
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true, ids[2]: true})
	// ...and recording it again makes it good.
	mustAddChunks(t, c, ids[1:2])
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true, ids[1]: true, ids[2]: true})
}

// testKnownChunksLargeBatch checks one call copes with a batch of the size
// a backup sends (several thousand ids).
func testKnownChunksLargeBatch(t *testing.T, c backup.Catalog) {
	ids := chunkIDs("large", 20000)
	mustAddChunks(t, c, ids[:10000])
	want := map[backup.ChunkID]bool{}
	for _, id := range ids[:10000] {
		want[id] = true
	}
	wantKnown(t, c, ids, want)
}

// testPendingChunks: a reserved chunk is known to the catalog (for GC) but
// never to dedup or commits until its upload is recorded.
func testPendingChunks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("pending", 3)
	mustAddChunks(t, c, ids[2:])
	if err := c.ReserveChunks(ctx, chunkInfos(ids)); err != nil {
		t.Fatalf("ReserveChunks: %v", err)
	}
	// ids[2] was stored already: reserving it again does not make it pending.
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[2]: true})
	if st, err := c.Stats(ctx); err != nil || st.Chunks != 1 {
		t.Fatalf("Stats counts pending chunks: %+v, %v", st, err)
	}
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	_, err := c.CommitSnapshot(ctx, s.ID, 10, 10, ids[:1])
	wantKind(t, "CommitSnapshot with a pending ref", err, backup.ErrInvalid)
	mustAddChunks(t, c, ids[:1])
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true, ids[2]: true})
	mustCommit(t, c, s.ID, 10, ids[:1])
	if st, err := c.Stats(ctx); err != nil || st.Chunks != 2 || st.StoredBytes != 2000 {
		t.Fatalf("Stats after the upload was recorded: %+v, %v", st, err)
	}
}
