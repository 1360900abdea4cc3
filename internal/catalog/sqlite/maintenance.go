package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Garbage collection, verification and namespaces. With one writer there
// are no row locks to order: every write statement runs alone.

// heldLocks are the maintenance locks held in this process, by catalog file
// and name. The embedded catalog has one process (the data directory's
// lock file keeps others out), so an in-process lock is the cluster-wide
// lock; it is keyed by file so that two Stores on one file share it.
var heldLocks = struct {
	mu   sync.Mutex
	keys map[string]bool
}{keys: map[string]bool{}}

// memLock is a lock of heldLocks. It cannot be lost while the process
// lives, so Check is nil until Unlock.
type memLock struct {
	key      string
	mu       sync.Mutex
	released bool // guarded by mu
}

// TryLock takes the lock called name without waiting.
func (s *Store) TryLock(ctx context.Context, name string) (backup.Lock, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, wrapf(err, "lock %s", name)
	}
	key := s.lockPrefix + "\x00" + name
	heldLocks.mu.Lock()
	defer heldLocks.mu.Unlock()
	if heldLocks.keys[key] {
		return nil, false, nil
	}
	heldLocks.keys[key] = true
	return &memLock{key: key}, true, nil
}

// Check returns nil while the lock is held.
func (l *memLock) Check(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return errors.New("catalog: lock already released")
	}
	return nil
}

// Unlock releases the lock; later calls do nothing.
func (l *memLock) Unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return
	}
	l.released = true
	heldLocks.mu.Lock()
	delete(heldLocks.keys, l.key)
	heldLocks.mu.Unlock()
}

// GCCutoff is min(now − grace, opened_at of the oldest open session), on
// the process clock that touch times use. now is read before the sessions:
// a session the query does not see yet commits later, and touches after.
func (s *Store) GCCutoff(ctx context.Context, grace time.Duration) (time.Time, error) {
	if grace < 0 {
		return time.Time{}, wrapf(invalid("grace %v is negative", grace), "gc cutoff")
	}
	cutoff := touchNow() - grace.Microseconds()
	var oldest sql.NullInt64
	if err := s.rdb.QueryRowContext(ctx, `SELECT min(opened_at) FROM snapshots WHERE state = 'open'`).Scan(&oldest); err != nil {
		return time.Time{}, wrapf(err, "gc cutoff")
	}
	if oldest.Valid && oldest.Int64 < cutoff {
		cutoff = oldest.Int64
	}
	return fromMicros(cutoff), nil
}

// CountCollectable counts what ClaimChunks would find.
func (s *Store) CountCollectable(ctx context.Context, cutoff time.Time) (int64, int64, error) {
	var n, size int64
	err := s.rdb.QueryRowContext(ctx, `SELECT count(*), COALESCE(sum(stored_size), 0) FROM chunks
		WHERE refs = 0 AND NOT deleting AND touched_at < ?`, micros(cutoff)).Scan(&n, &size)
	if err != nil {
		return 0, 0, wrapf(err, "count collectable chunks")
	}
	return n, size, nil
}

// ClaimChunks marks a batch of collectable chunks deleting in one
// statement. Nothing else writes meanwhile, so there is nothing to skip.
func (s *Store) ClaimChunks(ctx context.Context, cutoff time.Time, after backup.ChunkID, limit int) ([]backup.ChunkInfo, error) {
	out, err := collect(ctx, s.wdb, scanChunkInfo, `UPDATE chunks SET deleting = 1, touched_at = ?4 WHERE id IN (
		SELECT id FROM chunks WHERE refs = 0 AND NOT deleting AND touched_at < ?1 AND id > ?2
		ORDER BY id LIMIT ?3)
		RETURNING id, size, stored_size`, micros(cutoff), after[:], limit, touchNow())
	if err != nil {
		return nil, wrapf(err, "claim chunks")
	}
	return out, nil
}

// StaleClaims returns chunks claimed longer than olderThan ago.
func (s *Store) StaleClaims(ctx context.Context, olderThan time.Duration, limit int) ([]backup.ChunkInfo, error) {
	out, err := collect(ctx, s.rdb, scanChunkInfo, `SELECT id, size, stored_size FROM chunks
		WHERE deleting AND touched_at < ? ORDER BY touched_at LIMIT ?`, touchNow()-olderThan.Microseconds(), limit)
	if err != nil {
		return nil, wrapf(err, "stale claims")
	}
	return out, nil
}

