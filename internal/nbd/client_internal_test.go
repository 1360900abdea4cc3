package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestClient_Handshake(t *testing.T) {
	ex := defaultFakeExport()
	ex.blockSize = [3]uint32{512, 4096, 1 << 20}
	c := newFakeClient(t, ex, Options{MetaContexts: []string{DirtyBitmapContext("bm0"), "qemu:dirty-bitmap:missing"}}, nil)
	got := c.Export()
	if got.Size != 1<<20 || got.Flags != ex.flags || !got.StructuredReplies {
		t.Errorf("export = %+v", got)
	}
	if got.MinBlock != 512 || got.PreferredBlock != 4096 || got.MaxPayload != 1<<20 || c.MaxRead() != 1<<20 {
		t.Errorf("block sizes = %d/%d/%d, MaxRead %d", got.MinBlock, got.PreferredBlock, got.MaxPayload, c.MaxRead())
	}
	if id, ok := c.MetaContextID(DirtyBitmapContext("bm0")); !ok || id != 2 {
		t.Errorf("MetaContextID(bm0) = %d, %v; want 2, true", id, ok)
	}
	if _, ok := c.MetaContextID("qemu:dirty-bitmap:missing"); ok {
		t.Error("missing context reported as selected")
	}
	if _, ok := c.MetaContextID(ContextBaseAllocation); ok {
		t.Error("unrequested context reported as selected")
	}
	if !c.Flags().CanTrim() || c.Flags().ReadOnly() || !c.Flags().CanMultiConn() {
		t.Errorf("flags %#x", c.Flags())
	}
}

func TestClient_HandshakeExportNameFallback(t *testing.T) {
	ex := defaultFakeExport()
	ex.noGo = true
	c := newFakeClient(t, ex, Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		return s.chunk(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset, pattern(int(r.Length), 1)))
	})
	if got := c.Export(); got.Size != 1<<20 || got.MinBlock != 1 || got.MaxPayload != 32<<20 {
		t.Errorf("export = %+v", got)
	}
	p := make([]byte, 100)
	if err := c.ReadAt(testCtx(t), p, 5); err != nil || !bytes.Equal(p, pattern(100, 1)) {
		t.Fatalf("ReadAt = %v", err)
	}
}

func TestClient_HandshakeNoStructured(t *testing.T) {
	ex := defaultFakeExport()
	ex.noStructured = true
	c := newFakeClient(t, ex, Options{MetaContexts: []string{ContextBaseAllocation}}, nil)
	if c.Export().StructuredReplies || len(c.Export().MetaContexts) != 0 {
		t.Fatalf("export = %+v", c.Export())
	}
	if _, err := c.BlockStatus(testCtx(t), 0, 0, 4096); !errors.Is(err, ErrNoMetaContext) {
		t.Fatalf("BlockStatus = %v, want ErrNoMetaContext", err)
	}
}

func TestClient_HandshakeUnknownExport(t *testing.T) {
	stream := handshakeStream(
		optReplyBytes(optStructuredReply, repAck, nil),
		optReplyBytes(optGo, repErrUnknown, []byte("export 'nope' not present")),
	)
	_, err := handshakeWith(t, stream, "nope", Options{})
	if !errors.Is(err, ErrUnknownExport) || !strings.Contains(err.Error(), "ERR_UNKNOWN") || !strings.Contains(err.Error(), "not present") {
		t.Fatalf("err = %v, want ErrUnknownExport with the server's message", err)
	}
}

// greeting returns a fixed newstyle greeting with the given flags.
func greeting(flags uint16) []byte {
	g := binary.BigEndian.AppendUint64(nil, nbdMagic)
	g = binary.BigEndian.AppendUint64(g, optsMagic)
	return binary.BigEndian.AppendUint16(g, flags)
}

func optReplyBytes(opt, typ uint32, payload []byte) []byte {
	var hb [optionReplyHeaderSize]byte
	h := optionReplyHeader{Option: opt, Type: typ, Length: uint32(len(payload))}
	h.encode(&hb)
	return append(hb[:], payload...)
}

func infoExportBytes(size uint64, flags Flags) []byte {
	p := binary.BigEndian.AppendUint16(nil, infoExport)
	p = binary.BigEndian.AppendUint64(p, size)
	return optReplyBytes(optGo, repInfo, binary.BigEndian.AppendUint16(p, uint16(flags)))
}

