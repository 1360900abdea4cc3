// Package nbd speaks the Network Block Device protocol. Its client side
// pulls disk images from QEMU's NBD exports during a backup; the wire code
// in proto.go is shared with the server side that serves restores.
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
package nbd
