package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The fuzz targets feed arbitrary server bytes to the client and check
// that it never panics or hangs, and that whatever it accepts is exactly
// what the bytes imply. Seeds live in testdata/fuzz; regenerate them with
// BACKSTOP_NBD_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds.

// FuzzHandshake: the whole server side of a handshake is fuzz input.
func FuzzHandshake(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte) {
		queries := []string{ContextBaseAllocation, DirtyBitmapContext("bm0")}
		c, err := NewClient(testCtx(t), newStreamConn(stream), "drive-scsi0", Options{MetaContexts: queries})
		if err != nil {
			return
		}
		defer c.Close()
		ex := c.Export()
		switch {
		case ex.Size < 0 || ex.Flags&FlagHasFlags == 0:
			t.Fatalf("accepted size %d flags %#x", ex.Size, ex.Flags)
		case bits.OnesCount32(ex.MinBlock) != 1 || ex.Size%int64(ex.MinBlock) != 0:
			t.Fatalf("accepted minimum block %d for size %d", ex.MinBlock, ex.Size)
		case c.MaxRead() <= 0 || c.MaxRead() > maxPayload || c.MaxRead()%int(ex.MinBlock) != 0:
			t.Fatalf("MaxRead %d", c.MaxRead())
		case !ex.StructuredReplies && len(ex.MetaContexts) > 0:
			t.Fatal("meta contexts without structured replies")
		}
		for i, mc := range ex.MetaContexts {
			if mc.Name != queries[0] && mc.Name != queries[1] {
				t.Fatalf("accepted unrequested context %q", mc.Name)
			}
			for _, o := range ex.MetaContexts[:i] {
				if o.Name == mc.Name || o.ID == mc.ID {
					t.Fatalf("accepted duplicate contexts %+v", ex.MetaContexts)
				}
			}
		}
	})
}

// fuzzReads are the two concurrent reads of FuzzReadReply.
var fuzzReads = [2]int64{4096, 8192}

// FuzzReadReply: after a valid handshake, the server answers two
// concurrent READs of n bytes, cookie 1 at 4096 and cookie 2 at 8192,
// with arbitrary bytes and hangs up.
func FuzzReadReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, structured bool, n uint16, reply []byte) {
		if n == 0 {
			n = 1
		}
		ex := defaultFakeExport()
		ex.noStructured = !structured
		arrived := make(chan struct{}, len(fuzzReads))
		c := newFakeClient(t, ex, Options{}, func(s *fakeServer) error {
			for i := range fuzzReads {
				r, err := s.expect(cmdRead)
				if err != nil {
					return err
				}
				if r.Cookie != uint64(i+1) || int64(r.Offset) != fuzzReads[i] {
					return fmt.Errorf("fake server: request %d is cookie %d at %d", i, r.Cookie, r.Offset)
				}
				arrived <- struct{}{}
			}
			if err := s.write(reply); err != nil {
				return err
			}
			return s.conn.Close()
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var bufs [2][]byte
		var errs [2]error
		var wg sync.WaitGroup
		for i, off := range fuzzReads {
			bufs[i] = bytes.Repeat([]byte{0xa5}, int(n))
			wg.Go(func() { errs[i] = c.ReadAt(ctx, bufs[i], off) })
			select { // send in a fixed order, so cookies are fixed
			case <-arrived:
			case <-ctx.Done():
			}
		}
		wg.Wait()
		if ctx.Err() != nil {
			t.Fatal("ReadAt hung")
		}
		for i, off := range fuzzReads {
			if errs[i] != nil {
				continue
			}
			want, ok := oracleRead(reply, structured, uint64(i+1), uint64(off), int(n))
			if !ok {
				t.Fatalf("read %d accepted a reply the oracle rejects", i)
			}
			if !bytes.Equal(bufs[i], want) {
				t.Fatalf("read %d: got %x, want %x", i, bufs[i], want)
			}
		}
	})
}

