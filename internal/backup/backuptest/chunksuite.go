package backuptest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// RunChunkStoreTests checks the backup.ChunkStore contract (see
// internal/backup/chunk.go) against stores made by newStore, which is called
// once per subtest and must return an empty store; it should clean up
// through t.Cleanup. Run it with -race: several subtests use the store
// from many goroutines.
func RunChunkStoreTests(t *testing.T, newStore func(t *testing.T) backup.ChunkStore) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, backup.ChunkStore)
	}{
		{"RoundTrip", testRoundTrip},
		{"Sum", testSum},
		{"PutIdempotent", testPutIdempotent},
		{"PutConcurrentSameID", testPutConcurrentSameID},
		{"PutConcurrentDistinct", testPutConcurrentDistinct},
		{"PutDoesNotKeepData", testPutDoesNotKeepData},
		{"GetMissing", testGetMissing},
		{"ZeroChunkNotStored", testZeroChunkNotStored},
		{"GetReusesBuf", testGetReusesBuf},
		{"Delete", testDelete},
		{"ContextCanceled", testContextCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

// Payload makes seeded test data of n bytes: kind "random" (incompressible),
// "text" (compressible) or "sparse" (zeros with a few non-zero bytes, the
// last one at the end, so it is not the zero chunk).
func Payload(kind string, seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x6261636b73746f70))
	b := make([]byte, n)
	switch kind {
	case "random":
		for i := 0; i+8 <= n; i += 8 {
			v := r.Uint64()
			for j := range 8 {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		for i := n &^ 7; i < n; i++ {
			b[i] = byte(r.Uint32())
		}
	case "text":
		words := strings.Fields("proxmox backup chunk snapshot disk index qemu restore dedup zstd bitmap extent vmid")
		var w bytes.Buffer
		for w.Len() < n {
			fmt.Fprintf(&w, "%s %d ", words[r.IntN(len(words))], r.IntN(1000))
		}
		copy(b, w.Bytes())
	case "sparse":
		for range 1 + n/65536 {
			b[r.IntN(n)] = byte(1 + r.IntN(255))
		}
		if n > 0 {
			b[n-1] = 1
		}
	default:
		panic("backuptest: unknown payload kind " + kind)
	}
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mustPut stores data and returns its id.
func mustPut(t *testing.T, s backup.ChunkStore, data []byte) backup.ChunkID {
	t.Helper()
	id := s.Sum(data)
	n, err := s.Put(ctxT(t), id, data)
	if err != nil {
		t.Fatalf("Put(%d bytes): %v", len(data), err)
	}
	if n <= 0 {
		t.Fatalf("Put(%d non-zero bytes) = %d stored bytes, want > 0", len(data), n)
	}
	return id
}

// mustGetEqual reads id and compares it with want.
func mustGetEqual(t *testing.T, s backup.ChunkStore, id backup.ChunkID, want []byte) {
	t.Helper()
	got, err := s.Get(ctxT(t), id, nil)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s) returned %d bytes that differ from the %d put", id, len(got), len(want))
	}
}

func wantNotFound(t *testing.T, s backup.ChunkStore, id backup.ChunkID) {
	t.Helper()
	got, err := s.Get(ctxT(t), id, nil)
	if !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("Get(%s) = %d bytes, %v; want ErrNotFound", id, len(got), err)
	}
}

func testRoundTrip(t *testing.T, s backup.ChunkStore) {
	cases := []struct {
		kind string
		n    int
	}{
		{"random", 1}, {"random", 100}, {"random", 4096 + 7}, {"random", 1 << 20}, {"random", 4 << 20},
		{"text", 1000}, {"text", 4 << 20}, {"sparse", 4 << 20}, {"sparse", 1},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%s-%d", c.kind, c.n), func(t *testing.T) {
			data := Payload(c.kind, uint64(i), c.n)
			id := mustPut(t, s, data)
			mustGetEqual(t, s, id, data)
		})
	}
}

func testSum(t *testing.T, s backup.ChunkStore) {
	a := Payload("random", 1, 64<<10)
	id := s.Sum(a)
	if id.IsZero() {
		t.Fatal("Sum returned the zero id")
	}
	if got := s.Sum(bytes.Clone(a)); got != id {
		t.Fatalf("Sum is not deterministic: %s then %s", id, got)
	}
	b := bytes.Clone(a)
	b[len(b)/3] ^= 0x80
	if s.Sum(b) == id {
		t.Fatal("Sum gives equal ids for data differing in one bit")
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if got := s.Sum(a); got != id {
				t.Errorf("concurrent Sum = %s, want %s", got, id)
			}
		})
	}
	wg.Wait()
}

func testPutIdempotent(t *testing.T, s backup.ChunkStore) {
	data := Payload("text", 2, 100<<10)
	id := mustPut(t, s, data)
	mustPut(t, s, data)
	mustGetEqual(t, s, id, data)
}