func scanChunkInfo(r *sql.Rows) (backup.ChunkInfo, error) {
	var c backup.ChunkInfo
	var id []byte
	err := r.Scan(&id, &c.Size, &c.StoredSize)
	c.ID = backup.ChunkID(id)
	return c, err
}

// ForgetChunks deletes the rows of deleting chunks.
func (s *Store) ForgetChunks(ctx context.Context, ids []backup.ChunkID) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	n, err := execN(ctx, s.wdb, `DELETE FROM chunks WHERE id IN `+idSet+` AND deleting AND refs = 0`,
		packIDs(distinctIDs(ids)))
	if err != nil {
		return 0, wrapf(err, "forget %d chunks", len(ids))
	}
	return n, nil
}

// ReleaseChunks ends claims whose objects may still exist, marking the
// chunks bad.
func (s *Store) ReleaseChunks(ctx context.Context, ids []backup.ChunkID) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.wdb.ExecContext(ctx, `UPDATE chunks SET deleting = 0, bad = 1 WHERE id IN `+idSet+` AND deleting`,
		packIDs(distinctIDs(ids))); err != nil {
		return wrapf(err, "release %d chunks", len(ids))
	}
	return nil
}

// AbandonedSessions lists open sessions created before before with no
// running task, oldest first.
func (s *Store) AbandonedSessions(ctx context.Context, before time.Time) ([]backup.Snapshot, error) {
	out, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Snapshot, error) { return scanSnapshot(r) },
		`SELECT `+snapCols+` FROM snapshots s
		WHERE state = 'open' AND created_at < ?
		AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.snapshot_id = s.id AND t.state = 'running')
		ORDER BY created_at`, micros(dbTime(before)))
	if err != nil {
		return nil, wrapf(err, "abandoned sessions")
	}
	return out, nil
}

// SnapshotsToVerify lists the committed snapshots a verify run covers.
func (s *Store) SnapshotsToVerify(ctx context.Context, f backup.VerifyFilter) ([]backup.VerifyCandidate, error) {
	var where strings.Builder
	var args []any
	where.WriteString(`state = 'committed'`)
	if f.Namespace != "" {
		args = append(args, f.Namespace)
		where.WriteString(` AND ns = ?`)
	}
	if f.Name != "" {
		args = append(args, f.Name)
		where.WriteString(` AND name = ?`)
	}
	if !f.VerifiedBefore.IsZero() {
		args = append(args, micros(dbTime(f.VerifiedBefore)))
		where.WriteString(` AND (verified_at IS NULL OR verified_at < ?)`)
	}
	out, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.VerifyCandidate, error) {
		var c backup.VerifyCandidate
		var err error
		c.Snapshot, err = scanSnapshot(r, &c.Chunks)
		return c, err
	}, `SELECT `+snapCols+`, length(refs) / 32 FROM snapshots WHERE `+where.String()+`
		ORDER BY backup_time, ns, name`, args...)
	if err != nil {
		return nil, wrapf(err, "snapshots to verify")
	}
	return out, nil
}

// SnapshotRefs returns a committed snapshot's refs.
func (s *Store) SnapshotRefs(ctx context.Context, id string) ([]backup.ChunkID, error) {
	uid, ok := parseID(id)
	if !ok {
		return nil, wrapf(notFoundSession(id), "refs of snapshot %s", id)
	}
	var blob []byte
	err := s.rdb.QueryRowContext(ctx, `SELECT refs FROM snapshots WHERE id = ? AND state = 'committed'`, uid).Scan(&blob)
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("snapshot %s not found", id), err)
	}
	if err != nil {
		return nil, wrapf(err, "refs of snapshot %s", id)
	}
	return splitRefs(blob), nil
}

