package nbd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// serverConn is one client connection of a Server. The serving goroutine
// owns the handshake state; once transmission starts, the fields above
// wmu are fixed and read by the request workers.
type serverConn struct {
	srv    *Server
	raw    net.Conn // as accepted; closing it ends everything
	conn   net.Conn // raw, or the TLS connection after STARTTLS
	br     *bufio.Reader
	bw     *bufio.Writer // handshake replies
	remote net.Addr
	log    *slog.Logger

	ctx    context.Context // ends when the connection ends; closes raw
	cancel context.CancelFunc
	done   chan struct{} // closed when ServeConn returns

	// stopping is set by Shutdown: read no further requests.
	stopping atomic.Bool

	// Negotiated state.
	noZeroes   bool
	tls        bool
	structured bool
	metaExport string // export named by the last SET_META_CONTEXT
	metaBase   bool   // base:allocation selected for metaExport
	name       string // the export in transmission
	img        Image
	release    func()
	size       int64
	flags      Flags

	budget *semaphore.Weighted // read buffer bytes in flight

	wmu  sync.Mutex // serialises reply writes: each reply or chunk goes out whole
	werr error      // guarded by wmu: the first write error; later replies are dropped
}

func newServerConn(s *Server, ctx context.Context, c net.Conn) *serverConn {
	ctx, cancel := context.WithCancel(ctx)
	sc := &serverConn{
		srv:    s,
		raw:    c,
		conn:   c,
		remote: c.RemoteAddr(),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		budget: semaphore.NewWeighted(maxConnBufferBytes),
	}
	sc.log = s.log.With("remote", addrString(sc.remote))
	// Socket I/O takes no context: cancelling closes the socket instead.
	context.AfterFunc(ctx, func() { c.Close() })
	return sc
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// serve runs the handshake and then transmission. Panics end the
// connection, not the process.
func (c *serverConn) serve() {
	defer c.raw.Close()
	defer c.releaseImage()
	defer func() {
		if v := recover(); v != nil {
			c.srv.recovered(c.ctx, c.log, v)
		}
	}()
	c.br = bufio.NewReaderSize(c.conn, 64<<10)
	c.bw = bufio.NewWriterSize(c.conn, 4<<10)
	ok, err := c.handshake()
	if !ok {
		if err != nil && !errors.Is(err, errAbort) {
			c.log.DebugContext(c.ctx, "nbd: handshake ended", "err", err)
		}
		return
	}
	c.bw = nil
	c.log = c.log.With("export", c.name)
	c.log.InfoContext(c.ctx, "nbd: export opened", "size", c.size, "structured", c.structured, "tls", c.tls)
	c.transmit()
	c.log.InfoContext(c.ctx, "nbd: export closed")
}

func (c *serverConn) releaseImage() {
	if c.release != nil {
		c.release()
		c.release = nil
	}
}

// stopReading makes the serving goroutine stop reading: a handshake
// fails, a transmission stops taking requests and finishes those it has.
func (c *serverConn) stopReading() {
	c.stopping.Store(true)
	_ = c.raw.SetReadDeadline(time.Now())
}

// readEnded reports whether a failed read is an orderly end (hang-up,
// Shutdown, cancellation) rather than something worth logging.
func (c *serverConn) readEnded(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil ||
		(c.stopping.Load() && errors.Is(err, os.ErrDeadlineExceeded))
}

// write sends one complete reply (all of bufs) under the write lock. After
// a failed write the connection is closed and later replies are dropped.
func (c *serverConn) write(bufs net.Buffers) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.srv.opts.WriteTimeout))
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.werr = err
		if c.ctx.Err() == nil {
			c.log.DebugContext(c.ctx, "nbd: write reply", "err", err)
		}
		c.cancel()
		return err
	}
	return nil
}
