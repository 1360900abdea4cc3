package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Garbage collection is driven by the catalog's reference counts: no LIST of
// the bucket. A chunk is collected when no committed snapshot references it
// and nothing has touched it since the cutoff (see GCCutoff): running
// backups touch every chunk they use after their session opened, so GC
// never takes one of theirs, whatever the grace period.
//
// A run: discard abandoned sessions; finish claims left by a GC that died;
// then repeatedly claim a batch (rows become deleting, invisible to dedup
// and commits), delete the objects in one DeleteObjects request, delete the
// rows. A writer that wants a deleting chunk waits until its row is gone
// and uploads it afresh (reserveChunks).

// GCConfig tunes garbage collection.
type GCConfig struct {
	// Grace is how long an unreferenced chunk is kept after its last touch
	// when a run does not say otherwise.
	Grace time.Duration
	// SessionTimeout is the age at which an open backup session with no
	// running task counts as abandoned and is discarded by GC, so that a
	// crashed backup does not hold the cutoff back forever.
	SessionTimeout time.Duration
	// Batch is how many chunks are claimed and deleted at once (S3 deletes
	// up to 1000 objects per request); Parallel is how many batches are
	// being deleted at once.
	Batch    int
	Parallel int
	// DeleteTimeout bounds the deletion of one batch's objects, and
	// StaleClaim is the age at which a claim counts as left by a GC that
	// died. StaleClaim must exceed DeleteTimeout by a margin: a delete
	// request of a GC that lost its lock must be over before another GC
	// forgets those rows and a writer stores the chunks again.
	DeleteTimeout time.Duration
	StaleClaim    time.Duration
}

// DefaultGCConfig returns the defaults: 24 h grace, 36 h session timeout,
// batches of 1000, 8 deleted at once.
func DefaultGCConfig() GCConfig {
	return GCConfig{Grace: 24 * time.Hour, SessionTimeout: 36 * time.Hour, Batch: 1000, Parallel: 8,
		DeleteTimeout: 5 * time.Minute, StaleClaim: 15 * time.Minute}
}

// GCResult is what a GC run did.
type GCResult struct {
	Sessions int   // abandoned sessions discarded
	Chunks   int64 // chunks deleted
	Bytes    int64 // their stored bytes
}

// StartGC starts a GC task; grace nil means the configured one. Another GC
// running anywhere is ErrConflict.
func (s *Service) StartGC(ctx context.Context, grace *time.Duration) (Task, error) {
	g := s.cfg.GC.Grace
	if grace != nil {
		g = *grace
	}
	return s.startGC(ctx, g, 0)
}

func (s *Service) startGC(ctx context.Context, grace time.Duration, gap time.Duration) (Task, error) {
	if grace < 0 {
		return Task{}, Errorf(ErrInvalid, "grace %v is negative", grace)
	}
	return s.startMaintenance(ctx, TaskGC, "", gap, func(ctx context.Context, lock Lock, p *taskProgress, tlog func(string, ...any)) error {
		res, err := s.runGC(ctx, lock, grace, p, tlog)
		s.metrics.gcFreed.Add(ctx, res.Bytes)
		s.metrics.gcChunks.Add(ctx, res.Chunks)
		return err
	})
}

func (s *Service) runGC(ctx context.Context, lock Lock, grace time.Duration, p *taskProgress, tlog func(string, ...any)) (GCResult, error) {
	start := s.now()
	var res GCResult
	n, err := s.discardAbandoned(ctx, tlog)
	res.Sessions = n
	if err != nil {
		return res, err
	}
	// Claims left by a GC that died: their objects may be half deleted, so
	// they are only ever finished, never released.
	for {
		batch, err := s.catalog.StaleClaims(ctx, s.cfg.GC.StaleClaim, s.cfg.GC.Batch)
		if err != nil {
			return res, err
		}
		if len(batch) == 0 {
			break
		}
		p.total.Add(int64(len(batch)))
		n, size, err := s.collect(ctx, lock, batch, p)
		res.Chunks, res.Bytes = res.Chunks+n, res.Bytes+size
		if err != nil {
			return res, err
		}
		tlog("finished %d chunk deletions left by an interrupted GC", len(batch))
		if len(batch) < s.cfg.GC.Batch {
			break
		}
	}
	cutoff, err := s.catalog.GCCutoff(ctx, grace)
	if err != nil {
		return res, err
	}
	todo, todoBytes, err := s.catalog.CountCollectable(ctx, cutoff)
	if err != nil {
		return res, err
	}
	p.total.Add(todo)
	tlog("collecting chunks unreferenced and untouched since %s (grace %s): %d chunks, %s",
		cutoff.Format(time.RFC3339), grace, todo, formatBytes(todoBytes))
	s.hook("gc:cutoff")
	if err := s.collectAll(ctx, lock, cutoff, p, &res); err != nil {
		tlog("removed %d chunks, freed %s before it stopped", res.Chunks, formatBytes(res.Bytes))
		return res, err
	}
	el := s.now().Sub(start)
	tlog("removed %d chunks, freed %s in %.1fs", res.Chunks, formatBytes(res.Bytes), el.Seconds())
	return res, nil
}

