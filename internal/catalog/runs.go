package catalog

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// maxRunError bounds the reason kept for a failed run.
const maxRunError = 4096

// runError is the reason a discarded run keeps: never empty, bounded.
func runError(reason string) string {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return "discarded without a reason"
	}
	if len(reason) > maxRunError {
		cut := maxRunError
		for cut > 0 && !utf8Start(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "…"
	}
	return reason
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

func listLimit(n int) int {
	if n <= 0 {
		return backup.DefaultListLimit
	}
	return n
}

// ListBackupRuns returns the runs f selects, newest first.
func (s *Store) ListBackupRuns(ctx context.Context, f backup.BackupRunFilter) ([]backup.BackupRun, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, wrapf(invalid("run state %q is not running, ok or failed", f.State), "list backup runs")
	}
	var since *time.Time
	if !f.Since.IsZero() {
		t := dbTime(f.Since)
		since = &t
	}
	rows, err := s.pool.Query(ctx, `
		SELECT r.id::text, r.ns, r.name, r.vmid, r.type, r.storage, r.state, r.error, r.started_at, r.finished_at,
		       r.size, r.new_bytes, EXISTS (SELECT 1 FROM snapshots s WHERE s.id = r.id AND s.state = 'committed')
		FROM backup_runs r
		WHERE r.ns = $1 AND ($2 = 0 OR r.vmid = $2) AND ($3 = '' OR r.state = $3)
		  AND ($4::timestamptz IS NULL OR r.started_at >= $4)
		ORDER BY r.started_at DESC, r.id DESC
		LIMIT $5`, f.Namespace, f.VMID, string(f.State), since, listLimit(f.Limit))
	if err != nil {
		return nil, wrapf(err, "list backup runs")
	}
	runs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.BackupRun, error) {
		var run backup.BackupRun
		var typ, state string
		err := r.Scan(&run.ID, &run.Namespace, &run.Name, &run.VMID, &typ, &run.Storage, &state, &run.Error,
			&run.StartedAt, &run.FinishedAt, &run.Size, &run.NewBytes, &run.SnapshotAvailable)
		run.Type, run.State = backup.GuestType(typ), backup.BackupRunState(state)
		run.StartedAt, run.FinishedAt = run.StartedAt.UTC(), utcPtr(run.FinishedAt)
		return run, err
	})
	if err != nil {
		return nil, wrapf(err, "list backup runs")
	}
	return runs, nil
}

// FindTasks returns the tasks f selects, newest first.
func (s *Store) FindTasks(ctx context.Context, f backup.TaskFilter) ([]backup.Task, error) {
	if f.State != "" && f.State != backup.TaskRunning && f.State != backup.TaskOK && f.State != backup.TaskError {
		return nil, wrapf(invalid("task state %q is not running, ok or error", f.State), "find tasks")
	}
	var since *time.Time
	if !f.Since.IsZero() {
		t := dbTime(f.Since)
		since = &t
	}
	rows, err := s.pool.Query(ctx, `
		SELECT t.id::text, t.kind, t.ns, COALESCE(t.snapshot_id::text, ''), t.state, t.done, t.total, t.error,
		       t.created_at, t.updated_at, t.finished_at, COALESCE(s.name, ''), COALESCE(s.vmid, 0)
		FROM tasks t LEFT JOIN snapshots s ON s.id = t.snapshot_id
		WHERE ($1::text[] IS NULL OR t.ns = ANY($1)) AND ($2 = '' OR t.state = $2) AND ($3 = '' OR t.kind = $3)
		  AND ($4::timestamptz IS NULL OR t.created_at >= $4)
		ORDER BY t.created_at DESC, t.id DESC
		LIMIT $5`, f.Namespaces, string(f.State), f.Kind, since, listLimit(f.Limit))
	if err != nil {
		return nil, wrapf(err, "find tasks")
	}
	tasks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Task, error) {
		var t backup.Task
		var state string
		err := r.Scan(&t.ID, &t.Kind, &t.Namespace, &t.SnapshotID, &state, &t.Done, &t.Total, &t.Error,
			&t.CreatedAt, &t.UpdatedAt, &t.FinishedAt, &t.SnapshotName, &t.VMID)
		t.State = backup.TaskState(state)
		t.CreatedAt, t.UpdatedAt, t.FinishedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC(), utcPtr(t.FinishedAt)
		return t, err
	})
	if err != nil {
		return nil, wrapf(err, "find tasks")
	}
	return tasks, nil
}
