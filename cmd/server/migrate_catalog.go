package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"

	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
)

// runMigrateCatalog implements `server migrate-catalog`: it copies the
// embedded catalog (SQLite) into an empty Postgres catalog, for a
// repository that outgrows one machine. The chunk store stays as it is
// (point the new server at the same BACKSTOP_STORE), unless
// --copy-chunks-to names another one: then the chunks and indexes the
// catalog records are copied there first, with the same encryption key and
// ids, from BACKSTOP_STORE. Run it with the server stopped; the catalog copy
// is one Postgres transaction, so a failed run leaves the target empty, and
// chunk copies are idempotent: a failed run can simply be repeated.
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
	chunksTo := fs.String("copy-chunks-to", "", "also copy the chunks and indexes from BACKSTOP_STORE to this store "+
		"(s3://bucket?endpoint=… or file:///path; same S3 credentials and encryption key)")
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
	// The store and log settings come from the same environment as serve.
	cfg := DefaultConfig()
	for _, st := range cfg.settings() {
		if v := getenv(envName(st.name)); v != "" {
			if st.str != nil {
				*st.str = v
			} else {
				*st.sec = secret.String(v)
			}
		}
	}
	log := newLogger(cfg, stderr)

	// A server still running on this catalog would go on writing after the
	// copy: take its data directory's lock, which such a server holds.
	if dir := filepath.Dir(*from); fileExists(filepath.Join(dir, lockFile)) {
		dd, err := lockDataDir(dir)
		if err != nil {
			return fmt.Errorf("migrate-catalog: stop the server first: %w", err)
		}
		defer func() { _ = dd.Close() }()
	}

	src, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(*from), log)
	if err != nil {
		return fmt.Errorf("migrate-catalog: open %s: %w", *from, err)
	}
	defer func() { _ = src.Close() }()
	if *chunksTo != "" {
		if err := copyChunks(ctx, src, cfg, *chunksTo, log, stdout); err != nil {
			return fmt.Errorf("migrate-catalog: %w", err)
		}
	}
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
	next := "set BACKSTOP_DATABASE_URL to use it (the chunk store stays as it is)"
	if *chunksTo != "" {
		next = "set BACKSTOP_DATABASE_URL and BACKSTOP_STORE=" + *chunksTo + " to use them"
	}
	_, err = fmt.Fprintf(stdout, "copied %d rows from %s into Postgres in %s; %s\n",
		report.Rows(), *from, report.Duration.Round(1e6), next)
	return err
}

// copyChunksWorkers bounds the concurrent chunk transfers.
const copyChunksWorkers = 8

// copyChunks copies what the catalog records from cfg.Store to the store at
// url, opened with the same credentials and encryption key.
func copyChunks(ctx context.Context, cat *sqlitecat.Store, cfg Config, url string, log *slog.Logger, stdout io.Writer) error {
	if cfg.Store == "" {
		return errors.New("--copy-chunks-to needs BACKSTOP_STORE, the store to copy from")
	}
	if cfg.Store == url {
		return errors.New("--copy-chunks-to names BACKSTOP_STORE itself")
	}
	from, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() { _ = from.Close() }()
	toCfg := cfg
	toCfg.Store = url
	to, err := openStore(ctx, toCfg, log)
	if err != nil {
		return err
	}
	defer func() { _ = to.Close() }()
	rep, err := cat.CopyChunks(ctx, from, to, copyChunksWorkers, log)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "copied %d chunks (%d bytes, %d stored) and %d indexes to %s", rep.Chunks, rep.Bytes,
		rep.StoredBytes, rep.Indexes, url)
	if err == nil && rep.BadSkipped > 0 {
		_, err = fmt.Fprintf(stdout, "; %d chunks marked bad were unreadable and not copied", rep.BadSkipped)
	}
	if err == nil && rep.SizeChanged > 0 {
		_, err = fmt.Fprintf(stdout, "; %d chunks are stored with another size there (other compression settings)", rep.SizeChanged)
	}
	if err == nil {
		_, err = fmt.Fprintln(stdout)
	}
	return err
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}
