package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/backstop-pve/backstop/internal/backup"
)

const taskCols = `id, kind, ns, COALESCE(snapshot_id, ''), state, done, total, error,
	created_at, updated_at, finished_at`

// CreateTask records a task. An empty ID gets a new one, an empty State is
// running; CreatedAt and UpdatedAt are now.
func (s *Store) CreateTask(ctx context.Context, t backup.Task) (backup.Task, error) {
	id := uuid.Must(uuid.NewV7()).String()
	if t.ID != "" {
		var ok bool
		if id, ok = parseID(t.ID); !ok {
			return backup.Task{}, wrapf(invalid("task id %q is not a UUID", t.ID), "create task")
		}
	}
	var snapID any
	if t.SnapshotID != "" {
		u, ok := parseID(t.SnapshotID)
		if !ok {
			return backup.Task{}, wrapf(invalid("backup session %s not found", t.SnapshotID), "create task")
		}
		snapID = u
	}
	if t.State == "" {
		t.State = backup.TaskRunning
	}
	if t.Kind == "" {
		return backup.Task{}, wrapf(invalid("task kind is empty"), "create task")
	}
	now := micros(s.nowUTC())
	var finished any
	if t.State != backup.TaskRunning {
		finished = now
	}
	out, err := scanTask(s.wdb.QueryRowContext(ctx, `
		INSERT INTO tasks (id, kind, ns, snapshot_id, state, done, total, error, created_at, updated_at, finished_at)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
		RETURNING `+taskCols,
		id, t.Kind, t.Namespace, snapID, string(t.State), t.Done, t.Total, cleanText(t.Error), now, finished))
	switch {
	case isUniqueErr(err):
		err = because(conflict("task %s already exists", id), err)
	case isForeignKey(err):
		err = because(invalid("backup session %s not found", t.SnapshotID), err)
	case isCheck(err):
		err = because(invalid("task state %q: want running, ok or error", t.State), err)
	}
	if err != nil {
		return backup.Task{}, wrapf(err, "create task %s", id)
	}
	return out, nil
}

