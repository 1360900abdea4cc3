package backup

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/backstop-pve/backstop/internal/chunker"
)

// Extent is a byte range of a disk.
type Extent struct {
	Offset, Length int64
}

// End is the first byte after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// DiskSource is a disk being pulled: QEMU's NBD export in production (see
// internal/nbd). Methods may be called concurrently; Close is called once,
// after every other call has returned.
type DiskSource interface {
	// Size is the disk size in bytes.
	Size() int64
	// Extents returns the regions to read, sorted, non-overlapping and in
	// bounds. What lies outside them is the base snapshot's (bitmap mode
	// reuse) or zeros (none, new).
	Extents(ctx context.Context) ([]Extent, error)
	// ReadAt fills p from off; len(p) is at most MaxRead.
	ReadAt(ctx context.Context, p []byte, off int64) error
	MaxRead() int
	// Discard tells the source a region is safely stored (NBD TRIM, which
	// keeps PVE's fleecing image small). ErrDiscardUnsupported when the
	// source cannot; that is not a failure of the pull.
	Discard(ctx context.Context, off, length int64) error
	Close() error
}

// ErrDiscardUnsupported is returned by DiskSource.Discard on a source that
// cannot discard (e.g. a read-only export).
var ErrDiscardUnsupported = errors.New("backup: source does not support discard")

// ObjectStore keeps objects that are not chunks (indexes) beside them.
type ObjectStore interface {
	PutObject(ctx context.Context, key string, data []byte) error
	GetObject(ctx context.Context, key string) ([]byte, error)
	// DeleteObject removes an object; a missing one is ErrNotFound or nil.
	DeleteObject(ctx context.Context, key string) error
}

// PullConfig tunes the disk pull pipeline. Its memory bound is
// (Readers + Uploaders + Slack) × ChunkSize bytes of chunk buffers, plus
// what the chunk store needs per concurrent Put, whatever the disk size.
type PullConfig struct {
	ChunkSize  int // fixed chunk size, aligned to disk offsets (QEMU's bitmap granularity)
	Readers    int // chunks being read from the source at once (NBD requests in flight)
	Uploaders  int // chunks being stored at once
	Slack      int // extra buffers for dedup batching
	DedupBatch int // most ids per KnownChunks query
	// ReserveWait bounds the wait for GC to finish deleting chunks that a
	// writer is about to store again (ErrChunksDeleting).
	ReserveWait time.Duration
}

// DefaultPullConfig returns the defaults: 4 MiB chunks, 4 readers, 4
// uploaders, 4 spare buffers: 48 MiB of chunk buffers per pull.
func DefaultPullConfig() PullConfig {
	return PullConfig{ChunkSize: 4 << 20, Readers: 4, Uploaders: 4, Slack: 4, DedupBatch: 128, ReserveWait: time.Minute}
}

// pullCatalog is what a pull needs of the catalog.
type pullCatalog interface {
	KnownChunks(ctx context.Context, ids []ChunkID) (map[ChunkID]bool, error)
	ReserveChunks(ctx context.Context, chunks []ChunkInfo) error
	AddChunks(ctx context.Context, chunks []ChunkInfo) error
}

// pullStats are the figures of one pull. Read is updated while it runs.
type pullStats struct {
	Total    atomic.Int64 // bytes to read from the source; the progress reporter reads it while the pull runs
	Read     atomic.Int64 // bytes read so far
	NewBytes int64        // stored bytes of the chunks this pull uploaded
	NewCount int64
}

// slotWork is one chunk slot to produce: the dirty ranges inside it.
type slotWork struct {
	slot   int
	off    int64 // slot start on the disk
	length int   // slot length (the last one may be short)
	dirty  []Extent
	buf    []byte
}

func (w *slotWork) full() bool {
	return len(w.dirty) == 1 && w.dirty[0].Offset == w.off && w.dirty[0].Length == int64(w.length)
}

// produced is a slotWork after reading and hashing.
type produced struct {
	*slotWork
	id   ChunkID
	zero bool
}

