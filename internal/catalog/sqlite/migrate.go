package sqlitecat

import (
	"context"
	"database/sql"
	"embed"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
)

// migrationsFS holds the embedded catalog's schema as goose migrations,
// apart from the Postgres ones in /migrations: the two dialects differ
// too much for one set of files. Append-only, like those.
//
//go:embed migrations/*.sql
var migrationsFS embed.FS

// migrate applies pending migrations on the write connection. Only one
// process opens the file, so no lock beyond SQLite's own is needed.
func migrate(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	p, err := newProvider(db, logger)
	if err != nil {
		return wrapf(err, "migrate")
	}
	results, err := p.Up(ctx)
	if err != nil {
		return wrapf(err, "migrate")
	}
	for _, r := range results {
		logger.InfoContext(ctx, "catalog: applied migration",
			"version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

func newProvider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	sub, err := fs.Sub(migrationsFS, "migrations")
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectSQLite3, db, sub,
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
}