func testPutConcurrentSameID(t *testing.T, s backup.ChunkStore) {
	data := Payload("random", 3, 1<<20) // shared read-only: Put must not write to it
	id := s.Sum(data)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := s.Put(ctx, id, data); err != nil {
				t.Errorf("concurrent Put: %v", err)
			}
		})
	}
	wg.Wait()
	mustGetEqual(t, s, id, data)
}

func testPutConcurrentDistinct(t *testing.T, s backup.ChunkStore) {
	const n = 16
	ctx := ctxT(t)
	datas := make([][]byte, n)
	ids := make([]backup.ChunkID, n)
	for i := range datas {
		datas[i] = Payload([]string{"random", "text"}[i%2], uint64(100+i), 256<<10)
		ids[i] = s.Sum(datas[i])
	}
	var wg sync.WaitGroup
	for i := range datas {
		wg.Go(func() {
			if _, err := s.Put(ctx, ids[i], datas[i]); err != nil {
				t.Errorf("Put %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	for i := range datas {
		wg.Go(func() {
			got, err := s.Get(ctx, ids[i], nil)
			if err != nil || !bytes.Equal(got, datas[i]) {
				t.Errorf("Get %d: %d bytes, %v; want the %d bytes put", i, len(got), err, len(datas[i]))
			}
		})
	}
	wg.Wait()
}

func testPutDoesNotKeepData(t *testing.T, s backup.ChunkStore) {
	data := Payload("text", 4, 200<<10)
	want := bytes.Clone(data)
	id := mustPut(t, s, data)
	for i := range data {
		data[i] = 0xEE
	}
	mustGetEqual(t, s, id, want)
}

func testGetMissing(t *testing.T, s backup.ChunkStore) {
	wantNotFound(t, s, s.Sum([]byte("never stored")))
	var id backup.ChunkID
	for i := range id {
		id[i] = byte(i * 7)
	}
	wantNotFound(t, s, id)
}

func testZeroChunkNotStored(t *testing.T, s backup.ChunkStore) {
	for _, n := range []int{0, 1, 4096, 4 << 20} {
		zero := make([]byte, n)
		id := s.Sum(zero)
		got, err := s.Put(ctxT(t), id, zero)
		if got != 0 || err != nil {
			t.Fatalf("Put(%d zero bytes) = %d, %v; want 0, nil", n, got, err)
		}
		wantNotFound(t, s, id)
		if err := s.Delete(ctxT(t), []backup.ChunkID{id}); err != nil {
			t.Fatalf("Delete(zero chunk id): %v", err)
		}
	}
}

func testGetReusesBuf(t *testing.T, s backup.ChunkStore) {
	for _, kind := range []string{"random", "text"} {
		data := Payload(kind, 5, 300<<10)
		id := mustPut(t, s, data)
		buf := make([]byte, 17, len(data)+100)
		copy(buf, "stale bytes here!")
		got, err := s.Get(ctxT(t), id, buf)
		if err != nil {
			t.Fatalf("Get(%s, buf): %v", kind, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("Get(%s, buf) returned different bytes (%d, want %d)", kind, len(got), len(data))
		}
		if &got[0] != &buf[:1][0] {
			t.Errorf("Get(%s, buf with room) did not reuse buf", kind)
		}
		small := make([]byte, 0, 10)
		if got, err := s.Get(ctxT(t), id, small); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get(%s, small buf) = %d bytes, %v", kind, len(got), err)
		}
	}
}

func testDelete(t *testing.T, s backup.ChunkStore) {
	ctx := ctxT(t)
	var datas [3][]byte
	var ids [3]backup.ChunkID
	for i := range datas {
		datas[i] = Payload("random", uint64(10+i), 10<<10)
		ids[i] = mustPut(t, s, datas[i])
	}
	missing := s.Sum([]byte("missing"))
	if err := s.Delete(ctx, []backup.ChunkID{ids[0], missing, ids[1], ids[0]}); err != nil {
		t.Fatalf("Delete(two stored, one missing, one twice): %v", err)
	}
	wantNotFound(t, s, ids[0])
	wantNotFound(t, s, ids[1])
	mustGetEqual(t, s, ids[2], datas[2])
	if err := s.Delete(ctx, []backup.ChunkID{ids[0], ids[1]}); err != nil {
		t.Fatalf("Delete(already deleted): %v", err)
	}
	if err := s.Delete(ctx, nil); err != nil {
		t.Fatalf("Delete(nil): %v", err)
	}
	// A deleted chunk can be stored again.
	mustPut(t, s, datas[0])
	mustGetEqual(t, s, ids[0], datas[0])
}

func testContextCanceled(t *testing.T, s backup.ChunkStore) {
	data := Payload("text", 6, 64<<10)
	id := mustPut(t, s, data)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	other := Payload("random", 7, 64<<10)
	if _, err := s.Put(ctx, s.Sum(other), other); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with canceled ctx: %v; want context.Canceled", err)
	}
	if _, err := s.Get(ctx, id, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with canceled ctx: %v; want context.Canceled", err)
	}
	if err := s.Delete(ctx, []backup.ChunkID{id}); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with canceled ctx: %v; want context.Canceled", err)
	}
	mustGetEqual(t, s, id, data)
}