func infoBlockSizeBytes(lo, pref, hi uint32) []byte {
	p := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	p = binary.BigEndian.AppendUint32(p, lo)
	p = binary.BigEndian.AppendUint32(p, pref)
	return optReplyBytes(optGo, repInfo, binary.BigEndian.AppendUint32(p, hi))
}

func metaReplyBytes(id uint32, name string) []byte {
	return optReplyBytes(optSetMetaContext, repMetaContext, append(binary.BigEndian.AppendUint32(nil, id), name...))
}

// handshakeStream is a greeting followed by option replies.
func handshakeStream(replies ...[]byte) []byte {
	return bytes.Join(append([][]byte{greeting(handshakeFixedNewstyle | handshakeNoZeroes)}, replies...), nil)
}

// handshakeWith runs NewClient against a server that sends stream (and
// then EOF) whatever the client says.
func handshakeWith(t testing.TB, stream []byte, export string, opts Options) (*Client, error) {
	t.Helper()
	c, err := NewClient(testCtx(t), newStreamConn(stream), export, opts)
	if c != nil {
		c.Close()
	}
	return c, err
}

func TestClient_HandshakeErrors(t *testing.T) {
	okGo := [][]byte{infoBlockSizeBytes(1, 4096, 32<<20), infoExportBytes(1<<20, FlagHasFlags), optReplyBytes(optGo, repAck, nil)}
	ack := optReplyBytes(optStructuredReply, repAck, nil)
	oldstyle := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, nbdMagic), oldstyleMagic)
	tests := []struct {
		name   string
		stream []byte
		opts   Options
		want   string
	}{
		{"not nbd", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), Options{}, "not an NBD server"},
		{"oldstyle", append(oldstyle, make([]byte, 16)...), Options{}, "oldstyle"},
		{"not fixed newstyle", greeting(0), Options{}, "fixed newstyle"},
		{"early close", greeting(handshakeFixedNewstyle), Options{}, "EOF"},
		{"bad reply magic", append(greeting(handshakeFixedNewstyle), make([]byte, 20)...), Options{}, "bad option reply magic"},
		{"wrong option echo", handshakeStream(optReplyBytes(optGo, repAck, nil)), Options{}, "answers option GO"},
		{"huge option reply", handshakeStream(ack, optReplyBytes(optGo, repInfo, make([]byte, maxOptionReply+1))), Options{}, "exceeds"},
		{"ack with payload", handshakeStream(optReplyBytes(optStructuredReply, repAck, []byte{1})), Options{}, "ACK with 1 bytes"},
		{"missing INFO_EXPORT", handshakeStream(ack, optReplyBytes(optGo, repAck, nil)), Options{}, "without INFO_EXPORT"},
		{"short INFO_EXPORT", handshakeStream(ack, optReplyBytes(optGo, repInfo, []byte{0, 0, 1})), Options{}, "INFO_EXPORT of 3 bytes"},
		{"no HAS_FLAGS", handshakeStream(ack, infoExportBytes(1<<20, FlagReadOnly)), Options{}, "HAS_FLAGS"},
		{"size too large", handshakeStream(ack, infoExportBytes(1<<63, FlagHasFlags)), Options{}, "too large"},
		{"min block not pow2", handshakeStream(ack, infoBlockSizeBytes(3, 4096, 32<<20)), Options{}, "minimum block size 3"},
		{"max below min", handshakeStream(ack, infoBlockSizeBytes(4096, 4096, 512)), Options{}, "maximum payload 512"},
		{"size unaligned", handshakeStream(ack, infoBlockSizeBytes(4096, 4096, 32<<20), infoExportBytes(1000, FlagHasFlags), optReplyBytes(optGo, repAck, nil)), Options{}, "not a multiple"},
		{"unrequested context", handshakeStream(ack, metaReplyBytes(1, "qemu:dirty-bitmap:other")), Options{MetaContexts: []string{"qemu:dirty-bitmap:bm0"}}, `context "qemu:dirty-bitmap:other", which was not requested`},
		{"duplicate context", handshakeStream(ack, metaReplyBytes(1, "base:allocation"), metaReplyBytes(1, "base:allocation")), Options{MetaContexts: []string{"base:allocation"}}, "duplicates"},
		{"policy", handshakeStream(ack, optReplyBytes(optGo, repErrPolicy, []byte("go away\x00\n"))), Options{}, "ERR_POLICY: go away??"},
		{"unexpected reply type", handshakeStream(ack, optReplyBytes(optGo, repServer, nil)), Options{}, "unexpected reply SERVER"},
		{"duplicate info", handshakeStream(append(append([][]byte{ack}, okGo[:2]...), okGo[1])...), Options{}, "INFO_EXPORT sent twice"},
		{"bad query", nil, Options{MetaContexts: []string{""}}, "meta context query"},
		{"duplicate query", nil, Options{MetaContexts: []string{"base:allocation", "base:allocation"}}, "requested twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := handshakeWith(t, tt.stream, "drive-scsi0", tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	t.Run("ok", func(t *testing.T) {
		c, err := handshakeWith(t, handshakeStream(append([][]byte{ack}, okGo...)...), "drive-scsi0", Options{})
		if err != nil || c.Size() != 1<<20 {
			t.Fatalf("handshake = %v", err)
		}
	})
}

