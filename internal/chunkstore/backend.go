package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// blobStore holds raw objects by key. Implementations translate their errors
// at this edge: a missing object is backup.ErrNotFound, a full disk
// backup.ErrStorageFull, a backend that stays unreachable after retries
// backup.ErrUnavailable; every error starts with "chunkstore: <op> <key>".
// All methods are safe for concurrent use.
type blobStore interface {
	// Put stores data under key, replacing any object there. It returns
	// once the object is durable and does not keep data.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the object, reusing buf's capacity when it suffices.
	// Objects larger than limit are not read (errTooLarge).
	Get(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error)
	// Delete removes objects; missing keys are not an error.
	Delete(ctx context.Context, keys []string) error
	// List calls fn with every key starting with prefix, in no particular
	// order; an error from fn stops it. It is slow on large repositories:
	// for tests and as a garbage-collection fallback only.
	List(ctx context.Context, prefix string, fn func(key string) error) error
	// Ping checks that the backend is reachable and the bucket or
	// directory exists.
	Ping(ctx context.Context) error
	// Close releases idle connections; in-flight calls must have returned.
	Close() error
}

// errTooLarge marks an object above the reader's limit; the Store reports it
// as backup.ErrChecksum for chunks (no envelope can be that long).
var errTooLarge = errors.New("object too large")

// readObject reads an object of the announced size (-1: unknown) from r into
// buf, refusing more than limit bytes.
func readObject(r io.Reader, size, limit int64, buf []byte) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errTooLarge, size, limit)
	}
	if size >= 0 {
		if int64(cap(buf)) < size {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return buf, nil
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, fmt.Errorf("%w: over %d bytes", errTooLarge, limit)
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
