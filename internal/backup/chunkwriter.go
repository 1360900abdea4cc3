package backup

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/chunker"
)

// ChunkWriter stores a stream of chunks, in order of submission, with the
// same guarantees as a disk pull: dedup lookups in batches (one catalog
// round trip per batch), chunks reserved in the catalog before they are
// uploaded, uploads in parallel with bounded concurrency, and uploads
// recorded when durable. Memory is bounded by Buffers × the largest chunk.
//
// Write and Close are called from one goroutine.
type ChunkWriter struct {
	ctx     context.Context
	chunks  ChunkStore
	catalog pullCatalog
	batch   int
	// reserveWait bounds the wait for GC to finish deleting chunks this
	// writer stores again.
	reserveWait time.Duration

	bufs    chan []byte // free buffers; one per chunk in flight
	pending []pendingChunk
	seen    map[ChunkID]bool // stored, known or already queued in this writer
	uploads *errgroup.Group
	gctx    context.Context

	mu     sync.Mutex // guards record and stats, written by uploads
	record []ChunkInfo
	stats  ChunkWriterStats

	metrics *serviceMetrics // nil unless a Service made the writer
}

type pendingChunk struct {
	id  ChunkID
	buf []byte
}

// ChunkWriterStats counts what a writer did.
type ChunkWriterStats struct {
	Chunks    int64 // chunks written (zero chunks included)
	Bytes     int64 // plaintext bytes written
	NewChunks int64 // chunks uploaded
	NewBytes  int64 // stored bytes uploaded (envelopes included)
}

// chunkWriterBatch caps a ChunkWriter's dedup batch (and so its buffers).
const chunkWriterBatch = 32

// NewChunkWriter returns a writer whose uploads run under ctx.
func NewChunkWriter(ctx context.Context, chunks ChunkStore, catalog pullCatalog, cfg PullConfig) *ChunkWriter {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.Uploaders)
	// A stream's dedup batch is small: its buffers are held while the
	// batch fills, and three streams of one archive write at once.
	batch := min(cfg.DedupBatch, chunkWriterBatch)
	n := cfg.Uploaders + batch
	w := &ChunkWriter{ctx: ctx, chunks: chunks, catalog: catalog, batch: batch, reserveWait: cfg.ReserveWait,
		bufs: make(chan []byte, n), seen: map[ChunkID]bool{}, uploads: g, gctx: gctx}
	for range n {
		w.bufs <- nil
	}
	return w
}

// Write stores data (copied; the caller may reuse it) and returns its id.
// The chunk is durable once Close returns nil. All-zero data is never
// stored: its id is ZeroChunk, and readers synthesise the zeros from the
// index entry's length, as for fixed indexes.
func (w *ChunkWriter) Write(data []byte) (ChunkID, error) {
	if err := w.gctx.Err(); err != nil {
		return ChunkID{}, w.fail()
	}
	w.mu.Lock()
	w.stats.Chunks++
	w.stats.Bytes += int64(len(data))
	w.mu.Unlock()
	if chunker.IsZero(data) {
		return ZeroChunk, nil
	}
	id := w.chunks.Sum(data)
	if w.seen[id] {
		w.metrics.addDedupHits(w.gctx, 1)
		return id, nil
	}
	w.seen[id] = true
	var buf []byte
	select {
	case buf = <-w.bufs:
	case <-w.gctx.Done():
		return ChunkID{}, w.fail()
	}
	buf = append(buf[:0], data...)
	w.pending = append(w.pending, pendingChunk{id: id, buf: buf})
	if len(w.pending) >= w.batch {
		if err := w.flush(); err != nil {
			return ChunkID{}, err
		}
	}
	return id, nil
}

// fail returns the first upload error once the uploads have stopped.
func (w *ChunkWriter) fail() error {
	if err := w.uploads.Wait(); err != nil {
		return err
	}
	return w.ctx.Err()
}

// flush looks the pending chunks up in one query, reserves the unknown
// ones in one more, and starts their uploads.
func (w *ChunkWriter) flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	ids := make([]ChunkID, len(w.pending))
	for i, p := range w.pending {
		ids[i] = p.id
	}
	known, err := w.catalog.KnownChunks(w.gctx, ids)
	if err != nil {
		return fmt.Errorf("dedup lookup: %w", err)
	}
	var reserve []ChunkInfo
	for _, p := range w.pending {
		if !known[p.id] {
			reserve = append(reserve, ChunkInfo{ID: p.id, Size: int64(len(p.buf))})
		}
	}
	if err := reserveChunks(w.gctx, w.catalog, reserve, w.reserveWait); err != nil {
		return fmt.Errorf("reserve chunks: %w", err)
	}
	hits := 0
	for _, p := range w.pending {
		if known[p.id] {
			hits++
			w.bufs <- p.buf
			continue
		}
		w.uploads.Go(func() error {
			defer func() { w.bufs <- p.buf }()
			n, err := w.chunks.Put(w.gctx, p.id, p.buf)
			if err != nil {
				return fmt.Errorf("store chunk %s: %w", p.id, err)
			}
			w.mu.Lock()
			w.record = append(w.record, ChunkInfo{ID: p.id, Size: int64(len(p.buf)), StoredSize: n})
			w.stats.NewChunks++
			w.stats.NewBytes += n
			w.mu.Unlock()
			w.metrics.addUpload(w.gctx, n)
			return nil
		})
	}
	w.metrics.addDedupHits(w.gctx, hits)
	w.pending = w.pending[:0]
	return w.recordDone()
}

// recordDone records the uploads finished so far. It runs under the
// writer's context, not the uploads' (which ends when they are waited for).
func (w *ChunkWriter) recordDone() error {
	w.mu.Lock()
	rec := w.record
	w.record = nil
	w.mu.Unlock()
	if len(rec) == 0 {
		return nil
	}
	if err := w.catalog.AddChunks(w.ctx, rec); err != nil {
		return fmt.Errorf("record chunks: %w", err)
	}
	return nil
}

// Close flushes, waits for every upload and records it. After a nil error
// every id Write returned is durable and known to the catalog.
func (w *ChunkWriter) Close() (ChunkWriterStats, error) {
	err := w.flush()
	if werr := w.uploads.Wait(); err == nil {
		err = werr
	}
	if err == nil {
		err = w.recordDone()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats, err
}
