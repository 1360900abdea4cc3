package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/google/uuid"

	"github.com/backstop-pve/backstop/internal/backup"
)

// snapCols are the columns scanSnapshot reads; never refs or the blobs.
const snapCols = `id, ns, name, COALESCE(job_id, ''), storage, vmid, type,
	backup_time, state, notes, protected, verify_state, verified_at, size, new_bytes,
	created_at, committed_at`

// CreateSnapshot opens a backup session. An empty Name is derived from
// type, vmid and backup time; a given one must equal it. An empty ID gets a
// new one. CreatedAt is now.
func (s *Store) CreateSnapshot(ctx context.Context, snap backup.Snapshot) (backup.Snapshot, error) {
	if err := backup.CheckNewSnapshot(&snap); err != nil {
		return backup.Snapshot{}, wrapf(err, "create snapshot")
	}
	id := uuid.Must(uuid.NewV7()).String()
	if snap.ID != "" {
		var ok bool
		if id, ok = parseID(snap.ID); !ok {
			return backup.Snapshot{}, wrapf(invalid("snapshot id %q is not a UUID", snap.ID), "create snapshot")
		}
	}
	var jobID any
	if snap.JobID != "" {
		u, ok := parseID(snap.JobID)
		if !ok {
			return backup.Snapshot{}, wrapf(notFoundJob(snap.JobID), "create snapshot %s", snap.Name)
		}
		jobID = u
	}
	now := s.nowUTC()
	var out backup.Snapshot
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO namespaces (name, created_at) VALUES (?, ?)
			ON CONFLICT (name) DO NOTHING`, snap.Namespace, micros(now)); err != nil {
			return err
		}
		var err error
		out, err = scanSnapshot(tx.QueryRowContext(ctx, `
			INSERT INTO snapshots (id, ns, name, job_id, storage, vmid, type, backup_time, created_at, opened_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			RETURNING `+snapCols,
			id, snap.Namespace, snap.Name, jobID, snap.Storage, snap.VMID, string(snap.Type),
			micros(dbTime(snap.BackupTime)), micros(now), touchNow()))
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO backup_runs (id, ns, name, vmid, type, storage, started_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, id, snap.Namespace, snap.Name, snap.VMID, string(snap.Type), snap.Storage, micros(now))
		return err
	})
	if err != nil {
		return backup.Snapshot{}, wrapf(createSnapshotError(err, snap), "create snapshot %s in %s", snap.Name, snap.Namespace)
	}
	return out, nil
}

func createSnapshotError(err error, snap backup.Snapshot) error {
	if ok, cols := isUnique(err); ok {
		if cols == "snapshots.id" {
			return because(conflict("backup session %s already exists", snap.ID), err)
		}
		return because(conflict("snapshot %s already exists in namespace %s", snap.Name, snap.Namespace), err)
	}
	if isForeignKey(err) {
		// The namespace was just made sure of: the job is what is missing.
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
	snap, err := scanSnapshot(s.rdb.QueryRowContext(ctx, `SELECT `+snapCols+` FROM snapshots WHERE id = ?`, uid))
	if errors.Is(err, sql.ErrNoRows) {
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
	snap, err := scanSnapshot(s.rdb.QueryRowContext(ctx, `SELECT `+snapCols+` FROM snapshots
		WHERE ns = ? AND name = ? AND state = 'committed'`, ns, name))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFoundName(ns, name), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "get snapshot %s in %s", name, ns)
	}
	return snap, nil
}

// ListSnapshots returns the committed snapshots of a namespace, newest
// first; vmid 0 and typ "" match all.
func (s *Store) ListSnapshots(ctx context.Context, ns string, vmid int, typ backup.GuestType) ([]backup.Snapshot, error) {
	var where strings.Builder
	args := []any{ns}
	where.WriteString(`ns = ? AND state = 'committed'`)
	if vmid != 0 {
		args = append(args, vmid)
		where.WriteString(` AND vmid = ?`)
	}
	if typ != "" {
		args = append(args, string(typ))
		where.WriteString(` AND type = ?`)
	}
	snaps, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Snapshot, error) { return scanSnapshot(r) },
		`SELECT `+snapCols+` FROM snapshots WHERE `+where.String()+` ORDER BY backup_time DESC, name`, args...)
	if err != nil {
		return nil, wrapf(err, "list snapshots in %s", ns)
	}
	return snaps, nil
}

// LastSnapshot returns the newest committed snapshot of a guest that came
// through storage, whatever its verify state.
func (s *Store) LastSnapshot(ctx context.Context, ns string, vmid int, typ backup.GuestType, storage string) (backup.Snapshot, error) {
	snap, err := scanSnapshot(s.rdb.QueryRowContext(ctx, `SELECT `+snapCols+` FROM snapshots
		WHERE ns = ? AND vmid = ? AND type = ? AND storage = ? AND state = 'committed'
		ORDER BY backup_time DESC, committed_at DESC LIMIT 1`, ns, vmid, string(typ), storage))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("no snapshot of %s %d through storage %s in namespace %s", typ, vmid, storage, ns), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "last snapshot of %s %d in %s", typ, vmid, ns)
	}
	return snap, nil
}

// LastBackups returns the newest committed snapshot of every guest.
func (s *Store) LastBackups(ctx context.Context) ([]backup.LastBackup, error) {
	// SQLite takes the other columns of a max() aggregate from the row that
	// holds the maximum.
	rows, err := s.rdb.QueryContext(ctx, `SELECT ns, vmid, type, max(backup_time), size
		FROM snapshots WHERE state = 'committed' GROUP BY ns, vmid, type ORDER BY ns, vmid, type`)
	if err != nil {
		return nil, wrapf(err, "last backups")
	}
	defer rows.Close()
	var out []backup.LastBackup
	for rows.Next() {
		var b backup.LastBackup
		var typ string
		var at int64
		if err := rows.Scan(&b.Namespace, &b.VMID, &typ, &at, &b.Size); err != nil {
			return nil, wrapf(err, "last backups")
		}
		b.Type, b.Time = backup.GuestType(typ), fromMicros(at)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapf(err, "last backups")
	}
	return out, nil
}

// UpdateSnapshotMeta sets the non-nil ones of notes and protected.
func (s *Store) UpdateSnapshotMeta(ctx context.Context, ns, name string, notes *string, protected *bool) (backup.Snapshot, error) {
	var n, p any
	if notes != nil {
		n = *notes
	}
	if protected != nil {
		p = *protected
	}
	snap, err := scanSnapshot(s.wdb.QueryRowContext(ctx, `
		UPDATE snapshots SET notes = COALESCE(?3, notes), protected = COALESCE(?4, protected)
		WHERE ns = ?1 AND name = ?2 AND state = 'committed'
		RETURNING `+snapCols, ns, name, n, p))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFoundName(ns, name), err)
	}
	if err != nil {
		return backup.Snapshot{}, wrapf(err, "update snapshot %s in %s", name, ns)
	}
	return snap, nil
}

// DiscardSnapshot removes an open session with its disks, archives, files
// and blobs, and marks its run failed with reason, in one transaction. Its
// chunks stay for GC to judge.
func (s *Store) DiscardSnapshot(ctx context.Context, id, reason string) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundSession(id), "discard snapshot %s", id)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		ok, err := exec1(ctx, tx, `DELETE FROM snapshots WHERE id = ? AND state = 'open'`, uid)
		if err != nil {
			return err
		}
		if !ok {
			return s.whyNotOpenTx(ctx, tx, uid, id)
		}
		_, err = tx.ExecContext(ctx, `UPDATE backup_runs SET state = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1`,
			uid, runError(reason), micros(s.nowUTC()))
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
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var id string
		var protected bool
		var refs []byte
		err := tx.QueryRowContext(ctx, `SELECT id, protected, refs FROM snapshots
			WHERE ns = ? AND name = ? AND state = 'committed'`, ns, name).Scan(&id, &protected, &refs)
		if errors.Is(err, sql.ErrNoRows) {
			return because(notFoundName(ns, name), err)
		}
		if err != nil {
			return err
		}
		if protected {
			return conflict("snapshot %s in namespace %s is protected", name, ns)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE chunks SET refs = refs - 1 WHERE id IN `+idSet, packed(refs)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return wrapf(err, "delete snapshot %s in %s", name, ns)
	}
	return nil
}

