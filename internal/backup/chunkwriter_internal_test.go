package backup

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestChunkWriter(t *testing.T) {
	store, cat := &countingStore{}, &memCatalog{rows: map[ChunkID]bool{}}
	cfg := DefaultPullConfig()
	cfg.DedupBatch = 4
	w := NewChunkWriter(context.Background(), store, cat, cfg)
	var ids []ChunkID
	for i := range 20 {
		data := bytes.Repeat([]byte{byte(i % 7)}, 1000+i%7) // 7 distinct, one of them zeros
		id, err := w.Write(data)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	st, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !ids[0].IsZero() || ids[1] != ids[8] || ids[1] == ids[2] {
		t.Fatalf("ids: %v", ids[:9])
	}
	if len(store.puts) != 6 || st.NewChunks != 6 || st.Chunks != 20 {
		t.Fatalf("stored %d distinct chunks (stats %+v), want 6", len(store.puts), st)
	}
	for id, stored := range cat.rows {
		if !stored {
			t.Fatalf("chunk %s only reserved after Close", id)
		}
	}
	if cat.queries > 5 {
		t.Fatalf("%d dedup queries for 20 writes in batches of 4", cat.queries)
	}
	// A second writer finds everything known.
	w = NewChunkWriter(context.Background(), store, cat, cfg)
	for i := range 7 {
		if _, err := w.Write(bytes.Repeat([]byte{byte(i)}, 1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := w.Close(); err != nil || st.NewChunks != 0 {
		t.Fatalf("second writer: %+v, %v", st, err)
	}
	// A failing store surfaces its error from Write or Close.
	w = NewChunkWriter(context.Background(), &countingStore{err: ErrStorageFull}, &memCatalog{rows: map[ChunkID]bool{}}, cfg)
	var werr error
	for i := range 50 {
		if _, werr = w.Write([]byte{byte(i), 1}); werr != nil {
			break
		}
	}
	if _, err := w.Close(); !errors.Is(err, ErrStorageFull) && !errors.Is(werr, ErrStorageFull) {
		t.Fatalf("store failure lost: write %v, close %v", werr, err)
	}
}
