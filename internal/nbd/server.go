package nbd

// The server side: read-only exports for restores (design notes,
// nbd-protocol.md §9). server.go holds the API and the server's
// lifecycle, server_conn.go a connection's, server_handshake.go the
// option negotiation, server_transmission.go and server_read.go the
// requests.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Image is the content of one read-only export.
//
// Its methods are called concurrently: up to
// ServerOptions.MaxRequestsInFlight calls per connection, from every
// connection the image is open on. ctx ends when the connection ends (the
// client left, the server shuts down). Ranges passed in always lie inside
// [0, Size()).
type Image interface {
	// Size is the export size in bytes; it must not change while the
	// image is open.
	Size() int64
	// ReadAt fills p with the bytes at off, or returns an error. It must
	// never return nil with wrong bytes in p: the server sends p as it is.
	// A failed ReadAt fails only its request (the client gets EIO). p
	// belongs to the server and must not be kept after ReadAt returns.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// Extents describes [off, off+length) with base:allocation flags:
	// StateZero (usually with StateHole) marks ranges that read as
	// zeroes, which the server sends as holes without calling ReadAt;
	// 0 marks data. Reporting everything as data (one extent, flags 0)
	// is always correct. The extents must be non-empty and consecutive,
	// the first starting at off; they may stop short of off+length (the
	// server asks again for the rest) or run past it (clipped), but there
	// must be at least one. An error fails the request.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Exports finds the images a Server offers. Its methods are called during
// handshakes, concurrently for different connections.
type Exports interface {
	// Lookup opens the export called name ("" is the default export) for
	// a client at remote. An export that does not exist, has expired or
	// is not for this client is an error wrapping ErrUnknownExport (the
	// client sees an unknown export); other errors are logged and look
	// the same to the client.
	//
	// Each successful Lookup is paired with exactly one call of release
	// (which may be nil), made once the server no longer uses the image:
	// at once for the handshake's INFO and meta-context questions, when
	// the connection ends for the export the client chose. So one
	// connection may look an export up several times.
	Lookup(ctx context.Context, name string, remote net.Addr) (img Image, release func(), err error)
	// List returns the export names shown to remote for NBD_OPT_LIST. A
	// nil slice (or an error, which is logged) refuses listing; an empty
	// non-nil slice lists nothing.
	List(ctx context.Context, remote net.Addr) ([]string, error)
}

// ServerOptions configure a Server. The zero value serves plain NBD with
// the defaults below.
type ServerOptions struct {
	// TLSConfig enables NBD_OPT_STARTTLS; it needs a certificate. Nil
	// answers STARTTLS with ERR_POLICY.
	TLSConfig *tls.Config
	// RequireTLS refuses every option except STARTTLS and ABORT with
	// ERR_TLS_REQD (and closes on EXPORT_NAME) until TLS is up. Without a
	// TLSConfig nobody can then reach an export.
	RequireTLS bool
	// Logger receives connection events and failures; nil discards.
	Logger *slog.Logger
	// MaxRequestsInFlight bounds the requests served at once per
	// connection; further requests wait in the socket. Default 16.
	MaxRequestsInFlight int
	// HandshakeTimeout bounds the negotiation, TLS included. Default 30 s.
	HandshakeTimeout time.Duration
	// WriteTimeout ends a connection whose client does not take a reply
	// for this long. Default 2 minutes.
	WriteTimeout time.Duration
}

// Defaults of ServerOptions.
const (
	defaultMaxRequestsInFlight = 16
	defaultHandshakeTimeout    = 30 * time.Second
	defaultWriteTimeout        = 2 * time.Minute
)

// Server serves read-only NBD exports: fixed newstyle negotiation with
// GO/INFO, LIST, structured replies, base:allocation block status and
// optional TLS; replies are sent per request as each completes.
//
// Memory: each connection holds at most maxConnBufferBytes (64 MiB) of
// read buffers, less with structured replies (requests are read in
// segments of readSegment, 4 MiB, and sent as they complete).
type Server struct {
	exports Exports
	opts    ServerOptions // defaults applied
	log     *slog.Logger
	active  atomic.Int64

	mu        sync.Mutex
	shutdown  bool                      // guarded by mu
	listeners map[net.Listener]struct{} // guarded by mu
	conns     map[*serverConn]struct{}  // guarded by mu

	// onPanic, when set (tests), also receives recovered panics.
	onPanic func(v any)
}

// NewServer returns a server for exports. opts is copied.
func NewServer(exports Exports, opts ServerOptions) *Server {
	if opts.MaxRequestsInFlight <= 0 {
		opts.MaxRequestsInFlight = defaultMaxRequestsInFlight
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = defaultWriteTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		exports:   exports,
		opts:      opts,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}
}

// ActiveConns returns how many connections are being served, handshakes
// included.
func (s *Server) ActiveConns() int64 { return s.active.Load() }

// Serve accepts connections on l and serves each in its own goroutine
// until ctx ends or Shutdown is called; then it closes l, waits for its
// connections to end and returns nil. Cancelling ctx also closes every
// connection Serve accepted. Other accept errors are returned (after the
// connections have ended); temporary ones are retried.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if !s.trackListener(l) {
		l.Close()
		return nil
	}
	defer s.untrackListener(l)
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err == nil {
			backoff = 0
			wg.Go(func() { s.ServeConn(ctx, c) })
			continue
		}
		if ctx.Err() != nil || s.isShutdown() {
			return nil
		}
		if !retryableAccept(err) {
			l.Close()
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		s.log.WarnContext(ctx, "nbd: accept failed; retrying", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
	}
}

func retryableAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// ServeConn serves one connection (for example an upgraded HTTP
// tunnel) in the calling goroutine and returns when it has ended. It owns
// c and closes it. Cancelling ctx closes the connection at once.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	sc := newServerConn(s, ctx, c)
	defer sc.cancel()
	if !s.trackConn(sc) {
		c.Close()
		return
	}
	s.active.Add(1)
	defer func() {
		s.untrackConn(sc)
		s.active.Add(-1)
		close(sc.done)
	}()
	sc.serve()
}

// Shutdown stops the listeners of Serve and refuses new connections, then
// winds down the open ones: handshakes are cut off, and in transmission
// no further request is read while those already read are answered; then
// each connection closes. Clients see the connection end (QEMU reconnects,
// nbdfuse reports I/O errors). When ctx ends first, the remaining
// connections are closed at once and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.stopReading()
	}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns {
				c.cancel()
			}
			return fmt.Errorf("nbd: shutdown: %w", context.Cause(ctx))
		}
	}
	return nil
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func (s *Server) trackListener(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrackListener(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) trackConn(c *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrackConn(c *serverConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// recovered logs a panic of a connection's goroutine; the caller then
// ends the connection.
func (s *Server) recovered(ctx context.Context, log *slog.Logger, v any) {
	log.ErrorContext(ctx, "nbd: panic while serving a connection; connection closed",
		"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if s.onPanic != nil {
		s.onPanic(v)
	}
}
