package chunkstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Store is a chunk store over an S3 bucket or a local directory. It is safe
// for concurrent use. Open it with Open; Close it when done.
type Store struct {
	blobs     blobStore
	codec     *codec
	log       *slog.Logger
	maxChunk  int
	maxObject int64
	bufs      sync.Pool // of *[]byte, envelope scratch; each Put/Get holds one
}

var _ backup.ChunkStore = (*Store)(nil)

// Open connects to the repository cfg.URL names, creating the bucket or
// directory and the repository marker if missing, and checks that the
// marker agrees with cfg.EncryptionKey. logger may be nil.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	loc, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	codec, err := newCodec(cfg.EncryptionKey, !cfg.DisableCompression, cfg.MaxChunkSize)
	if err != nil {
		return nil, err
	}
	var blobs blobStore
	switch loc.Scheme {
	case "s3":
		blobs, err = openS3Store(ctx, loc, cfg, logger)
	default:
		blobs, err = openFileStore(loc.Path)
	}
	if err != nil {
		return nil, err
	}
	s := newStore(blobs, codec, logger, cfg)
	if err := s.checkMarker(ctx); err != nil {
		blobs.Close()
		return nil, err
	}
	logger.InfoContext(ctx, "chunkstore: opened", "store", loc.String(), "encrypted", codec.encrypted(),
		"compression", codec.compress)
	return s, nil
}

func newStore(blobs blobStore, codec *codec, logger *slog.Logger, cfg Config) *Store {
	return &Store{blobs: blobs, codec: codec, log: logger, maxChunk: cfg.MaxChunkSize, maxObject: cfg.MaxObjectSize}
}

// Close releases the backend's idle connections. Calls in flight must have
// returned.
func (s *Store) Close() error { return s.blobs.Close() }

// Encrypted reports whether chunks are sealed with AES-256-GCM.
func (s *Store) Encrypted() bool { return s.codec.encrypted() }

// Sum returns the id of data: SHA-256, or HMAC-SHA-256 under a key derived
// from the encryption key. It is safe for concurrent use.
func (s *Store) Sum(data []byte) backup.ChunkID { return s.codec.sum(data) }

// Put stores data under id, which must be Sum(data): Put does not hash again
// (the caller just did), and a wrong id is caught by Get as ErrChecksum.
// All-zero data is not stored: Put returns 0, nil without touching the
// backend. Otherwise it returns the envelope size once the chunk is durable.
// Put is idempotent and safe for concurrent calls with the same id.
func (s *Store) Put(ctx context.Context, id backup.ChunkID, data []byte) (int64, error) {
	if isZero(data) {
		return 0, nil
	}
	if len(data) > s.maxChunk {
		return 0, fmt.Errorf("chunkstore: put %s: %w", id,
			backup.Errorf(backup.ErrInvalid, "chunk is %d bytes, the limit is %d", len(data), s.maxChunk))
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("chunkstore: put %s: %w", id, err)
	}
	sp := s.scratch()
	defer s.bufs.Put(sp)
	env := s.codec.encode(id, data, *sp)
	*sp = env[:0]
	if err := s.blobs.Put(ctx, chunkKey(id), env); err != nil {
		return 0, err
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.DebugContext(ctx, "chunkstore: stored chunk", "chunk_id", id.String(), "bytes", len(data),
			"stored_bytes", len(env), "compressed", env[5]&flagZstd != 0)
	}
	return int64(len(env)), nil
}

// Get returns the plaintext of chunk id, appended to buf[:0] (buf's capacity
// is reused when it suffices). A missing chunk is backup.ErrNotFound; one
// that fails any check of its envelope or does not hash to id is
// backup.ErrChecksum.
func (s *Store) Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("chunkstore: get %s: %w", id, err)
	}
	sp := s.scratch()
	defer s.bufs.Put(sp)
	obj, err := s.blobs.Get(ctx, chunkKey(id), *sp, int64(s.maxChunk)+envelopeOverhead)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("chunkstore: chunk %s: %w: %w", id, backup.ErrChecksum, err)
		}
		return nil, err
	}
	*sp = obj[:0]
	return s.codec.decode(id, obj, buf)
}