func TestClient_ReadStructured(t *testing.T) {
	data := pattern(64<<10, 3)
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		// Out of order: tail data, a hole in the middle, then the head.
		return s.write(
			chunkBytes(0, chunkOffsetData, r.Cookie, dataPayload(r.Offset+40<<10, data[40<<10:])),
			chunkBytes(0, chunkOffsetHole, r.Cookie, holePayload(r.Offset+10<<10, 30<<10)),
			chunkBytes(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset, data[:10<<10])),
		)
	})
	p := bytes.Repeat([]byte{0xee}, 64<<10)
	if err := c.ReadAt(testCtx(t), p, 4096); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[10<<10 : 40<<10])
	if !bytes.Equal(p, want) {
		t.Fatal("data differs")
	}
}

func TestClient_ReadSimple(t *testing.T) {
	ex := defaultFakeExport()
	ex.noStructured = true
	data := pattern(8192, 9)
	c := newFakeClient(t, ex, Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		if err := s.simple(r.Cookie, 0, data); err != nil {
			return err
		}
		r, err = s.expect(cmdRead)
		if err != nil {
			return err
		}
		return s.simple(r.Cookie, uint32(EIO), nil)
	})
	p := make([]byte, 8192)
	if err := c.ReadAt(testCtx(t), p, 0); err != nil || !bytes.Equal(p, data) {
		t.Fatalf("ReadAt = %v", err)
	}
	err := c.ReadAt(testCtx(t), p, 0)
	var se *ServerError
	if !errors.As(err, &se) || se.Errno != EIO || se.Command != "READ" {
		t.Fatalf("err = %v, want READ EIO", err)
	}
}

func TestClient_ConcurrentReads(t *testing.T) {
	const n = 16
	const size = 4096
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		var reqs []requestHeader
		for range n {
			r, err := s.expect(cmdRead)
			if err != nil {
				return err
			}
			reqs = append(reqs, r)
		}
		// First halves of all replies, then second halves in reverse.
		for _, r := range reqs {
			d := pattern(size, byte(r.Offset/size))
			if err := s.chunk(0, chunkOffsetData, r.Cookie, dataPayload(r.Offset, d[:size/2])); err != nil {
				return err
			}
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			r := reqs[i]
			d := pattern(size, byte(r.Offset/size))
			if err := s.chunk(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset+size/2, d[size/2:])); err != nil {
				return err
			}
		}
		return nil
	})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			p := make([]byte, size)
			errs[i] = c.ReadAt(ctx, p, int64(i*size))
			if errs[i] == nil && !bytes.Equal(p, pattern(size, byte(i))) {
				errs[i] = errors.New("wrong data")
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("read %d: %v", i, err)
		}
	}
}

func TestClient_ServerErrorKeepsConnection(t *testing.T) {
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		// Data, then an error chunk, then DONE: the read failed.
		if err := s.write(
			chunkBytes(0, chunkOffsetData, r.Cookie, dataPayload(r.Offset, make([]byte, 512))),
			chunkBytes(0, chunkErrorOffset, r.Cookie, binary.BigEndian.AppendUint64(errorPayload(uint32(EIO), "disk on fire"), r.Offset+512)),
			chunkBytes(replyFlagDone, chunkNone, r.Cookie, nil),
		); err != nil {
			return err
		}
		r, err = s.expect(cmdRead)
		if err != nil {
			return err
		}
		if err := s.chunk(replyFlagDone, 0x8123, r.Cookie, []byte("odd")); err != nil {
			return err
		}
		r, err = s.expect(cmdRead)
		if err != nil {
			return err
		}
		return s.chunk(replyFlagDone, chunkOffsetHole, r.Cookie, holePayload(r.Offset, r.Length))
	})
	p := make([]byte, 1024)
	err := c.ReadAt(testCtx(t), p, 0)
	var se *ServerError
	if !errors.As(err, &se) || se.Errno != EIO || se.Offset != 512 || se.Message != "disk on fire" {
		t.Fatalf("err = %#v", err)
	}
	if err := c.ReadAt(testCtx(t), p, 0); !errors.As(err, &se) || !strings.Contains(err.Error(), "unknown error chunk type 0x8123") {
		t.Fatalf("err = %v, want unknown error chunk", err)
	}
	p[0] = 1
	if err := c.ReadAt(testCtx(t), p, 0); err != nil || p[0] != 0 {
		t.Fatalf("read after server errors = %v", err)
	}
}

