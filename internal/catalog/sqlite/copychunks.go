package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/backup"
)

// ChunkSource is what CopyChunks reads (a *chunkstore.Store).
type ChunkSource interface {
	Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error)
	GetObject(ctx context.Context, key string) ([]byte, error)
}

// ChunkTarget is what CopyChunks writes (a *chunkstore.Store opened with the
// same encryption key as the source, so chunk ids stay the same).
type ChunkTarget interface {
	Sum(data []byte) backup.ChunkID
	Put(ctx context.Context, id backup.ChunkID, data []byte) (int64, error)
	PutObject(ctx context.Context, key string, data []byte) error
}

// ChunkCopyReport says what CopyChunks copied.
type ChunkCopyReport struct {
	Chunks      int64 // chunks stored in the target
	Bytes       int64 // their plaintext bytes
	StoredBytes int64 // what the target stored for them
	// SizeChanged counts chunks whose stored size in the target differs
	// from the catalog's (other compression settings): accounting figures
	// stay those of the source until the chunks are stored again.
	SizeChanged int64
	// BadSkipped counts chunks marked bad (verification found them damaged
	// or missing) that could not be read: they are not copied, as they were
	// not usable; the next backup stores them again.
	BadSkipped int64
	Indexes    int64 // index objects of disks and archives
}

// CopyChunks copies into to every chunk the catalog s records as stored
// (pending and deleting ones are not part of the repository) and the index
// object of every disk and archive, reading them from from. Each chunk is
// verified on the way (Get checks its checksum) and must keep its id in
// the target (same encryption key), else the copy stops. Copies are
// idempotent, so a run that failed can be repeated. workers bounds the
// concurrent transfers.
func (s *Store) CopyChunks(ctx context.Context, from ChunkSource, to ChunkTarget, workers int, logger *slog.Logger) (ChunkCopyReport, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	type chunk struct {
		id     backup.ChunkID
		stored int64
		bad    bool
	}
	var chunks []chunk
	var keys []string
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		chunks, err = collect(ctx, tx, func(r *sql.Rows) (chunk, error) {
			var c chunk
			var id []byte
			err := r.Scan(&id, &c.stored, &c.bad)
			c.id = backup.ChunkID(id)
			return c, err
		}, `SELECT id, stored_size, bad FROM chunks WHERE NOT pending AND NOT deleting ORDER BY id`)
		if err != nil {
			return err
		}
		keys, err = collect(ctx, tx, func(r *sql.Rows) (string, error) {
			var k string
			return k, r.Scan(&k)
		}, `SELECT index_key FROM disks UNION SELECT index_key FROM archives ORDER BY 1`)
		return err
	})
	if err != nil {
		return ChunkCopyReport{}, wrapf(err, "copy chunks: list")
	}

	var rep ChunkCopyReport
	var copied, plain, stored, changed, skipped, indexes atomic.Int64
	bufs := sync.Pool{New: func() any { return new([]byte) }}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	for _, c := range chunks {
		g.Go(func() error {
			bp := bufs.Get().(*[]byte)
			defer bufs.Put(bp)
			data, err := from.Get(gctx, c.id, *bp)
			if err != nil {
				if c.bad && (errors.Is(err, backup.ErrChecksum) || errors.Is(err, backup.ErrNotFound)) {
					skipped.Add(1)
					logger.WarnContext(gctx, "catalog: bad chunk not copied", "chunk_id", c.id.String(), "err", err)
					return nil
				}
				return fmt.Errorf("read chunk %s: %w", c.id, err)
			}
			*bp = data[:0]
			if to.Sum(data) != c.id {
				return fmt.Errorf("chunk %s would get another id in the target: %w", c.id,
					backup.Errorf(backup.ErrInvalid, "the target store must use the source's encryption key"))
			}
			n, err := to.Put(gctx, c.id, data)
			if err != nil {
				return fmt.Errorf("write chunk %s: %w", c.id, err)
			}
			copied.Add(1)
			plain.Add(int64(len(data)))
			stored.Add(n)
			if n != c.stored {
				changed.Add(1)
			}
			return nil
		})
	}
	for _, k := range keys {
		g.Go(func() error {
			data, err := from.GetObject(gctx, k)
			if err != nil {
				return fmt.Errorf("read index %s: %w", k, err)
			}
			if err := to.PutObject(gctx, k, data); err != nil {
				return fmt.Errorf("write index %s: %w", k, err)
			}
			indexes.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return ChunkCopyReport{}, fmt.Errorf("catalog: copy chunks: %w", err)
	}
	rep.Chunks, rep.Bytes, rep.StoredBytes = copied.Load(), plain.Load(), stored.Load()
	rep.SizeChanged, rep.BadSkipped, rep.Indexes = changed.Load(), skipped.Load(), indexes.Load()
	return rep, nil
}
