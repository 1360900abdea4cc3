// Package sqlitecat is the embedded catalog: backup.Catalog on one SQLite
// file (modernc.org/sqlite, no cgo), for a single Backstop process that
// keeps its catalog next to its chunks.
//
// One writer: every write goes through a pool of one connection and every
// write transaction starts with BEGIN IMMEDIATE, so writers queue in Go for
// that connection instead of meeting SQLITE_BUSY, and a transaction never
// has to upgrade a read lock. Reads use a pool of their own; in WAL mode
// they never wait for the writer and see the last committed state.
//
// The schema mirrors the Postgres one (internal/catalog) column by column,
// with times as unix microseconds; CopyToPostgres moves a catalog over.
package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/backstop-pve/backstop/internal/backup"
)

// Config configures a Store. Start from DefaultConfig.
type Config struct {
	// Path is the database file; it is created when missing. Its
	// directory must exist.
	Path string
	// BusyTimeout bounds how long a statement waits for a lock held by
	// another connection (a checkpoint, a reader of a rollback journal, a
	// tool poking at the file). In-process writers never wait on it: they
	// queue for the single write connection.
	BusyTimeout time.Duration
	// MaxReaders bounds the read pool.
	MaxReaders int
	// Synchronous is the synchronous pragma of the write connection: "FULL"
	// (the default) or "NORMAL". See DefaultConfig.
	Synchronous string
	// Now is the clock for times the catalog sets (created, committed,
	// finished). nil means time.Now. Chunk touch times and session opening
	// times always use time.Now, the clock GC compares them with (the
	// Postgres catalog uses the database server's clock for those).
	Now func() time.Time
}

// DefaultConfig returns the defaults for a catalog file at path.
//
// synchronous=FULL: in WAL mode NORMAL may lose the last transactions on a
// power loss (the WAL is not synced at each commit). A committed snapshot
// must never be lost once the client was told it was stored, so each
// commit is synced. Commits are few (one per backup and per chunk batch);
// the cost is one fsync each.
func DefaultConfig(path string) Config {
	return Config{Path: path, BusyTimeout: 10 * time.Second, MaxReaders: 8, Synchronous: "FULL"}
}

// Store is the SQLite catalog. It is safe for concurrent use by one process;
// another process must not open the same file (the data directory's lock
// file sees to that).
type Store struct {
	wdb  *sql.DB // one connection, BEGIN IMMEDIATE
	rdb  *sql.DB // readers, query_only
	path string
	// lockPrefix keys this file's maintenance locks (its absolute path).
	lockPrefix string
	logger     *slog.Logger
	now        func() time.Time
}

var _ backup.Catalog = (*Store)(nil)

// Open opens (creating when missing) the catalog at cfg.Path and applies
// pending migrations.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Path == "" || strings.ContainsAny(cfg.Path, "?#") || strings.HasPrefix(cfg.Path, "file:") {
		return nil, wrapf(invalid("catalog path %q: want a file path without ? or #", cfg.Path), "open")
	}
	sync := strings.ToUpper(cfg.Synchronous)
	switch sync {
	case "":
		sync = "FULL"
	case "FULL", "NORMAL", "EXTRA":
	default:
		return nil, wrapf(invalid("synchronous %q: want FULL or NORMAL", cfg.Synchronous), "open")
	}
	busy := cfg.BusyTimeout
	if busy <= 0 {
		busy = DefaultConfig("").BusyTimeout
	}
	readers := cfg.MaxReaders
	if readers <= 0 {
		readers = DefaultConfig("").MaxReaders
	}
	// Both pools: WAL (readers and the writer do not block each other; a
	// commit appends to the WAL), foreign keys (off by default in SQLite),
	// a bounded busy wait, and reads through mmap (a page read is a memory
	// access rather than a pread; writes still go through write(2)). The
	// writer also gets synchronous (see DefaultConfig), BEGIN IMMEDIATE (a
	// write transaction takes the write lock at once instead of upgrading
	// a read lock, which could fail with SQLITE_BUSY), and a 64 MiB page
	// cache, which dedup lookups across a large chunks table need; readers
	// keep the default 2 MiB each.
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busy.Milliseconds()))
	q.Set("_foreign_keys", "1")
	q.Set("_journal_mode", "WAL")
	q.Add("_pragma", "mmap_size(1073741824)")
	w := url.Values{}
	for k, v := range q {
		w[k] = v
	}
	w.Set("_synchronous", sync)
	w.Set("_txlock", "immediate")
	w.Add("_pragma", "cache_size(-65536)")
	r := q
	r.Set("_query_only", "1")

	wdb, err := sql.Open("sqlite", cfg.Path+"?"+w.Encode())
	if err != nil {
		return nil, wrapf(err, "open %s", cfg.Path)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxIdleTime(0)
	wdb.SetConnMaxLifetime(0)
	// The write connection opens first: it switches the file to WAL and
	// creates the schema before any reader looks.
	if err := wdb.PingContext(ctx); err != nil {
		_ = wdb.Close()
		return nil, wrapf(err, "open %s", cfg.Path)
	}
	if err := migrate(ctx, wdb, logger); err != nil {
		_ = wdb.Close()
		return nil, err
	}
	rdb, err := sql.Open("sqlite", cfg.Path+"?"+r.Encode())
	if err != nil {
		_ = wdb.Close()
		return nil, wrapf(err, "open %s for reading", cfg.Path)
	}
	rdb.SetMaxOpenConns(readers)
	rdb.SetMaxIdleConns(readers)
	if err := rdb.PingContext(ctx); err != nil {
		_ = rdb.Close()
		_ = wdb.Close()
		return nil, wrapf(err, "open %s for reading", cfg.Path)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	abs, err := filepath.Abs(cfg.Path)
	if err != nil {
		abs = cfg.Path
	}
	return &Store{wdb: wdb, rdb: rdb, lockPrefix: abs, logger: logger, now: now}, nil
}

// Close closes both pools, waiting for queries in progress. The last close
// checkpoints the WAL into the database file.
func (s *Store) Close() error {
	rerr := s.rdb.Close()
	werr := s.wdb.Close()
	if err := errors.Join(rerr, werr); err != nil {
		return wrapf(err, "close")
	}
	return nil
}

// Ping checks that the database answers, for reading and for writing.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.PingContext(ctx); err != nil {
		return wrapf(err, "ping")
	}
	if err := s.wdb.PingContext(ctx); err != nil {
		return wrapf(err, "ping")
	}
	return nil
}

