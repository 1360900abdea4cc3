package nbd

// The reader goroutine: it decodes every reply, checks it against the
// request it answers, and completes calls. Anything a correct server could
// not have sent is a protocol error and ends the connection: once a length
// or offset is wrong, nothing after it can be trusted.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.readReplies()
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	err = c.err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.conn.Close()
	for _, cl := range pending {
		cl.err = err
		close(cl.done)
	}
}

func (c *Client) readReplies() error {
	hdr := c.scratch[:]
	for {
		if _, err := io.ReadFull(c.br, hdr[:4]); err != nil {
			return c.readErr(err, "reply header")
		}
		var err error
		switch m := binary.BigEndian.Uint32(hdr); m {
		case simpleReplyMagic:
			if _, err := io.ReadFull(c.br, hdr[4:simpleReplyHeaderSize]); err != nil {
				return c.readErr(err, "simple reply header")
			}
			err = c.simpleReply(decodeSimpleReply(hdr[4:]))
		case structuredReplyMagic:
			if _, err := io.ReadFull(c.br, hdr[4:chunkHeaderSize]); err != nil {
				return c.readErr(err, "reply chunk header")
			}
			err = c.chunk(decodeChunkHeader(hdr[4:]))
		case extendedReplyMagic:
			err = protocolError("extended reply header, but extended headers were not negotiated")
		default:
			err = protocolError("bad reply magic %#08x", m)
		}
		if err != nil {
			return err
		}
	}
}

