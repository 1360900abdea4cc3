package backup_test

import (
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
)

func id(s string) backup.ChunkID { return backup.ChunkID(sha256.Sum256([]byte(s))) }

func TestFixedIndex_RoundTrip(t *testing.T) {
	f := backup.NewFixedIndex(4<<20, 10<<20+5) // three slots, the last short
	if len(f.IDs) != 3 {
		t.Fatalf("%d slots", len(f.IDs))
	}
	f.IDs[0], f.IDs[2] = id("a"), id("a")
	if off, n := f.Slot(2); off != 8<<20 || n != 2<<20+5 {
		t.Fatalf("slot 2 = %d+%d", off, n)
	}
	b, err := f.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	g, err := backup.UnmarshalFixedIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if g.ChunkSize != f.ChunkSize || g.Size != f.Size || len(g.IDs) != 3 || g.IDs[0] != id("a") || !g.IDs[1].IsZero() {
		t.Fatalf("round trip: %+v", g)
	}
	if refs := g.Refs(); len(refs) != 1 || refs[0] != id("a") {
		t.Fatalf("refs %v", refs)
	}
	// Every single-byte flip is detected.
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x40
		if _, err := backup.UnmarshalFixedIndex(c); err == nil {
			t.Fatalf("flip at %d not detected", i)
		}
	}
	if _, err := backup.UnmarshalFixedIndex(b[:len(b)-1]); !errors.Is(err, backup.ErrChecksum) && !errors.Is(err, backup.ErrInvalid) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestFixedIndex_RejectsInconsistent(t *testing.T) {
	f := &backup.FixedIndex{ChunkSize: 4096, Size: 8192, IDs: make([]backup.ChunkID, 3)}
	if _, err := f.MarshalBinary(); err == nil {
		t.Fatal("3 ids for 2 slots accepted")
	}
}

func TestDynamicIndex_RoundTrip(t *testing.T) {
	d := &backup.DynamicIndex{Params: "524288/1048576/4194304", Entries: []backup.IndexEntry{{100, id("a")}, {250, id("b")}, {300, id("a")}}}
	b, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	e, err := backup.UnmarshalDynamicIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Params != d.Params || e.Size() != 300 || len(e.Entries) != 3 || e.Entries[1].ID != id("b") {
		t.Fatalf("round trip %+v", e)
	}
	if len(e.Refs()) != 2 {
		t.Fatalf("refs %d", len(e.Refs()))
	}
	bad := &backup.DynamicIndex{Entries: []backup.IndexEntry{{100, id("a")}, {100, id("b")}}}
	if _, err := bad.MarshalBinary(); err == nil {
		t.Fatal("non-increasing offsets accepted")
	}
}

func FuzzUnmarshalIndex(f *testing.F) {
	fx := backup.NewFixedIndex(4096, 10000)
	fx.IDs[1] = id("x")
	b, _ := fx.MarshalBinary()
	f.Add(b)
	d := &backup.DynamicIndex{Params: "p", Entries: []backup.IndexEntry{{7, id("a")}}}
	b, _ = d.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		// Also try the input with a valid trailing digest, so the fuzzer
		// reaches the header and body checks behind the digest.
		sum := sha256.Sum256(b)
		check(t, append(append([]byte(nil), b...), sum[:]...))
		check(t, b)
	})
}

// check asserts that whatever decodes re-encodes to the same bytes.
func check(t *testing.T, b []byte) {
	if fx, err := backup.UnmarshalFixedIndex(b); err == nil {
		out, err := fx.MarshalBinary()
		if err != nil || string(out) != string(b) {
			t.Fatalf("accepted fixed index does not re-encode identically")
		}
	}
	if d, err := backup.UnmarshalDynamicIndex(b); err == nil {
		out, err := d.MarshalBinary()
		if err != nil || string(out) != string(b) {
			t.Fatalf("accepted dynamic index does not re-encode identically")
		}
	}
}
