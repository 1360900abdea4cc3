package archive_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"

	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

// testStore is an in-memory chunk store whose sinks count what each
// ingest adds to it, per stream.
type testStore struct {
	*backuptest.MemChunkStore
	mu  sync.Mutex
	new map[string]*streamCount // guarded by mu; since the last reset
}

type streamCount struct {
	Chunks, Bytes       int64 // written
	NewChunks, NewBytes int64 // not in the store before
}

func newTestStore() *testStore {
	return &testStore{MemChunkStore: backuptest.NewMemChunkStore(), new: map[string]*streamCount{}}
}

// reset starts counting anew and returns the counts so far.
func (s *testStore) reset() map[string]*streamCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.new
	s.new = map[string]*streamCount{}
	return c
}

type memSink struct {
	s    *testStore
	name string
}

func (m memSink) Write(data []byte) (backup.ChunkID, error) {
	m.s.mu.Lock()
	c := m.s.new[m.name]
	if c == nil {
		c = &streamCount{}
		m.s.new[m.name] = c
	}
	c.Chunks++
	c.Bytes += int64(len(data))
	m.s.mu.Unlock()
	if isZero(data) {
		return backup.ZeroChunk, nil
	}
	id := m.s.Sum(data)
	if !m.s.Has(id) {
		m.s.mu.Lock()
		c.NewChunks++
		c.NewBytes += int64(len(data))
		m.s.mu.Unlock()
	}
	if _, err := m.s.Put(context.Background(), id, data); err != nil {
		return backup.ChunkID{}, err
	}
	return id, nil
}

// probeSink counts the chunks a stream would add to a store, and stores
// nothing.
type probeSink struct {
	s     *testStore
	name  string
	count map[string]*streamCount
	seen  map[backup.ChunkID]bool
}

func (p *probeSink) Write(data []byte) (backup.ChunkID, error) {
	c := p.count[p.name]
	if c == nil {
		c = &streamCount{}
		p.count[p.name] = c
	}
	c.Chunks++
	c.Bytes += int64(len(data))
	if isZero(data) {
		return backup.ZeroChunk, nil
	}
	id := p.s.Sum(data)
	if !p.s.Has(id) && !p.seen[id] {
		p.seen[id] = true
		c.NewChunks++
		c.NewBytes += int64(len(data))
	}
	return id, nil
}

// probe ingests data without storing it and returns what would be new.
func (s *testStore) probe(t testing.TB, data []byte, cfg archive.Config) (archive.Result, map[string]*streamCount) {
	t.Helper()
	count, seen := map[string]*streamCount{}, map[backup.ChunkID]bool{}
	w := archive.Writers{
		Meta:     &probeSink{s, "meta", count, seen},
		Payload:  &probeSink{s, "payload", count, seen},
		Volatile: &probeSink{s, "volatile", count, seen},
	}
	res, err := archive.Ingest(context.Background(), bytes.NewReader(data), w, cfg, func([]archive.Entry) error { return nil })
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	return res, count
}

func (s *testStore) writers() archive.Writers {
	return archive.Writers{
		Meta:     memSink{s, "meta"},
		Payload:  memSink{s, "payload"},
		Volatile: memSink{s, "volatile"},
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ingest stores a tar stream and returns the result and all entries.
func ingest(t testing.TB, s *testStore, r io.Reader, cfg archive.Config) (archive.Result, []archive.Entry, error) {
	t.Helper()
	var entries []archive.Entry
	res, err := archive.Ingest(context.Background(), r, s.writers(), cfg, func(es []archive.Entry) error {
		entries = append(entries, es...)
		return nil
	})
	return res, entries, err
}

func mustIngest(t testing.TB, s *testStore, data []byte, cfg archive.Config) (archive.Result, []archive.Entry) {
	t.Helper()
	res, entries, err := ingest(t, s, bytes.NewReader(data), cfg)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if res.Size != int64(len(data)) {
		t.Fatalf("Ingest: size %d, want %d", res.Size, len(data))
	}
	return res, entries
}

func mustRestore(t testing.TB, s *testStore, idx archive.Indexes) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := archive.Restore(context.Background(), &buf, idx, s)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Restore: returned %d, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func mustOpenFile(t testing.TB, s *testStore, idx archive.Indexes, e archive.Entry) []byte {
	t.Helper()
	f, err := archive.OpenFile(context.Background(), idx, s, e)
	if err != nil {
		t.Fatalf("OpenFile(%q): %v", e.Path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("OpenFile(%q): read: %v", e.Path, err)
	}
	if int64(len(b)) != f.Size() {
		t.Fatalf("OpenFile(%q): read %d bytes, size %d", e.Path, len(b), f.Size())
	}
	return b
}

// firstDiff returns the first offset where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// The HTTP layer passes backup.ChunkWriters as sinks and a backup.ChunkStore
// as getter.
var (
	_ archive.ChunkSink   = (*backup.ChunkWriter)(nil)
	_ archive.ChunkGetter = (backup.ChunkStore)(nil)
)
