package nbd

// Test harness for the server: a Server serving over net.Pipe, our own
// Client against it, and a raw client that writes and checks protocol
// bytes directly (for what the Client never sends).

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

const (
	testExport     = "disk"
	testImageSize  = 4<<20 + 3 // an odd tail
	testGranule    = 64 << 10
	rawIOTimeout   = 10 * time.Second
	serverWaitTime = 10 * time.Second
)

type serverHarness struct {
	t       testing.TB
	srv     *Server
	img     *memImage
	exports *memExports
	wg      sync.WaitGroup
}

// newHarness serves "disk" (testImageSize bytes of testImageData) and
// "other" (1 MiB of zeroes). When the test ends it checks that every
// connection ended, and every Lookup was released.
func newHarness(t testing.TB, opts ServerOptions) *serverHarness {
	t.Helper()
	h := &serverHarness{t: t, img: newMemImage(testImageData(testImageSize, 1), testGranule)}
	h.exports = newMemExports(map[string]Image{
		testExport: h.img,
		"other":    newMemImage(make([]byte, 1<<20), testGranule),
	})
	h.srv = NewServer(h.exports, opts)
	h.srv.onPanic = func(v any) { t.Errorf("server panicked: %v", v) }
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { h.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(serverWaitTime):
			t.Errorf("server connections still running after the test")
			return
		}
		if n := h.srv.ActiveConns(); n != 0 {
			t.Errorf("ActiveConns = %d after all connections ended", n)
		}
		if l, r := h.exports.Lookups(); l != r {
			t.Errorf("%d lookups, %d releases", l, r)
		}
	})
	return h
}

// pipe starts serving one end of a net.Pipe and returns the other.
func (h *serverHarness) pipe() net.Conn {
	cc, sc := net.Pipe()
	h.wg.Go(func() { h.srv.ServeConn(context.Background(), sc) })
	h.t.Cleanup(func() { cc.Close() })
	return cc
}

