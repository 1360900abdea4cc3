// Package nbd speaks the Network Block Device protocol. Its client side
// pulls disk images from QEMU's NBD exports during a backup; its server
// side serves backed-up disks read-only for restores. The wire code in
// proto.go is shared by both.
//
// # Handshake
//
// Only fixed newstyle negotiation is spoken (oldstyle servers are refused).
// The client asks for structured replies, selects the meta contexts of
// Options.MetaContexts (base:allocation, qemu:dirty-bitmap:NAME) and sends
// GO with a request for block size constraints, falling back to
// EXPORT_NAME when GO is unsupported. Extended headers and TLS are never
// negotiated. Export reports the size, transmission flags, block sizes and
// the contexts the server accepted with their ids.
//
// # Transmission
//
// A Client is safe for concurrent use. Each call (ReadAt, BlockStatus,
// Trim) sends one request under a write lock and waits for its reply; a
// single reader goroutine, owned and waited for by Close, demultiplexes
// replies by cookie. ReadAt reads into the caller's buffer without
// allocating data-sized buffers, so memory in flight is the callers'
// buffers. QEMU serves at most 16 requests per connection at once; more
// are queued in the socket.
//
// Every reply is checked against its request: magic, cookie, chunk types
// and lengths, data and hole chunks inside the request and not
// overlapping, full coverage on success, DONE, and block-status extents
// that are non-empty, consecutive and in bounds. Lengths are capped before
// anything is allocated. A violation wraps ErrProtocol and ends the
// connection; an error reported by the server (*ServerError) fails only
// its request.
//
// # Pulling a dirty bitmap
//
// For PVE's backup access (design notes, nbd-protocol.md §8): Dial
// with Options{MetaContexts: []string{DirtyBitmapContext(name)}}, require
// the context via MetaContextID (missing means the bitmap is gone: read
// everything), map the disk with Extents, read only the extents with
// StateDirty set, and Trim each range once it is stored. With a bitmap
// active, reading a clean range or asking base:allocation about it fails.
//
// # Serving restores
//
// A Server (server*.go; design notes, nbd-protocol.md §9) serves the
// Images that an Exports finds by name. Serve accepts on a listener;
// ServeConn serves one connection, such as the HTTPS upgrade tunnel.
// The handshake is fixed newstyle only: GO and INFO (export size and
// flags, block sizes 1 / 64 KiB / 32 MiB, the name if asked),
// EXPORT_NAME for old clients, LIST (refusable), STRUCTURED_REPLY,
// SET_ and LIST_META_CONTEXT with base:allocation as the only context,
// ABORT, and STARTTLS when a TLS config is given (RequireTLS refuses
// everything else until TLS is up). Everything else is ERR_UNSUP;
// malformed options get ERR_INVALID and the negotiation goes on.
//
// Exports are read-only and immutable: READ_ONLY, SEND_FLUSH,
// CAN_MULTI_CONN (nbdcopy and nbdfuse then open 4 connections) and
// SEND_DF with structured replies. WRITE, TRIM and WRITE_ZEROES fail
// with EPERM (a WRITE payload is read and dropped); requests out of
// bounds, over 32 MiB or with unknown commands or flags fail with
// EINVAL; a bad request magic closes the connection.
//
// One goroutine reads requests; up to MaxRequestsInFlight workers serve
// them and write each reply whole under one lock, so replies leave in
// completion order, matched by cookie. Nothing about a READ is sent
// before its data has been read: with structured replies, ranges the
// Image reports as zero go out as OFFSET_HOLE chunks without being read,
// data is read in segments of up to 4 MiB and each segment sent as
// OFFSET_DATA chunks, and a failed ReadAt ends the reply with an ERROR
// chunk (EIO), so the client fails that request, never sees wrong bytes,
// and keeps the connection. With simple replies the whole READ is
// buffered first and a failure is an error reply without data.
// BLOCK_STATUS answers base:allocation from Image.Extents (REQ_ONE
// honoured). DISC, EOF and Shutdown stop the reading and let in-flight
// replies finish before the connection closes; cancelling the context
// closes it at once. A panic ends only its connection.
package nbd
