package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeExport configures the handshake of a fakeServer.
type fakeExport struct {
	name         string
	size         uint64
	flags        Flags
	noStructured bool          // answer STRUCTURED_REPLY with ERR_UNSUP
	contexts     []MetaContext // offered to SET_META_CONTEXT by exact name
	blockSize    [3]uint32     // min, preferred, max; zero: send no INFO_BLOCK_SIZE
	noGo         bool          // answer GO with ERR_UNSUP (EXPORT_NAME fallback)
}

func defaultFakeExport() fakeExport {
	return fakeExport{
		name:      "drive-scsi0",
		size:      1 << 20,
		flags:     FlagHasFlags | FlagSendFlush | FlagSendTrim | FlagCanMultiConn,
		contexts:  []MetaContext{{Name: ContextBaseAllocation, ID: 0}, {Name: DirtyBitmapContext("bm0"), ID: 2}},
		blockSize: [3]uint32{1, 4096, 32 << 20},
	}
}

// fakeServer is the server end of a net.Pipe that speaks just enough NBD
// for scripted tests: a correct handshake, then whatever a script writes.
type fakeServer struct {
	conn       net.Conn
	br         *bufio.Reader
	structured bool
	noZeroes   bool
}

func newFakeServer(conn net.Conn) *fakeServer {
	return &fakeServer{conn: conn, br: bufio.NewReader(conn)}
}

func (s *fakeServer) write(parts ...[]byte) error {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	_, err := s.conn.Write(b)
	return err
}

func (s *fakeServer) optReply(opt, typ uint32, payload []byte) error {
	var hb [optionReplyHeaderSize]byte
	h := optionReplyHeader{Option: opt, Type: typ, Length: uint32(len(payload))}
	h.encode(&hb)
	return s.write(hb[:], payload)
}

