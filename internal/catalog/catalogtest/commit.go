package catalogtest

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func testCommit(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	refs := chunkIDs("commit", 3)
	mustAddChunks(t, c, refs)
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	// Duplicates in refs count once.
	got, err := c.CommitSnapshot(ctx, s.ID, 3<<30, 1<<20, append(refs, refs[0], refs[2]))
	if err != nil {
		t.Fatalf("CommitSnapshot: %v", err)
	}
	if got.State != backup.SnapshotCommitted || got.Size != 3<<30 || got.NewBytes != 1<<20 || got.CommittedAt == nil {
		t.Fatalf("CommitSnapshot returned %+v", got)
	}
	want := s
	want.State, want.Size, want.NewBytes, want.CommittedAt = backup.SnapshotCommitted, 3<<30, 1<<20, got.CommittedAt
	wantEqual(t, "CommitSnapshot", got, want)
	again, err := c.GetSnapshot(ctx, s.ID)
	if err != nil {
		t.Fatalf("GetSnapshot: %v", err)
	}
	wantEqual(t, "GetSnapshot after commit", again, want)
	if _, ok := c.(Inspector); ok {
		wantRefs(t, c, map[backup.ChunkID]int64{refs[0]: 1, refs[1]: 1, refs[2]: 1})
	}
	for _, id := range []string{missingID, "not-an-id"} {
		_, err = c.CommitSnapshot(ctx, id, 1, 1, nil)
		wantKind(t, "CommitSnapshot "+id, err, backup.ErrNotFound)
	}
}

func testCommitUnknownRef(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	known := chunkIDs("known", 2)
	mustAddChunks(t, c, known)
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	_, err := c.CommitSnapshot(ctx, s.ID, 10, 10, append(known, chunkID("never added")))
	wantKind(t, "CommitSnapshot with an unknown ref", err, backup.ErrInvalid)
	// Nothing changed: still open, invisible, no references counted.
	got, err := c.GetSnapshot(ctx, s.ID)
	if err != nil || got.State != backup.SnapshotOpen || got.Size != 0 || got.CommittedAt != nil {
		t.Fatalf("session after failed commit: %+v, %v", got, err)
	}
	if list, err := c.ListSnapshots(ctx, "default", 0, ""); err != nil || len(list) != 0 {
		t.Fatalf("ListSnapshots after failed commit: %+v, %v", list, err)
	}
	if _, ok := c.(Inspector); ok {
		wantRefs(t, c, map[backup.ChunkID]int64{known[0]: 0, known[1]: 0})
	}
	// Once the chunk is there the same session commits.
	mustAddChunks(t, c, []backup.ChunkID{chunkID("never added")})
	mustCommit(t, c, s.ID, 10, append(known, chunkID("never added")))
	if _, ok := c.(Inspector); ok {
		wantRefs(t, c, map[backup.ChunkID]int64{known[0]: 1, known[1]: 1, chunkID("never added"): 1})
	}
}

func testCommitBadChunk(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	in := inspector(t, c)
	ids := chunkIDs("bad", 2)
	mustAddChunks(t, c, ids)
	if err := in.MarkChunksBad(ctx, ids[1:]); err != nil {
		t.Fatalf("MarkChunksBad: %v", err)
	}
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	_, err := c.CommitSnapshot(ctx, s.ID, 10, 10, ids)
	wantKind(t, "CommitSnapshot referencing a bad chunk", err, backup.ErrInvalid)
	wantRefs(t, c, map[backup.ChunkID]int64{ids[0]: 0, ids[1]: 0})
	// Storing the chunk again repairs it.
	mustAddChunks(t, c, ids[1:])
	mustCommit(t, c, s.ID, 10, ids)
	wantRefs(t, c, map[backup.ChunkID]int64{ids[0]: 1, ids[1]: 1})
}

func testCommitTwice(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	refs := chunkIDs("twice", 2)
	mustAddChunks(t, c, refs)
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	first := mustCommit(t, c, s.ID, 100, refs)
	_, err := c.CommitSnapshot(ctx, s.ID, 200, 200, refs)
	wantKind(t, "CommitSnapshot twice", err, backup.ErrConflict)
	got, err := c.GetSnapshot(ctx, s.ID)
	if err != nil {
		t.Fatalf("GetSnapshot: %v", err)
	}
	wantEqual(t, "snapshot after second commit", got, first)
	if _, ok := c.(Inspector); ok {
		wantRefs(t, c, map[backup.ChunkID]int64{refs[0]: 1, refs[1]: 1})
	}
}

