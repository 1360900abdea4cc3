package nbd

// READ and BLOCK_STATUS on the server. Data is read from the image into a
// buffer before anything about it is sent, so a failed ReadAt becomes an
// error reply, never a success header followed by wrong bytes (the flaw
// of go-nbd's server). Ranges the image reports as zero are sent as holes
// without reading them.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
)

const (
	// maxBatchChunks bounds the chunks written in one go.
	maxBatchChunks = 256
	// holeChunkSize is an OFFSET_HOLE chunk: header, offset, size.
	holeChunkSize = chunkHeaderSize + offsetHoleLength
	// maxStatusExtents caps one BLOCK_STATUS reply, as QEMU does; the
	// client asks again for the rest.
	maxStatusExtents = 1 << 17
)

// errBadExtents is wrapped when an Image breaks the Extents contract.
var errBadExtents = errors.New("nbd: image returned malformed extents")

// errStopWalk ends an extent walk early without an error.
var errStopWalk = errors.New("stop")

// readScratch holds what one READ needs, pooled across requests.
type readScratch struct {
	data []byte // readSegment bytes, allocated on first use
	hdrs [maxBatchChunks * holeChunkSize]byte
	bufs [2 * maxBatchChunks][]byte
}

var scratchPool = sync.Pool{New: func() any { return new(readScratch) }}

// dataBuf returns a buffer of n bytes: the pooled segment if it fits.
func (s *readScratch) dataBuf(n int64) []byte {
	if n > readSegment {
		return make([]byte, n)
	}
	if s.data == nil {
		s.data = make([]byte, readSegment)
	}
	return s.data[:n]
}

// eachExtent checks exts as the Image's answer for [pos, end) and calls
// fn for each, clipped to end. fn may return errStopWalk. It returns where
// the extents stop (they may stop short of end).
func eachExtent(exts []Extent, pos, end int64, fn func(off, n int64, flags uint32) error) (int64, error) {
	if len(exts) == 0 {
		return pos, fmt.Errorf("%w: none for [%d,%d)", errBadExtents, pos, end)
	}
	for _, e := range exts {
		if pos >= end {
			break
		}
		if e.Offset != pos || e.Length <= 0 {
			return pos, fmt.Errorf("%w: [%d,+%d) where one at %d was due", errBadExtents, e.Offset, e.Length, pos)
		}
		n := min(e.Length, end-pos)
		if err := fn(pos, n, e.Flags); err != nil {
			return pos, err
		}
		pos += n
	}
	return pos, nil
}

// run is a stretch of the image that is all data or reads as zeroes.
type run struct {
	off, n int64
	zero   bool
}

