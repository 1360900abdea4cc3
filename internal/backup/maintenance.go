package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Maintenance tasks (GC, verify, prune) run one at a time per kind across
// every replica: each holds the catalog lock named after its kind for its
// whole run. Their progress and logs live in the catalog like any task's.

// Kinds of maintenance tasks; each is also the name of its lock.
const (
	TaskGC     = "gc"
	TaskVerify = "verify"
	TaskPrune  = "prune"
)

// taskProgress is what a maintenance task has done so far; its heartbeat
// writes it to the catalog.
type taskProgress struct {
	done, total atomic.Int64
}

// maintenanceRun is the body of a maintenance task. It runs under the
// Service's lifetime and holds lock; tlog appends a line to the task log.
type maintenanceRun func(ctx context.Context, lock Lock, p *taskProgress, tlog func(string, ...any)) error

// startMaintenance takes the lock of kind, records a task and runs fn in
// the background. Another run of the kind anywhere is ErrConflict. With gap
// > 0 (schedules), a task of the kind started within gap is errNotDue.
func (s *Service) startMaintenance(ctx context.Context, kind, ns string, gap time.Duration, fn maintenanceRun) (Task, error) {
	lock, ok, err := s.catalog.TryLock(ctx, kind)
	if err != nil {
		return Task{}, err
	}
	if !ok {
		return Task{}, Errorf(ErrConflict, "a %s task is already running", kind)
	}
	if err := s.due(ctx, kind, gap); err != nil {
		lock.Unlock()
		return Task{}, err
	}
	task, err := s.catalog.CreateTask(ctx, Task{Kind: kind, Namespace: ns})
	if err != nil {
		lock.Unlock()
		return Task{}, err
	}
	mctx, span := s.startJobSpan(s.ctx, ctx, "backup."+kind, attribute.String("task_id", task.ID))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer lock.Unlock() // idempotent; runMaintenance unlocks when fn is done
		endSpan(span, s.runMaintenance(mctx, task, lock, fn))
	}()
	return task, nil
}

// runMaintenance runs fn to its end, writing progress as a heartbeat and
// the outcome to the task.
func (s *Service) runMaintenance(ctx context.Context, task Task, lock Lock, fn maintenanceRun) error {
	taskDone := s.metrics.taskStarted(ctx, task.Kind)
	log := s.log.With("task_id", task.ID, "kind", task.Kind)
	fctx := context.WithoutCancel(ctx)
	tlog := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		log.InfoContext(ctx, msg)
		if err := s.catalog.AppendTaskLog(fctx, task.ID, msg); err != nil {
			log.WarnContext(ctx, "append task log", "err", err)
		}
	}
	p := &taskProgress{}
	stop := s.heartbeat(ctx, task.ID, p)
	err := fn(ctx, lock, p, tlog)
	stop()
	// Free the kind before the task shows as finished, so a client that
	// sees it end may start the next one at once.
	lock.Unlock()
	state, msg := TaskOK, ""
	if err != nil {
		state, msg = TaskError, err.Error()
		if d := Detail(err); d != "" {
			msg = d
		}
		if ctx.Err() != nil && s.ctx.Err() != nil {
			msg = "server shutting down: " + msg
		}
		tlog("%s failed: %s", task.Kind, msg)
		level := slog.LevelError
		if errors.Is(err, errFoundDamage) {
			level = slog.LevelWarn // reported; the task log says what
		}
		log.Log(ctx, level, "maintenance task failed", "err", err)
	}
	if err := s.catalog.UpdateTaskProgress(fctx, task.ID, p.done.Load(), max(p.total.Load(), p.done.Load())); err != nil {
		log.WarnContext(ctx, "task progress", "err", err)
	}
	if err := s.catalog.FinishTask(fctx, task.ID, state, msg); err != nil {
		log.ErrorContext(ctx, "finish task", "err", err)
	}
	taskDone(state)
	s.metrics.maintenanceDone(ctx, task.Kind, err == nil, s.now())
	return err
}

// heartbeat writes p to the task every ProgressInterval until stopped, so
// the task shows progress and is not taken for one whose server died.
func (s *Service) heartbeat(ctx context.Context, taskID string, p *taskProgress) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				err := s.catalog.UpdateTaskProgress(ctx, taskID, p.done.Load(), max(p.total.Load(), p.done.Load()))
				if err != nil && ctx.Err() == nil {
					s.log.WarnContext(ctx, "task progress", "task_id", taskID, "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// errFoundDamage marks a verify task that ran to its end and found damage.
var errFoundDamage = errors.New("backup: verification found damaged snapshots")

// hook calls the test hook, if any, at a named point.
func (s *Service) hook(stage string) {
	if s.cfg.Hook != nil {
		s.cfg.Hook(stage)
	}
}

// formatBytes renders a byte count for task logs: exact, then in IEC units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%d bytes (%.1f %ciB)", n, float64(n)/float64(div), "KMGTPE"[exp])
}
