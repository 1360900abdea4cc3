package backup

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// fakeSource is a disk whose content is computed: slot i holds the
// pattern of content(i) (0 means zeros), so any size costs no memory.
type fakeSource struct {
	size     int64
	slotSize int64
	content  func(slot int64) uint64
	failAt   int64 // read offset at which ReadAt fails; -1 never
	reads    atomic.Int64
	discards atomic.Int64
}

func (f *fakeSource) Size() int64  { return f.size }
func (f *fakeSource) MaxRead() int { return 1 << 20 }
func (f *fakeSource) Extents(context.Context) ([]Extent, error) {
	return []Extent{{0, f.size}}, nil
}
func (f *fakeSource) ReadAt(_ context.Context, p []byte, off int64) error {
	if f.failAt >= 0 && off <= f.failAt && f.failAt < off+int64(len(p)) {
		return errors.New("fake: connection reset")
	}
	f.reads.Add(int64(len(p)))
	for i := range p {
		pos := off + int64(i)
		c := f.content(pos / f.slotSize)
		if c == 0 {
			p[i] = 0
			continue
		}
		p[i] = byte(c>>(8*(pos%8))) ^ byte(pos/8)
	}
	return nil
}
func (f *fakeSource) Discard(_ context.Context, _, n int64) error { f.discards.Add(n); return nil }
func (f *fakeSource) Close() error                                { return nil }

// countingStore keeps only ids and sizes: a store with no memory cost.
type countingStore struct {
	mu   sync.Mutex
	puts map[ChunkID]int
	err  error
}

func (s *countingStore) Sum(b []byte) ChunkID { return ChunkID(sha256.Sum256(b)) }
func (s *countingStore) Put(_ context.Context, id ChunkID, b []byte) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	if s.puts == nil {
		s.puts = map[ChunkID]int{}
	}
	s.puts[id]++
	return int64(len(b)), nil
}
func (s *countingStore) Get(context.Context, ChunkID, []byte) ([]byte, error) {
	return nil, ErrNotFound
}
func (s *countingStore) Delete(context.Context, []ChunkID) error { return nil }

// memCatalog is the dedup part of the catalog, in memory.
type memCatalog struct {
	mu      sync.Mutex
	rows    map[ChunkID]bool // id → stored (false: reserved)
	queries int
}

func (c *memCatalog) KnownChunks(_ context.Context, ids []ChunkID) (map[ChunkID]bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queries++
	out := map[ChunkID]bool{}
	for _, id := range ids {
		if c.rows[id] {
			out[id] = true
		}
	}
	return out, nil
}
func (c *memCatalog) ReserveChunks(_ context.Context, cs []ChunkInfo) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ci := range cs {
		if _, ok := c.rows[ci.ID]; !ok {
			c.rows[ci.ID] = false
		}
	}
	return nil
}
func (c *memCatalog) AddChunks(_ context.Context, cs []ChunkInfo) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ci := range cs {
		c.rows[ci.ID] = true
	}
	return nil
}

func newTestPuller(src DiskSource, store ChunkStore, cat *memCatalog) *puller {
	cfg := DefaultPullConfig()
	return &puller{cfg: cfg, chunks: store, catalog: cat, src: src, stats: &pullStats{}}
}

const mib = 1 << 20