// handshake plays a fixed newstyle server until transmission starts.
func (s *fakeServer) handshake(ex fakeExport) error {
	g := binary.BigEndian.AppendUint64(nil, nbdMagic)
	g = binary.BigEndian.AppendUint64(g, optsMagic)
	g = binary.BigEndian.AppendUint16(g, handshakeFixedNewstyle|handshakeNoZeroes)
	if err := s.write(g); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(s.br, cf[:]); err != nil {
		return err
	}
	s.noZeroes = binary.BigEndian.Uint32(cf[:])&clientNoZeroes != 0
	for {
		var hb [optionHeaderSize]byte
		if _, err := io.ReadFull(s.br, hb[:]); err != nil {
			return err
		}
		h, err := decodeOptionHeader(&hb)
		if err != nil {
			return err
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(s.br, data); err != nil {
			return err
		}
		done, err := s.option(ex, h.Option, data)
		if err != nil || done {
			return err
		}
	}
}

func (s *fakeServer) option(ex fakeExport, opt uint32, data []byte) (done bool, err error) {
	switch opt {
	case optStructuredReply:
		if ex.noStructured {
			return false, s.optReply(opt, repErrUnsup, nil)
		}
		s.structured = true
		return false, s.optReply(opt, repAck, nil)
	case optSetMetaContext:
		return false, s.setMeta(ex, data)
	case optGo:
		if ex.noGo {
			return false, s.optReply(opt, repErrUnsup, []byte("no GO here"))
		}
		if name := string(data[4 : 4+binary.BigEndian.Uint32(data)]); name != ex.name {
			return false, s.optReply(opt, repErrUnknown, []byte("no such export"))
		}
		if ex.blockSize != [3]uint32{} {
			p := binary.BigEndian.AppendUint16(nil, infoBlockSize)
			for _, v := range ex.blockSize {
				p = binary.BigEndian.AppendUint32(p, v)
			}
			if err := s.optReply(opt, repInfo, p); err != nil {
				return false, err
			}
		}
		p := binary.BigEndian.AppendUint16(nil, infoExport)
		p = binary.BigEndian.AppendUint64(p, ex.size)
		p = binary.BigEndian.AppendUint16(p, uint16(ex.flags))
		if err := s.optReply(opt, repInfo, p); err != nil {
			return false, err
		}
		return true, s.optReply(opt, repAck, nil)
	case optExportName:
		p := binary.BigEndian.AppendUint64(nil, ex.size)
		p = binary.BigEndian.AppendUint16(p, uint16(ex.flags))
		if !s.noZeroes {
			p = append(p, make([]byte, exportNamePadding)...)
		}
		return true, s.write(p)
	}
	return false, s.optReply(opt, repErrUnsup, nil)
}

func (s *fakeServer) setMeta(ex fakeExport, data []byte) error {
	n := binary.BigEndian.Uint32(data)
	p := data[4+n:]
	q := binary.BigEndian.Uint32(p)
	p = p[4:]
	for range q {
		l := binary.BigEndian.Uint32(p)
		name := string(p[4 : 4+l])
		p = p[4+l:]
		for _, mc := range ex.contexts {
			if mc.Name == name {
				r := binary.BigEndian.AppendUint32(nil, mc.ID)
				if err := s.optReply(optSetMetaContext, repMetaContext, append(r, name...)); err != nil {
					return err
				}
			}
		}
	}
	return s.optReply(optSetMetaContext, repAck, nil)
}

func (s *fakeServer) readRequest() (requestHeader, error) {
	var b [requestHeaderSize]byte
	if _, err := io.ReadFull(s.br, b[:]); err != nil {
		return requestHeader{}, err
	}
	return decodeRequestHeader(&b)
}

// expect reads one request and checks its type. A DISC reads as io.EOF.
func (s *fakeServer) expect(cmd uint16) (requestHeader, error) {
	r, err := s.readRequest()
	if err == nil && r.Type == cmdDisc && cmd != cmdDisc {
		return r, fmt.Errorf("fake server: client sent DISC: %w", io.EOF)
	}
	if err == nil && r.Type != cmd {
		err = fmt.Errorf("fake server: got %s request, want %s", cmdName(r.Type), cmdName(cmd))
	}
	return r, err
}

func (s *fakeServer) simple(cookie uint64, errno uint32, data []byte) error {
	var b [simpleReplyHeaderSize]byte
	h := simpleReplyHeader{Error: errno, Cookie: cookie}
	h.encode(&b)
	return s.write(b[:], data)
}

func (s *fakeServer) chunk(flags, typ uint16, cookie uint64, payload []byte) error {
	return s.write(chunkBytes(flags, typ, cookie, payload))
}

func chunkBytes(flags, typ uint16, cookie uint64, payload []byte) []byte {
	var b [chunkHeaderSize]byte
	h := chunkHeader{Flags: flags, Type: typ, Cookie: cookie, Length: uint32(len(payload))}
	h.encode(&b)
	return append(b[:], payload...)
}

func dataPayload(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func holePayload(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

// statusPayload builds a BLOCK_STATUS payload from (length, flags) pairs.
func statusPayload(id uint32, ext ...uint32) []byte {
	p := binary.BigEndian.AppendUint32(nil, id)
	for _, v := range ext {
		p = binary.BigEndian.AppendUint32(p, v)
	}
	return p
}

func errorPayload(code uint32, msg string) []byte {
	p := binary.BigEndian.AppendUint32(nil, code)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	return append(p, msg...)
}

// newFakeClient connects a Client to a fakeServer that runs the handshake
// for ex and then script. After the script the server drains requests
// until the client hangs up. Script errors other than a hang-up fail t.
func newFakeClient(t testing.TB, ex fakeExport, opts Options, script func(s *fakeServer) error) *Client {
	t.Helper()
	c, err := dialFake(t, ex, opts, script)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c
}

func dialFake(t testing.TB, ex fakeExport, opts Options, script func(s *fakeServer) error) (*Client, error) {
	t.Helper()
	cc, sc := net.Pipe()
	done := make(chan error, 1)
	go func() {
		defer sc.Close()
		s := newFakeServer(sc)
		err := s.handshake(ex)
		if err == nil && script != nil {
			err = script(s)
		}
		if err == nil {
			_, err = io.Copy(io.Discard, s.br)
		}
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cc, ex.name, opts)
	t.Cleanup(func() {
		if c != nil {
			c.Close()
		}
		cc.Close()
		if err := <-done; err != nil && !isHangup(err) {
			t.Errorf("fake server: %v", err)
		}
	})
	return c, err
}

func isHangup(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.ErrUnexpectedEOF)
}

// streamConn is a net.Conn whose reads replay a fixed server stream
// (then io.EOF) and whose writes are discarded.
type streamConn struct {
	mu     sync.Mutex
	r      *bytes.Reader
	closed bool
}

func newStreamConn(stream []byte) *streamConn { return &streamConn{r: bytes.NewReader(stream)} }

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return len(p), nil
}

func (c *streamConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *streamConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix", Name: "client"} }
func (c *streamConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix", Name: "server"} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }
