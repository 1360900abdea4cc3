package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// defaultPort is the IANA port of NBD.
const defaultPort = "10809"

// discTimeout bounds how long Close tries to send DISC to a peer that does
// not read.
const discTimeout = 5 * time.Second

// Client is the client side of one NBD connection to one export. Its
// methods are safe for concurrent use: every call is a request of its own,
// any number may be in flight, and one reader goroutine hands each reply
// to its caller by cookie.
//
// After a protocol violation, a connection error or a cancellation that
// left a reply half-read, the connection is closed and every pending and
// later call fails with the same error; open a new Client to go on.
type Client struct {
	conn   net.Conn
	br     *bufio.Reader // the reader goroutine's after the handshake
	export Export

	wlock chan struct{}           // one token: held while a request is written
	wbuf  [requestHeaderSize]byte // guarded by wlock

	mu         sync.Mutex
	pending    map[uint64]*call // guarded by mu; nil once the reader has exited
	nextCookie uint64           // guarded by mu
	err        error            // guarded by mu; first fatal error (conn is then closed)
	closed     bool             // guarded by mu

	readerDone chan struct{} // closed when the reader goroutine has exited

	// Reader goroutine only.
	scratch [chunkHeaderSize]byte
}

// call is one request in flight.
type call struct {
	cmd    uint16
	cookie uint64
	off    int64
	length uint32
	ctxID  uint32 // BLOCK_STATUS: the context the caller wants

	// bufMu is held by the reader while it writes into buf, so that a
	// caller who gives up can be sure its buffer is no longer touched.
	bufMu     sync.Mutex
	buf       []byte // READ destination; guarded by bufMu
	abandoned bool   // guarded by bufMu: the caller left; drop the data

	// Reader goroutine only, until done is closed.
	started   bool     // a reply or chunk arrived
	spans     spanSet  // READ: ranges received, relative to off
	srvErr    error    // first error the server reported
	statusIDs []uint32 // BLOCK_STATUS: contexts answered so far
	extents   []Extent // BLOCK_STATUS: those of ctxID

	err  error         // the result; written before done is closed
	done chan struct{} // closed when the reply is complete
}

// Dial connects to an NBD URI and negotiates the export it names:
// nbd://host[:port]/EXPORT (TCP, port 10809 by default) or
// nbd+unix:///EXPORT?socket=PATH. An empty export name selects the
// server's default export. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, uri string, opts Options) (*Client, error) {
	network, addr, export, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", uri, err)
	}
	return NewClient(ctx, conn, export, opts)
}

func parseURI(uri string) (network, addr, export string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", "", fmt.Errorf("nbd: parse URI: %w", err)
	}
	export = strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Hostname() == "" {
			return "", "", "", fmt.Errorf("nbd: URI %q has no host", uri)
		}
		port := u.Port()
		if port == "" {
			port = defaultPort
		}
		return "tcp", net.JoinHostPort(u.Hostname(), port), export, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if u.Host != "" || sock == "" {
			return "", "", "", fmt.Errorf("nbd: URI %q: want nbd+unix:///EXPORT?socket=PATH", uri)
		}
		return "unix", sock, export, nil
	case "nbds", "nbds+unix":
		return "", "", "", fmt.Errorf("nbd: URI %q: TLS is not supported", uri)
	}
	return "", "", "", fmt.Errorf("nbd: URI %q: scheme must be nbd or nbd+unix", uri)
}

// NewClient negotiates export over conn, which it takes over: conn is
// closed when the handshake fails and by Close. ctx bounds the handshake
// only; cancelling it closes conn.
func NewClient(ctx context.Context, conn net.Conn, export string, opts Options) (*Client, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	h := handshake{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	ex, err := h.run(export, opts)
	if !stop() {
		err = fmt.Errorf("nbd: handshake with export %q: %w", export, context.Cause(ctx))
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &Client{
		conn:       conn,
		br:         h.br,
		export:     ex,
		wlock:      make(chan struct{}, 1),
		pending:    make(map[uint64]*call),
		readerDone: make(chan struct{}),
	}
	go c.readLoop()
	return c, nil
}

// Export returns what the handshake negotiated.
func (c *Client) Export() Export {
	ex := c.export
	ex.MetaContexts = append([]MetaContext(nil), ex.MetaContexts...)
	return ex
}

// Size returns the export size in bytes.
func (c *Client) Size() int64 { return c.export.Size }

// Flags returns the export's transmission flags.
func (c *Client) Flags() Flags { return c.export.Flags }

// MetaContextID returns the id the server gave the meta context name, and
// false when the server did not select it (for a dirty bitmap: the bitmap
// is missing, and nothing may be assumed clean).
func (c *Client) MetaContextID(name string) (uint32, bool) {
	for _, mc := range c.export.MetaContexts {
		if mc.Name == name {
			return mc.ID, true
		}
	}
	return 0, false
}

// MaxRead returns the longest read ReadAt accepts: the server's maximum
// payload, at most 32 MiB, rounded down to the minimum block size.
func (c *Client) MaxRead() int {
	m := min(c.export.MaxPayload, maxPayload)
	return int(m - m%c.export.MinBlock)
}

// Close sends DISC and closes the connection, then waits for the reader
// goroutine. Calls still in flight fail with ErrClosed, and the server may
// drop their replies: wait for them before closing. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.readerDone
		return nil
	}
	c.closed = true
	healthy := c.err == nil
	if healthy {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	if healthy {
		c.sendDisc()
	}
	err := c.conn.Close()
	<-c.readerDone
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("nbd: close: %w", err)
	}
	return nil
}

func (c *Client) sendDisc() {
	t := time.NewTimer(discTimeout)
	defer t.Stop()
	select {
	case c.wlock <- struct{}{}:
	case <-t.C:
		return
	}
	defer func() { <-c.wlock }()
	_ = c.conn.SetWriteDeadline(time.Now().Add(discTimeout))
	c.mu.Lock()
	c.nextCookie++
	h := requestHeader{Type: cmdDisc, Cookie: c.nextCookie}
	c.mu.Unlock()
	h.encode(&c.wbuf)
	_, _ = c.conn.Write(c.wbuf[:]) // no reply; the connection goes anyway
}

// fail records err as the connection's fatal error (unless one is already
// recorded) and closes the connection, which ends the reader goroutine.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.conn.Close()
}

// stateErrLocked returns why no new request may start, or nil.
func (c *Client) stateErrLocked() error {
	if c.closed {
		return ErrClosed
	}
	return c.err
}

// do sends cl and waits for its reply.
func (c *Client) do(ctx context.Context, cl *call) error {
	cl.done = make(chan struct{})
	if err := c.send(ctx, cl); err != nil {
		return err
	}
	return c.wait(ctx, cl)
}

func (c *Client) send(ctx context.Context, cl *call) error {
	select {
	case c.wlock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("nbd: %s: %w", cmdName(cl.cmd), context.Cause(ctx))
	}
	defer func() { <-c.wlock }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nbd: %s: %w", cmdName(cl.cmd), context.Cause(ctx))
	}
	c.mu.Lock()
	if err := c.stateErrLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.nextCookie++
	cl.cookie = c.nextCookie
	c.pending[cl.cookie] = cl
	c.mu.Unlock()

	h := requestHeader{Type: cl.cmd, Cookie: cl.cookie, Offset: uint64(cl.off), Length: cl.length}
	h.encode(&c.wbuf)
	// A half-written request leaves the stream undecodable, so a
	// cancellation during the write costs the connection; one after it
	// just abandons the call (see wait).
	var wmu sync.Mutex
	writing := true // guarded by wmu
	stop := context.AfterFunc(ctx, func() {
		wmu.Lock()
		defer wmu.Unlock()
		if writing {
			c.fail(fmt.Errorf("nbd: %s request interrupted while being sent: %w", cmdName(cl.cmd), context.Cause(ctx)))
		}
	})
	_, err := c.conn.Write(c.wbuf[:])
	wmu.Lock()
	writing = false
	wmu.Unlock()
	stop()
	if err != nil {
		c.fail(fmt.Errorf("nbd: send %s request: %w", cmdName(cl.cmd), err))
		c.mu.Lock()
		err = c.err
		c.mu.Unlock()
		return err
	}
	return nil
}

// wait returns cl's result, or abandons cl when ctx ends first. The reply
// of an abandoned call is still read and checked, but its data dropped.
func (c *Client) wait(ctx context.Context, cl *call) error {
	select {
	case <-cl.done:
		return cl.err
	case <-ctx.Done():
	}
	select {
	case <-cl.done:
		return cl.err
	default:
	}
	if !cl.bufMu.TryLock() {
		// The reader is copying a reply into the caller's buffer. The
		// buffer must be free before we return, and the peer may stall
		// mid-reply, so the connection goes.
		c.fail(fmt.Errorf("nbd: %s abandoned while its data was arriving: %w", cmdName(cl.cmd), context.Cause(ctx)))
		cl.bufMu.Lock()
	}
	cl.abandoned = true
	cl.bufMu.Unlock()
	return fmt.Errorf("nbd: %s at %d: %w", cmdName(cl.cmd), cl.off, context.Cause(ctx))
}

// checkRange validates a request against the export before sending it.
func (c *Client) checkRange(cmd uint16, off, length int64, aligned bool) error {
	if off < 0 || length < 0 || off > c.export.Size-length {
		return invalidRequest("%s [%d,+%d) outside the export of %d bytes", cmdName(cmd), off, length, c.export.Size)
	}
	if m := int64(c.export.MinBlock); aligned && (off%m != 0 || length%m != 0) {
		return invalidRequest("%s [%d,+%d) not aligned to the minimum block size %d", cmdName(cmd), off, length, m)
	}
	return nil
}