// oracleRead is a deliberately naive decoder of one READ reply in stream:
// it applies the chunks for cookie in order and says whether they form a
// complete, non-overlapping, in-bounds successful reply.
func oracleRead(stream []byte, structured bool, cookie, off uint64, n int) ([]byte, bool) {
	want := make([]byte, n)
	covered := make([]bool, n)
	for len(stream) >= 4 {
		switch binary.BigEndian.Uint32(stream) {
		case simpleReplyMagic:
			if len(stream) < 16 {
				return nil, false
			}
			errno, c := binary.BigEndian.Uint32(stream[4:]), binary.BigEndian.Uint64(stream[8:])
			stream = stream[16:]
			if c == cookie {
				if errno != 0 || structured || len(stream) < n {
					return nil, false
				}
				return stream[:n], true
			}
			if errno == 0 && !structured {
				if len(stream) < n {
					return nil, false
				}
				stream = stream[n:] // the other read's data (same length)
			}
		case structuredReplyMagic:
			if len(stream) < 20 {
				return nil, false
			}
			flags, typ := binary.BigEndian.Uint16(stream[4:]), binary.BigEndian.Uint16(stream[6:])
			c, length := binary.BigEndian.Uint64(stream[8:]), binary.BigEndian.Uint32(stream[16:])
			if uint64(len(stream)-20) < uint64(length) {
				return nil, false
			}
			payload := stream[20 : 20+length]
			stream = stream[20+length:]
			if c != cookie {
				continue
			}
			if !oracleApply(typ, payload, off, want, covered) {
				return nil, false
			}
			if flags&replyFlagDone != 0 {
				for _, b := range covered {
					if !b {
						return nil, false
					}
				}
				return want, true
			}
		default:
			return nil, false
		}
	}
	return nil, false
}

func oracleApply(typ uint16, p []byte, off uint64, want []byte, covered []bool) bool {
	var start uint64
	var data []byte
	switch typ {
	case chunkNone:
		return len(p) == 0
	case chunkOffsetData:
		if len(p) <= 8 {
			return false
		}
		start, data = binary.BigEndian.Uint64(p), p[8:]
	case chunkOffsetHole:
		if len(p) != 12 {
			return false
		}
		start, data = binary.BigEndian.Uint64(p), make([]byte, binary.BigEndian.Uint32(p[8:]))
	default:
		return false
	}
	if start < off || start-off > uint64(len(want)) || uint64(len(data)) > uint64(len(want))-(start-off) {
		return false
	}
	rel := int(start - off)
	for i := range data {
		if covered[rel+i] {
			return false
		}
		covered[rel+i] = true
	}
	copy(want[rel:], data)
	return true
}

// FuzzBlockStatusReply: after a valid handshake selecting contexts 0 and
// 2, the server answers BLOCK_STATUS(context 2, [4096, +65536)) with
// arbitrary bytes and hangs up.
func FuzzBlockStatusReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, reply []byte) {
		const off, length = 4096, 65536
		opts := Options{MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("bm0")}}
		c := newFakeClient(t, defaultFakeExport(), opts, func(s *fakeServer) error {
			if _, err := s.expect(cmdBlockStatus); err != nil {
				return err
			}
			if err := s.write(reply); err != nil {
				return err
			}
			return s.conn.Close()
		})
		exts, err := c.BlockStatus(testCtx(t), 2, off, length)
		if err != nil {
			return
		}
		pos := int64(off)
		for _, e := range exts {
			if e.Offset != pos || e.Length <= 0 || e.Length > off+length-pos {
				t.Fatalf("accepted extents %v", exts)
			}
			pos += e.Length
		}
		if len(exts) == 0 {
			t.Fatal("accepted an empty extent list")
		}
	})
}