// GetTask returns a task.
func (s *Store) GetTask(ctx context.Context, id string) (backup.Task, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Task{}, wrapf(notFoundTask(id), "get task %s", id)
	}
	t, err := scanTask(s.rdb.QueryRowContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE id = ?`, uid))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFoundTask(id), err)
	}
	if err != nil {
		return backup.Task{}, wrapf(err, "get task %s", id)
	}
	return t, nil
}

// ListTasks returns the tasks of a snapshot, oldest first. An id that is
// not a UUID has none.
func (s *Store) ListTasks(ctx context.Context, snapshotID string) ([]backup.Task, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return nil, nil
	}
	tasks, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Task, error) { return scanTask(r) },
		`SELECT `+taskCols+` FROM tasks WHERE snapshot_id = ? ORDER BY created_at, id`, uid)
	if err != nil {
		return nil, wrapf(err, "list tasks of %s", snapshotID)
	}
	return tasks, nil
}

func notFoundTask(id string) error { return notFound("task %s not found", id) }

// UpdateTaskProgress sets done and total of a running task. Progress
// arriving after the task finished is dropped.
func (s *Store) UpdateTaskProgress(ctx context.Context, id string, done, total int64) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundTask(id), "update task %s", id)
	}
	ok, err := exec1(ctx, s.wdb, `UPDATE tasks SET done = ?2, total = ?3, updated_at = ?4
		WHERE id = ?1 AND state = 'running'`, uid, done, total, micros(s.nowUTC()))
	if err == nil && !ok {
		_, err = s.taskState(ctx, uid, id)
	}
	if err != nil {
		return wrapf(err, "update task %s", id)
	}
	return nil
}

// FinishTask moves a running task to its final state. The first final
// state wins: finishing a finished task is ErrConflict.
func (s *Store) FinishTask(ctx context.Context, id string, state backup.TaskState, errMsg string) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundTask(id), "finish task %s", id)
	}
	if state != backup.TaskOK && state != backup.TaskError {
		return wrapf(invalid("final task state %q: want ok or error", state), "finish task %s", id)
	}
	if state == backup.TaskOK {
		errMsg = ""
	}
	ok, err := exec1(ctx, s.wdb, `UPDATE tasks SET state = ?2, error = ?3, updated_at = ?4, finished_at = ?4
		WHERE id = ?1 AND state = 'running'`, uid, string(state), cleanText(errMsg), micros(s.nowUTC()))
	if err == nil && !ok {
		var cur backup.TaskState
		if cur, err = s.taskState(ctx, uid, id); err == nil {
			err = conflict("task %s already finished (%s)", id, cur)
		}
	}
	if err != nil {
		return wrapf(err, "finish task %s", id)
	}
	return nil
}

// FailStaleTasks fails running tasks whose progress has not moved for
// staleAfter and returns how many it failed.
func (s *Store) FailStaleTasks(ctx context.Context, staleAfter time.Duration) (int64, error) {
	now := s.nowUTC()
	n, err := execN(ctx, s.wdb, `UPDATE tasks SET state = 'error', error = ?2, updated_at = ?3, finished_at = ?3
		WHERE state = 'running' AND updated_at < ?1`, micros(now.Add(-staleAfter)),
		fmt.Sprintf("stalled: no progress for %s; the server running it stopped", staleAfter), micros(now))
	if err != nil {
		return 0, wrapf(err, "fail stale tasks")
	}
	return n, nil
}

func (s *Store) taskState(ctx context.Context, uid, id string) (backup.TaskState, error) {
	var state string
	err := s.rdb.QueryRowContext(ctx, `SELECT state FROM tasks WHERE id = ?`, uid).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFoundTask(id), err)
	}
	return backup.TaskState(state), err
}

// AppendTaskLog appends lines with consecutive sequence numbers, in one
// write transaction: the task's log_seq counter hands the numbers out, and
// with one writer appends to a task queue up, so a reader never sees a
// number appear below one it has already read. Bytes that are not UTF-8,
// and NUL, become U+FFFD.
func (s *Store) AppendTaskLog(ctx context.Context, id string, lines ...string) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundTask(id), "append to log of task %s", id)
	}
	if len(lines) == 0 {
		return nil
	}
	ts := micros(s.nowUTC())
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var base int64
		err := tx.QueryRowContext(ctx, `UPDATE tasks SET log_seq = log_seq + ?2 WHERE id = ?1
			RETURNING log_seq - ?2`, uid, len(lines)).Scan(&base)
		if errors.Is(err, sql.ErrNoRows) {
			return because(notFoundTask(id), err)
		}
		if err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO task_log (task_id, seq, ts, text) VALUES (?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, l := range lines {
			if _, err := stmt.ExecContext(ctx, uid, base+int64(i)+1, ts, cleanText(l)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return wrapf(err, "append to log of task %s", id)
	}
	return nil
}

// TaskLog returns the lines with Seq > since, oldest first, in one query
// that also tells a missing task from an empty log.
func (s *Store) TaskLog(ctx context.Context, id string, since int64) ([]backup.TaskLogLine, error) {
	uid, ok := parseID(id)
	if !ok {
		return nil, wrapf(notFoundTask(id), "read log of task %s", id)
	}
	found := false
	out := []backup.TaskLogLine{}
	rows, err := s.rdb.QueryContext(ctx, `SELECT l.seq, l.ts, l.text FROM tasks t
		LEFT JOIN task_log l ON l.task_id = t.id AND l.seq > ?2
		WHERE t.id = ?1 ORDER BY l.seq`, uid, since)
	if err == nil {
		err = eachRow(rows, func(r *sql.Rows) error {
			var seq, ts sql.NullInt64
			var text sql.NullString
			if err := r.Scan(&seq, &ts, &text); err != nil {
				return err
			}
			found = true
			if seq.Valid {
				out = append(out, backup.TaskLogLine{Seq: seq.Int64, Time: fromMicros(ts.Int64), Text: text.String})
			}
			return nil
		})
	}
	if err == nil && !found {
		err = notFoundTask(id)
	}
	if err != nil {
		return nil, wrapf(err, "read log of task %s", id)
	}
	return out, nil
}

// LastTask returns the newest task of a kind.
func (s *Store) LastTask(ctx context.Context, kind string) (backup.Task, error) {
	t, err := scanTask(s.rdb.QueryRowContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE kind = ?
		ORDER BY created_at DESC, id DESC LIMIT 1`, kind))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("no %s task", kind), err)
	}
	if err != nil {
		return backup.Task{}, wrapf(err, "last %s task", kind)
	}
	return t, nil
}

func scanTask(r row) (backup.Task, error) {
	var t backup.Task
	var state string
	err := r.Scan(&t.ID, &t.Kind, &t.Namespace, &t.SnapshotID, &state, &t.Done, &t.Total, &t.Error,
		timeCol{&t.CreatedAt}, timeCol{&t.UpdatedAt}, timePtrCol{&t.FinishedAt})
	if err != nil {
		return backup.Task{}, err
	}
	t.State = backup.TaskState(state)
	return t, nil
}