// lie is one dishonest reply to one request.
type lie struct {
	name  string
	op    string // "read" (1024 bytes at 4096) or "status" (context 2, 8192 at 4096)
	reply func(r requestHeader) []byte
	want  string
}

func TestClient_LyingPeer(t *testing.T) {
	const off = 4096
	chunk := chunkBytes
	data := func(c uint64, flags uint16, o uint64, n int) []byte {
		return chunk(flags, chunkOffsetData, c, dataPayload(o, make([]byte, n)))
	}
	done := replyFlagDone
	lies := []lie{
		{"bad magic", "read", func(r requestHeader) []byte { return make([]byte, 20) }, "bad reply magic 0x00000000"},
		{"extended magic", "read", func(r requestHeader) []byte { return binary.BigEndian.AppendUint32(nil, extendedReplyMagic) }, "extended reply header"},
		{"unknown cookie", "read", func(r requestHeader) []byte { return data(r.Cookie+1, done, off, 1024) }, "unknown cookie 2"},
		{"unknown cookie simple", "read", func(r requestHeader) []byte {
			return binary.BigEndian.AppendUint64([]byte{0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0}, 77)
		}, "unknown cookie 77"},
		{"data before request", "read", func(r requestHeader) []byte { return data(r.Cookie, done, off-1, 1024) }, "OFFSET_DATA chunk [4095,+1024) outside the request"},
		{"data past request", "read", func(r requestHeader) []byte { return data(r.Cookie, done, off+1, 1024) }, "outside the request"},
		{"data offset overflow", "read", func(r requestHeader) []byte { return data(r.Cookie, done, 1<<64-8, 16) }, "outside the request"},
		{"data longer than request", "read", func(r requestHeader) []byte { return data(r.Cookie, done, off, 1025) }, "OFFSET_DATA chunk length 1033 exceeds the request length"},
		{"huge data length", "read", func(r requestHeader) []byte {
			return binary.BigEndian.AppendUint32(chunk(done, chunkOffsetData, r.Cookie, nil)[:16], 0xffffffff)
		}, "OFFSET_DATA chunk length 4294967295 exceeds"},
		{"data too short", "read", func(r requestHeader) []byte { return chunk(done, chunkOffsetData, r.Cookie, dataPayload(off, nil)) }, "want at least 9"},
		{"overlapping data", "read", func(r requestHeader) []byte {
			return append(data(r.Cookie, 0, off, 600), data(r.Cookie, done, off+512, 512)...)
		}, "[4608,+512) overlaps data already received"},
		{"duplicated data", "read", func(r requestHeader) []byte {
			return append(data(r.Cookie, 0, off, 512), data(r.Cookie, done, off, 512)...)
		}, "overlaps data already received"},
		{"hole overlaps data", "read", func(r requestHeader) []byte {
			return append(data(r.Cookie, 0, off+512, 512), chunk(done, chunkOffsetHole, r.Cookie, holePayload(off, 1000))...)
		}, "OFFSET_HOLE chunk [4096,+1000) overlaps"},
		{"incomplete", "read", func(r requestHeader) []byte { return data(r.Cookie, done, off, 1000) }, "reply ends after 1000 of 1024 bytes"},
		{"gap", "read", func(r requestHeader) []byte {
			return append(data(r.Cookie, 0, off, 500), data(r.Cookie, done, off+524, 500)...)
		}, "reply ends after 1000 of 1024 bytes"},
		{"hole wrong length", "read", func(r requestHeader) []byte { return chunk(done, chunkOffsetHole, r.Cookie, make([]byte, 16)) }, "OFFSET_HOLE chunk length 16, want 12"},
		{"hole size 0", "read", func(r requestHeader) []byte { return chunk(done, chunkOffsetHole, r.Cookie, holePayload(off, 0)) }, "OFFSET_HOLE chunk of size 0"},
		{"hole outside", "read", func(r requestHeader) []byte { return chunk(done, chunkOffsetHole, r.Cookie, holePayload(off, 4096)) }, "outside the request"},
		{"none without done", "read", func(r requestHeader) []byte { return chunk(0, chunkNone, r.Cookie, nil) }, "NONE chunk without the DONE flag"},
		{"none with payload", "read", func(r requestHeader) []byte { return chunk(done, chunkNone, r.Cookie, []byte{1}) }, "NONE chunk with length 1"},
		{"unknown chunk type", "read", func(r requestHeader) []byte { return chunk(done, 77, r.Cookie, nil) }, "unknown chunk type 0x004d"},
		{"huge error chunk", "read", func(r requestHeader) []byte {
			return binary.BigEndian.AppendUint32(chunk(done, 0x8077, r.Cookie, nil)[:16], 1<<30)
		}, "error chunk type 0x8077 with length 1073741824"},
		{"status chunk to read", "read", func(r requestHeader) []byte {
			return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 1024, 0))
		}, "answers no BLOCK_STATUS"},
		{"simple data reply", "read", func(r requestHeader) []byte {
			var b [simpleReplyHeaderSize]byte
			h := simpleReplyHeader{Cookie: r.Cookie}
			h.encode(&b)
			return b[:]
		}, "simple reply with data, but structured replies were negotiated"},
		{"simple after chunk", "read", func(r requestHeader) []byte {
			var b [simpleReplyHeaderSize]byte
			h := simpleReplyHeader{Cookie: r.Cookie, Error: 5}
			h.encode(&b)
			return append(data(r.Cookie, 0, off, 512), b[:]...)
		}, "simple reply after structured chunks"},
		{"error code 0", "read", func(r requestHeader) []byte { return chunk(done, chunkError, r.Cookie, errorPayload(0, "")) }, "ERROR chunk with error code 0"},
		{"error message overruns", "read", func(r requestHeader) []byte {
			p := errorPayload(5, "abc")
			return chunk(done, chunkError, r.Cookie, p[:len(p)-1])
		}, "does not match its message length 3"},
		{"error chunk too short", "read", func(r requestHeader) []byte { return chunk(done, chunkError, r.Cookie, []byte{0, 0, 0, 5}) }, "ERROR chunk length 4 out of range"},
		{"error offset outside", "read", func(r requestHeader) []byte {
			return chunk(done, chunkErrorOffset, r.Cookie, binary.BigEndian.AppendUint64(errorPayload(5, "x"), off+1024))
		}, "ERROR_OFFSET offset 5120 outside the request"},
		{"early close mid data", "read", func(r requestHeader) []byte { return data(r.Cookie, done, off, 1024)[:100] }, "unexpected EOF"},
		{"early close", "read", func(r requestHeader) []byte { return nil }, "server closed the connection with 1 requests pending"},

		{"zero-length extent", "status", func(r requestHeader) []byte {
			return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 4096, 1, 0, 0))
		}, "extent 1 has length 0"},
		{"extents past end", "status", func(r requestHeader) []byte {
			return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 4096, 1, 4096, 0, 512, 1))
		}, "extent 2 starts at 12288, past the end of the request"},
		{"extent past end after long one", "status", func(r requestHeader) []byte {
			return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 1<<31, 1, 512, 0))
		}, "extent 1 starts at 12288"},
		{"unnegotiated context", "status", func(r requestHeader) []byte {
			return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(0, 8192, 0))
		}, "meta context id 0, which was not negotiated"},
		{"duplicate context chunk", "status", func(r requestHeader) []byte {
			return append(chunk(0, chunkBlockStatus, r.Cookie, statusPayload(2, 8192, 0)), chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 8192, 0))...)
		}, "second BLOCK_STATUS chunk for meta context id 2"},
		{"status length not 4+8n", "status", func(r requestHeader) []byte { return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2, 8192)) }, "BLOCK_STATUS chunk length 8, want 4+8n"},
		{"status without extents", "status", func(r requestHeader) []byte { return chunk(done, chunkBlockStatus, r.Cookie, statusPayload(2)) }, "BLOCK_STATUS chunk length 4, want 4+8n"},
		{"huge extent count", "status", func(r requestHeader) []byte {
			return binary.BigEndian.AppendUint32(chunk(done, chunkBlockStatus, r.Cookie, nil)[:16], 4+8*(maxExtentsPerChunk+1))
		}, "with 1048577 extents, more than 1048576"},
		{"huge extent count sent slowly", "status", func(r requestHeader) []byte {
			b := binary.BigEndian.AppendUint32(chunk(done, chunkBlockStatus, r.Cookie, nil)[:16], 4+8*maxExtentsPerChunk)
			return append(b, statusPayload(2, 1, 0, 1, 0)...)
		}, "unexpected EOF"},
		{"done without requested context", "status", func(r requestHeader) []byte { return chunk(done, chunkNone, r.Cookie, nil) }, "reply ends without extents for meta context 2"},
		{"simple status reply", "status", func(r requestHeader) []byte {
			var b [simpleReplyHeaderSize]byte
			h := simpleReplyHeader{Cookie: r.Cookie}
			h.encode(&b)
			return b[:]
		}, "simple success reply carries no extents"},
		{"data chunk to status", "status", func(r requestHeader) []byte { return data(r.Cookie, done, off, 16) }, "OFFSET_DATA chunk answers no READ"},
	}
	for _, l := range lies {
		t.Run(l.name, func(t *testing.T) { testLie(t, l) })
	}
}

func testLie(t *testing.T, l lie) {
	c := newFakeClient(t, defaultFakeExport(), Options{MetaContexts: []string{DirtyBitmapContext("bm0")}}, func(s *fakeServer) error {
		r, err := s.readRequest()
		if err != nil {
			return err
		}
		if err := s.write(l.reply(r)); err != nil {
			return err
		}
		return s.conn.Close() // the fuzz-style end of the stream
	})
	op := func() error {
		if l.op == "status" {
			_, err := c.BlockStatus(testCtx(t), 2, 4096, 8192)
			return err
		}
		return c.ReadAt(testCtx(t), make([]byte, 1024), 4096)
	}
	err := op()
	if err == nil || !strings.Contains(err.Error(), l.want) {
		t.Fatalf("err = %v, want it to mention %q", err, l.want)
	}
	var se *ServerError
	if errors.As(err, &se) {
		t.Fatalf("err = %v is a server error, want a connection failure", err)
	}
	// The connection is dead: a later call fails with the same error.
	if err2 := op(); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("later call: %v, want %v", err2, err)
	}
}

func TestClient_EarlyCloseFailsAllWaiters(t *testing.T) {
	const n = 5
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		for range n {
			if _, err := s.expect(cmdRead); err != nil {
				return err
			}
		}
		return s.conn.Close()
	})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.ReadAt(testCtx(t), make([]byte, 512), int64(i)*512) })
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "server closed the connection") || !errors.Is(err, io.EOF) {
			t.Errorf("read %d: %v, want server closed the connection", i, err)
		}
	}
}

