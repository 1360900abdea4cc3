package catalog

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

const jobCols = `id::text, node, storage, start_time, created_at, finished_at`

// CreateJob records a vzdump run. An empty ID gets a new one; CreatedAt is
// set to now.
func (s *Store) CreateJob(ctx context.Context, j backup.Job) (backup.Job, error) {
	id := uuid.Must(uuid.NewV7())
	if j.ID != "" {
		var ok bool
		if id, ok = parseID(j.ID); !ok {
			return backup.Job{}, wrapf(invalid("job id %q is not a UUID", j.ID), "create job")
		}
	}
	j, err := scanJob(s.pool.QueryRow(ctx, `
		INSERT INTO jobs (id, node, storage, start_time, created_at)
		VALUES ($1, $2, $3, $4, $5)
		RETURNING `+jobCols,
		id, j.Node, j.Storage, dbTime(j.StartTime), s.nowUTC()))
	if pgCode(err) == "23505" {
		err = because(conflict("job %s already exists", id), err)
	}
	if err != nil {
		return backup.Job{}, wrapf(err, "create job %s", id)
	}
	return j, nil
}

// FinishJob sets FinishedAt once; later calls return the job unchanged.
func (s *Store) FinishJob(ctx context.Context, id string) (backup.Job, error) {
	return s.jobQuery(ctx, "finish job", id, `
		UPDATE jobs SET finished_at = COALESCE(finished_at, $2)
		WHERE id = $1 RETURNING `+jobCols, s.nowUTC())
}

// GetJob returns a job.
func (s *Store) GetJob(ctx context.Context, id string) (backup.Job, error) {
	return s.jobQuery(ctx, "get job", id, `SELECT `+jobCols+` FROM jobs WHERE id = $1`)
}

func (s *Store) jobQuery(ctx context.Context, what, id, sql string, args ...any) (backup.Job, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Job{}, wrapf(notFound("job %s not found", id), "%s %s", what, id)
	}
	j, err := scanJob(s.pool.QueryRow(ctx, sql, append([]any{uid}, args...)...))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("job %s not found", id), err)
	}
	if err != nil {
		return backup.Job{}, wrapf(err, "%s %s", what, id)
	}
	return j, nil
}

func scanJob(row pgx.Row) (backup.Job, error) {
	var j backup.Job
	if err := row.Scan(&j.ID, &j.Node, &j.Storage, &j.StartTime, &j.CreatedAt, &j.FinishedAt); err != nil {
		return backup.Job{}, err
	}
	j.StartTime = j.StartTime.UTC()
	j.CreatedAt = j.CreatedAt.UTC()
	j.FinishedAt = utcPtr(j.FinishedAt)
	return j, nil
}
