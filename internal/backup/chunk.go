package backup

import (
	"context"
	"encoding/hex"
	"fmt"
)

// ChunkID addresses a chunk: SHA-256 of its plaintext, or a keyed digest
// when the repository is encrypted.
type ChunkID [32]byte

// String returns the lowercase hex form used in object keys and the API.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero value (no chunk).
func (id ChunkID) IsZero() bool { return id == ChunkID{} }

// ParseChunkID parses the 64-digit hex form.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	if len(s) != 2*len(id) {
		return id, Errorf(ErrInvalid, "chunk id %q: want %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, Errorf(ErrInvalid, "chunk id %q: %v", s, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler.
func (id ChunkID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ChunkID) UnmarshalText(b []byte) error {
	v, err := ParseChunkID(string(b))
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	*id = v
	return nil
}

// ChunkStore keeps chunks durably, addressed by id.
//
// Contract (checked by backuptest.RunChunkStoreTests):
//   - Sum is pure and safe for concurrent use; it is the only way to name data.
//   - Put is idempotent: concurrent and repeated puts of the same id are safe
//     and leave one readable chunk. A nil error means the chunk is durable
//     (read-after-write). Put never keeps data after it returns. The returned
//     size is the number of bytes written to the backend (envelope included),
//     or 0 when data is all zero, which is never stored.
//   - Get returns the plaintext, verified against id; it may reuse buf's
//     capacity. A missing chunk is ErrNotFound, a damaged one ErrChecksum.
//     The all-zero chunk is never fetched: callers know it from the index.
//   - Delete removes chunks; ids that do not exist are not an error.
//   - Transient backend failures are retried inside; what comes out is
//     ErrUnavailable (backend down), ErrStorageFull, or another error.
type ChunkStore interface {
	Sum(data []byte) ChunkID
	Put(ctx context.Context, id ChunkID, data []byte) (stored int64, err error)
	Get(ctx context.Context, id ChunkID, buf []byte) ([]byte, error)
	Delete(ctx context.Context, ids []ChunkID) error
}