// walkRuns calls fn for consecutive runs covering exactly [off,
// off+length), merging neighbours of the same kind across Extents calls.
func (c *serverConn) walkRuns(off, length int64, fn func(run) error) error {
	var cur run
	for pos, end := off, off+length; pos < end; {
		exts, err := c.img.Extents(c.ctx, pos, end-pos)
		if err != nil {
			return fmt.Errorf("extents [%d,+%d): %w", pos, end-pos, err)
		}
		pos, err = eachExtent(exts, pos, end, func(o, n int64, flags uint32) error {
			zero := flags&StateZero != 0
			if cur.n > 0 && cur.zero == zero {
				cur.n += n
				return nil
			}
			if cur.n > 0 {
				if err := fn(cur); err != nil {
					return err
				}
			}
			cur = run{off: o, n: n, zero: zero}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return fn(cur)
}

// read serves a validated READ.
func (c *serverConn) read(h requestHeader) {
	off, n := int64(h.Offset), int64(h.Length)
	if n == 0 {
		c.replyEmptyRead(h)
		return
	}
	scr := scratchPool.Get().(*readScratch)
	defer scratchPool.Put(scr)
	if c.structured && h.Flags&cmdFlagDF == 0 {
		c.readChunked(h, scr)
		return
	}
	buf := scr.dataBuf(n)
	zero, err := c.readWhole(buf, off)
	if err != nil {
		c.readFailed(h, err)
		return
	}
	if !c.structured {
		var b [simpleReplyHeaderSize]byte
		r := simpleReplyHeader{Cookie: h.Cookie}
		r.encode(&b)
		_ = c.write(net.Buffers{b[:], buf})
		return
	}
	// DF: one content chunk.
	batch := chunkBatch{c: c, cookie: h.Cookie, scr: scr, bufs: scr.bufs[:0]}
	if zero {
		_ = batch.hole(off, n)
	} else {
		batch.queueData(off, buf)
	}
	_ = batch.flush(true)
}

// readWhole fills buf with the bytes at off, zeroing the runs the image
// reports as zero, and says whether all of it was such a run.
func (c *serverConn) readWhole(buf []byte, off int64) (allZero bool, err error) {
	allZero = true
	err = c.walkRuns(off, int64(len(buf)), func(r run) error {
		p := buf[r.off-off : r.off-off+r.n]
		if r.zero {
			clear(p)
			return nil
		}
		allZero = false
		if err := c.img.ReadAt(c.ctx, p, r.off); err != nil {
			return fmt.Errorf("read [%d,+%d): %w", r.off, r.n, err)
		}
		return nil
	})
	return allZero, err
}

// readChunked serves a structured READ: holes as OFFSET_HOLE chunks, data
// read a segment at a time and sent as OFFSET_DATA chunks, DONE on the
// last. If a read fails part-way, the chunks already sent hold correct
// data and an ERROR chunk ends the reply, which fails the whole request.
func (c *serverConn) readChunked(h requestHeader, scr *readScratch) {
	off, n := int64(h.Offset), int64(h.Length)
	b := chunkBatch{c: c, cookie: h.Cookie, scr: scr, bufs: scr.bufs[:0], data: scr.dataBuf(min(n, readSegment))}
	err := c.walkRuns(off, n, func(r run) error {
		if r.zero {
			return b.hole(r.off, r.n)
		}
		return b.readData(r.off, r.n)
	})
	if err == nil {
		err = b.flush(true)
	}
	if err != nil {
		c.readFailed(h, err)
	}
}

// replyEmptyRead answers a READ of length 0.
func (c *serverConn) replyEmptyRead(h requestHeader) {
	if !c.structured {
		c.replyOK(h)
		return
	}
	var b [chunkHeaderSize]byte
	ch := chunkHeader{Flags: replyFlagDone, Type: chunkNone, Cookie: h.Cookie}
	ch.encode(&b)
	_ = c.write(net.Buffers{b[:]})
}

// readFailed logs a failed READ and answers EIO, unless the connection
// is ending (then the failure is a consequence, and nobody listens).
func (c *serverConn) readFailed(h requestHeader, err error) {
	if c.ctx.Err() != nil {
		return
	}
	c.log.WarnContext(c.ctx, "nbd: read failed", "offset", h.Offset, "bytes", h.Length, "err", err)
	c.replyError(h, EIO, "I/O error")
}

// chunkBatch collects the chunks of one structured READ reply and
// writes them in one go once the data buffer or the header space is full.
type chunkBatch struct {
	c      *serverConn
	cookie uint64
	scr    *readScratch
	data   []byte // the segment buffer
	used   int    // bytes of data queued
	nhdr   int    // bytes of scr.hdrs queued
	chunks int
	last   []byte // header of the last chunk queued
	bufs   net.Buffers
}

// header encodes a chunk header and its offset into the header space.
func (b *chunkBatch) header(typ uint16, length uint32, off int64, size int) []byte {
	p := b.scr.hdrs[b.nhdr : b.nhdr+size]
	ch := chunkHeader{Type: typ, Cookie: b.cookie, Length: length}
	ch.encode((*[chunkHeaderSize]byte)(p))
	binary.BigEndian.PutUint64(p[chunkHeaderSize:], uint64(off))
	b.nhdr += size
	b.chunks++
	b.last = p
	return p
}

// hole queues an OFFSET_HOLE chunk for [off, off+n); n ≤ 32 MiB.
func (b *chunkBatch) hole(off, n int64) error {
	if b.chunks == maxBatchChunks {
		if err := b.flush(false); err != nil {
			return err
		}
	}
	p := b.header(chunkOffsetHole, offsetHoleLength, off, holeChunkSize)
	binary.BigEndian.PutUint32(p[chunkHeaderSize+8:], uint32(n))
	b.bufs = append(b.bufs, p)
	return nil
}

// queueData queues an OFFSET_DATA chunk carrying p.
func (b *chunkBatch) queueData(off int64, p []byte) {
	h := b.header(chunkOffsetData, uint32(8+len(p)), off, chunkHeaderSize+8)
	b.bufs = append(b.bufs, h, p)
}

// readData reads [off, off+n) from the image into the segment buffer,
// flushing whenever it is full, and queues the data chunks.
func (b *chunkBatch) readData(off, n int64) error {
	for n > 0 {
		if b.used == len(b.data) || b.chunks == maxBatchChunks {
			if err := b.flush(false); err != nil {
				return err
			}
		}
		k := min(n, int64(len(b.data)-b.used))
		p := b.data[b.used : b.used+int(k)]
		if err := b.c.img.ReadAt(b.c.ctx, p, off); err != nil {
			return fmt.Errorf("read [%d,+%d): %w", off, k, err)
		}
		b.queueData(off, p)
		b.used += int(k)
		off, n = off+k, n-k
	}
	return nil
}

// flush writes the queued chunks, the last marked DONE when final. The
// caller queues before a final flush, so there is a last chunk.
func (b *chunkBatch) flush(final bool) error {
	if final {
		binary.BigEndian.PutUint16(b.last[4:], replyFlagDone)
	}
	err := b.c.write(b.bufs)
	b.bufs, b.used, b.nhdr, b.chunks, b.last = b.scr.bufs[:0], 0, 0, 0, nil
	return err
}

// blockStatus answers a validated BLOCK_STATUS for base:allocation: one
// chunk with the image's extents, merged, clipped to the request, at most
// maxStatusExtents (exactly one with REQ_ONE).
func (c *serverConn) blockStatus(h requestHeader) {
	off, end := int64(h.Offset), int64(h.Offset)+int64(h.Length)
	limit := maxStatusExtents
	if h.Flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	type desc struct{ n, flags uint32 }
	var descs []desc
	exts, err := c.img.Extents(c.ctx, off, end-off)
	if err == nil {
		_, err = eachExtent(exts, off, end, func(_, n int64, flags uint32) error {
			flags &= StateHole | StateZero
			if k := len(descs); k > 0 && descs[k-1].flags == flags {
				descs[k-1].n += uint32(n) // the sum stays ≤ h.Length
				return nil
			}
			if len(descs) == limit {
				return errStopWalk
			}
			descs = append(descs, desc{uint32(n), flags})
			return nil
		})
	}
	if err != nil && !errors.Is(err, errStopWalk) {
		if c.ctx.Err() == nil {
			c.log.WarnContext(c.ctx, "nbd: block status failed", "offset", h.Offset, "bytes", h.Length, "err", err)
			c.replyError(h, EIO, "block status failed")
		}
		return
	}
	p := make([]byte, chunkHeaderSize, chunkHeaderSize+4+blockStatusDescSize*len(descs))
	ch := chunkHeader{Flags: replyFlagDone, Type: chunkBlockStatus, Cookie: h.Cookie, Length: uint32(4 + blockStatusDescSize*len(descs))}
	ch.encode((*[chunkHeaderSize]byte)(p))
	p = binary.BigEndian.AppendUint32(p, baseAllocationID)
	for _, d := range descs {
		p = binary.BigEndian.AppendUint32(p, d.n)
		p = binary.BigEndian.AppendUint32(p, d.flags)
	}
	_ = c.write(net.Buffers{p})
}
