package backup

import (
	"container/list"
	"context"
	"sync"
)

// ChunkCache keeps decoded chunks in memory for restores: a bounded LRU
// shared by every image and connection, with one fetch per chunk however
// many readers want it at once, and read-ahead that runs a few fetches in
// parallel. Cached slices are shared and must not be modified.
type ChunkCache struct {
	store    ChunkStore
	maxBytes int64
	prefetch chan struct{} // one token per prefetch in flight

	mu       sync.Mutex
	bytes    int64                   // guarded by mu
	lru      *list.List              // guarded by mu; front = most recent; values *cacheEntry
	entries  map[ChunkID]*cacheEntry // guarded by mu
	inflight map[ChunkID]*cacheFetch // guarded by mu
}

type cacheEntry struct {
	id   ChunkID
	data []byte
	elem *list.Element
}

type cacheFetch struct {
	done chan struct{}
	data []byte
	err  error
}

// NewChunkCache returns a cache of at most maxBytes of chunk data that
// runs at most prefetchers read-ahead fetches at once.
func NewChunkCache(store ChunkStore, maxBytes int64, prefetchers int) *ChunkCache {
	return &ChunkCache{
		store: store, maxBytes: maxBytes, prefetch: make(chan struct{}, max(prefetchers, 1)),
		lru: list.New(), entries: map[ChunkID]*cacheEntry{}, inflight: map[ChunkID]*cacheFetch{},
	}
}

// Get returns a chunk's plaintext, from the cache or the store. An error
// is never cached: the next Get tries the store again.
func (c *ChunkCache) Get(ctx context.Context, id ChunkID) ([]byte, error) {
	c.mu.Lock()
	if e := c.entries[id]; e != nil {
		c.lru.MoveToFront(e.elem)
		c.mu.Unlock()
		return e.data, nil
	}
	f := c.inflight[id]
	if f == nil {
		f = &cacheFetch{done: make(chan struct{})}
		c.inflight[id] = f
		c.mu.Unlock()
		// The fetch outlives a caller that gives up: others may wait on it.
		go c.fetch(context.WithoutCancel(ctx), id, f)
	} else {
		c.mu.Unlock()
	}
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Prefetch starts fetching a chunk if it is neither cached nor on its way
// and a read-ahead slot is free; otherwise it does nothing.
func (c *ChunkCache) Prefetch(ctx context.Context, id ChunkID) {
	c.mu.Lock()
	_, cached := c.entries[id]
	_, busy := c.inflight[id]
	if cached || busy {
		c.mu.Unlock()
		return
	}
	select {
	case c.prefetch <- struct{}{}:
	default:
		c.mu.Unlock()
		return
	}
	f := &cacheFetch{done: make(chan struct{})}
	c.inflight[id] = f
	c.mu.Unlock()
	go func() {
		defer func() { <-c.prefetch }()
		c.fetch(context.WithoutCancel(ctx), id, f)
	}()
}

// fetchTimeoutless: fetch runs until the store answers; the store bounds
// its own attempts (retries and per-attempt timeouts).
func (c *ChunkCache) fetch(ctx context.Context, id ChunkID, f *cacheFetch) {
	data, err := c.store.Get(ctx, id, nil)
	c.mu.Lock()
	delete(c.inflight, id)
	if err == nil {
		c.add(id, data)
	}
	c.mu.Unlock()
	f.data, f.err = data, err
	close(f.done)
}

// add inserts a chunk and evicts the least recently used beyond the bound.
// c.mu is held.
func (c *ChunkCache) add(id ChunkID, data []byte) {
	if int64(len(data)) > c.maxBytes {
		return
	}
	e := &cacheEntry{id: id, data: data}
	e.elem = c.lru.PushFront(e)
	c.entries[id] = e
	c.bytes += int64(len(data))
	for c.bytes > c.maxBytes {
		old := c.lru.Back().Value.(*cacheEntry)
		c.lru.Remove(old.elem)
		delete(c.entries, old.id)
		c.bytes -= int64(len(old.data))
	}
}

// Len returns the number of cached chunks and their bytes.
func (c *ChunkCache) Len() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}
