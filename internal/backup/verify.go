package backup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Verification re-reads every chunk the selected snapshots reference and
// checks it against its id (the chunk store's Get does), each distinct
// chunk once per run. It also checks each index against its catalog
// checksum and against the references the catalog counts for the snapshot
// (an index chunk without a counted reference is one GC could take).
//
// A missing or damaged chunk is marked bad: dedup stops trusting it, so the
// next backup that produces its content stores it again, which repairs it.
// Every snapshot that references a bad chunk gets verify state failed and is
// never an incremental base (IncrementalBase); the others get ok. A backend
// that fails otherwise (S3 down) fails the task and marks nothing.

// VerifyFilter selects the committed snapshots of a verify run: all of them,
// those of a namespace, one by name, and/or those not verified since
// VerifiedBefore (zero: no such limit).
type VerifyFilter struct {
	Namespace      string
	Name           string
	VerifiedBefore time.Time
}

// VerifyCandidate is a snapshot to verify and how many distinct chunks it
// references.
type VerifyCandidate struct {
	Snapshot
	Chunks int64
}

// VerifyOptions are the parameters of POST /verify.
type VerifyOptions struct {
	Namespace string        // "": every namespace (one snapshot: the default namespace)
	Snapshot  string        // "": every snapshot selected by the rest
	OlderThan time.Duration // > 0: only snapshots not verified for that long
}

// VerifyConfig tunes verification.
type VerifyConfig struct {
	Workers int // chunks read at once
}

// VerifyResult is what a verify run found.
type VerifyResult struct {
	Snapshots int
	Failed    []string // names of snapshots that failed
	Chunks    int64    // distinct chunks read
	Bytes     int64    // their plaintext bytes
	Bad       []ChunkID
}

// StartVerify starts a verify task. Another verify running anywhere is
// ErrConflict; an unknown snapshot is ErrNotFound.
func (s *Service) StartVerify(ctx context.Context, opts VerifyOptions) (Task, error) {
	return s.startVerify(ctx, opts, 0)
}

func (s *Service) startVerify(ctx context.Context, opts VerifyOptions, gap time.Duration) (Task, error) {
	f := VerifyFilter{Namespace: opts.Namespace, Name: opts.Snapshot}
	if opts.OlderThan < 0 {
		return Task{}, Errorf(ErrInvalid, "older than %v is negative", opts.OlderThan)
	}
	if opts.OlderThan > 0 {
		f.VerifiedBefore = s.now().Add(-opts.OlderThan)
	}
	if f.Name != "" {
		if f.Namespace == "" {
			f.Namespace = DefaultNamespace
		}
		if _, err := s.catalog.SnapshotByName(ctx, f.Namespace, f.Name); err != nil {
			return Task{}, err
		}
	}
	return s.startMaintenance(ctx, TaskVerify, f.Namespace, gap, func(ctx context.Context, _ Lock, p *taskProgress, tlog func(string, ...any)) error {
		res, err := s.runVerify(ctx, f, p, tlog)
		s.metrics.verifyFailed.Add(ctx, int64(len(res.Failed)))
		if err == nil && len(res.Failed) > 0 {
			err = &Error{Kind: errFoundDamage, Detail: fmt.Sprintf("%d of %d snapshots failed verification", len(res.Failed), res.Snapshots)}
		}
		return err
	})
}

func (s *Service) runVerify(ctx context.Context, f VerifyFilter, p *taskProgress, tlog func(string, ...any)) (VerifyResult, error) {
	start := s.now()
	var res VerifyResult
	cands, err := s.catalog.SnapshotsToVerify(ctx, f)
	if err != nil {
		return res, err
	}
	for _, c := range cands {
		p.total.Add(c.Chunks)
	}
	tlog("verifying %d snapshots", len(cands))
	v := &verifier{s: s, checked: map[ChunkID]bool{}, p: p}
	for _, c := range cands {
		why, err := v.snapshot(ctx, c)
		if errors.Is(err, errDeleted) {
			continue
		}
		if err != nil {
			return res, err
		}
		state := VerifyOK
		if why != "" {
			state = VerifyFailed
		}
		err = s.catalog.SetVerifyState(ctx, c.ID, state)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile (a prune): its index may be gone too
		}
		if err != nil {
			return res, err
		}
		res.Snapshots++
		if why != "" {
			res.Failed = append(res.Failed, c.Name)
			tlog("snapshot %s in %s FAILED: %s", c.Name, c.Namespace, why)
		}
	}
	res.Chunks, res.Bytes, res.Bad = v.chunks.Load(), v.bytes.Load(), v.bad
	if len(v.bad) > 0 {
		// Snapshots outside this run that share a bad chunk are just as
		// broken; they must not serve as incremental bases either.
		others, err := s.catalog.FailSnapshotsReferencing(ctx, v.bad)
		if err != nil {
			return res, err
		}
		for _, o := range others {
			tlog("snapshot %s in %s marked failed: it references a damaged chunk", o.Name, o.Namespace)
		}
	}
	el := s.now().Sub(start)
	tlog("verified %d snapshots (%d failed): %d chunks, %s in %.1fs (%.0f MiB/s); %d bad chunks",
		res.Snapshots, len(res.Failed), res.Chunks, formatBytes(res.Bytes), el.Seconds(),
		float64(res.Bytes)/(1<<20)/max(el.Seconds(), 1e-3), len(res.Bad))
	return res, nil
}

