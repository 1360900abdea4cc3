package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/secret"
)

// Config configures a Store. Start from DefaultConfig. Non-zero fields
// override what the DSN sets (pool_max_conns, connect_timeout, ...).
type Config struct {
	// DSN is a Postgres connection string, URL or keyword/value form.
	DSN secret.String
	// MaxConns bounds the pool; 0 keeps pgx's default (4 or NumCPU).
	MaxConns int32
	// MinConns is kept open even when idle.
	MinConns int32
	// ConnectTimeout bounds each connection attempt; 0 leaves the DSN's
	// connect_timeout, or no bound beyond the caller's context.
	ConnectTimeout time.Duration
	// SkipMigrations leaves the schema alone on Open (Migrate runs them).
	SkipMigrations bool
	// Now is the clock for times the catalog sets (created, committed,
	// finished). nil means time.Now. Chunk touch times use the database
	// clock, since GC compares them with it.
	Now func() time.Time
	// Tracer, when set, traces every query (e.g. an OpenTelemetry tracer).
	Tracer pgx.QueryTracer
}

// DefaultConfig returns the defaults for a Postgres at dsn.
func DefaultConfig(dsn secret.String) Config {
	return Config{DSN: dsn, MaxConns: 16, ConnectTimeout: 10 * time.Second}
}

// Store is the Postgres catalog. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	now    func() time.Time
}

var _ backup.Catalog = (*Store)(nil)

// Open connects to Postgres, applies pending migrations (unless
// cfg.SkipMigrations) and returns the Store. Several processes may Open the
// same database at once: migrations run under an advisory lock. An
// unreachable server is backup.ErrUnavailable.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	pcfg, err := poolConfig(cfg)
	if err != nil {
		return nil, err
	}
	if !cfg.SkipMigrations {
		if err := migrate(ctx, pcfg.ConnConfig, logger); err != nil {
			return nil, err
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, wrapf(err, "open pool")
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, wrapf(err, "ping")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Store{pool: pool, logger: logger, now: now}, nil
}

func poolConfig(cfg Config) (*pgxpool.Config, error) {
	pcfg, err := pgxpool.ParseConfig(string(cfg.DSN))
	if err != nil {
		// The parse error may quote the DSN, password included: drop it.
		return nil, fmt.Errorf("catalog: parse database DSN: %w", backup.ErrInvalid)
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	if cfg.MinConns > 0 {
		pcfg.MinConns = cfg.MinConns
	}
	if cfg.ConnectTimeout > 0 {
		pcfg.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "backstop"
	}
	pcfg.ConnConfig.Tracer = cfg.Tracer
	return pcfg, nil
}

// Close closes the pool, waiting for connections in use to be returned.
func (s *Store) Close() { s.pool.Close() }

// PoolStat returns the connection pool's figures, for metrics.
func (s *Store) PoolStat() *pgxpool.Stat { return s.pool.Stat() }

// Ping checks that Postgres answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return wrapf(err, "ping")
	}
	return nil
}

// Stats reports snapshot and chunk totals in one query.
func (s *Store) Stats(ctx context.Context) (backup.RepositoryStats, error) {
	var st backup.RepositoryStats
	err := s.pool.QueryRow(ctx, `
		SELECT s.n, s.bytes, c.n, c.bytes
		FROM (SELECT count(*), COALESCE(sum(size), 0)::bigint FROM snapshots WHERE state = 'committed') AS s(n, bytes),
		     (SELECT count(*), COALESCE(sum(stored_size), 0)::bigint FROM chunks WHERE NOT pending) AS c(n, bytes)`,
	).Scan(&st.Snapshots, &st.LogicalBytes, &st.Chunks, &st.StoredBytes)
	if err != nil {
		return backup.RepositoryStats{}, wrapf(err, "stats")
	}
	return st, nil
}

// nowUTC returns the injected clock's time at the precision Postgres keeps,
// so what a method returns equals what a later read returns.
func (s *Store) nowUTC() time.Time { return dbTime(s.now()) }

func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func dbTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := dbTime(*t)
	return &v
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.UTC()
	return &v
}

// cleanText makes s storable as Postgres text, which must be UTF-8 without
// NUL: task logs and errors quote whatever a peer sent, and losing a log
// line over a stray byte helps nobody.
func cleanText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// maxTxAttempts bounds retries of a transaction that Postgres aborted to
// break a deadlock or a serialization conflict. Chunk rows are always locked
// in id order, so these are rare.
const maxTxAttempts = 3

// inTx runs fn in a transaction and commits it, retrying the whole
// transaction when Postgres aborted it to break a deadlock. fn must not keep
// state across attempts. Errors come back unwrapped.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.retry(ctx, func() error { return pgx.BeginFunc(ctx, s.pool, fn) })
}

// retry runs fn again, up to maxTxAttempts in all, while it fails with a
// deadlock or serialization failure.
func (s *Store) retry(ctx context.Context, fn func() error) error {
	var err error
	for range maxTxAttempts {
		if err = fn(); !retryable(err) {
			return err
		}
		s.logger.WarnContext(ctx, "catalog: retrying after deadlock", "err", err)
	}
	return err
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}

// exec1 runs a statement and reports whether it touched a row.
func exec1(ctx context.Context, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, sql string, args ...any) (bool, error) {
	tag, err := q.Exec(ctx, sql, args...)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() > 0, nil
}

// because puts a client-safe detail error in front of the cause it stands
// for, keeping both for errors.Is/As.
func because(detail, cause error) error { return fmt.Errorf("%w: %w", detail, cause) }

// parseID parses a uuid id from the API. An id that does not parse names
// nothing, so callers report it as not found.
func parseID(id string) (uuid.UUID, bool) {
	u, err := uuid.Parse(id)
	return u, err == nil
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