// client connects our Client to the server.
func (h *serverHarness) client(export string, opts Options) *Client {
	h.t.Helper()
	c, err := NewClient(testCtx(h.t), h.pipe(), export, opts)
	if err != nil {
		h.t.Fatalf("NewClient: %v", err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// rawClient speaks the protocol byte by byte.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func (h *serverHarness) raw() *rawClient {
	c := h.pipe()
	_ = c.SetDeadline(time.Now().Add(rawIOTimeout))
	return newRawClient(h.t, c)
}

func newRawClient(t testing.TB, c net.Conn) *rawClient {
	return &rawClient{t: t, conn: c, br: bufio.NewReader(c)}
}

func (r *rawClient) write(parts ...[]byte) {
	r.t.Helper()
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

func (r *rawClient) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		r.t.Fatalf("raw read of %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server closes the connection.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	_, err := r.br.ReadByte()
	if err == nil {
		r.t.Fatal("server sent more data; want the connection closed")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		r.t.Fatal("server kept the connection open")
	}
}

// greet reads the greeting and sends flags.
func (r *rawClient) greet(flags uint32) {
	r.t.Helper()
	g := r.read(greetingSize)
	if binary.BigEndian.Uint64(g) != nbdMagic || binary.BigEndian.Uint64(g[8:]) != optsMagic {
		r.t.Fatalf("greeting %x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != handshakeFixedNewstyle|handshakeNoZeroes {
		r.t.Fatalf("handshake flags %#x", f)
	}
	r.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (r *rawClient) option(opt uint32, data []byte) {
	r.t.Helper()
	var hb [optionHeaderSize]byte
	h := optionHeader{Option: opt, Length: uint32(len(data))}
	h.encode(&hb)
	r.write(hb[:], data)
}

type optRep struct {
	typ     uint32
	payload []byte
}

// optReply reads one reply to opt.
func (r *rawClient) optReply(opt uint32) optRep {
	r.t.Helper()
	b := r.read(optionReplyHeaderSize)
	h, err := decodeOptionReplyHeader((*[optionReplyHeaderSize]byte)(b))
	if err != nil {
		r.t.Fatal(err)
	}
	if h.Option != opt {
		r.t.Fatalf("reply to %s, want %s", optName(h.Option), optName(opt))
	}
	return optRep{typ: h.Type, payload: r.read(int(h.Length))}
}

// optReplies reads replies to opt up to ACK or an error, inclusive.
func (r *rawClient) optReplies(opt uint32) []optRep {
	r.t.Helper()
	var reps []optRep
	for {
		rep := r.optReply(opt)
		reps = append(reps, rep)
		if rep.typ == repAck || rep.typ&repFlagError != 0 {
			return reps
		}
	}
}

// expectOpt sends an option and checks that its final reply is want.
func (r *rawClient) expectOpt(opt uint32, data []byte, want uint32) []optRep {
	r.t.Helper()
	r.option(opt, data)
	reps := r.optReplies(opt)
	if got := reps[len(reps)-1].typ; got != want {
		r.t.Fatalf("%s: final reply %s (%q), want %s", optName(opt), repName(got), reps[len(reps)-1].payload, repName(want))
	}
	return reps
}

func goData(name string, infos ...uint16) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	p = append(p, name...)
	p = binary.BigEndian.AppendUint16(p, uint16(len(infos)))
	for _, i := range infos {
		p = binary.BigEndian.AppendUint16(p, i)
	}
	return p
}

func metaData(name string, queries ...string) []byte {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	p = append(p, name...)
	p = binary.BigEndian.AppendUint32(p, uint32(len(queries)))
	for _, q := range queries {
		p = binary.BigEndian.AppendUint32(p, uint32(len(q)))
		p = append(p, q...)
	}
	return p
}

// start negotiates export by GO, optionally with structured replies and
// base:allocation, and returns the INFO_EXPORT size and flags.
func (r *rawClient) start(structured, meta bool, export string) (uint64, Flags) {
	r.t.Helper()
	r.greet(clientFixedNewstyle | clientNoZeroes)
	if structured {
		r.expectOpt(optStructuredReply, nil, repAck)
	}
	if meta {
		reps := r.expectOpt(optSetMetaContext, metaData(export, ContextBaseAllocation), repAck)
		if len(reps) != 2 {
			r.t.Fatalf("SET_META_CONTEXT replies %v", reps)
		}
	}
	var size uint64
	var flags Flags
	for _, rep := range r.expectOpt(optGo, goData(export, infoBlockSize), repAck) {
		if rep.typ == repInfo && binary.BigEndian.Uint16(rep.payload) == infoExport {
			size, flags = binary.BigEndian.Uint64(rep.payload[2:]), Flags(binary.BigEndian.Uint16(rep.payload[10:]))
		}
	}
	return size, flags
}

func (r *rawClient) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	r.t.Helper()
	var b [requestHeaderSize]byte
	h := requestHeader{Flags: flags, Type: typ, Cookie: cookie, Offset: off, Length: length}
	h.encode(&b)
	r.write(b[:], payload)
}

// rawReply is a simple reply (without READ data) or one chunk.
type rawReply struct {
	simple  bool
	errno   uint32 // simple replies and error chunks
	flags   uint16
	typ     uint16
	cookie  uint64
	payload []byte
}

func (r *rawClient) reply() rawReply {
	r.t.Helper()
	m := binary.BigEndian.Uint32(r.read(4))
	switch m {
	case simpleReplyMagic:
		h := decodeSimpleReply(r.read(12))
		return rawReply{simple: true, errno: h.Error, cookie: h.Cookie}
	case structuredReplyMagic:
		h := decodeChunkHeader(r.read(16))
		rep := rawReply{flags: h.Flags, typ: h.Type, cookie: h.Cookie, payload: r.read(int(h.Length))}
		if h.Type&chunkTypeErrorBit != 0 && len(rep.payload) >= 4 {
			rep.errno = binary.BigEndian.Uint32(rep.payload)
		}
		return rep
	}
	r.t.Fatalf("reply magic %#x", m)
	return rawReply{}
}

// chunks reads chunks for one cookie until DONE.
func (r *rawClient) chunks() []rawReply {
	r.t.Helper()
	var out []rawReply
	for {
		rep := r.reply()
		if rep.simple {
			r.t.Fatalf("simple reply among chunks: %+v", rep)
		}
		out = append(out, rep)
		if rep.flags&replyFlagDone != 0 {
			return out
		}
	}
}

// expectErrno reads one reply (simple or a DONE error chunk) and checks
// its error.
func (r *rawClient) expectErrno(cookie uint64, want Errno) {
	r.t.Helper()
	rep := r.reply()
	if rep.cookie != cookie || Errno(rep.errno) != want || (!rep.simple && (rep.typ != chunkError || rep.flags&replyFlagDone == 0)) {
		r.t.Fatalf("reply %+v, want %s for cookie %d", rep, want, cookie)
	}
}

// startTLS runs a TLS client handshake on r's connection (after the
// server's STARTTLS ACK) and returns a raw client over TLS.
func (r *rawClient) startTLS(pool *x509.CertPool) *rawClient {
	r.t.Helper()
	if r.br.Buffered() != 0 {
		r.t.Fatal("unread server bytes before TLS")
	}
	tc := tls.Client(r.conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	return newRawClient(r.t, tc)
}

func x509CertPool(t testing.TB, certPEM []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("bad certificate PEM")
	}
	return pool
}