// errDeleted says a snapshot was deleted while it was being verified.
var errDeleted = errors.New("backup: snapshot deleted during verification")

// verifier is the state of one verify run.
type verifier struct {
	s       *Service
	p       *taskProgress
	checked map[ChunkID]bool // chunk → good, for every chunk read in this run (about 80 bytes each)
	bad     []ChunkID        // found bad in this run
	chunks  atomic.Int64
	bytes   atomic.Int64
}

// snapshot verifies one snapshot and says why it fails ("" when it is
// good). An error means the run cannot go on.
func (v *verifier) snapshot(ctx context.Context, c VerifyCandidate) (string, error) {
	defer v.p.done.Add(c.Chunks)
	refs, why, err := v.indexRefs(ctx, c.Snapshot)
	if err != nil || why != "" {
		return why, err
	}
	counted, err := v.s.catalog.SnapshotRefs(ctx, c.ID)
	if errors.Is(err, ErrNotFound) {
		return "", errDeleted
	}
	if err != nil {
		return "", err
	}
	inCatalog := make(map[ChunkID]bool, len(counted))
	for _, id := range counted {
		inCatalog[id] = true
	}
	var todo []ChunkID
	for _, id := range refs {
		if !inCatalog[id] {
			return fmt.Sprintf("its index references chunk %s, which the catalog does not count for it", id), nil
		}
		if _, done := v.checked[id]; !done {
			todo = append(todo, id)
		}
	}
	bad, err := v.read(ctx, todo)
	if err != nil {
		return "", err
	}
	for _, id := range todo {
		v.checked[id] = true
	}
	for _, id := range bad {
		v.checked[id] = false
	}
	if len(bad) > 0 {
		if err := v.s.catalog.MarkChunksBad(ctx, bad); err != nil {
			return "", err
		}
		v.bad = append(v.bad, bad...)
	}
	nbad := 0
	var first ChunkID
	for _, id := range refs {
		if !v.checked[id] {
			if nbad == 0 {
				first = id
			}
			nbad++
		}
	}
	if nbad > 0 {
		return fmt.Sprintf("%d of its %d chunks are missing or damaged, e.g. %s", nbad, len(refs), first), nil
	}
	return "", nil
}

// indexRefs loads the snapshot's indexes and returns the distinct chunks
// they reference, or why they cannot be trusted.
func (v *verifier) indexRefs(ctx context.Context, snap Snapshot) ([]ChunkID, string, error) {
	disks, err := v.s.catalog.ListDisks(ctx, snap.ID)
	if err == nil {
		var archives []Archive
		if archives, err = v.s.catalog.ListArchives(ctx, snap.ID); err == nil {
			return v.loadIndexes(ctx, disks, archives)
		}
	}
	if errors.Is(err, ErrNotFound) {
		return nil, "", errDeleted
	}
	return nil, "", err
}

// loadIndexes loads the indexes of a snapshot's disks and archives.
func (v *verifier) loadIndexes(ctx context.Context, disks []Disk, archives []Archive) ([]ChunkID, string, error) {
	var all []ChunkID
	for _, d := range disks {
		idx, err := v.s.loadFixedIndex(ctx, d)
		if damaged(err) {
			return nil, fmt.Sprintf("index of disk %s: %v", d.Device, err), nil
		}
		if err != nil {
			return nil, "", err
		}
		all = append(all, idx.Refs()...)
	}
	for _, a := range archives {
		idx, err := v.s.loadArchiveIndex(ctx, a)
		if damaged(err) {
			return nil, fmt.Sprintf("index of archive %s: %v", a.Name, err), nil
		}
		if err != nil {
			return nil, "", err
		}
		all = append(all, idx.Refs()...)
	}
	return distinct(all), "", nil
}

// damaged reports whether err says data is missing or corrupt, rather than
// that a backend failed.
func damaged(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrChecksum) || errors.Is(err, ErrInvalid)
}

// read fetches ids with Workers in flight and returns those that are
// missing or damaged. Memory: one chunk buffer per worker.
func (v *verifier) read(ctx context.Context, ids []ChunkID) ([]ChunkID, error) {
	var mu sync.Mutex
	var bad []ChunkID
	g, ctx := errgroup.WithContext(ctx)
	work := make(chan ChunkID)
	g.Go(func() error {
		defer close(work)
		for _, id := range ids {
			select {
			case work <- id:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for range max(v.s.cfg.Verify.Workers, 1) {
		g.Go(func() error {
			var buf []byte
			for id := range work {
				got, err := v.s.chunks.Get(ctx, id, buf)
				switch {
				case err == nil:
					buf = got
					v.bytes.Add(int64(len(got)))
				case errors.Is(err, ErrNotFound) || errors.Is(err, ErrChecksum):
					v.s.log.WarnContext(ctx, "verify: bad chunk", "chunk_id", id.String(), "err", err)
					mu.Lock()
					bad = append(bad, id)
					mu.Unlock()
				default:
					return fmt.Errorf("verify chunk %s: %w", id, err)
				}
				v.chunks.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return bad, nil
}
