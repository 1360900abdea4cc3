package catalog

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/migrations"
)

// migrationLockID is the key of the session-level advisory lock held while
// migrating ("backstop" in ASCII), so replicas starting together take turns
// and the later ones find nothing left to do.
const migrationLockID int64 = 0x6261636b73746f70

// Migrate applies the pending migrations of the embedded schema to the
// database at dsn and returns when the schema is current. It is safe to run
// from several processes at once. logger may be nil.
func Migrate(ctx context.Context, dsn secret.String, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	pcfg, err := poolConfig(Config{DSN: dsn})
	if err != nil {
		return err
	}
	return migrate(ctx, pcfg.ConnConfig, logger)
}

// migrate holds the advisory lock on a connection of its own and lets goose
// run on a database/sql handle beside it. goose's own session locker polls
// (every few seconds) and checks for pending work before locking; a blocking
// pg_advisory_lock hands over at once and covers the whole run.
func migrate(ctx context.Context, cc *pgx.ConnConfig, logger *slog.Logger) (err error) {
	lockConn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return wrapf(err, "migrate: connect")
	}
	defer func() {
		// Closing the session releases the lock even if the unlock fails.
		_ = lockConn.Close(context.WithoutCancel(ctx))
	}()
	if _, err := lockConn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockID); err != nil {
		return wrapf(err, "migrate: lock")
	}
	defer func() {
		if _, uerr := lockConn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLockID); uerr != nil && err == nil {
			err = wrapf(uerr, "migrate: unlock")
		}
	}()

	provider, err := newProvider(cc, logger)
	if err != nil {
		return wrapf(err, "migrate")
	}
	defer provider.Close()
	results, err := provider.Up(ctx)
	if err != nil {
		return wrapf(err, "migrate")
	}
	for _, r := range results {
		logger.InfoContext(ctx, "catalog: applied migration",
			"version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

// newProvider returns a goose provider for the embedded migrations on a
// database/sql handle of its own; Close closes that handle.
func newProvider(cc *pgx.ConnConfig, logger *slog.Logger) (*goose.Provider, error) {
	db := stdlib.OpenDB(*cc)
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return p, nil
}
