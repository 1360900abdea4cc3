package catalog

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Garbage collection, verification and accounting. Chunk rows are locked in
// id order here too, as everywhere chunk rows are written.

// pgLock is a session-level advisory lock held on a pooled connection of its
// own; ending that session (Unlock, or the process dying) releases it.
type pgLock struct {
	key int64

	mu   sync.Mutex    // serialises use of conn
	conn *pgxpool.Conn // guarded by mu; nil once unlocked
}

// lockKey maps a lock name to an advisory lock key, apart from the
// migration lock's.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("backstop-lock:" + name))
	return int64(h.Sum64())
}

// TryLock takes the advisory lock called name without waiting. The lock
// holds a pool connection until Unlock.
func (s *Store) TryLock(ctx context.Context, name string) (backup.Lock, bool, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, false, wrapf(err, "lock %s", name)
	}
	key := lockKey(name)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, wrapf(err, "lock %s", name)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	return &pgLock{key: key, conn: conn}, true, nil
}

// Check pings the lock's session: while it answers, the lock is held.
func (l *pgLock) Check(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return errors.New("catalog: lock already released")
	}
	if _, err := l.conn.Exec(ctx, `SELECT 1`); err != nil {
		return wrapf(err, "check lock")
	}
	return nil
}

// Unlock releases the lock and returns the connection. When the unlock
// cannot be confirmed the connection is closed, which ends the session and
// so releases the lock anyway.
func (l *pgLock) Unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var released bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1)`, l.key).Scan(&released); err != nil || !released {
		_ = l.conn.Hijack().Close(ctx)
	} else {
		l.conn.Release()
	}
	l.conn = nil
}

// GCCutoff is min(now − grace, opened_at of the oldest open session), both
// on the database clock.
func (s *Store) GCCutoff(ctx context.Context, grace time.Duration) (time.Time, error) {
	if grace < 0 {
		return time.Time{}, wrapf(invalid("grace %v is negative", grace), "gc cutoff")
	}
	var cutoff time.Time
	err := s.pool.QueryRow(ctx, `SELECT LEAST(now() - $1::bigint * interval '1 microsecond',
		(SELECT min(opened_at) FROM snapshots WHERE state = 'open'))`, grace.Microseconds()).Scan(&cutoff)
	if err != nil {
		return time.Time{}, wrapf(err, "gc cutoff")
	}
	return cutoff.UTC(), nil
}

// CountCollectable counts what ClaimChunks would find.
func (s *Store) CountCollectable(ctx context.Context, cutoff time.Time) (int64, int64, error) {
	var n, bytes int64
	err := s.pool.QueryRow(ctx, `SELECT count(*), COALESCE(sum(stored_size), 0)::bigint FROM chunks
		WHERE refs = 0 AND NOT deleting AND touched_at < $1`, cutoff).Scan(&n, &bytes)
	if err != nil {
		return 0, 0, wrapf(err, "count collectable chunks")
	}
	return n, bytes, nil
}

// ClaimChunks marks a batch of collectable chunks deleting in one
// statement. FOR UPDATE re-checks each row's conditions once it is locked,
// so a chunk touched or referenced meanwhile is not claimed; SKIP LOCKED
// passes over rows a writer holds right now (the next run gets them).
func (s *Store) ClaimChunks(ctx context.Context, cutoff time.Time, after backup.ChunkID, limit int) ([]backup.ChunkInfo, error) {
	var out []backup.ChunkInfo
	err := s.retry(ctx, func() error {
		rows, _ := s.pool.Query(ctx, `UPDATE chunks SET deleting = true, touched_at = now() WHERE id IN (
			SELECT id FROM chunks WHERE refs = 0 AND NOT deleting AND touched_at < $1 AND id > $2
			ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
			RETURNING id, size, stored_size`, cutoff, after[:], limit)
		var err error
		out, err = pgx.CollectRows(rows, scanChunkInfo)
		return err
	})
	if err != nil {
		return nil, wrapf(err, "claim chunks")
	}
	return out, nil
}

// StaleClaims returns chunks claimed longer than olderThan ago.
func (s *Store) StaleClaims(ctx context.Context, olderThan time.Duration, limit int) ([]backup.ChunkInfo, error) {
	rows, _ := s.pool.Query(ctx, `SELECT id, size, stored_size FROM chunks
		WHERE deleting AND touched_at < now() - $1::bigint * interval '1 microsecond'
		ORDER BY touched_at LIMIT $2`, olderThan.Microseconds(), limit)
	out, err := pgx.CollectRows(rows, scanChunkInfo)
	if err != nil {
		return nil, wrapf(err, "stale claims")
	}
	return out, nil
}

func scanChunkInfo(r pgx.CollectableRow) (backup.ChunkInfo, error) {
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
	var n int64
	err := s.retry(ctx, func() error {
		tag, err := s.pool.Exec(ctx, `DELETE FROM chunks WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) AND deleting AND refs = 0 ORDER BY id FOR UPDATE)`,
			idParams(distinctIDs(ids)))
		n = tag.RowsAffected()
		return err
	})
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
	err := s.retry(ctx, func() error {
		_, err := s.pool.Exec(ctx, `UPDATE chunks SET deleting = false, bad = true WHERE id IN (
			SELECT id FROM chunks WHERE id = ANY($1) AND deleting ORDER BY id FOR UPDATE)`, idParams(distinctIDs(ids)))
		return err
	})
	if err != nil {
		return wrapf(err, "release %d chunks", len(ids))
	}
	return nil
}

// AbandonedSessions lists open sessions created before before with no
// running task, oldest first.
func (s *Store) AbandonedSessions(ctx context.Context, before time.Time) ([]backup.Snapshot, error) {
	rows, _ := s.pool.Query(ctx, `SELECT `+snapCols+` FROM snapshots s
		WHERE state = 'open' AND created_at < $1
		AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.snapshot_id = s.id AND t.state = 'running')
		ORDER BY created_at`, dbTime(before))
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Snapshot, error) { return scanSnapshot(r) })
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
		fmt.Fprintf(&where, ` AND ns = $%d`, len(args))
	}
	if f.Name != "" {
		args = append(args, f.Name)
		fmt.Fprintf(&where, ` AND name = $%d`, len(args))
	}
	if !f.VerifiedBefore.IsZero() {
		args = append(args, dbTime(f.VerifiedBefore))
		fmt.Fprintf(&where, ` AND (verified_at IS NULL OR verified_at < $%d)`, len(args))
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+snapCols+`, length(refs) / 32 FROM snapshots WHERE `+where.String()+`
		ORDER BY backup_time, ns, name`, args...)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.VerifyCandidate, error) {
		var c backup.VerifyCandidate
		var err error
		c.Snapshot, err = scanSnapshot(extraCols{r, []any{&c.Chunks}})
		return c, err
	})
	if err != nil {
		return nil, wrapf(err, "snapshots to verify")
	}
	return out, nil
}

// extraCols scans the columns of a row that follow what its reader takes.
type extraCols struct {
	pgx.Row
	extra []any
}

func (e extraCols) Scan(dest ...any) error { return e.Row.Scan(append(dest, e.extra...)...) }

// SnapshotRefs returns a committed snapshot's refs.
func (s *Store) SnapshotRefs(ctx context.Context, id string) ([]backup.ChunkID, error) {
	uid, ok := parseID(id)
	if !ok {
		return nil, wrapf(notFoundSession(id), "refs of snapshot %s", id)
	}
	var blob []byte
	err := s.pool.QueryRow(ctx, `SELECT refs FROM snapshots WHERE id = $1 AND state = 'committed'`, uid).Scan(&blob)
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("snapshot %s not found", id), err)
	}
	if err != nil {
		return nil, wrapf(err, "refs of snapshot %s", id)
	}
	parts := splitRefs(blob)
	out := make([]backup.ChunkID, len(parts))
	for i, p := range parts {
		out[i] = backup.ChunkID(p)
	}
	return out, nil
}

// SetVerifyState records a verification outcome.
func (s *Store) SetVerifyState(ctx context.Context, id string, state backup.VerifyState) error {
	uid, ok := parseID(id)
	if !ok {
		return wrapf(notFoundSession(id), "set verify state of snapshot %s", id)
	}
	ok, err := exec1(ctx, s.pool, `UPDATE snapshots SET verify_state = $2, verified_at = $3
		WHERE id = $1 AND state = 'committed'`, uid, string(state), s.nowUTC())
	switch {
	case pgCode(err) == "23514":
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
// one of ids. It reads every snapshot's refs (refs are aligned 32-byte ids;
// a match must be aligned), which is fine for what is rare: bad chunks.
func (s *Store) FailSnapshotsReferencing(ctx context.Context, ids []backup.ChunkID) ([]backup.Snapshot, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, `UPDATE snapshots s SET verify_state = 'failed', verified_at = $2
		WHERE state = 'committed' AND EXISTS (
			SELECT 1 FROM generate_series(0, length(s.refs) / 32 - 1) AS i
			WHERE substring(s.refs FROM i * 32 + 1 FOR 32) = ANY($1))
		RETURNING `+snapCols, idParams(distinctIDs(ids)), s.nowUTC())
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Snapshot, error) { return scanSnapshot(r) })
	if err != nil {
		return nil, wrapf(err, "fail snapshots referencing %d chunks", len(ids))
	}
	return out, nil
}

const nsCols = `name, quota_bytes, created_at`

func scanNamespace(r pgx.Row) (backup.Namespace, error) {
	var n backup.Namespace
	err := r.Scan(&n.Name, &n.QuotaBytes, &n.CreatedAt)
	n.CreatedAt = n.CreatedAt.UTC()
	return n, err
}

// GetNamespace returns a namespace.
func (s *Store) GetNamespace(ctx context.Context, ns string) (backup.Namespace, error) {
	n, err := scanNamespace(s.pool.QueryRow(ctx, `SELECT `+nsCols+` FROM namespaces WHERE name = $1`, ns))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("namespace %s not found", ns), err)
	}
	if err != nil {
		return backup.Namespace{}, wrapf(err, "get namespace %s", ns)
	}
	return n, nil
}

// ListNamespaces returns every namespace by name.
func (s *Store) ListNamespaces(ctx context.Context) ([]backup.Namespace, error) {
	rows, _ := s.pool.Query(ctx, `SELECT `+nsCols+` FROM namespaces ORDER BY name`)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Namespace, error) { return scanNamespace(r) })
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
	n, err := scanNamespace(s.pool.QueryRow(ctx, `INSERT INTO namespaces (name, quota_bytes, created_at)
		VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET quota_bytes = EXCLUDED.quota_bytes
		RETURNING `+nsCols, ns, quota, s.nowUTC()))
	if err != nil {
		return backup.Namespace{}, wrapf(err, "set quota of namespace %s", ns)
	}
	return n, nil
}

// LastTask returns the newest task of a kind.
func (s *Store) LastTask(ctx context.Context, kind string) (backup.Task, error) {
	t, err := scanTask(s.pool.QueryRow(ctx, `SELECT `+taskCols+` FROM tasks WHERE kind = $1
		ORDER BY created_at DESC LIMIT 1`, kind))
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("no %s task", kind), err)
	}
	if err != nil {
		return backup.Task{}, wrapf(err, "last %s task", kind)
	}
	return t, nil
}