// SetVerifyState records a verification outcome.
func (s *Store) SetVerifyState(ctx context.Context, id string, state backup.VerifyState) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundSession(id), "set verify state of snapshot %s", id)
	}
	ok, err := exec1(ctx, s.wdb, `UPDATE snapshots SET verify_state = ?2, verified_at = ?3
		WHERE id = ?1 AND state = 'committed'`, uid, string(state), micros(s.nowUTC()))
	switch {
	case isCheck(err):
		err = because(invalid("verify state %q: want none, ok or failed", state), err)
	case err == nil && !ok:
		err = notFound("snapshot %s not found", id)
	}
	if err != nil {
		return wrapf(err, "set verify state of snapshot %s", id)
	}
	return nil
}

// FailSnapshotsReferencing fails every committed snapshot whose refs hold
// one of ids, in one write transaction: it reads every snapshot's refs,
// which is fine for what is rare (bad chunks).
func (s *Store) FailSnapshotsReferencing(ctx context.Context, ids []backup.ChunkID) ([]backup.Snapshot, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	bad := make(map[backup.ChunkID]bool, len(ids))
	for _, id := range ids {
		bad[id] = true
	}
	var out []backup.Snapshot
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		out = nil
		var hit []string
		rows, err := tx.QueryContext(ctx, `SELECT id, refs FROM snapshots WHERE state = 'committed'`)
		if err != nil {
			return err
		}
		err = eachRow(rows, func(r *sql.Rows) error {
			var id string
			var refs []byte
			if err := r.Scan(&id, &refs); err != nil {
				return err
			}
			for _, c := range splitRefs(refs) {
				if bad[c] {
					hit = append(hit, id)
					break
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		now := micros(s.nowUTC())
		for _, id := range hit {
			snap, err := scanSnapshot(tx.QueryRowContext(ctx, `UPDATE snapshots SET verify_state = 'failed', verified_at = ?2
				WHERE id = ?1 RETURNING `+snapCols, id, now))
			if err != nil {
				return err
			}
			out = append(out, snap)
		}
		return nil
	})
	if err != nil {
		return nil, wrapf(err, "fail snapshots referencing %d chunks", len(ids))
	}
	return out, nil
}

const nsCols = `name, quota_bytes, created_at`

func scanNamespace(r row) (backup.Namespace, error) {
	var n backup.Namespace
	var quota sql.NullInt64
	err := r.Scan(&n.Name, &quota, timeCol{&n.CreatedAt})
	if quota.Valid {
		n.QuotaBytes = &quota.Int64
	}
	return n, err
}

// GetNamespace returns a namespace.
func (s *Store) GetNamespace(ctx context.Context, ns string) (backup.Namespace, error) {
	n, err := scanNamespace(s.rdb.QueryRowContext(ctx, `SELECT `+nsCols+` FROM namespaces WHERE name = ?`, ns))
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("namespace %s not found", ns), err)
	}
	if err != nil {
		return backup.Namespace{}, wrapf(err, "get namespace %s", ns)
	}
	return n, nil
}

// ListNamespaces returns every namespace by name.
func (s *Store) ListNamespaces(ctx context.Context) ([]backup.Namespace, error) {
	out, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Namespace, error) { return scanNamespace(r) },
		`SELECT `+nsCols+` FROM namespaces ORDER BY name`)
	if err != nil {
		return nil, wrapf(err, "list namespaces")
	}
	return out, nil
}

// SetNamespaceQuota sets or clears a namespace's quota, creating it when
// missing.
func (s *Store) SetNamespaceQuota(ctx context.Context, ns string, quota *int64) (backup.Namespace, error) {
	if err := backup.ValidateNamespace(ns); err != nil {
		return backup.Namespace{}, wrapf(err, "set quota of namespace %s", ns)
	}
	if quota != nil && *quota < 0 {
		return backup.Namespace{}, wrapf(invalid("quota %d is negative", *quota), "set quota of namespace %s", ns)
	}
	var q any
	if quota != nil {
		q = *quota
	}
	n, err := scanNamespace(s.wdb.QueryRowContext(ctx, `INSERT INTO namespaces (name, quota_bytes, created_at)
		VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET quota_bytes = excluded.quota_bytes
		RETURNING `+nsCols, ns, q, micros(s.nowUTC())))
	if err != nil {
		return backup.Namespace{}, wrapf(err, "set quota of namespace %s", ns)
	}
	return n, nil
}