func testDiscard(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	if err := c.AddDisk(ctx, backup.Disk{SnapshotID: s.ID, Device: "scsi0", Size: 1, ChunkSize: 4 << 20,
		BitmapMode: "none", IndexKey: "k"}); err != nil {
		t.Fatalf("AddDisk: %v", err)
	}
	if err := c.PutSnapshotBlob(ctx, s.ID, "config", []byte("x")); err != nil {
		t.Fatalf("PutSnapshotBlob: %v", err)
	}
	if err := c.DiscardSnapshot(ctx, s.ID, "pull failed"); err != nil {
		t.Fatalf("DiscardSnapshot: %v", err)
	}
	_, err := c.GetSnapshot(ctx, s.ID)
	wantKind(t, "GetSnapshot after discard", err, backup.ErrNotFound)
	_, err = c.ListDisks(ctx, s.ID)
	wantKind(t, "ListDisks after discard", err, backup.ErrNotFound)
	wantKind(t, "DiscardSnapshot twice", c.DiscardSnapshot(ctx, s.ID, "again"), backup.ErrNotFound)
	wantKind(t, "DiscardSnapshot not-an-id", c.DiscardSnapshot(ctx, "not-an-id", "x"), backup.ErrNotFound)

	// The name is free again, and a committed snapshot is never discarded.
	s2 := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0), 5)
	wantKind(t, "DiscardSnapshot of a committed snapshot", c.DiscardSnapshot(ctx, s2.ID, "x"), backup.ErrConflict)
	if _, err := c.SnapshotByName(ctx, "default", s2.Name); err != nil {
		t.Fatalf("SnapshotByName after refused discard: %v", err)
	}
}

func testUpdateMeta(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0), 5)
	notes, yes, no := "before upgrade\nline 2 ü", true, false
	got, err := c.UpdateSnapshotMeta(ctx, "default", s.Name, &notes, nil)
	if err != nil || got.Notes != notes || got.Protected {
		t.Fatalf("UpdateSnapshotMeta notes: %+v, %v", got, err)
	}
	got, err = c.UpdateSnapshotMeta(ctx, "default", s.Name, nil, &yes)
	if err != nil || got.Notes != notes || !got.Protected {
		t.Fatalf("UpdateSnapshotMeta protected: %+v, %v", got, err)
	}
	got, err = c.UpdateSnapshotMeta(ctx, "default", s.Name, nil, nil)
	if err != nil || got.Notes != notes || !got.Protected {
		t.Fatalf("UpdateSnapshotMeta nothing: %+v, %v", got, err)
	}
	empty := ""
	got, err = c.UpdateSnapshotMeta(ctx, "default", s.Name, &empty, &no)
	if err != nil || got.Notes != "" || got.Protected {
		t.Fatalf("UpdateSnapshotMeta both: %+v, %v", got, err)
	}
	byName, err := c.SnapshotByName(ctx, "default", s.Name)
	if err != nil {
		t.Fatalf("SnapshotByName: %v", err)
	}
	wantEqual(t, "SnapshotByName after updates", byName, got)
	_, err = c.UpdateSnapshotMeta(ctx, "other", s.Name, &notes, nil)
	wantKind(t, "UpdateSnapshotMeta in another namespace", err, backup.ErrNotFound)
}