// readErr describes a failed read from the server.
func (c *Client) readErr(err error, what string) error {
	c.mu.Lock()
	n := len(c.pending)
	c.mu.Unlock()
	if errors.Is(err, io.EOF) && what == "reply header" {
		if n == 0 {
			return fmt.Errorf("nbd: server closed the connection: %w", err)
		}
		return fmt.Errorf("nbd: server closed the connection with %d requests pending: %w", n, err)
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("nbd: read %s: %w", what, err)
}

func (c *Client) lookup(cookie uint64) (*call, error) {
	c.mu.Lock()
	cl := c.pending[cookie]
	c.mu.Unlock()
	if cl == nil {
		return nil, protocolError("reply for unknown cookie %d", cookie)
	}
	return cl, nil
}

// complete ends cl with err.
func (c *Client) complete(cl *call, err error) {
	c.mu.Lock()
	delete(c.pending, cl.cookie)
	c.mu.Unlock()
	cl.err = err
	close(cl.done)
}

func (cl *call) describe() string {
	return fmt.Sprintf("%s [%d,+%d)", cmdName(cl.cmd), cl.off, cl.length)
}

func (c *Client) simpleReply(h simpleReplyHeader) error {
	cl, err := c.lookup(h.Cookie)
	if err != nil {
		return err
	}
	if cl.started {
		return protocolError("%s: simple reply after structured chunks", cl.describe())
	}
	if h.Error != 0 {
		c.complete(cl, &ServerError{Command: cmdName(cl.cmd), Errno: errnoFromWire(h.Error), Offset: -1})
		return nil
	}
	switch cl.cmd {
	case cmdRead:
		if c.export.StructuredReplies {
			return protocolError("%s: simple reply with data, but structured replies were negotiated", cl.describe())
		}
		if err := c.readData(cl, 0, cl.length); err != nil {
			return err
		}
	case cmdBlockStatus:
		return protocolError("%s: simple success reply carries no extents", cl.describe())
	}
	c.complete(cl, nil)
	return nil
}

func (c *Client) chunk(h chunkHeader) error {
	if !c.export.StructuredReplies {
		return protocolError("structured reply chunk, but structured replies were not negotiated")
	}
	cl, err := c.lookup(h.Cookie)
	if err != nil {
		return err
	}
	cl.started = true
	done := h.Flags&replyFlagDone != 0
	switch h.Type {
	case chunkNone:
		if h.Length != 0 {
			err = protocolError("%s: NONE chunk with length %d, want 0", cl.describe(), h.Length)
		} else if !done {
			err = protocolError("%s: NONE chunk without the DONE flag", cl.describe())
		}
	case chunkOffsetData:
		err = c.dataChunk(cl, h)
	case chunkOffsetHole:
		err = c.holeChunk(cl, h)
	case chunkBlockStatus:
		err = c.statusChunk(cl, h)
	case chunkError, chunkErrorOffset:
		err = c.errorChunk(cl, h)
	default:
		err = c.unknownChunk(cl, h)
	}
	if err != nil {
		return err
	}
	if done {
		return c.finishStructured(cl)
	}
	return nil
}

// finishStructured completes cl on its DONE chunk.
func (c *Client) finishStructured(cl *call) error {
	if cl.srvErr != nil {
		c.complete(cl, cl.srvErr)
		return nil
	}
	switch cl.cmd {
	case cmdRead:
		if cl.spans.covered != uint64(cl.length) {
			return protocolError("%s: reply ends after %d of %d bytes", cl.describe(), cl.spans.covered, cl.length)
		}
	case cmdBlockStatus:
		if cl.extents == nil {
			return protocolError("%s: reply ends without extents for meta context %d", cl.describe(), cl.ctxID)
		}
	}
	c.complete(cl, nil)
	return nil
}

func (c *Client) dataChunk(cl *call, h chunkHeader) error {
	if cl.cmd != cmdRead {
		return protocolError("%s: OFFSET_DATA chunk answers no READ", cl.describe())
	}
	if h.Length < 9 {
		return protocolError("%s: OFFSET_DATA chunk length %d, want at least 9", cl.describe(), h.Length)
	}
	n := h.Length - 8
	if n > cl.length {
		return protocolError("%s: OFFSET_DATA chunk length %d exceeds the request length", cl.describe(), h.Length)
	}
	b := c.scratch[:8]
	if _, err := io.ReadFull(c.br, b); err != nil {
		return c.readErr(err, "OFFSET_DATA chunk")
	}
	rel, err := cl.place(binary.BigEndian.Uint64(b), n, "OFFSET_DATA")
	if err != nil {
		return err
	}
	return c.readData(cl, rel, n)
}

func (c *Client) holeChunk(cl *call, h chunkHeader) error {
	if cl.cmd != cmdRead {
		return protocolError("%s: OFFSET_HOLE chunk answers no READ", cl.describe())
	}
	if h.Length != offsetHoleLength {
		return protocolError("%s: OFFSET_HOLE chunk length %d, want %d", cl.describe(), h.Length, offsetHoleLength)
	}
	b := c.scratch[:offsetHoleLength]
	if _, err := io.ReadFull(c.br, b); err != nil {
		return c.readErr(err, "OFFSET_HOLE chunk")
	}
	n := binary.BigEndian.Uint32(b[8:])
	if n == 0 {
		return protocolError("%s: OFFSET_HOLE chunk of size 0", cl.describe())
	}
	rel, err := cl.place(binary.BigEndian.Uint64(b), n, "OFFSET_HOLE")
	if err != nil {
		return err
	}
	cl.bufMu.Lock()
	if !cl.abandoned {
		clear(cl.buf[rel : rel+n])
	}
	cl.bufMu.Unlock()
	return nil
}

// place checks that a content chunk [off,+n) lies inside cl's range and
// overlaps nothing received before, and returns its start relative to
// the request.
func (cl *call) place(off uint64, n uint32, kind string) (uint32, error) {
	start, end := uint64(cl.off), uint64(cl.off)+uint64(cl.length)
	if off < start || off > end || uint64(n) > end-off {
		return 0, protocolError("%s: %s chunk [%d,+%d) outside the request", cl.describe(), kind, off, n)
	}
	rel := uint32(off - start)
	if !cl.spans.add(rel, rel+n) {
		return 0, protocolError("%s: %s chunk [%d,+%d) overlaps data already received", cl.describe(), kind, off, n)
	}
	return rel, nil
}

// readData reads n bytes of payload into cl.buf at rel, or drops them if
// the caller has left.
func (c *Client) readData(cl *call, rel, n uint32) error {
	cl.bufMu.Lock()
	defer cl.bufMu.Unlock()
	var err error
	if cl.abandoned {
		_, err = io.CopyN(io.Discard, c.br, int64(n))
	} else {
		_, err = io.ReadFull(c.br, cl.buf[rel:rel+n])
	}
	if err != nil {
		return c.readErr(err, cmdName(cl.cmd)+" data")
	}
	return nil
}

func (c *Client) errorChunk(cl *call, h chunkHeader) error {
	kind := chunkTypeName(h.Type)
	if h.Length < errorChunkMinLength || h.Length > maxErrorPayload {
		return protocolError("%s: %s chunk length %d out of range", cl.describe(), kind, h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return c.readErr(err, kind+" chunk")
	}
	code := binary.BigEndian.Uint32(p)
	msgLen := uint32(binary.BigEndian.Uint16(p[4:]))
	if code == 0 {
		return protocolError("%s: %s chunk with error code 0", cl.describe(), kind)
	}
	want := errorChunkMinLength + msgLen
	if h.Type == chunkErrorOffset {
		want += 8
	}
	if h.Length != want {
		return protocolError("%s: %s chunk length %d does not match its message length %d", cl.describe(), kind, h.Length, msgLen)
	}
	se := &ServerError{Command: cmdName(cl.cmd), Errno: errnoFromWire(code), Offset: -1}
	msg := p[6 : 6+msgLen]
	if h.Type == chunkErrorOffset {
		off := binary.BigEndian.Uint64(p[6+msgLen:])
		if off < uint64(cl.off) || off-uint64(cl.off) >= uint64(cl.length) {
			return protocolError("%s: ERROR_OFFSET offset %d outside the request", cl.describe(), off)
		}
		se.Offset = int64(off)
	}
	if len(msg) > 256 {
		msg = msg[:256]
	}
	se.Message = printable(msg)
	if cl.srvErr == nil {
		cl.srvErr = se
	}
	return nil
}

// unknownChunk handles chunk types this client does not know: an error
// type fails the request, anything else cannot be interpreted.
func (c *Client) unknownChunk(cl *call, h chunkHeader) error {
	if h.Type&chunkTypeErrorBit == 0 {
		return protocolError("%s: unknown chunk type %#04x", cl.describe(), h.Type)
	}
	if h.Length > maxErrorPayload {
		return protocolError("%s: error chunk type %#04x with length %d", cl.describe(), h.Type, h.Length)
	}
	if _, err := io.CopyN(io.Discard, c.br, int64(h.Length)); err != nil {
		return c.readErr(err, "error chunk")
	}
	if cl.srvErr == nil {
		cl.srvErr = &ServerError{Command: cmdName(cl.cmd), Errno: EINVAL, Offset: -1,
			Message: fmt.Sprintf("unknown error chunk type %#04x", h.Type)}
	}
	return nil
}

func (c *Client) statusChunk(cl *call, h chunkHeader) error {
	if cl.cmd != cmdBlockStatus {
		return protocolError("%s: BLOCK_STATUS chunk answers no BLOCK_STATUS", cl.describe())
	}
	if h.Length < 4+blockStatusDescSize || (h.Length-4)%blockStatusDescSize != 0 {
		return protocolError("%s: BLOCK_STATUS chunk length %d, want 4+8n with n >= 1", cl.describe(), h.Length)
	}
	n := (h.Length - 4) / blockStatusDescSize
	if n > maxExtentsPerChunk {
		return protocolError("%s: BLOCK_STATUS chunk with %d extents, more than %d", cl.describe(), n, maxExtentsPerChunk)
	}
	b := c.scratch[:4]
	if _, err := io.ReadFull(c.br, b); err != nil {
		return c.readErr(err, "BLOCK_STATUS chunk")
	}
	id := binary.BigEndian.Uint32(b)
	if !c.hasContext(id) {
		return protocolError("%s: BLOCK_STATUS chunk for meta context id %d, which was not negotiated", cl.describe(), id)
	}
	for _, seen := range cl.statusIDs {
		if seen == id {
			return protocolError("%s: second BLOCK_STATUS chunk for meta context id %d", cl.describe(), id)
		}
	}
	cl.statusIDs = append(cl.statusIDs, id)
	exts, err := c.readExtents(cl, id, n, id == cl.ctxID)
	if err != nil {
		return err
	}
	if id == cl.ctxID {
		cl.extents = exts
	}
	return nil
}

func (c *Client) hasContext(id uint32) bool {
	for _, mc := range c.export.MetaContexts {
		if mc.ID == id {
			return true
		}
	}
	return false
}

// readExtents reads n extent descriptors. They must be non-empty and
// follow each other from the request offset; only the last may run past
// the request end, and it is clipped there. The slice grows only as
// descriptors actually arrive, so a lying length cannot make it huge.
func (c *Client) readExtents(cl *call, id, n uint32, keep bool) ([]Extent, error) {
	pos, end := uint64(cl.off), uint64(cl.off)+uint64(cl.length)
	var exts []Extent
	if keep {
		exts = make([]Extent, 0, min(n, 64))
	}
	b := c.scratch[:blockStatusDescSize]
	for i := range n {
		if _, err := io.ReadFull(c.br, b); err != nil {
			return nil, c.readErr(err, "BLOCK_STATUS extents")
		}
		length, flags := uint64(binary.BigEndian.Uint32(b)), binary.BigEndian.Uint32(b[4:])
		switch {
		case length == 0:
			return nil, protocolError("%s: meta context %d: extent %d has length 0", cl.describe(), id, i)
		case pos >= end:
			return nil, protocolError("%s: meta context %d: extent %d starts at %d, past the end of the request", cl.describe(), id, i, pos)
		}
		length = min(length, end-pos)
		if keep {
			exts = append(exts, Extent{Offset: int64(pos), Length: int64(length), Flags: flags})
		}
		pos += length
	}
	return exts, nil
}

// span is a half-open byte range [start, end) relative to a request.
type span struct{ start, end uint32 }

// spanSet records the disjoint ranges of a READ reply received so far,
// merging neighbours so that the usual in-order reply stays one span.
type spanSet struct {
	s       []span
	inline  [2]span // backing for s in the common case, saving an allocation
	covered uint64
}

// add inserts [start,end) and reports false if it overlaps a range
// already present.
func (ss *spanSet) add(start, end uint32) bool {
	if ss.s == nil {
		ss.s = ss.inline[:0]
	}
	s := ss.s
	i := sort.Search(len(s), func(i int) bool { return s[i].start >= start })
	if (i > 0 && s[i-1].end > start) || (i < len(s) && s[i].start < end) {
		return false
	}
	ss.covered += uint64(end - start)
	joinPrev := i > 0 && s[i-1].end == start
	joinNext := i < len(s) && s[i].start == end
	switch {
	case joinPrev && joinNext:
		s[i-1].end = s[i].end
		ss.s = append(s[:i], s[i+1:]...)
	case joinPrev:
		s[i-1].end = end
	case joinNext:
		s[i].start = start
	default:
		ss.s = append(s, span{})
		copy(ss.s[i+1:], ss.s[i:])
		ss.s[i] = span{start, end}
	}
	return true
}