func TestClient_CancelAbandonsRequest(t *testing.T) {
	release := make(chan struct{})
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		<-release
		// The late reply is read and dropped; the next request works.
		if err := s.chunk(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset, pattern(512, 1))); err != nil {
			return err
		}
		r, err = s.expect(cmdRead)
		if err != nil {
			return err
		}
		return s.chunk(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset, pattern(512, 2)))
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	p := bytes.Repeat([]byte{0xee}, 512)
	errc := make(chan error)
	go func() { errc <- c.ReadAt(ctx, p, 0) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	close(release)
	q := make([]byte, 512)
	if err := c.ReadAt(testCtx(t), q, 0); err != nil || !bytes.Equal(q, pattern(512, 2)) {
		t.Fatalf("next read = %v", err)
	}
	if !bytes.Equal(p, bytes.Repeat([]byte{0xee}, 512)) {
		t.Fatal("abandoned buffer was written to")
	}
}

func TestClient_CancelMidDataClosesConnection(t *testing.T) {
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		r, err := s.expect(cmdRead)
		if err != nil {
			return err
		}
		b := chunkBytes(replyFlagDone, chunkOffsetData, r.Cookie, dataPayload(r.Offset, make([]byte, 4096)))
		if err := s.write(b[:100]); err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, s.br) // stall until the client hangs up
		return err
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error)
	go func() { errc <- c.ReadAt(ctx, make([]byte, 4096), 0) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	err := c.ReadAt(testCtx(t), make([]byte, 512), 0)
	if err == nil || !strings.Contains(err.Error(), "abandoned while its data was arriving") {
		t.Fatalf("later read = %v, want the connection closed", err)
	}
}