// whyNotOpen explains why a statement limited to an open session changed
// nothing: the session is missing or already committed.
func (s *Store) whyNotOpen(ctx context.Context, uid, id string) error {
	return s.whyNotOpenTx(ctx, s.rdb, uid, id)
}

// whyNotOpenTx is whyNotOpen inside a transaction.
func (s *Store) whyNotOpenTx(ctx context.Context, q querier, uid, id string) error {
	var state string
	err := q.QueryRowContext(ctx, `SELECT state FROM snapshots WHERE id = ?`, uid).Scan(&state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return because(notFoundSession(id), err)
	case err != nil:
		return err
	case state == string(backup.SnapshotCommitted):
		return conflict("snapshot %s is already committed", id)
	}
	return conflict("backup session %s changed concurrently", id)
}

func scanSnapshot(r row, extra ...any) (backup.Snapshot, error) {
	var s backup.Snapshot
	var typ, state, verify string
	dest := append([]any{&s.ID, &s.Namespace, &s.Name, &s.JobID, &s.Storage, &s.VMID, &typ,
		timeCol{&s.BackupTime}, &state, &s.Notes, &s.Protected, &verify, timePtrCol{&s.VerifiedAt}, &s.Size, &s.NewBytes,
		timeCol{&s.CreatedAt}, timePtrCol{&s.CommittedAt}}, extra...)
	if err := r.Scan(dest...); err != nil {
		return backup.Snapshot{}, err
	}
	s.Type, s.State, s.VerifyState = backup.GuestType(typ), backup.SnapshotState(state), backup.VerifyState(verify)
	return s, nil
}
