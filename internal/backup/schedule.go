package backup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Schedule says how often maintenance runs by itself. A zero interval turns
// that kind off.
type Schedule struct {
	GCInterval time.Duration
	// VerifyInterval runs a verify of the snapshots not verified for
	// VerifyOlderThan (zero: all of them).
	VerifyInterval  time.Duration
	VerifyOlderThan time.Duration
	// PruneInterval applies PruneKeep to every group of every namespace,
	// with periods in Location (nil: UTC).
	PruneInterval time.Duration
	PruneKeep     KeepOptions
	Location      *time.Location
	// Check is how often each replica asks whether a run is due; 0 means a
	// tenth of the interval, within 10 s and 5 min.
	Check time.Duration
}

// errNotDue says a scheduled run was skipped: one of its kind started
// recently, on this replica or another.
var errNotDue = errors.New("backup: a run of this kind started recently")

// RunSchedule runs scheduled maintenance until ctx ends. Every replica may
// run it: a run starts only under the lock of its kind and only when no
// task of the kind started within its interval, so the cluster runs each
// kind about once per interval whatever the number of replicas.
func (s *Service) RunSchedule(ctx context.Context, sch Schedule) {
	loc := sch.Location
	if loc == nil {
		loc = time.UTC
	}
	kinds := []struct {
		kind  string
		every time.Duration
		start func(ctx context.Context, gap time.Duration) (Task, error)
	}{
		{TaskPrune, sch.PruneInterval, func(ctx context.Context, gap time.Duration) (Task, error) {
			return s.startPruneAll(ctx, sch.PruneKeep, loc, gap)
		}},
		{TaskGC, sch.GCInterval, func(ctx context.Context, gap time.Duration) (Task, error) {
			return s.startGC(ctx, s.cfg.GC.Grace, gap)
		}},
		{TaskVerify, sch.VerifyInterval, func(ctx context.Context, gap time.Duration) (Task, error) {
			return s.startVerify(ctx, VerifyOptions{OlderThan: sch.VerifyOlderThan}, gap)
		}},
	}
	var wg sync.WaitGroup
	for _, k := range kinds {
		if k.every <= 0 {
			continue
		}
		tick := sch.Check
		if tick <= 0 {
			tick = min(max(k.every/10, 10*time.Second), 5*time.Minute)
		}
		wg.Go(func() { s.scheduleLoop(ctx, k.kind, k.every, tick, k.start) })
	}
	wg.Wait()
}

// scheduleLoop checks every tick whether a run of kind is due, starting
// after a random delay so replicas that start together do not all ask at
// once.
func (s *Service) scheduleLoop(ctx context.Context, kind string, every, tick time.Duration,
	start func(context.Context, time.Duration) (Task, error)) {
	wait := rand.N(tick)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = tick
		task, err := start(ctx, every)
		switch {
		case err == nil:
			s.log.InfoContext(ctx, "scheduled maintenance started", "kind", kind, "task_id", task.ID)
		case errors.Is(err, errNotDue), errors.Is(err, ErrConflict):
		case ctx.Err() != nil:
			return
		default:
			s.log.WarnContext(ctx, "scheduled maintenance could not start", "kind", kind, "err", err)
		}
	}
}

// due reports whether no task of kind started within gap; it runs under the
// kind's lock, so two replicas cannot both find it due.
func (s *Service) due(ctx context.Context, kind string, gap time.Duration) error {
	if gap <= 0 {
		return nil
	}
	last, err := s.catalog.LastTask(ctx, kind)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.now().Sub(last.CreatedAt) < gap {
		return errNotDue
	}
	return nil
}

// startPruneAll starts a task that prunes every namespace with keep.
func (s *Service) startPruneAll(ctx context.Context, keep KeepOptions, loc *time.Location, gap time.Duration) (Task, error) {
	return s.startMaintenance(ctx, TaskPrune, "", gap, func(ctx context.Context, _ Lock, p *taskProgress, tlog func(string, ...any)) error {
		nss, err := s.catalog.ListNamespaces(ctx)
		if err != nil {
			return err
		}
		p.total.Store(int64(len(nss)))
		var errs []error
		for _, ns := range nss {
			res, err := s.Prune(ctx, ns.Name, 0, "", keep, false, loc)
			removed := 0
			for _, r := range res {
				if r.Mark == MarkRemove {
					removed++
				}
			}
			tlog("namespace %s: %d snapshots, %d removed", ns.Name, len(res), removed)
			if err != nil {
				tlog("namespace %s: %v", ns.Name, err)
				errs = append(errs, err)
			}
			p.done.Add(1)
		}
		return errors.Join(errs...)
	})
}

// ParseKeepOptions parses PVE's prune-backups notation, e.g.
// "keep-last=3,keep-daily=7,keep-weekly=4" ("keep-" may be left out).
func ParseKeepOptions(s string) (KeepOptions, error) {
	var k KeepOptions
	fields := map[string]*int{"last": &k.Last, "hourly": &k.Hourly, "daily": &k.Daily, "weekly": &k.Weekly,
		"monthly": &k.Monthly, "yearly": &k.Yearly}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		dst := fields[strings.TrimPrefix(strings.TrimSpace(name), "keep-")]
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if !ok || dst == nil || err != nil || n < 0 {
			return KeepOptions{}, Errorf(ErrInvalid, "keep option %q: want last|hourly|daily|weekly|monthly|yearly=N", part)
		}
		*dst = n
	}
	if !k.keepsSomething() {
		return KeepOptions{}, Errorf(ErrInvalid, "keep options %q keep nothing in particular; give at least one count", s)
	}
	return k, nil
}

// String renders keep options in the notation ParseKeepOptions reads.
func (k KeepOptions) String() string {
	var parts []string
	for _, f := range []struct {
		name string
		n    int
	}{{"last", k.Last}, {"hourly", k.Hourly}, {"daily", k.Daily}, {"weekly", k.Weekly}, {"monthly", k.Monthly}, {"yearly", k.Yearly}} {
		if f.n > 0 {
			parts = append(parts, fmt.Sprintf("keep-%s=%d", f.name, f.n))
		}
	}
	return strings.Join(parts, ",")
}