func TestClient_Trim(t *testing.T) {
	t.Run("read-only", func(t *testing.T) {
		ex := defaultFakeExport()
		ex.flags |= FlagReadOnly
		c := newFakeClient(t, ex, Options{}, nil)
		if err := c.Trim(testCtx(t), 0, 4096); !errors.Is(err, ErrTrimUnsupported) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not advertised", func(t *testing.T) {
		ex := defaultFakeExport()
		ex.flags &^= FlagSendTrim
		c := newFakeClient(t, ex, Options{}, nil)
		if err := c.Trim(testCtx(t), 0, 4096); !errors.Is(err, ErrTrimUnsupported) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ok and refused", func(t *testing.T) {
		ex := defaultFakeExport()
		ex.size = 3 << 30
		ex.blockSize = [3]uint32{512, 4096, 32 << 20}
		var got []requestHeader
		c := newFakeClient(t, ex, Options{}, func(s *fakeServer) error {
			for range 2 {
				r, err := s.expect(cmdTrim)
				if err != nil {
					return err
				}
				got = append(got, r)
				if err := s.simple(r.Cookie, 0, nil); err != nil {
					return err
				}
			}
			r, err := s.expect(cmdTrim)
			if err != nil {
				return err
			}
			return s.chunk(replyFlagDone, chunkError, r.Cookie, errorPayload(uint32(EPERM), "read-only"))
		})
		if err := c.Trim(testCtx(t), 512, 1<<30+1024); err != nil {
			t.Fatal(err)
		}
		want := []requestHeader{{Type: cmdTrim, Cookie: 1, Offset: 512, Length: 1 << 30}, {Type: cmdTrim, Cookie: 2, Offset: 1<<30 + 512, Length: 1024}}
		if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("requests = %+v, want %+v", got, want)
		}
		err := c.Trim(testCtx(t), 0, 512)
		var se *ServerError
		if !errors.As(err, &se) || se.Errno != EPERM || se.Command != "TRIM" {
			t.Fatalf("err = %v, want TRIM EPERM", err)
		}
	})
}

