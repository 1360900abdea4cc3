package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"

	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
)

// runMigrateCatalog implements `server migrate-catalog`: it copies the
// embedded catalog (SQLite) into an empty Postgres catalog, for a
// repository that outgrows one machine. The chunk store is not touched:
// point the new server at the same BACKSTOP_STORE. Run it with the server
// stopped; the copy is one Postgres transaction, so a failed run leaves
// the target empty and can simply be repeated.
func runMigrateCatalog(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("server migrate-catalog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defFrom := ""
	if dir := getenv("BACKSTOP_DATA_DIR"); dir != "" {
		defFrom = filepath.Join(dir, "catalog.db")
	}
	from := fs.String("from", defFrom, "embedded catalog file (default $BACKSTOP_DATA_DIR/catalog.db)")
	to := secret.String(getenv("BACKSTOP_DATABASE_URL"))
	fs.Func("to", "Postgres DSN of the new catalog, which must be empty (default $BACKSTOP_DATABASE_URL)", func(v string) error {
		to = secret.String(v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("migrate-catalog: unexpected arguments %q", fs.Args())
	}
	if *from == "" {
		return errors.New("migrate-catalog: --from or BACKSTOP_DATA_DIR is required")
	}
	if to == "" {
		return errors.New("migrate-catalog: --to or BACKSTOP_DATABASE_URL is required")
	}
	// Open would create a missing file: a typo must not copy an empty
	// catalog.
	if st, err := os.Stat(*from); err != nil || !st.Mode().IsRegular() {
		if err == nil || errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("migrate-catalog: no embedded catalog at %s", *from)
		}
		return fmt.Errorf("migrate-catalog: %w", err)
	}
	cfg := DefaultConfig()
	if v := getenv("BACKSTOP_LOG_LEVEL"); v != "" {
		cfg.LogLevel = v
	}
	if v := getenv("BACKSTOP_LOG_FORMAT"); v != "" {
		cfg.LogFormat = v
	}
	log := newLogger(cfg, stderr)

	src, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(*from), log)
	if err != nil {
		return fmt.Errorf("migrate-catalog: open %s: %w", *from, err)
	}
	defer func() { _ = src.Close() }()
	report, err := sqlitecat.CopyToPostgres(ctx, src, to, log)
	if err != nil {
		return fmt.Errorf("migrate-catalog: %w", err)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	for _, t := range report.Tables {
		fmt.Fprintf(w, "%s\t%d\t\n", t.Name, t.Rows)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "copied %d rows from %s into Postgres in %s; set BACKSTOP_DATABASE_URL to use it (the chunk store stays as it is)\n",
		report.Rows(), *from, report.Duration.Round(1e6))
	return err
}
