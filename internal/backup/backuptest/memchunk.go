// Package backuptest holds test doubles and conformance suites for the
// contracts declared in package backup: an in-memory ChunkStore, a wrapper
// that injects faults per method, and RunChunkStoreTests, which every
// ChunkStore implementation runs in its tests. It is imported by tests only.
package backuptest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/backstop-pve/backstop/internal/backup"
)

// MemChunkStore is an in-memory backup.ChunkStore that follows the whole
// contract: ids are SHA-256, the all-zero chunk is never stored, Get
// verifies content against the id. It is safe for concurrent use.
type MemChunkStore struct {
	mu     sync.Mutex
	chunks map[backup.ChunkID][]byte // guarded by mu; never aliased outside
	puts   int                       // guarded by mu; stored (non-zero) puts
}

var _ backup.ChunkStore = (*MemChunkStore)(nil)

// NewMemChunkStore returns an empty store.
func NewMemChunkStore() *MemChunkStore {
	return &MemChunkStore{chunks: make(map[backup.ChunkID][]byte)}
}

// Sum returns SHA-256 of data.
func (m *MemChunkStore) Sum(data []byte) backup.ChunkID { return sha256.Sum256(data) }

// Put keeps a copy of data. All-zero data returns 0, nil and is not kept.
func (m *MemChunkStore) Put(ctx context.Context, id backup.ChunkID, data []byte) (int64, error) {
	if isZero(data) {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("backuptest: put %s: %w", id, err)
	}
	c := bytes.Clone(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.chunks[id] = c
	m.puts++
	return int64(len(c)), nil
}

// Get appends the chunk to buf[:0], after checking it still hashes to id.
func (m *MemChunkStore) Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("backuptest: get %s: %w", id, err)
	}
	m.mu.Lock()
	c, ok := m.chunks[id]
	if ok {
		buf = append(buf[:0], c...)
	}
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("backuptest: get %s: %w", id, backup.ErrNotFound)
	}
	if sha256.Sum256(buf) != id {
		return nil, fmt.Errorf("backuptest: get %s: %w", id, backup.ErrChecksum)
	}
	return buf, nil
}

// Delete forgets ids; unknown ids are ignored.
func (m *MemChunkStore) Delete(ctx context.Context, ids []backup.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("backuptest: delete: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		delete(m.chunks, id)
	}
	return nil
}

// Len returns the number of stored chunks.
func (m *MemChunkStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.chunks)
}

// Puts returns how many puts stored data (zero chunks are not counted).
func (m *MemChunkStore) Puts() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.puts
}

// Has reports whether id is stored.
func (m *MemChunkStore) Has(id backup.ChunkID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.chunks[id]
	return ok
}

// IDs returns the stored ids in no particular order.
func (m *MemChunkStore) IDs() []backup.ChunkID {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]backup.ChunkID, 0, len(m.chunks))
	for id := range m.chunks {
		ids = append(ids, id)
	}
	return ids
}

// Corrupt flips one bit of stored chunk id, so that Get reports
// ErrChecksum; it reports whether the chunk was there.
func (m *MemChunkStore) Corrupt(id backup.ChunkID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chunks[id]
	if ok && len(c) > 0 {
		c[len(c)/2] ^= 0x01
	}
	return ok
}

// isZero reports whether p has no non-zero byte: p[0] is zero and every byte
// equals its predecessor (one vectorised compare).
func isZero(p []byte) bool {
	return len(p) == 0 || p[0] == 0 && bytes.Equal(p[1:], p[:len(p)-1])
}