// collectAll claims batches in id order and deletes them, Parallel at a
// time: the claims are quick, the object deletes are what takes time.
func (s *Service) collectAll(ctx context.Context, lock Lock, cutoff time.Time, p *taskProgress, res *GCResult) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(s.cfg.GC.Parallel, 1))
	var mu sync.Mutex // guards res while batches run
	var after ChunkID
	var err error
	for {
		var batch []ChunkInfo
		if batch, err = s.catalog.ClaimChunks(gctx, cutoff, after, s.cfg.GC.Batch); err != nil || len(batch) == 0 {
			break
		}
		for _, c := range batch {
			if bytes.Compare(c.ID[:], after[:]) > 0 {
				after = c.ID
			}
		}
		s.hook("gc:claimed")
		g.Go(func() error {
			n, size, err := s.collect(gctx, lock, batch, p)
			mu.Lock()
			res.Chunks, res.Bytes = res.Chunks+n, res.Bytes+size
			mu.Unlock()
			return err
		})
	}
	if werr := g.Wait(); werr != nil {
		return werr // the cause; a claim that failed after it saw only the cancellation
	}
	return err
}

// discardAbandoned discards open sessions older than the session timeout
// that have no running task.
func (s *Service) discardAbandoned(ctx context.Context, tlog func(string, ...any)) (int, error) {
	if s.cfg.GC.SessionTimeout <= 0 {
		return 0, nil
	}
	sessions, err := s.catalog.AbandonedSessions(ctx, s.now().Add(-s.cfg.GC.SessionTimeout))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sess := range sessions {
		reason := fmt.Sprintf("abandoned: not committed within %s of its start", s.cfg.GC.SessionTimeout)
		if why := s.FailedTaskReason(ctx, sess.ID); why != "" {
			reason += "; " + why
		}
		err := s.Discard(ctx, sess, reason)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			continue // committed or discarded meanwhile
		}
		if err != nil {
			return n, err
		}
		n++
		tlog("discarded abandoned backup session %s (%s in %s, opened %s)", sess.ID, sess.Name, sess.Namespace,
			sess.CreatedAt.Format(time.RFC3339))
	}
	return n, nil
}

// collect deletes the objects of claimed chunks, then their rows. The
// objects go only while the GC lock is certainly held. When they cannot be
// deleted, the claims are released and the chunks marked bad: some objects
// may be gone, so dedup must not trust any of them until stored again.
func (s *Service) collect(ctx context.Context, lock Lock, batch []ChunkInfo, p *taskProgress) (chunks, bytes int64, err error) {
	ids := make([]ChunkID, len(batch))
	var size int64
	for i, c := range batch {
		ids[i] = c.ID
		size += c.StoredSize
	}
	err = lock.Check(ctx)
	if err == nil {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.GC.DeleteTimeout)
		err = s.chunks.Delete(dctx, ids)
		cancel()
	}
	// The objects are gone or in doubt: what follows must happen even if
	// the run is being cancelled.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err != nil {
		if rerr := s.catalog.ReleaseChunks(fctx, ids); rerr != nil {
			err = errors.Join(err, fmt.Errorf("release claims: %w", rerr))
		}
		return 0, 0, fmt.Errorf("delete %d chunk objects: %w", len(ids), err)
	}
	s.hook("gc:deleted")
	n, err := s.catalog.ForgetChunks(fctx, ids)
	if err != nil {
		return 0, 0, fmt.Errorf("forget %d deleted chunks: %w", len(ids), err)
	}
	if n != int64(len(ids)) {
		s.log.WarnContext(ctx, "gc: some claimed chunk rows were already gone", "claimed", len(ids), "forgotten", n)
	}
	p.done.Add(int64(len(ids)))
	return int64(len(ids)), size, nil
}

// reserveChunks reserves chunks before their upload, waiting while GC is
// deleting some of them: once GC has deleted their rows they are reserved
// afresh. It gives up after wait (ErrChunksDeleting).
func reserveChunks(ctx context.Context, cat pullCatalog, chunks []ChunkInfo, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	pause := 50 * time.Millisecond
	for {
		err := cat.ReserveChunks(ctx, chunks)
		if !errors.Is(err, ErrChunksDeleting) || !time.Now().Before(deadline) {
			return err
		}
		d := min(pause/2+rand.N(pause/2+1), time.Until(deadline))
		t := time.NewTimer(max(d, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 2*time.Second)
	}
}
