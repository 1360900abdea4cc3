package archive

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/backstop-pve/backstop/internal/backup"
)

// chunkReader reads the range [pos, end) of a stream from its dynamic
// index, with up to ahead chunk fetches in flight. It owns the fetch
// goroutines: Close cancels them and waits. It is not safe for concurrent
// use. Memory: ahead + 1 chunk buffers, recycled.
type chunkReader struct {
	ctx    context.Context
	cancel context.CancelFunc
	idx    *backup.DynamicIndex
	chunks ChunkGetter
	ahead  int

	next  int      // index entry to schedule next
	sched int64    // stream offset where entry next starts
	end   int64    // end of the range
	skip  int      // bytes of the first fetched chunk before the range
	queue []*fetch // scheduled, in stream order
	cur   *fetch   // being read; cur.data[off:] is left
	off   int
	free  [][]byte // buffers of consumed chunks
	err   error
	wg    sync.WaitGroup
}

type fetch struct {
	done  chan struct{} // closed when data and err are set
	entry int
	buf   []byte
	data  []byte
	err   error
}

func newChunkReader(ctx context.Context, idx *backup.DynamicIndex, chunks ChunkGetter, pos, end int64, ahead int) *chunkReader {
	ctx, cancel := context.WithCancel(ctx)
	r := &chunkReader{ctx: ctx, cancel: cancel, idx: idx, chunks: chunks, ahead: ahead, end: end}
	es := idx.Entries
	r.next = sort.Search(len(es), func(i int) bool { return int64(es[i].End) > pos })
	if r.next > 0 {
		r.sched = int64(es[r.next-1].End)
	}
	r.skip = int(pos - r.sched)
	if pos >= end {
		r.next = len(es)
	}
	return r
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.data) {
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.advance()
	}
	n := copy(p, r.cur.data[r.off:])
	r.off += n
	return n, nil
}

// advance makes the next chunk current, or returns io.EOF at the end of
// the range.
func (r *chunkReader) advance() error {
	if r.cur != nil {
		r.free = append(r.free, r.cur.buf)
		r.cur = nil
	}
	r.schedule()
	if len(r.queue) == 0 {
		return io.EOF
	}
	f := r.queue[0]
	r.queue = r.queue[1:]
	select {
	case <-f.done:
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	r.schedule()
	if f.err != nil {
		return f.err
	}
	start, length := r.bounds(f.entry)
	if len(f.data) != length {
		return corruptf("chunk %s has %d bytes, its index entry %d", r.idx.Entries[f.entry].ID, len(f.data), length)
	}
	// Trim to the range.
	data := f.data
	if e := r.end - start; e < int64(len(data)) {
		data = data[:e]
	}
	r.cur, r.off = f, r.skip
	r.cur.data = data
	r.skip = 0
	return nil
}

// bounds returns where index entry i starts and its length.
func (r *chunkReader) bounds(i int) (int64, int) {
	var start int64
	if i > 0 {
		start = int64(r.idx.Entries[i-1].End)
	}
	return start, int(int64(r.idx.Entries[i].End) - start)
}

// schedule starts fetches until ahead are in flight or the range is covered.
func (r *chunkReader) schedule() {
	for len(r.queue) < r.ahead && r.next < len(r.idx.Entries) && r.sched < r.end {
		i := r.next
		start, length := r.bounds(i)
		r.next++
		r.sched = start + int64(length)
		f := &fetch{done: make(chan struct{}), entry: i}
		if n := len(r.free); n > 0 {
			f.buf, r.free = r.free[n-1], r.free[:n-1]
		}
		r.queue = append(r.queue, f)
		id := r.idx.Entries[i].ID
		if id == backup.ZeroChunk {
			if cap(f.buf) < length {
				f.buf = make([]byte, length)
			}
			f.data = f.buf[:length]
			clear(f.data)
			close(f.done)
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer close(f.done)
			f.data, f.err = r.chunks.Get(r.ctx, id, f.buf)
			if f.err != nil {
				f.err = fmt.Errorf("archive: fetch chunk %s: %w", id, f.err)
				return
			}
			f.buf = f.data // Get may have grown it
		}()
	}
}

// Close cancels the fetches in flight and waits for them.
func (r *chunkReader) Close() {
	r.cancel()
	r.wg.Wait()
}