// Stats reports snapshot and chunk totals in one query.
func (s *Store) Stats(ctx context.Context) (backup.RepositoryStats, error) {
	var st backup.RepositoryStats
	err := s.rdb.QueryRowContext(ctx, `
		SELECT (SELECT count(*) FROM snapshots WHERE state = 'committed'),
		       (SELECT COALESCE(sum(size), 0) FROM snapshots WHERE state = 'committed'),
		       (SELECT count(*) FROM chunks WHERE NOT pending),
		       (SELECT COALESCE(sum(stored_size), 0) FROM chunks WHERE NOT pending)`,
	).Scan(&st.Snapshots, &st.LogicalBytes, &st.Chunks, &st.StoredBytes)
	if err != nil {
		return backup.RepositoryStats{}, wrapf(err, "stats")
	}
	return st, nil
}

// writeTx runs fn in a write transaction (BEGIN IMMEDIATE on the single
// write connection) and commits it. Errors come back unwrapped.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// readTx runs fn in a read transaction: one consistent snapshot of the
// database for all its queries.
func (s *Store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// querier is what a pool and a transaction have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// exec1 runs a statement and reports whether it touched a row.
func exec1(ctx context.Context, q querier, query string, args ...any) (bool, error) {
	n, err := execN(ctx, q, query, args...)
	return n > 0, err
}

func execN(ctx context.Context, q querier, query string, args ...any) (int64, error) {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Times are stored as unix microseconds, the precision Postgres keeps.

// nowUTC returns the injected clock's time at the stored precision, so what
// a method returns equals what a later read returns.
func (s *Store) nowUTC() time.Time { return dbTime(s.now()) }

// lastTouch is the latest time touchNow handed out.
var lastTouch atomic.Int64

// touchNow is the time chunk touches, claims and session openings record,
// and GCCutoff reads: the real clock, made strictly increasing within the
// process. GC safety rests on the order of these times (a chunk touched
// after a session opened is never older than the session), and the wall
// clock may step back (NTP); the catalog's one process can keep the order.
func touchNow() int64 {
	for {
		last := lastTouch.Load()
		now := max(time.Now().UnixMicro(), last+1)
		if lastTouch.CompareAndSwap(last, now) {
			return now
		}
	}
}

func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func micros(t time.Time) int64 { return t.UnixMicro() }

func microsPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	v := t.UnixMicro()
	return &v
}

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

// timeCol scans an INTEGER time column.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(v any) error {
	n, ok := v.(int64)
	if !ok {
		return fmt.Errorf("time column holds %T, want INTEGER", v)
	}
	*c.t = fromMicros(n)
	return nil
}

// timePtrCol scans a nullable INTEGER time column.
type timePtrCol struct{ t **time.Time }

func (c timePtrCol) Scan(v any) error {
	if v == nil {
		*c.t = nil
		return nil
	}
	n, ok := v.(int64)
	if !ok {
		return fmt.Errorf("time column holds %T, want INTEGER", v)
	}
	t := fromMicros(n)
	*c.t = &t
	return nil
}

// cleanText makes s valid UTF-8 without NUL, as the Postgres catalog must
// (its text type refuses both), so both backends store the same lines.
func cleanText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// because puts a client-safe detail error in front of the cause it stands
// for, keeping both for errors.Is/As.
func because(detail, cause error) error { return fmt.Errorf("%w: %w", detail, cause) }

// parseID parses a uuid id from the API. Ids are stored in canonical form;
// an id that does not parse names nothing.
func parseID(id string) (string, bool) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

func notFound(format string, args ...any) error {
	return backup.Errorf(backup.ErrNotFound, format, args...)
}

func conflict(format string, args ...any) error {
	return backup.Errorf(backup.ErrConflict, format, args...)
}

func invalid(format string, args ...any) error {
	return backup.Errorf(backup.ErrInvalid, format, args...)
}
