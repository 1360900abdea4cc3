package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/backstop-pve/backstop/internal/backup"
)

// snapCols are the columns scanSnapshot reads; never refs or the blobs,
// which can be megabytes.
const snapCols = `id::text, ns, name, COALESCE(job_id::text, ''), storage, vmid, type,
	backup_time, state, notes, protected, verify_state, verified_at, size, new_bytes,
	created_at, committed_at`

// CreateSnapshot opens a backup session. An empty Name is derived from
// type, vmid and backup time; a given one must equal it. An empty ID gets a
// new one. State, sizes, notes and verification start empty; CreatedAt is
// now.
func (s *Store) CreateSnapshot(ctx context.Context, snap backup.Snapshot) (backup.Snapshot, error) {
	if err := backup.CheckNewSnapshot(&snap); err != nil {
		return backup.Snapshot{}, wrapf(err, "create snapshot")
	}
	id := uuid.Must(uuid.NewV7())
	if snap.ID != "" {
		var ok bool
		if id, ok = parseID(snap.ID); !ok {
			return backup.Snapshot{}, wrapf(invalid("snapshot id %q is not a UUID", snap.ID), "create snapshot")
		}
	}
	var jobID *uuid.UUID
	if snap.JobID != "" {
		u, ok := parseID(snap.JobID)
		if !ok {
			return backup.Snapshot{}, wrapf(notFoundJob(snap.JobID), "create snapshot %s", snap.Name)
		}
		jobID = &u
	}
	now := s.nowUTC()
	var out backup.Snapshot
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO namespaces (name, created_at) VALUES ($1, $2)
			ON CONFLICT (name) DO NOTHING`, snap.Namespace, now); err != nil {
			return err
		}
		var err error
		out, err = scanSnapshot(tx.QueryRow(ctx, `
			INSERT INTO snapshots (id, ns, name, job_id, storage, vmid, type, backup_time, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			RETURNING `+snapCols,
			id, snap.Namespace, snap.Name, jobID, snap.Storage, snap.VMID, string(snap.Type),
			dbTime(snap.BackupTime), now))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO backup_runs (id, ns, name, vmid, type, storage, started_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, id, snap.Namespace, snap.Name, snap.VMID, string(snap.Type), snap.Storage, now)
		return err
	})
	if err != nil {
		return backup.Snapshot{}, wrapf(createSnapshotError(err, snap), "create snapshot %s in %s", snap.Name, snap.Namespace)
	}
	return out, nil
}

func createSnapshotError(err error, snap backup.Snapshot) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == "23505" && pgErr.ConstraintName == "snapshots_pkey":
		return because(conflict("backup session %s already exists", snap.ID), err)
	case pgErr.Code == "23505":
		return because(conflict("snapshot %s already exists in namespace %s", snap.Name, snap.Namespace), err)
	case pgErr.Code == "23503" && pgErr.ConstraintName == "snapshots_job_id_fkey":
		return because(notFoundJob(snap.JobID), err)
	}
	return err
}

// notFoundJob is ErrInvalid rather than ErrNotFound: the request names a
// job that does not exist, the snapshot being created is what it is about.
func notFoundJob(id string) error { return invalid("job %s not found", id) }

// GetSnapshot returns a session or snapshot by id, in any state.
func (s *Store) GetSnapshot(ctx context.Context, id string) (backup.Snapshot, error) {
	uid, ok := parseID(id)
	if !ok {
		return backup.Snapshot{}, wrapf(notFoundSession(id), "get snapshot %s", id)
	}
	snap, err := scanSnapshot(s.pool.QueryRow(ctx, `SELECT `+snapCols+` FROM snapshots WHERE id = $1`, uid))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFoundSession(id), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "get snapshot %s", id)
	}
	return snap, nil
}

func notFoundSession(id string) error { return notFound("backup session %s not found", id) }

func notFoundName(ns, name string) error {
	return notFound("snapshot %s not found in namespace %s", name, ns)
}

// SnapshotByName returns a committed snapshot.
func (s *Store) SnapshotByName(ctx context.Context, ns, name string) (backup.Snapshot, error) {
	snap, err := scanSnapshot(s.pool.QueryRow(ctx, `SELECT `+snapCols+` FROM snapshots
		WHERE ns = $1 AND name = $2 AND state = 'committed'`, ns, name))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFoundName(ns, name), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "get snapshot %s in %s", name, ns)
	}
	return snap, nil
}

// ListSnapshots returns the committed snapshots of a namespace, newest
// first; vmid 0 and typ "" match all. An unknown namespace has none.
func (s *Store) ListSnapshots(ctx context.Context, ns string, vmid int, typ backup.GuestType) ([]backup.Snapshot, error) {
	// Built per filter rather than "($2 = 0 OR vmid = $2)", which a cached
	// generic plan cannot match to snapshots_guest_idx.
	var where strings.Builder
	args := []any{ns}
	where.WriteString(`ns = $1 AND state = 'committed'`)
	if vmid != 0 {
		args = append(args, vmid)
		fmt.Fprintf(&where, ` AND vmid = $%d`, len(args))
	}
	if typ != "" {
		args = append(args, string(typ))
		fmt.Fprintf(&where, ` AND type = $%d`, len(args))
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+snapCols+` FROM snapshots WHERE `+where.String()+`
		ORDER BY backup_time DESC, name`, args...)
	snaps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Snapshot, error) { return scanSnapshot(r) })
	if err != nil {
		return nil, wrapf(err, "list snapshots in %s", ns)
	}
	return snaps, nil
}

// LastSnapshot returns the newest committed snapshot of a guest that came
// through storage, whatever its verify state (the caller decides).
func (s *Store) LastSnapshot(ctx context.Context, ns string, vmid int, typ backup.GuestType, storage string) (backup.Snapshot, error) {
	snap, err := scanSnapshot(s.pool.QueryRow(ctx, `SELECT `+snapCols+` FROM snapshots
		WHERE ns = $1 AND vmid = $2 AND type = $3 AND storage = $4 AND state = 'committed'
		ORDER BY backup_time DESC, committed_at DESC LIMIT 1`, ns, vmid, string(typ), storage))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("no snapshot of %s %d through storage %s in namespace %s", typ, vmid, storage, ns), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "last snapshot of %s %d in %s", typ, vmid, ns)
	}
	return snap, nil
}

// LastBackups returns the newest committed snapshot of every guest of
// every namespace, for the last-backup gauges (one query per refresh, not
// per scrape).
func (s *Store) LastBackups(ctx context.Context) ([]backup.LastBackup, error) {
	rows, _ := s.pool.Query(ctx, `SELECT DISTINCT ON (ns, vmid, type) ns, vmid, type, backup_time, size
		FROM snapshots WHERE state = 'committed'
		ORDER BY ns, vmid, type, backup_time DESC, committed_at DESC`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.LastBackup, error) {
		var b backup.LastBackup
		var typ string
		err := r.Scan(&b.Namespace, &b.VMID, &typ, &b.Time, &b.Size)
		b.Type = backup.GuestType(typ)
		return b, err
	})
	if err != nil {
		return nil, wrapf(err, "last backups")
	}
	return out, nil
}

// UpdateSnapshotMeta sets the non-nil ones of notes and protected.
func (s *Store) UpdateSnapshotMeta(ctx context.Context, ns, name string, notes *string, protected *bool) (backup.Snapshot, error) {
	snap, err := scanSnapshot(s.pool.QueryRow(ctx, `
		UPDATE snapshots SET notes = COALESCE($3, notes), protected = COALESCE($4, protected)
		WHERE ns = $1 AND name = $2 AND state = 'committed'
		RETURNING `+snapCols, ns, name, notes, protected))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFoundName(ns, name), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "update snapshot %s in %s", name, ns)
	}
	return snap, nil
}

// DiscardSnapshot removes an open session with its disks, archives, files
// and blobs, and marks its run failed. Its chunks stay for GC to judge.
func (s *Store) DiscardSnapshot(ctx context.Context, id, reason string) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundSession(id), "discard snapshot %s", id)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		ok, err := exec1(ctx, tx, `DELETE FROM snapshots WHERE id = $1 AND state = 'open'`, uid)
		if err != nil {
			return err
		}
		if !ok {
			return s.whyNotOpen(ctx, uid, id)
		}
		_, err = tx.Exec(ctx, `UPDATE backup_runs SET state = 'failed', error = $2, finished_at = $3 WHERE id = $1`,
			uid, runError(reason), s.nowUTC())
		return err
	})
	if err != nil {
		return wrapf(err, "discard snapshot %s", id)
	}
	return nil
}

// DeleteSnapshot removes a committed, unprotected snapshot and gives back
// its chunk references, in one transaction.
func (s *Store) DeleteSnapshot(ctx context.Context, ns, name string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var id uuid.UUID
		var protected bool
		var refs []byte
		err := tx.QueryRow(ctx, `SELECT id, protected, refs FROM snapshots
			WHERE ns = $1 AND name = $2 AND state = 'committed' FOR UPDATE`, ns, name).Scan(&id, &protected, &refs)
		if errors.Is(err, pgx.ErrNoRows) {
			return because(notFoundName(ns, name), err)
		}
		if err != nil {
			return err
		}
		if protected {
			return conflict("snapshot %s in namespace %s is protected", name, ns)
		}
		if _, err := tx.Exec(ctx, `UPDATE chunks SET refs = refs - 1 WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) ORDER BY id FOR UPDATE)`, splitRefs(refs)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM snapshots WHERE id = $1`, id)
		return err
	})
	if err != nil {
		return wrapf(err, "delete snapshot %s in %s", name, ns)
	}
	return nil
}