// pull runs the pipeline of one disk: extent map → parallel reads → fixed
// chunks aligned to disk offsets → hash → zero/dedup check in batches →
// store with bounded concurrency → discard of each region once its chunk is
// durable. It returns the disk's index. base is the previous snapshot's
// index for bitmap mode reuse, else nil.
type puller struct {
	cfg     PullConfig
	chunks  ChunkStore
	catalog pullCatalog
	src     DiskSource
	base    *FixedIndex
	limiter *rate.Limiter // nil: unlimited
	stats   *pullStats
	onWarn  func(msg string)
	hook    func(stage string) // calls ServiceConfig.Hook; nil in unit tests
	metrics *serviceMetrics    // nil in unit tests
}

func (p *puller) run(ctx context.Context) (*FixedIndex, error) {
	size := p.src.Size()
	idx := NewFixedIndex(p.cfg.ChunkSize, size)
	if p.base != nil {
		if p.base.ChunkSize != p.cfg.ChunkSize || p.base.Size != size {
			return nil, Errorf(ErrInvalid, "base index (%d bytes at %d) does not fit the disk (%d bytes at %d)",
				p.base.Size, p.base.ChunkSize, size, p.cfg.ChunkSize)
		}
		copy(idx.IDs, p.base.IDs)
	}
	extents, err := p.src.Extents(ctx)
	if err != nil {
		return nil, fmt.Errorf("extent map: %w", err)
	}
	work, total, err := planSlots(extents, size, p.cfg.ChunkSize)
	if err != nil {
		return nil, err
	}
	p.stats.Total.Store(total)

	nbufs := p.cfg.Readers + p.cfg.Uploaders + p.cfg.Slack
	bufs := make(chan []byte, nbufs)
	for range nbufs {
		bufs <- nil // allocated on first use
	}
	readCh := make(chan *slotWork)
	dedupCh := make(chan produced)
	uploadCh := make(chan produced)
	uploadedCh := make(chan uploaded, nbufs) // never blocks: one per buffer at most
	trimCh := make(chan []Extent, nbufs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { // producer: one buffer per slot in flight
		defer close(readCh)
		for i := range work {
			w := &work[i]
			select {
			case b := <-bufs:
				if b == nil {
					b = make([]byte, p.cfg.ChunkSize)
				}
				w.buf = b
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case readCh <- w:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	readers, rctx := errgroup.WithContext(ctx)
	for range p.cfg.Readers {
		readers.Go(func() error { return p.reader(rctx, readCh, dedupCh) })
	}
	g.Go(func() error { defer close(dedupCh); return readers.Wait() })
	for range p.cfg.Uploaders {
		g.Go(func() error { return p.uploader(ctx, uploadCh, uploadedCh) })
	}
	g.Go(func() error {
		defer close(trimCh)
		defer close(uploadCh)
		return p.dedup(ctx, idx, dedupCh, uploadCh, uploadedCh, trimCh, bufs)
	})
	g.Go(func() error { p.trimmer(ctx, trimCh); return nil })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return idx, nil
}

// planSlots splits the extents into chunk slots, each with its dirty
// ranges, and returns them in disk order with the bytes to read.
func planSlots(extents []Extent, size int64, chunkSize int) ([]slotWork, int64, error) {
	var work []slotWork
	var total, prevEnd int64
	cs := int64(chunkSize)
	for _, e := range extents {
		if e.Length <= 0 || e.Offset < prevEnd || e.Offset > size-e.Length {
			return nil, 0, Errorf(ErrInvalid, "source extent [%d,+%d) is empty, out of order or outside the %d-byte disk", e.Offset, e.Length, size)
		}
		prevEnd = e.End()
		total += e.Length
		for off := e.Offset; off < e.End(); {
			slot := int(off / cs)
			slotOff := int64(slot) * cs
			end := min(e.End(), slotOff+cs)
			if n := len(work); n == 0 || work[n-1].slot != slot {
				work = append(work, slotWork{slot: slot, off: slotOff, length: int(min(cs, size-slotOff))})
			}
			w := &work[len(work)-1]
			w.dirty = append(w.dirty, Extent{Offset: off, Length: end - off})
			off = end
		}
	}
	return work, total, nil
}

// reader fills each slot: whole from the source, or the base chunk (or
// zeros) with the dirty ranges read over it, then hashes it.
func (p *puller) reader(ctx context.Context, in <-chan *slotWork, out chan<- produced) error {
	for w := range in {
		buf := w.buf[:w.length]
		if !w.full() {
			if err := p.fillBase(ctx, w, buf); err != nil {
				return err
			}
		}
		for _, d := range w.dirty {
			if err := p.read(ctx, buf[d.Offset-w.off:d.End()-w.off], d.Offset); err != nil {
				return fmt.Errorf("read [%d,+%d): %w", d.Offset, d.Length, err)
			}
		}
		pr := produced{slotWork: w, zero: chunker.IsZero(buf)}
		if !pr.zero {
			pr.id = p.chunks.Sum(buf)
		}
		select {
		case out <- pr:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// fillBase puts the slot's previous content into buf: the base chunk for an
// incremental, zeros otherwise.
func (p *puller) fillBase(ctx context.Context, w *slotWork, buf []byte) error {
	if p.base == nil || p.base.IDs[w.slot].IsZero() {
		clear(buf)
		return nil
	}
	id := p.base.IDs[w.slot]
	got, err := p.chunks.Get(ctx, id, buf)
	if err != nil {
		return fmt.Errorf("base chunk %s of slot %d: %w", id, w.slot, err)
	}
	if len(got) != len(buf) {
		return Errorf(ErrChecksum, "base chunk %s of slot %d has %d bytes, want %d", id, w.slot, len(got), len(buf))
	}
	if &got[0] != &buf[0] {
		copy(buf, got)
	}
	return nil
}

// read reads p at off in pieces the source accepts, within the bandwidth
// limit, counting progress.
func (p *puller) read(ctx context.Context, b []byte, off int64) error {
	for len(b) > 0 {
		n := min(len(b), p.src.MaxRead())
		if p.limiter != nil {
			n = min(n, p.limiter.Burst())
			if err := p.limiter.WaitN(ctx, n); err != nil {
				return err
			}
		}
		if err := p.src.ReadAt(ctx, b[:n], off); err != nil {
			return err
		}
		p.stats.Read.Add(int64(n))
		p.metrics.addRead(ctx, n)
		b, off = b[n:], off+int64(n)
	}
	return nil
}

type uploaded struct {
	produced
	stored int64
}

func (p *puller) uploader(ctx context.Context, in <-chan produced, out chan<- uploaded) error {
	for pr := range in {
		stored, err := p.chunks.Put(ctx, pr.id, pr.buf[:pr.length])
		if err != nil {
			return fmt.Errorf("store chunk %s of slot %d: %w", pr.id, pr.slot, err)
		}
		out <- uploaded{produced: pr, stored: stored} // buffered for every buffer: never blocks
	}
	return nil
}

// dedup owns the index and the per-pull dedup state. It batches dedup
// queries, sends unknown chunks to the uploaders once (duplicates within
// the pull wait for the first upload), records uploaded chunks in the
// catalog in batches, and hands each durable slot's dirty ranges to the
// trimmer.
func (p *puller) dedup(ctx context.Context, idx *FixedIndex, in <-chan produced, upload chan<- produced,
	done <-chan uploaded, trim chan<- []Extent, bufs chan<- []byte) error {
	stored := map[ChunkID]bool{}        // known durable in this pull
	waiting := map[ChunkID][]produced{} // in upload; later duplicates wait here
	var record []ChunkInfo              // uploaded, not yet in the catalog
	inflight := 0                       // chunks at the uploaders
	var batch []produced
	durable := func(pr produced) error {
		idx.IDs[pr.slot] = pr.id
		bufs <- pr.buf // cannot block: the channel holds every buffer
		select {
		case trim <- pr.dirty:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	flush := func() error {
		if len(record) == 0 {
			return nil
		}
		if err := p.catalog.AddChunks(ctx, record); err != nil {
			return fmt.Errorf("record chunks: %w", err)
		}
		record = record[:0]
		return nil
	}
	finishUpload := func(u uploaded) error {
		inflight--
		stored[u.id] = true
		p.stats.NewBytes += u.stored
		p.stats.NewCount++
		p.metrics.addUpload(ctx, u.stored)
		record = append(record, ChunkInfo{ID: u.id, Size: int64(u.length), StoredSize: u.stored})
		if len(record) >= p.cfg.DedupBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		dups := waiting[u.id]
		delete(waiting, u.id)
		if err := durable(u.produced); err != nil {
			return err
		}
		for _, d := range dups {
			if err := durable(d); err != nil {
				return err
			}
		}
		return nil
	}
	for in != nil || inflight > 0 {
		// Take what is ready: at least one item, then whatever else is
		// queued, up to the batch size.
		batch = batch[:0]
		select {
		case pr, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			batch = append(batch, pr)
		case u := <-done:
			if err := finishUpload(u); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
	more:
		for len(batch) < p.cfg.DedupBatch {
			select {
			case pr, ok := <-in:
				if !ok {
					in = nil
					break more
				}
				batch = append(batch, pr)
			default:
				break more
			}
		}
		var query []ChunkID
		for _, pr := range batch {
			if !pr.zero && !stored[pr.id] && waiting[pr.id] == nil {
				query = append(query, pr.id)
			}
		}
		known := map[ChunkID]bool{}
		if len(query) > 0 {
			var err error
			if known, err = p.catalog.KnownChunks(ctx, query); err != nil {
				return fmt.Errorf("dedup lookup: %w", err)
			}
		}
		var toUpload []produced
		hits := 0
		for _, pr := range batch {
			switch {
			case pr.zero:
				pr.id = ZeroChunk
				if err := durable(pr); err != nil {
					return err
				}
			case stored[pr.id] || known[pr.id]:
				hits++
				stored[pr.id] = true
				if err := durable(pr); err != nil {
					return err
				}
			case waiting[pr.id] != nil:
				hits++
				waiting[pr.id] = append(waiting[pr.id], pr)
			default:
				waiting[pr.id] = []produced{}
				toUpload = append(toUpload, pr)
			}
		}
		p.metrics.addDedupHits(ctx, hits)
		if len(query) > 0 && p.hook != nil {
			p.hook("pull:looked-up")
		}
		if len(toUpload) == 0 {
			continue
		}
		// Reserve before uploading: whatever a crash leaves in the store is
		// then in the catalog, where GC finds it.
		reserve := make([]ChunkInfo, len(toUpload))
		for i, pr := range toUpload {
			reserve[i] = ChunkInfo{ID: pr.id, Size: int64(pr.length)}
		}
		if err := reserveChunks(ctx, p.catalog, reserve, p.cfg.ReserveWait); err != nil {
			return fmt.Errorf("reserve chunks: %w", err)
		}
		if p.hook != nil {
			p.hook("pull:reserved")
		}
		for _, pr := range toUpload {
			inflight++
			if err := p.send(ctx, upload, pr, done, finishUpload); err != nil {
				return err
			}
		}
	}
	return flush()
}

// send hands pr to the uploaders while still taking finished uploads, so
// the uploaders never wait on the dedup stage.
func (p *puller) send(ctx context.Context, upload chan<- produced, pr produced, done <-chan uploaded, finish func(uploaded) error) error {
	for {
		select {
		case upload <- pr:
			return nil
		case u := <-done:
			if err := finish(u); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// trimmer discards durable regions in the source, best effort: the first
// refusal is reported once and discarding stops.
func (p *puller) trimmer(ctx context.Context, in <-chan []Extent) {
	enabled := true
	for exts := range in {
		if !enabled {
			continue
		}
		for _, e := range exts {
			err := p.src.Discard(ctx, e.Offset, e.Length)
			if err == nil {
				continue
			}
			enabled = false
			if ctx.Err() == nil && p.onWarn != nil {
				if errors.Is(err, ErrDiscardUnsupported) {
					p.onWarn("source does not support discard; the fleecing image will not shrink during the backup")
				} else {
					p.onWarn("discard failed, not discarding any more: " + err.Error())
				}
			}
			break
		}
	}
}