// fuzzSeeds returns the committed seed inputs, per target.
func fuzzSeeds() map[string][][]any {
	ack := optReplyBytes(optStructuredReply, repAck, nil)
	goOK := bytes.Join([][]byte{
		infoBlockSizeBytes(1, 4096, 32<<20), infoExportBytes(1<<20, FlagHasFlags|FlagSendTrim),
		optReplyBytes(optGo, repAck, nil),
	}, nil)
	meta := bytes.Join([][]byte{
		metaReplyBytes(0, ContextBaseAllocation), metaReplyBytes(2, DirtyBitmapContext("bm0")),
		optReplyBytes(optSetMetaContext, repAck, nil),
	}, nil)
	data := func(c uint64, flags uint16, off uint64, n int, seed byte) []byte {
		return chunkBytes(flags, chunkOffsetData, c, dataPayload(off, pattern(n, seed)))
	}
	hole := func(c uint64, flags uint16, off uint64, n uint32) []byte {
		return chunkBytes(flags, chunkOffsetHole, c, holePayload(off, n))
	}
	done := replyFlagDone
	simple := func(c uint64, errno uint32) []byte {
		var b [simpleReplyHeaderSize]byte
		h := simpleReplyHeader{Error: errno, Cookie: c}
		h.encode(&b)
		return b[:]
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return map[string][][]any{
		"FuzzHandshake": {
			{handshakeStream(ack, meta, goOK)},
			{handshakeStream(ack, optReplyBytes(optSetMetaContext, repAck, nil), goOK)},
			{handshakeStream(optReplyBytes(optStructuredReply, repErrUnsup, nil), goOK)},
			{handshakeStream(ack, meta, optReplyBytes(optGo, repErrUnsup, nil), binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(nil, 1<<20), 1))},
			{handshakeStream(ack, meta, optReplyBytes(optGo, repErrUnknown, []byte("no such export")))},
			{handshakeStream(ack, meta, infoBlockSizeBytes(512, 4096, 1<<20), infoExportBytes(1<<20, 3), optReplyBytes(optGo, repInfo, []byte{0, 2, 'h', 'i'}), optReplyBytes(optGo, repAck, nil))},
		},
		"FuzzReadReply": {
			{true, uint16(512), cat(data(1, done, 4096, 512, 1), data(2, done, 8192, 512, 2))},
			{true, uint16(1024), cat(data(2, 0, 8192+512, 512, 1), hole(1, done, 4096, 1024), hole(2, 0, 8192, 512), chunkBytes(done, chunkNone, 2, nil))},
			{true, uint16(64), cat(chunkBytes(done, chunkError, 1, errorPayload(5, "io")), data(2, done, 8192, 64, 3))},
			{true, uint16(64), cat(data(1, 0, 4096, 32, 1), chunkBytes(0, chunkErrorOffset, 1, binary.BigEndian.AppendUint64(errorPayload(5, "x"), 4096+32)), chunkBytes(done, chunkNone, 1, nil))},
			{true, uint16(64), cat(data(1, 0, 4096, 40, 1), data(1, done, 4096+32, 32, 1))},
			{false, uint16(256), cat(simple(2, 0), pattern(256, 4), simple(1, 5))},
			{false, uint16(256), cat(simple(1, 0), pattern(256, 5), simple(2, 0), pattern(256, 6))},
		},
		"FuzzBlockStatusReply": {
			{chunkBytes(done, chunkBlockStatus, 1, statusPayload(2, 4096, 0, 65536, 1))},
			{cat(chunkBytes(0, chunkBlockStatus, 1, statusPayload(0, 70000, 3)), chunkBytes(done, chunkBlockStatus, 1, statusPayload(2, 512, 1)))},
			{chunkBytes(done, chunkBlockStatus, 1, statusPayload(2, 65536, 1, 4096, 0))},
			{chunkBytes(done, chunkError, 1, errorPayload(22, "need non-zero length"))},
		},
	}
}

func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("BACKSTOP_NBD_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set BACKSTOP_NBD_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	for name, seeds := range fuzzSeeds() {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, args := range seeds {
			var b bytes.Buffer
			b.WriteString("go test fuzz v1\n")
			for _, a := range args {
				switch v := a.(type) {
				case []byte:
					fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(v)))
				case bool:
					fmt.Fprintf(&b, "bool(%t)\n", v)
				case uint16:
					fmt.Fprintf(&b, "uint16(%d)\n", v)
				default:
					t.Fatalf("seed type %T", a)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