// whyNotOpen explains why a statement limited to an open session changed
// nothing: the session is missing or already committed.
func (s *Store) whyNotOpen(ctx context.Context, uid uuid.UUID, id string) error {
	var state string
	err := s.pool.QueryRow(ctx, `SELECT state FROM snapshots WHERE id = $1`, uid).Scan(&state)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return because(notFoundSession(id), err)
	case err != nil:
		return err
	case state == string(backup.SnapshotCommitted):
		return conflict("snapshot %s is already committed", id)
	}
	// Open again (a racing transaction rolled back); let the caller retry.
	return conflict("backup session %s changed concurrently", id)
}

func scanSnapshot(row pgx.Row) (backup.Snapshot, error) {
	var s backup.Snapshot
	var typ, state, verify string
	err := row.Scan(&s.ID, &s.Namespace, &s.Name, &s.JobID, &s.Storage, &s.VMID, &typ,
		&s.BackupTime, &state, &s.Notes, &s.Protected, &verify, &s.VerifiedAt, &s.Size, &s.NewBytes,
		&s.CreatedAt, &s.CommittedAt)
	if err != nil {
		return backup.Snapshot{}, err
	}
	s.Type, s.State, s.VerifyState = backup.GuestType(typ), backup.SnapshotState(state), backup.VerifyState(verify)
	s.BackupTime, s.CreatedAt = s.BackupTime.UTC(), s.CreatedAt.UTC()
	s.VerifiedAt, s.CommittedAt = utcPtr(s.VerifiedAt), utcPtr(s.CommittedAt)
	return s, nil
}
