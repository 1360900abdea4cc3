package sqlitecat

import (
	"context"
	"database/sql"
	"errors"

	"github.com/google/uuid"

	"github.com/backstop-pve/backstop/internal/backup"
)

const jobCols = `id, node, storage, start_time, created_at, finished_at`

// CreateJob records a vzdump run. An empty ID gets a new one; CreatedAt is
// set to now.
func (s *Store) CreateJob(ctx context.Context, j backup.Job) (backup.Job, error) {
	id := uuid.Must(uuid.NewV7()).String()
	if j.ID != "" {
		var ok bool
		if id, ok = parseID(j.ID); !ok {
			return backup.Job{}, wrapf(invalid("job id %q is not a UUID", j.ID), "create job")
		}
	}
	j, err := scanJob(s.wdb.QueryRowContext(ctx, `
		INSERT INTO jobs (id, node, storage, start_time, created_at)
		VALUES (?, ?, ?, ?, ?)
		RETURNING `+jobCols,
		id, j.Node, j.Storage, micros(dbTime(j.StartTime)), micros(s.nowUTC())))
	if ok, _ := isUnique(err); ok {
		err = because(conflict("job %s already exists", id), err)
	}
	if err != nil {
		return backup.Job{}, wrapf(err, "create job %s", id)
	}
	return j, nil
}

// FinishJob sets FinishedAt once; later calls return the job unchanged.
func (s *Store) FinishJob(ctx context.Context, id string) (backup.Job, error) {
	return s.jobQuery(ctx, s.wdb, "finish job", id, `
		UPDATE jobs SET finished_at = COALESCE(finished_at, ?2)
		WHERE id = ?1 RETURNING `+jobCols, micros(s.nowUTC()))
}

// GetJob returns a job.
func (s *Store) GetJob(ctx context.Context, id string) (backup.Job, error) {
	return s.jobQuery(ctx, s.rdb, "get job", id, `SELECT `+jobCols+` FROM jobs WHERE id = ?1`)
}

func (s *Store) jobQuery(ctx context.Context, q querier, what, id, query string, args ...any) (backup.Job, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Job{}, wrapf(notFound("job %s not found", id), "%s %s", what, id)
	}
	j, err := scanJob(q.QueryRowContext(ctx, query, append([]any{uid}, args...)...))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("job %s not found", id), err)
	}
	if err != nil {
		return backup.Job{}, wrapf(err, "%s %s", what, id)
	}
	return j, nil
}

func scanJob(r row) (backup.Job, error) {
	var j backup.Job
	if err := r.Scan(&j.ID, &j.Node, &j.Storage, timeCol{&j.StartTime}, timeCol{&j.CreatedAt},
		timePtrCol{&j.FinishedAt}); err != nil {
		return backup.Job{}, err
	}
	return j, nil
}
