package backup

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

func TestComputeUsage(t *testing.T) {
	id := func(s string) ChunkID { return sha256.Sum256([]byte(s)) }
	blob := func(ids ...ChunkID) []byte {
		var b bytes.Buffer
		for _, i := range ids {
			b.Write(i[:])
		}
		return b.Bytes()
	}
	a, b, c := id("a"), id("b"), id("c")
	snaps := []SnapshotRefs{
		{VMID: 100, Type: GuestQemu, Size: 10, NewBytes: 3, Refs: blob(a, b)},
		{VMID: 100, Type: GuestQemu, Size: 10, NewBytes: 1, Refs: blob(a)},
		{VMID: 200, Type: GuestLXC, Size: 5, NewBytes: 5, Refs: blob(b, c)},
	}
	// c has one more reference outside these snapshots (another namespace).
	stored := map[ChunkID]struct {
		size int64
		refs int32
	}{a: {100, 2}, b: {200, 2}, c: {400, 2}}
	u, err := ComputeUsage("default",
		func(fn func(SnapshotRefs)) error {
			for _, s := range snaps {
				fn(s)
			}
			return nil
		},
		func(tl *UsageTally) error {
			if tl.Len() != 3 {
				t.Errorf("tally of %d chunks, want 3", tl.Len())
			}
			for _, i := range tl.IDs() {
				tl.SetChunk(i, stored[i].size, stored[i].refs)
			}
			tl.SetChunk(id("unrelated"), 1, 1) // ignored
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	want := UsageFigures{Snapshots: 3, LogicalBytes: 25, NewBytes: 9, Chunks: 3, StoredBytes: 700, ExclusiveBytes: 300}
	if u.UsageFigures != want {
		t.Errorf("namespace figures %+v, want %+v", u.UsageFigures, want)
	}
	if len(u.Guests) != 2 {
		t.Fatalf("guests %+v", u.Guests)
	}
	// Guest 100 holds both references of a (exclusive) and one of b's two.
	if g := u.Guests[0]; g.VMID != 100 || g.Type != GuestQemu || g.Chunks != 2 || g.StoredBytes != 300 || g.ExclusiveBytes != 100 || g.Snapshots != 2 {
		t.Errorf("guest 100 %+v", g)
	}
	if g := u.Guests[1]; g.VMID != 200 || g.Chunks != 2 || g.StoredBytes != 600 || g.ExclusiveBytes != 0 {
		t.Errorf("guest 200 %+v", g)
	}
}