func TestClient_InvalidRequests(t *testing.T) {
	ex := defaultFakeExport()
	ex.blockSize = [3]uint32{512, 4096, 64 << 10}
	c := newFakeClient(t, ex, Options{MetaContexts: []string{ContextBaseAllocation}}, func(s *fakeServer) error {
		_, err := s.expect(cmdDisc) // any other request is an error
		if err == nil {
			err = io.EOF
		}
		return err
	})
	ctx := testCtx(t)
	for name, err := range map[string]error{
		"read past end":   c.ReadAt(ctx, make([]byte, 1024), 1<<20-512),
		"read negative":   c.ReadAt(ctx, make([]byte, 512), -512),
		"read unaligned":  c.ReadAt(ctx, make([]byte, 512), 100),
		"read too long":   c.ReadAt(ctx, make([]byte, 128<<10), 0),
		"status len 0":    func() error { _, err := c.BlockStatus(ctx, 0, 0, 0); return err }(),
		"status past end": func() error { _, err := c.BlockStatus(ctx, 0, 1<<20, 1); return err }(),
		"trim unaligned":  c.Trim(ctx, 0, 100),
		"trim overflow":   c.Trim(ctx, 1<<62, 1<<62),
		"extents past":    func() error { _, err := Extents(ctx, c, 0, 1, 1<<20); return err }(),
		"extents overflow": func() error {
			_, err := Extents(ctx, c, 0, 1<<62, 1<<62)
			return err
		}(),
	} {
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
	if _, err := c.BlockStatus(ctx, 7, 0, 512); !errors.Is(err, ErrNoMetaContext) {
		t.Errorf("unknown context: %v", err)
	}
}

func TestClient_Close(t *testing.T) {
	gotDisc := make(chan requestHeader, 1)
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		r, err := s.readRequest()
		if err != nil {
			return err
		}
		gotDisc <- r
		return nil
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-gotDisc; r.Type != cmdDisc || r.Offset != 0 || r.Length != 0 {
		t.Fatalf("got %+v, want DISC", r)
	}
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestExtents_LoopsAndMerges(t *testing.T) {
	ex := defaultFakeExport()
	ex.size = 3<<30 + 1<<20
	var reqs []requestHeader
	c := newFakeClient(t, ex, Options{MetaContexts: []string{DirtyBitmapContext("bm0")}}, func(s *fakeServer) error {
		// Answer each request with at most two 256 MiB extents: clean,
		// then dirty, overshooting the request on the last one.
		for {
			r, err := s.expect(cmdBlockStatus)
			if err != nil {
				return err
			}
			reqs = append(reqs, r)
			var ext []uint32
			if r.Offset < 1<<30 {
				ext = []uint32{256 << 20, 0, 256 << 20, 1}
			} else {
				ext = []uint32{2 << 30, 1}
			}
			if err := s.chunk(replyFlagDone, chunkBlockStatus, r.Cookie, statusPayload(2, ext...)); err != nil {
				return err
			}
		}
	})
	got, err := Extents(testCtx(t), c, 2, 0, int64(ex.size))
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{0, 256 << 20, 0}, {256 << 20, 256 << 20, 1}, {512 << 20, 256 << 20, 0},
		{768 << 20, int64(ex.size) - 768<<20, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("extents = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("extents = %v, want %v", got, want)
		}
	}
	if len(reqs) != 5 || reqs[2].Offset != 1<<30 || reqs[2].Length != 1<<30 || reqs[4].Length != 1<<20 {
		t.Fatalf("requests = %+v", reqs)
	}
}

func TestSpanSet(t *testing.T) {
	var ss spanSet
	steps := []struct {
		start, end uint32
		ok         bool
	}{
		{10, 20, true}, {30, 40, true}, {20, 30, true}, {0, 10, true}, {5, 6, false},
		{50, 60, true}, {39, 41, false}, {45, 50, true}, {40, 45, true}, {60, 61, true}, {59, 70, false},
	}
	for _, s := range steps {
		if got := ss.add(s.start, s.end); got != s.ok {
			t.Fatalf("add(%d,%d) = %v, want %v (set %v)", s.start, s.end, got, s.ok, ss.s)
		}
	}
	if len(ss.s) != 1 || ss.s[0] != (span{0, 61}) || ss.covered != 61 {
		t.Fatalf("set = %v covered %d, want [0,61)", ss.s, ss.covered)
	}
}

func TestParseURI(t *testing.T) {
	tests := []struct {
		uri, network, addr, export, err string
	}{
		{uri: "nbd://127.0.0.1/drive-scsi0", network: "tcp", addr: "127.0.0.1:10809", export: "drive-scsi0"},
		{uri: "nbd://[::1]:1234/", network: "tcp", addr: "[::1]:1234"},
		{uri: "nbd+unix:///drive-scsi0?socket=/run/x%20y.sock", network: "unix", addr: "/run/x y.sock", export: "drive-scsi0"},
		{uri: "nbd+unix:///e", err: "socket=PATH"},
		{uri: "nbd:///e", err: "no host"},
		{uri: "nbds://h/e", err: "TLS"},
		{uri: "http://h/e", err: "scheme"},
	}
	for _, tt := range tests {
		n, a, e, err := parseURI(tt.uri)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: err %v, want %q", tt.uri, err, tt.err)
			}
			continue
		}
		if err != nil || n != tt.network || a != tt.addr || e != tt.export {
			t.Errorf("%s: %s %s %q %v", tt.uri, n, a, e, err)
		}
	}
}

func TestClient_CancelDuringWrite(t *testing.T) {
	release := make(chan struct{})
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		<-release // read nothing: the client's request write blocks
		return io.EOF
	})
	defer close(release)
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error)
	go func() { errc <- c.ReadAt(ctx, make([]byte, 512), 0) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "interrupted while being sent") || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want the write interrupted", err)
	}
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "interrupted while being sent") {
		t.Fatalf("later read = %v, want the connection closed", err)
	}
}

func TestClient_ClosePendingCallsFail(t *testing.T) {
	arrived := make(chan struct{})
	c := newFakeClient(t, defaultFakeExport(), Options{}, func(s *fakeServer) error {
		if _, err := s.expect(cmdRead); err != nil {
			return err
		}
		close(arrived)
		_, err := s.expect(cmdDisc)
		return err
	})
	errc := make(chan error)
	go func() { errc <- c.ReadAt(testCtx(t), make([]byte, 512), 0) }()
	<-arrived
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending read: %v, want ErrClosed", err)
	}
}
