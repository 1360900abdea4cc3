// Package backup holds Backstop's domain: the types every other package
// shares (chunk ids, snapshots, tokens, tasks), the error kinds the HTTP layer
// maps to status codes, and the contracts of the outbound adapters (the chunk
// store and the catalog). It imports no driver: no SQL, S3 or protocol code.
//
// # Chunks
//
// A chunk is a run of bytes addressed by its ChunkID: SHA-256 of the
// plaintext, or HMAC-SHA-256 under the repository key when server-side
// encryption is on, so equal data under different keys never shares an id.
// The all-zero chunk of a fixed index is never stored: its id is recorded in
// the index and readers synthesise zeros.
//
// # Snapshots
//
// A backup session becomes a snapshot when it is committed. A snapshot is
// visible only once every chunk it references is durable and its indexes are
// stored (invariant 1 of the architecture).
package backup