// Delete removes chunks; ids that do not exist are not an error.
func (s *Store) Delete(ctx context.Context, ids []backup.ChunkID) error {
	if len(ids) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunkstore: delete: %w", err)
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = chunkKey(id)
	}
	return s.blobs.Delete(ctx, keys)
}

// ListChunks calls fn with the id of every stored chunk, in no particular
// order, until fn returns an error. It lists the whole bucket: for tests and
// as a garbage-collection fallback when the catalog cannot be trusted.
func (s *Store) ListChunks(ctx context.Context, fn func(backup.ChunkID) error) error {
	return s.blobs.List(ctx, chunkPrefix, func(key string) error {
		id, err := backup.ParseChunkID(key[strings.LastIndexByte(key, '/')+1:])
		if err != nil || chunkKey(id) != key {
			s.log.WarnContext(ctx, "chunkstore: foreign object under chunks/", "key", key)
			return nil
		}
		return fn(id)
	})
}

// Ping checks that the backend answers and the bucket or directory exists
// (for readiness probes).
func (s *Store) Ping(ctx context.Context) error { return s.blobs.Ping(ctx) }

func (s *Store) scratch() *[]byte {
	if p, ok := s.bufs.Get().(*[]byte); ok {
		return p
	}
	return new([]byte)
}

const chunkPrefix = "chunks/"

// chunkKey returns "chunks/<hex[0:4]>/<hex>".
func chunkKey(id backup.ChunkID) string {
	var b [len(chunkPrefix) + 4 + 1 + 2*len(id)]byte
	n := copy(b[:], chunkPrefix)
	hex.Encode(b[n+5:], id[:])
	copy(b[n:n+4], b[n+5:n+9])
	b[n+4] = '/'
	return string(b[:])
}

// zeroPage is compared against in isZero; never written.
var zeroPage [64 << 10]byte

// isZero reports whether p has no non-zero byte (true for empty p). It runs
// at memory speed (bytes.Equal is vectorised) and stops at the first
// non-zero page.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroPage))
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// Repository marker (doc.go).
const (
	markerKey    = "backstop-repository"
	markerFormat = "backstop-chunkstore"
)

type marker struct {
	Format    string `json:"format"`
	Version   int    `json:"version"`
	Encrypted bool   `json:"encrypted"`
	KeyCheck  string `json:"key_check,omitempty"`
}

// checkMarker writes the marker of a new repository, or checks an existing
// one against the configured key. The marker's content depends only on the
// key, so replicas racing to create it write the same bytes.
func (s *Store) checkMarker(ctx context.Context) error {
	want := marker{Format: markerFormat, Version: 1, Encrypted: s.codec.encrypted()}
	if want.Encrypted {
		want.KeyCheck = hex.EncodeToString(s.codec.keyCheck)
	}
	b, err := s.blobs.Get(ctx, markerKey, nil, 1<<16)
	if errors.Is(err, backup.ErrNotFound) {
		data, err := json.Marshal(want)
		if err != nil {
			return fmt.Errorf("chunkstore: repository marker: %w", err)
		}
		if err := s.blobs.Put(ctx, markerKey, data); err != nil {
			return err
		}
		s.log.InfoContext(ctx, "chunkstore: initialised repository", "encrypted", want.Encrypted)
		return nil
	}
	if err != nil {
		return err
	}
	var got marker
	if err := json.Unmarshal(b, &got); err != nil || got.Format != markerFormat {
		return fmt.Errorf("chunkstore: %s is not a Backstop repository marker: %w", markerKey, backup.ErrInvalid)
	}
	switch {
	case got.Version != want.Version:
		return fmt.Errorf("chunkstore: repository version %d is not supported (want %d): %w", got.Version, want.Version, backup.ErrInvalid)
	case got.Encrypted && !want.Encrypted:
		return fmt.Errorf("chunkstore: repository is encrypted but no encryption key is configured: %w", backup.ErrInvalid)
	case !got.Encrypted && want.Encrypted:
		return fmt.Errorf("chunkstore: repository is not encrypted but an encryption key is configured: %w", backup.ErrInvalid)
	case got.KeyCheck != want.KeyCheck:
		return fmt.Errorf("chunkstore: the encryption key does not match the repository's: %w", backup.ErrInvalid)
	}
	return nil
}
