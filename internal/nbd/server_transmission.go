package nbd

// Server side of transmission (nbd-protocol.md §4, §9.3): one reader, a
// bounded set of workers, one writer lock. Each request is answered on
// its own, in whatever order the workers finish.

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"golang.org/x/sync/errgroup"
)

// Read buffer bounds per connection.
const (
	// readSegment is the most a structured READ buffers at once: data is
	// read and sent in chunks of up to this size (PVE's chunk size).
	readSegment = 4 << 20
	// maxConnBufferBytes bounds the read buffers of one connection. A
	// simple-reply READ buffers its whole length (≤ 32 MiB), so this
	// must be at least maxPayload.
	maxConnBufferBytes = 64 << 20
	// maxErrorMessage keeps error chunks short (QEMU's limit is 1000).
	maxErrorMessage = 128
)

// transmit reads requests and hands each to a worker until the client
// disconnects (DISC or EOF), the stream breaks, or Shutdown stops it;
// then it waits for the workers, so in-flight replies go out before the
// connection closes.
func (c *serverConn) transmit() {
	var g errgroup.Group
	g.SetLimit(c.srv.opts.MaxRequestsInFlight)
	defer g.Wait()
	var hb [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			if !c.readEnded(err) {
				c.log.DebugContext(c.ctx, "nbd: read request", "err", err)
			}
			return
		}
		h, err := decodeRequestHeader(&hb)
		if err != nil { // the stream cannot be resynchronised
			c.log.DebugContext(c.ctx, "nbd: closing connection", "err", err)
			c.cancel()
			return
		}
		switch h.Type {
		case cmdDisc:
			return
		case cmdWrite:
			if !c.drainWrite(h) {
				return
			}
		}
		need := c.bufferNeed(h)
		if err := c.budget.Acquire(c.ctx, need); err != nil {
			return
		}
		g.Go(func() error {
			defer c.budget.Release(need)
			c.handle(h)
			return nil
		})
	}
}

// drainWrite reads and drops a WRITE payload (the reply is EPERM). One
// over the maximum payload is not worth reading: the connection closes.
func (c *serverConn) drainWrite(h requestHeader) bool {
	if h.Length > maxPayload {
		c.log.DebugContext(c.ctx, "nbd: closing connection: WRITE payload too long", "bytes", h.Length)
		c.cancel()
		return false
	}
	if _, err := io.CopyN(io.Discard, c.br, int64(h.Length)); err != nil {
		if !c.readEnded(err) {
			c.log.DebugContext(c.ctx, "nbd: read WRITE payload", "err", err)
		}
		return false
	}
	return true
}

// bufferNeed is how many buffer bytes serving h takes.
func (c *serverConn) bufferNeed(h requestHeader) int64 {
	if h.Type != cmdRead || h.Length > maxPayload {
		return 0
	}
	n := int64(h.Length)
	if c.structured && h.Flags&cmdFlagDF == 0 {
		n = min(n, readSegment)
	}
	return n
}

// handle serves one request in a worker. A panic closes the connection.
func (c *serverConn) handle(h requestHeader) {
	defer func() {
		if v := recover(); v != nil {
			c.srv.recovered(c.ctx, c.log, v)
			c.cancel()
		}
	}()
	if errno, msg := c.check(h); errno != 0 {
		c.replyError(h, errno, msg)
		return
	}
	switch h.Type {
	case cmdRead:
		c.read(h)
	case cmdBlockStatus:
		c.blockStatus(h)
	default: // FLUSH, CACHE: nothing to do on immutable data
		c.replyOK(h)
	}
}

// check validates h; a non-zero errno is the answer.
func (c *serverConn) check(h requestHeader) (Errno, string) {
	allowed := cmdFlagFUA // meaningless on a read-only export; tolerated
	switch h.Type {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		return EPERM, "read-only export"
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	case cmdFlush:
		return 0, ""
	case cmdCache:
	default:
		return EINVAL, "unknown command"
	}
	if f := h.Flags &^ allowed; f != 0 {
		return EINVAL, fmt.Sprintf("unsupported flags %#x", f)
	}
	if h.Offset > uint64(c.size) || uint64(h.Length) > uint64(c.size)-h.Offset {
		return EINVAL, "request past the end of the export"
	}
	switch {
	case h.Type == cmdRead && h.Length > serverMaxPayload:
		return EINVAL, "read longer than the maximum payload"
	case h.Type == cmdBlockStatus && (!c.structured || !c.metaBase):
		return EINVAL, "no meta context selected"
	case h.Type == cmdBlockStatus && h.Length == 0:
		return EINVAL, "block status of length 0"
	}
	return 0, ""
}

// replyOK sends a simple success reply without payload (as QEMU does
// for non-READ commands in structured mode too).
func (c *serverConn) replyOK(h requestHeader) {
	var b [simpleReplyHeaderSize]byte
	r := simpleReplyHeader{Cookie: h.Cookie}
	r.encode(&b)
	_ = c.write(net.Buffers{b[:]})
}

// replyError fails a request: an ERROR chunk with a short message in
// structured mode, a simple reply with the error otherwise. Nothing is
// sent for a connection that is ending anyway.
func (c *serverConn) replyError(h requestHeader, errno Errno, msg string) {
	if c.ctx.Err() != nil {
		return
	}
	if !c.structured {
		var b [simpleReplyHeaderSize]byte
		r := simpleReplyHeader{Error: uint32(errno), Cookie: h.Cookie}
		r.encode(&b)
		_ = c.write(net.Buffers{b[:]})
		return
	}
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	b := make([]byte, chunkHeaderSize, chunkHeaderSize+errorChunkMinLength+len(msg))
	ch := chunkHeader{Flags: replyFlagDone, Type: chunkError, Cookie: h.Cookie, Length: uint32(errorChunkMinLength + len(msg))}
	ch.encode((*[chunkHeaderSize]byte)(b))
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	_ = c.write(net.Buffers{b})
}
