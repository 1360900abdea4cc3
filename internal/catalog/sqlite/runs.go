package sqlitecat

import (
	"context"
	"database/sql"
	"encoding/json"
	"strings"

	"github.com/backstop-pve/backstop/internal/backup"
)

// maxRunError bounds the reason kept for a failed run.
const maxRunError = 4096

// runError is the reason a discarded run keeps: never empty, bounded,
// clean text.
func runError(reason string) string {
	reason = strings.TrimSpace(cleanText(reason))
	if reason == "" {
		return "discarded without a reason"
	}
	if len(reason) > maxRunError {
		cut := maxRunError
		for cut > 0 && reason[cut]&0xC0 == 0x80 { // not at the start of a UTF-8 sequence
			cut--
		}
		reason = reason[:cut] + "…"
	}
	return reason
}

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
	var since any
	if !f.Since.IsZero() {
		since = micros(dbTime(f.Since))
	}
	runs, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.BackupRun, error) {
		var run backup.BackupRun
		var typ, state string
		err := r.Scan(&run.ID, &run.Namespace, &run.Name, &run.VMID, &typ, &run.Storage, &state, &run.Error,
			timeCol{&run.StartedAt}, timePtrCol{&run.FinishedAt}, &run.Size, &run.NewBytes, &run.SnapshotAvailable)
		run.Type, run.State = backup.GuestType(typ), backup.BackupRunState(state)
		return run, err
	}, `
		SELECT r.id, r.ns, r.name, r.vmid, r.type, r.storage, r.state, r.error, r.started_at, r.finished_at,
		       r.size, r.new_bytes, EXISTS (SELECT 1 FROM snapshots s WHERE s.id = r.id AND s.state = 'committed')
		FROM backup_runs r
		WHERE r.ns = ?1 AND (?2 = 0 OR r.vmid = ?2) AND (?3 = '' OR r.state = ?3)
		  AND (?4 IS NULL OR r.started_at >= ?4)
		ORDER BY r.started_at DESC, r.id DESC
		LIMIT ?5`, f.Namespace, f.VMID, string(f.State), since, listLimit(f.Limit))
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
	var since, namespaces any
	if !f.Since.IsZero() {
		since = micros(dbTime(f.Since))
	}
	if f.Namespaces != nil { // nil: any; empty: none
		b, err := json.Marshal(f.Namespaces)
		if err != nil {
			return nil, wrapf(err, "find tasks")
		}
		namespaces = string(b)
	}
	tasks, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Task, error) {
		var t backup.Task
		var state string
		err := r.Scan(&t.ID, &t.Kind, &t.Namespace, &t.SnapshotID, &state, &t.Done, &t.Total, &t.Error,
			timeCol{&t.CreatedAt}, timeCol{&t.UpdatedAt}, timePtrCol{&t.FinishedAt}, &t.SnapshotName, &t.VMID)
		t.State = backup.TaskState(state)
		return t, err
	}, `
		SELECT t.id, t.kind, t.ns, COALESCE(t.snapshot_id, ''), t.state, t.done, t.total, t.error,
		       t.created_at, t.updated_at, t.finished_at, COALESCE(s.name, ''), COALESCE(s.vmid, 0)
		FROM tasks t LEFT JOIN snapshots s ON s.id = t.snapshot_id
		WHERE (?1 IS NULL OR t.ns IN (SELECT value FROM json_each(?1))) AND (?2 = '' OR t.state = ?2)
		  AND (?3 = '' OR t.kind = ?3) AND (?4 IS NULL OR t.created_at >= ?4)
		ORDER BY t.created_at DESC, t.id DESC
		LIMIT ?5`, namespaces, string(f.State), f.Kind, since, listLimit(f.Limit))
	if err != nil {
		return nil, wrapf(err, "find tasks")
	}
	return tasks, nil
}
