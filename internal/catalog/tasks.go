package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

const taskCols = `id::text, kind, ns, COALESCE(snapshot_id::text, ''), state, done, total, error,
	created_at, updated_at, finished_at`

// CreateTask records a task. An empty ID gets a new one, an empty State is
// running; CreatedAt and UpdatedAt are now.
func (s *Store) CreateTask(ctx context.Context, t backup.Task) (backup.Task, error) {
	id := uuid.Must(uuid.NewV7())
	if t.ID != "" {
		var ok bool
		if id, ok = parseID(t.ID); !ok {
			return backup.Task{}, wrapf(invalid("task id %q is not a UUID", t.ID), "create task")
		}
	}
	var snapID *uuid.UUID
	if t.SnapshotID != "" {
		u, ok := parseID(t.SnapshotID)
		if !ok {
			return backup.Task{}, wrapf(invalid("backup session %s not found", t.SnapshotID), "create task")
		}
		snapID = &u
	}
	if t.State == "" {
		t.State = backup.TaskRunning
	}
	if t.Kind == "" {
		return backup.Task{}, wrapf(invalid("task kind is empty"), "create task")
	}
	now := s.nowUTC()
	var finished *time.Time
	if t.State != backup.TaskRunning {
		finished = &now
	}
	out, err := scanTask(s.pool.QueryRow(ctx, `
		INSERT INTO tasks (id, kind, ns, snapshot_id, state, done, total, error, created_at, updated_at, finished_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
		RETURNING `+taskCols,
		id, t.Kind, t.Namespace, snapID, string(t.State), t.Done, t.Total, cleanText(t.Error), now, finished))
	switch pgCode(err) {
	case "23505":
		err = because(conflict("task %s already exists", id), err)
	case "23503":
		err = because(invalid("backup session %s not found", t.SnapshotID), err)
	case "23514":
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
	t, err := scanTask(s.pool.QueryRow(ctx, `SELECT `+taskCols+` FROM tasks WHERE id = $1`, uid))
	if errors.Is(err, pgx.ErrNoRows) {
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
	rows, err := s.pool.Query(ctx, `SELECT `+taskCols+` FROM tasks WHERE snapshot_id = $1 ORDER BY created_at, id`, uid)
	if err != nil {
		return nil, wrapf(err, "list tasks of %s", snapshotID)
	}
	tasks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Task, error) { return scanTask(r) })
	if err != nil {
		return nil, wrapf(err, "list tasks of %s", snapshotID)
	}
	return tasks, nil
}

func notFoundTask(id string) error { return notFound("task %s not found", id) }

// UpdateTaskProgress sets done and total of a running task: one UPDATE of
// unindexed columns (a HOT update). Progress arriving after the task
// finished is dropped.
func (s *Store) UpdateTaskProgress(ctx context.Context, id string, done, total int64) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundTask(id), "update task %s", id)
	}
	ok, err := exec1(ctx, s.pool, `UPDATE tasks SET done = $2, total = $3, updated_at = $4
		WHERE id = $1 AND state = 'running'`, uid, done, total, s.nowUTC())
	if err == nil && !ok {
		_, err = s.taskState(ctx, uid, id)
	}
	if err != nil {
		return wrapf(err, "update task %s", id)
	}
	return nil
}

// FinishTask moves a running task to its final state, keeping errMsg
// (cleaned like log lines) for TaskError. The first final
// state wins: finishing a finished task is ErrConflict, so a late "ok"
// never hides an error.
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
	now := s.nowUTC()
	ok, err := exec1(ctx, s.pool, `UPDATE tasks SET state = $2, error = $3, updated_at = $4, finished_at = $4
		WHERE id = $1 AND state = 'running'`, uid, string(state), cleanText(errMsg), now)
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
// staleAfter: the server that ran them is gone (a running task writes its
// progress every second). It returns how many it failed.
func (s *Store) FailStaleTasks(ctx context.Context, staleAfter time.Duration) (int64, error) {
	now := s.nowUTC()
	tag, err := s.pool.Exec(ctx, `UPDATE tasks SET state = 'error', error = $2, updated_at = $3, finished_at = $3
		WHERE state = 'running' AND updated_at < $1`, now.Add(-staleAfter),
		fmt.Sprintf("stalled: no progress for %s; the server running it stopped", staleAfter), now)
	if err != nil {
		return 0, wrapf(err, "fail stale tasks")
	}
	return tag.RowsAffected(), nil
}

func (s *Store) taskState(ctx context.Context, uid uuid.UUID, id string) (backup.TaskState, error) {
	var state string
	err := s.pool.QueryRow(ctx, `SELECT state FROM tasks WHERE id = $1`, uid).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFoundTask(id), err)
	}
	return backup.TaskState(state), err
}

// AppendTaskLog appends lines with consecutive sequence numbers, in one
// statement. Bytes that are not UTF-8, and NUL, become U+FFFD. The task row's log_seq counter hands the numbers out: its
// UPDATE takes the row lock, so concurrent appends to one task queue up,
// each sees the counter the previous one committed, and a reader never sees
// a number appear below one it has already read.
func (s *Store) AppendTaskLog(ctx context.Context, id string, lines ...string) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundTask(id), "append to log of task %s", id)
	}
	if len(lines) == 0 {
		return nil
	}
	clean := make([]string, len(lines))
	for i, l := range lines {
		clean[i] = cleanText(l)
	}
	ok, err := exec1(ctx, s.pool, `
		WITH t AS (
			UPDATE tasks SET log_seq = log_seq + cardinality($2::text[])
			WHERE id = $1::uuid RETURNING log_seq - cardinality($2::text[]) AS base)
		INSERT INTO task_log (task_id, seq, ts, text)
		SELECT $1::uuid, t.base + l.n, $3::timestamptz, l.line FROM t, unnest($2::text[]) WITH ORDINALITY AS l(line, n)`,
		uid, clean, s.nowUTC())
	if err == nil && !ok {
		err = notFoundTask(id)
	}
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
	rows, _ := s.pool.Query(ctx, `SELECT l.seq, l.ts, l.text FROM tasks t
		LEFT JOIN task_log l ON l.task_id = t.id AND l.seq > $2
		WHERE t.id = $1 ORDER BY l.seq`, uid, since)
	var seq *int64
	var ts *time.Time
	var text *string
	found := false
	out := []backup.TaskLogLine{}
	_, err := pgx.ForEachRow(rows, []any{&seq, &ts, &text}, func() error {
		found = true
		if seq != nil {
			out = append(out, backup.TaskLogLine{Seq: *seq, Time: ts.UTC(), Text: *text})
		}
		return nil
	})
	if err == nil && !found {
		err = notFoundTask(id)
	}
	if err != nil {
		return nil, wrapf(err, "read log of task %s", id)
	}
	return out, nil
}

func scanTask(row pgx.Row) (backup.Task, error) {
	var t backup.Task
	var state string
	err := row.Scan(&t.ID, &t.Kind, &t.Namespace, &t.SnapshotID, &state, &t.Done, &t.Total, &t.Error,
		&t.CreatedAt, &t.UpdatedAt, &t.FinishedAt)
	if err != nil {
		return backup.Task{}, err
	}
	t.State = backup.TaskState(state)
	t.CreatedAt, t.UpdatedAt, t.FinishedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC(), utcPtr(t.FinishedAt)
	return t, nil
}