func testDelete(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0), 5)
	yes, no := true, false
	if _, err := c.UpdateSnapshotMeta(ctx, "default", s.Name, nil, &yes); err != nil {
		t.Fatalf("protect: %v", err)
	}
	wantKind(t, "DeleteSnapshot of a protected snapshot", c.DeleteSnapshot(ctx, "default", s.Name), backup.ErrConflict)
	if _, err := c.SnapshotByName(ctx, "default", s.Name); err != nil {
		t.Fatalf("protected snapshot gone after refused delete: %v", err)
	}
	if _, err := c.UpdateSnapshotMeta(ctx, "default", s.Name, nil, &no); err != nil {
		t.Fatalf("unprotect: %v", err)
	}
	wantKind(t, "DeleteSnapshot in another namespace", c.DeleteSnapshot(ctx, "other", s.Name), backup.ErrNotFound)
	if err := c.DeleteSnapshot(ctx, "default", s.Name); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	_, err := c.SnapshotByName(ctx, "default", s.Name)
	wantKind(t, "SnapshotByName after delete", err, backup.ErrNotFound)
	_, err = c.GetSnapshot(ctx, s.ID)
	wantKind(t, "GetSnapshot after delete", err, backup.ErrNotFound)
	wantKind(t, "DeleteSnapshot twice", c.DeleteSnapshot(ctx, "default", s.Name), backup.ErrNotFound)
}

func testRefCounts(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	inspector(t, c)
	shared, onlyA, onlyB := chunkID("shared"), chunkID("only-a"), chunkID("only-b")
	mustAddChunks(t, c, []backup.ChunkID{shared, onlyA, onlyB})
	a := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	b := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0.Add(time.Hour)))
	wantRefs(t, c, map[backup.ChunkID]int64{shared: 0, onlyA: 0, onlyB: 0}) // open sessions count nothing
	mustCommit(t, c, a.ID, 1, []backup.ChunkID{shared, onlyA})
	mustCommit(t, c, b.ID, 1, []backup.ChunkID{onlyB, shared})
	wantRefs(t, c, map[backup.ChunkID]int64{shared: 2, onlyA: 1, onlyB: 1})
	if err := c.DeleteSnapshot(ctx, "default", a.Name); err != nil {
		t.Fatalf("DeleteSnapshot a: %v", err)
	}
	wantRefs(t, c, map[backup.ChunkID]int64{shared: 1, onlyA: 0, onlyB: 1})
	if err := c.DeleteSnapshot(ctx, "default", b.Name); err != nil {
		t.Fatalf("DeleteSnapshot b: %v", err)
	}
	wantRefs(t, c, map[backup.ChunkID]int64{shared: 0, onlyA: 0, onlyB: 0})
	// Unreferenced chunks stay known until GC removes them.
	known, err := c.KnownChunks(ctx, []backup.ChunkID{shared, onlyA, onlyB})
	if err != nil || !known[shared] || !known[onlyA] || !known[onlyB] {
		t.Fatalf("KnownChunks after deletes: %v, %v", known, err)
	}
}

// testConcurrentCommits commits and deletes snapshots sharing chunks, in
// shuffled orders, while KnownChunks touches the same chunks: no deadlock
// may surface and the counts must come out exact.
func testConcurrentCommits(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	const workers, rounds = 8, 4
	ids := chunkIDs("concurrent", 64)
	mustAddChunks(t, c, ids)
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*3)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for r := range rounds {
				refs := append([]backup.ChunkID(nil), ids...)
				rng.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
				if _, err := c.KnownChunks(ctx, refs); err != nil {
					errs <- fmt.Errorf("KnownChunks: %w", err)
				}
				at := t0.Add(time.Duration(w*rounds+r) * time.Minute)
				s, err := c.CreateSnapshot(ctx, newSnapshot("default", backup.GuestQemu, 100+w, "backstop", at))
				if err != nil {
					errs <- fmt.Errorf("CreateSnapshot: %w", err)
					return
				}
				if _, err := c.CommitSnapshot(ctx, s.ID, 1, 1, refs); err != nil {
					errs <- fmt.Errorf("CommitSnapshot: %w", err)
				}
				if r%2 == 1 { // delete every other one again
					if err := c.DeleteSnapshot(ctx, "default", s.Name); err != nil {
						errs <- fmt.Errorf("DeleteSnapshot: %w", err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if list, err := c.ListSnapshots(ctx, "default", 0, ""); err != nil || len(list) != workers*rounds/2 {
		t.Fatalf("ListSnapshots: %d snapshots, %v; want %d", len(list), err, workers*rounds/2)
	}
	if _, ok := c.(Inspector); ok {
		want := map[backup.ChunkID]int64{}
		for _, id := range ids {
			want[id] = workers * rounds / 2
		}
		wantRefs(t, c, want)
	}
}
