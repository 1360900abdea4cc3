package nbd

// The server's fuzz targets feed arbitrary client bytes to ServeConn and
// check that it never panics or hangs, releases every export it looked
// up, and writes only well-formed replies: one final reply per request it
// read, data chunks inside their request and covering it. Seeds live in
// testdata/fuzz; regenerate them with
// BACKSTOP_NBD_WRITE_SERVER_FUZZ_SEEDS=1 go test -run TestWriteServerFuzzSeeds.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// recordConn replays a client stream (then io.EOF) and records what the
// server writes.
type recordConn struct {
	streamConn
	wmu sync.Mutex
	out bytes.Buffer
}

func newRecordConn(stream []byte) *recordConn {
	return &recordConn{streamConn: streamConn{r: bytes.NewReader(stream)}}
}

func (c *recordConn) Write(p []byte) (int, error) {
	if _, err := c.streamConn.Write(p); err != nil {
		return 0, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.out.Write(p)
}

func (c *recordConn) written() []byte {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// fuzzServer returns a server with "disk" (1 MiB + 5 bytes, holes, a
// failing range) and TLS, and serves stream on it. It fails t on a
// panic, a hang, or an unreleased lookup, and returns the server output.
func fuzzServe(t *testing.T, cfg *tls.Config, stream []byte) []byte {
	img := newMemImage(fuzzImageData(), 4096)
	img.FailReads(900<<10, 10)
	exports := newMemExports(map[string]Image{testExport: img})
	srv := NewServer(exports, ServerOptions{TLSConfig: cfg, MaxRequestsInFlight: 4})
	var panicked sync.Once
	srv.onPanic = func(v any) { panicked.Do(func() { t.Errorf("server panicked: %v", v) }) }
	conn := newRecordConn(stream)
	done := make(chan struct{})
	go func() { srv.ServeConn(context.Background(), conn); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn hung")
	}
	if l, r := exports.Lookups(); l != r {
		t.Fatalf("%d lookups, %d releases", l, r)
	}
	if n := srv.ActiveConns(); n != 0 {
		t.Fatalf("ActiveConns = %d", n)
	}
	return conn.written()
}

// fuzzImageData is shared by all fuzz runs (read-only).
var fuzzImageData = sync.OnceValue(func() []byte { return testImageData(1<<20+5, 4) })

// FuzzServerHandshake: the whole client side is fuzz input.
func FuzzServerHandshake(f *testing.F) {
	cfg, _ := selfSignedTLS(f)
	f.Fuzz(func(t *testing.T, stream []byte) {
		out := fuzzServe(t, cfg, stream)
		if len(out) < greetingSize || !bytes.Equal(out[:16], greeting(0)[:16]) {
			t.Fatalf("no greeting: %x", out)
		}
	})
}

// FuzzServerRequests: a valid handshake (structured replies and
// base:allocation if structured), then fuzz input as requests.
func FuzzServerRequests(f *testing.F) {
	cfg, _ := selfSignedTLS(f)
	f.Fuzz(func(t *testing.T, structured bool, reqs []byte) {
		out := fuzzServe(t, cfg, append(clientHandshake(structured), reqs...))
		rest, ok := skipHandshakeReplies(out)
		if !ok {
			t.Fatalf("handshake failed: %x", out)
		}
		if err := checkReplies(structured, reqs, rest); err != nil {
			t.Fatal(err)
		}
	})
}

// clientHandshake is what a QEMU-like client sends up to GO "disk".
func clientHandshake(structured bool) []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	opt := func(o uint32, data []byte) {
		var hb [optionHeaderSize]byte
		h := optionHeader{Option: o, Length: uint32(len(data))}
		h.encode(&hb)
		b = append(append(b, hb[:]...), data...)
	}
	if structured {
		opt(optStructuredReply, nil)
		opt(optSetMetaContext, metaData(testExport, ContextBaseAllocation))
	}
	opt(optGo, goData(testExport, infoBlockSize))
	return b
}

// skipHandshakeReplies returns the output after the GO's ACK.
func skipHandshakeReplies(out []byte) ([]byte, bool) {
	if len(out) < greetingSize {
		return nil, false
	}
	out = out[greetingSize:]
	for len(out) >= optionReplyHeaderSize {
		h, err := decodeOptionReplyHeader((*[optionReplyHeaderSize]byte)(out))
		if err != nil || uint64(len(out)-optionReplyHeaderSize) < uint64(h.Length) || h.Type&repFlagError != 0 {
			return nil, false
		}
		out = out[optionReplyHeaderSize+int(h.Length):]
		if h.Option == optGo && h.Type == repAck {
			return out, true
		}
	}
	return nil, false
}

// parsedRequests mirrors the server's request parsing: the requests it
// will answer, and whether it stops by killing the connection (then
// replies may be missing).
func parsedRequests(stream []byte) (reqs []requestHeader, killed bool) {
	for len(stream) >= requestHeaderSize {
		h, err := decodeRequestHeader((*[requestHeaderSize]byte)(stream))
		if err != nil {
			return reqs, true
		}
		stream = stream[requestHeaderSize:]
		switch h.Type {
		case cmdDisc:
			return reqs, false
		case cmdWrite:
			if h.Length > maxPayload {
				return reqs, true
			}
			if uint64(len(stream)) < uint64(h.Length) {
				return reqs, false
			}
			stream = stream[h.Length:]
		}
		reqs = append(reqs, h)
	}
	return reqs, false
}

// errTruncated: the output ends inside a reply. That happens only when
// the server killed the connection while writing it.
var errTruncated = errors.New("truncated reply")

// checkReplies decodes the server's transmission output against the
// requests in stream.
func checkReplies(structured bool, stream, out []byte) error {
	reqs, killed := parsedRequests(stream)
	err := decodeReplies(structured, reqs, out)
	if errors.Is(err, errTruncated) && killed {
		return nil
	}
	var fe *finalsError
	if errors.As(err, &fe) && killed && fe.finals <= len(reqs) {
		return nil
	}
	return err
}

// finalsError: the number of final replies differs from the requests.
type finalsError struct{ finals, reqs int }

func (e *finalsError) Error() string {
	return fmt.Sprintf("%d final replies for %d requests", e.finals, e.reqs)
}

func decodeReplies(structured bool, reqs []requestHeader, out []byte) error {
	byCookie := map[uint64]requestHeader{}
	unique := true
	for _, r := range reqs {
		if _, dup := byCookie[r.Cookie]; dup {
			unique = false
		}
		byCookie[r.Cookie] = r
	}
	if !structured && !unique {
		return nil // which request a reply answers decides whether data follows
	}
	finals := 0
	covered := map[uint64]uint64{} // READ cookie → bytes in content chunks
	for len(out) > 0 {
		if len(out) < 4 {
			return fmt.Errorf("%w: %d trailing bytes", errTruncated, len(out))
		}
		switch binary.BigEndian.Uint32(out) {
		case simpleReplyMagic:
			if len(out) < simpleReplyHeaderSize {
				return fmt.Errorf("%w: simple reply", errTruncated)
			}
			h := decodeSimpleReply(out[4:])
			out = out[simpleReplyHeaderSize:]
			finals++
			r, known := byCookie[h.Cookie]
			if !known {
				return fmt.Errorf("simple reply for unknown cookie %d", h.Cookie)
			}
			if structured && r.Type == cmdRead && r.Length > 0 && unique {
				return fmt.Errorf("simple reply to a structured READ")
			}
			if !structured && h.Error == 0 && r.Type == cmdRead {
				if uint64(len(out)) < uint64(r.Length) {
					return fmt.Errorf("%w: READ data", errTruncated)
				}
				out = out[r.Length:]
			}
		case structuredReplyMagic:
			if !structured {
				return fmt.Errorf("chunk without structured replies")
			}
			if len(out) < chunkHeaderSize {
				return fmt.Errorf("%w: chunk header", errTruncated)
			}
			h := decodeChunkHeader(out[4:])
			if uint64(len(out)-chunkHeaderSize) < uint64(h.Length) {
				return fmt.Errorf("%w: chunk payload", errTruncated)
			}
			p := out[chunkHeaderSize : chunkHeaderSize+int(h.Length)]
			out = out[chunkHeaderSize+int(h.Length):]
			r, known := byCookie[h.Cookie]
			if !known {
				return fmt.Errorf("chunk for unknown cookie %d", h.Cookie)
			}
			if err := checkChunk(h, p, r, unique, covered); err != nil {
				return err
			}
			if h.Flags&replyFlagDone != 0 {
				finals++
			}
		default:
			return fmt.Errorf("bad reply magic %x", out[:4])
		}
	}
	if finals != len(reqs) {
		return &finalsError{finals, len(reqs)}
	}
	return nil
}

func checkChunk(h chunkHeader, p []byte, r requestHeader, unique bool, covered map[uint64]uint64) error {
	switch h.Type {
	case chunkNone:
		if len(p) != 0 || h.Flags&replyFlagDone == 0 {
			return fmt.Errorf("bad NONE chunk")
		}
	case chunkOffsetData, chunkOffsetHole:
		if h.Type == chunkOffsetData && len(p) < 9 || h.Type == chunkOffsetHole && len(p) != offsetHoleLength {
			return fmt.Errorf("content chunk of %d bytes", len(p))
		}
		if !unique {
			return nil
		}
		off, n := binary.BigEndian.Uint64(p), uint64(len(p)-8)
		if h.Type == chunkOffsetHole {
			n = uint64(binary.BigEndian.Uint32(p[8:]))
		}
		if r.Type != cmdRead || n == 0 || off < r.Offset || off+n > r.Offset+uint64(r.Length) {
			return fmt.Errorf("content chunk [%d,+%d) for %s [%d,+%d)", off, n, cmdName(r.Type), r.Offset, r.Length)
		}
		covered[h.Cookie] += n
		if h.Flags&replyFlagDone != 0 && covered[h.Cookie] != uint64(r.Length) {
			return fmt.Errorf("READ [%d,+%d) done after %d bytes", r.Offset, r.Length, covered[h.Cookie])
		}
	case chunkBlockStatus:
		if len(p) < 12 || (len(p)-4)%8 != 0 || h.Flags&replyFlagDone == 0 {
			return fmt.Errorf("bad BLOCK_STATUS chunk of %d bytes", len(p))
		}
		var sum uint64
		for d := p[4:]; len(d) > 0; d = d[8:] {
			sum += uint64(binary.BigEndian.Uint32(d))
		}
		if unique && (sum == 0 || sum > uint64(r.Length)) {
			return fmt.Errorf("BLOCK_STATUS extents sum to %d for length %d", sum, r.Length)
		}
	case chunkError:
		if len(p) < 6 || int(binary.BigEndian.Uint16(p[4:]))+6 != len(p) || binary.BigEndian.Uint32(p) == 0 || h.Flags&replyFlagDone == 0 {
			return fmt.Errorf("bad ERROR chunk %x", p)
		}
	default:
		return fmt.Errorf("chunk type %#x", h.Type)
	}
	return nil
}

// serverFuzzSeeds returns the committed seed inputs, per target.
func serverFuzzSeeds() map[string][][]any {
	req := func(typ, flags uint16, cookie, off uint64, length uint32, payload ...byte) []byte {
		var b [requestHeaderSize]byte
		h := requestHeader{Flags: flags, Type: typ, Cookie: cookie, Offset: off, Length: length}
		h.encode(&b)
		return append(b[:], payload...)
	}
	opt := func(o uint32, data []byte) []byte {
		var hb [optionHeaderSize]byte
		h := optionHeader{Option: o, Length: uint32(len(data))}
		h.encode(&hb)
		return append(hb[:], data...)
	}
	flags := func(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	disc := req(cmdDisc, 0, 99, 0, 0)
	reads := cat(req(cmdRead, 0, 1, 0, 4096), req(cmdRead, 0, 2, 190<<10, 200<<10), req(cmdRead, cmdFlagDF, 3, 1<<20-100, 105),
		req(cmdRead, 0, 4, 900<<10, 4096), req(cmdRead, 0, 5, 0, 0))
	status := cat(req(cmdBlockStatus, 0, 6, 0, 1<<20), req(cmdBlockStatus, cmdFlagReqOne, 7, 100, 300<<10), req(cmdBlockStatus, 0, 8, 0, 0))
	others := cat(req(cmdWrite, cmdFlagFUA, 9, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8), req(cmdTrim, 0, 10, 0, 4096), req(cmdWriteZeroes, 0, 11, 0, 4096),
		req(cmdFlush, 0, 12, 0, 0), req(cmdCache, 0, 13, 0, 4096), req(99, 0, 14, 0, 0), req(cmdRead, 0, 15, 1<<20, 4096), req(cmdRead, 1<<9, 16, 0, 1))
	return map[string][][]any{
		"FuzzServerHandshake": {
			{cat(clientHandshake(true), reads, status, disc)},
			{cat(flags(clientFixedNewstyle|clientNoZeroes), opt(optList, nil), opt(optInfo, goData(testExport, infoName, infoDescription, infoBlockSize)),
				opt(optListMetaContext, metaData(testExport)), opt(optAbort, nil))},
			{cat(flags(clientFixedNewstyle), opt(optExportName, []byte(testExport)), req(cmdRead, 0, 1, 0, 512), disc)},
			{cat(flags(clientFixedNewstyle), opt(optStartTLS, nil), []byte("\x16\x03\x01\x00\x05hello"))},
			{cat(flags(clientFixedNewstyle), opt(99, []byte("x")), opt(optGo, []byte{0, 0, 0, 9}), opt(optSetMetaContext, metaData("nope", "base:")),
				opt(optStructuredReply, []byte{1}), opt(optExtendedHeaders, nil), opt(optGo, goData("nope")))},
			{flags(0)},
		},
		"FuzzServerRequests": {
			{true, cat(reads, status, others, disc)},
			{false, cat(reads, others, disc)},
			{true, cat(req(cmdRead, 0, 1, 0, 4096), bytes.Repeat([]byte{0x42}, requestHeaderSize), req(cmdRead, 0, 2, 0, 4096))},
			{true, cat(req(cmdRead, 0, 1, 0, 1<<20+5), req(cmdWrite, 0, 2, 0, 32<<20+1))},
			{false, cat(req(cmdRead, 0, 1, 1<<20, 5), req(cmdWrite, 0, 2, 0, 100, 1, 2))},
		},
	}
}

func TestWriteServerFuzzSeeds(t *testing.T) {
	if os.Getenv("BACKSTOP_NBD_WRITE_SERVER_FUZZ_SEEDS") == "" {
		t.Skip("set BACKSTOP_NBD_WRITE_SERVER_FUZZ_SEEDS=1 to rewrite the server seeds in testdata/fuzz")
	}
	for name, seeds := range serverFuzzSeeds() {
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

var _ net.Conn = (*recordConn)(nil)