// TestPull_DedupWithinAndAcrossPulls: equal chunks in one disk are stored
// once (later copies wait for the first upload), zero chunks never, and a
// second pull of the same disk stores nothing.
func TestPull_DedupWithinAndAcrossPulls(t *testing.T) {
	src := &fakeSource{size: 40*mib + 4096, slotSize: 4 * mib, failAt: -1, content: func(slot int64) uint64 {
		switch slot % 4 {
		case 0:
			return 0 // zeros
		case 1:
			return 0x1234 // the same block every time
		default:
			return uint64(slot) + 99 // unique
		}
	}}
	store, cat := &countingStore{}, &memCatalog{rows: map[ChunkID]bool{}}
	p := newTestPuller(src, store, cat)
	idx, err := p.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// 11 slots: 0,4,8 zero; 1,5,9 the same; 2,3,6,7,10 unique.
	if len(store.puts) != 6 {
		t.Fatalf("%d distinct chunks stored, want 6", len(store.puts))
	}
	for id, n := range store.puts {
		if n != 1 {
			t.Fatalf("chunk %s stored %d times", id, n)
		}
	}
	if !idx.IDs[0].IsZero() || idx.IDs[1] != idx.IDs[5] || idx.IDs[1] != idx.IDs[9] || idx.IDs[2] == idx.IDs[3] {
		t.Fatalf("index %v", idx.IDs)
	}
	if src.discards.Load() != src.size {
		t.Fatalf("discarded %d of %d bytes", src.discards.Load(), src.size)
	}
	if p.stats.Read.Load() != src.size || p.stats.NewCount != 6 {
		t.Fatalf("stats: read %d, new %d", p.stats.Read.Load(), p.stats.NewCount)
	}
	if cat.queries > 6 {
		t.Fatalf("%d dedup queries for 11 chunks; they should be batched", cat.queries)
	}
	for id, stored := range cat.rows {
		if !stored {
			t.Fatalf("chunk %s still only reserved after the pull", id)
		}
	}

	store2 := &countingStore{}
	if _, err := newTestPuller(src, store2, cat).run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(store2.puts) != 0 {
		t.Fatalf("second pull stored %d chunks, want 0", len(store2.puts))
	}
}

// TestPull_MemoryBounded pulls 1 GiB of unique chunks and checks the heap
// never holds much more than the pipeline's buffers
// ((readers + uploaders + slack) × chunk size = 48 MiB by default).
func TestPull_MemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("pulls 1 GiB")
	}
	src := &fakeSource{size: 1 << 30, slotSize: 4 * mib, failAt: -1, content: func(slot int64) uint64 { return uint64(slot)*7919 + 1 }}
	cat := &memCatalog{rows: map[ChunkID]bool{}}
	p := newTestPuller(src, &countingStore{}, cat)
	var err error
	grew := testenv.HeapGrowth(func() { _, err = p.run(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("heap grew by %d MiB pulling 1 GiB", grew/mib)
	if grew > 128*mib {
		t.Fatalf("heap grew by %d MiB pulling 1 GiB; the pipeline should hold about 48 MiB", grew/mib)
	}
}

// TestPull_Failures: a failing source or store ends the pull with the
// error, and nothing hangs.
func TestPull_Failures(t *testing.T) {
	content := func(slot int64) uint64 { return uint64(slot) + 1 }
	src := &fakeSource{size: 64 * mib, slotSize: 4 * mib, failAt: 37 * mib, content: content}
	_, err := newTestPuller(src, &countingStore{}, &memCatalog{rows: map[ChunkID]bool{}}).run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("source failure: %v", err)
	}
	src = &fakeSource{size: 64 * mib, slotSize: 4 * mib, failAt: -1, content: content}
	_, err = newTestPuller(src, &countingStore{err: ErrStorageFull}, &memCatalog{rows: map[ChunkID]bool{}}).run(context.Background())
	if !errors.Is(err, ErrStorageFull) {
		t.Fatalf("store failure: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newTestPuller(src, &countingStore{}, &memCatalog{rows: map[ChunkID]bool{}}).run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v", err)
	}
}

func TestPlanSlots(t *testing.T) {
	work, total, err := planSlots([]Extent{{0, 100}, {4*mib - 10, 20}, {9 * mib, 4096}}, 10*mib, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	if total != 100+20+4096 || len(work) != 3 || len(work[0].dirty) != 2 || work[1].dirty[0].Length != 10 || work[2].slot != 2 || work[2].length != 2*mib {
		t.Fatalf("plan: %+v total %d", work, total)
	}
	for _, bad := range [][]Extent{{{10, 10}, {5, 10}}, {{0, 0}}, {{10*mib - 1, 2}}, {{-1, 5}}} {
		if _, _, err := planSlots(bad, 10*mib, 4*mib); !errors.Is(err, ErrInvalid) {
			t.Errorf("extents %v accepted", bad)
		}
	}
}
