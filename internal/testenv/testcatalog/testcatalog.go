// Package testcatalog gives integration tests a fresh catalog of the
// backend that BACKSTOP_TEST_CATALOG selects: "postgres" (the default; a new
// database on BACKSTOP_TEST_PG_DSN) or "sqlite" (the embedded catalog, a
// file in a temporary directory). scripts/test runs the catalog-dependent
// packages once with each, so every integration test covers both.
//
// It is a package of its own because it imports the catalog packages, whose
// own tests import testenv.
package testcatalog

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// Backends.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

// Backend returns the backend BACKSTOP_TEST_CATALOG selects; any other
// value fails the test rather than quietly testing Postgres twice.
func Backend(t testing.TB) string {
	t.Helper()
	switch b := os.Getenv("BACKSTOP_TEST_CATALOG"); b {
	case "", Postgres:
		return Postgres
	case SQLite:
		return SQLite
	default:
		t.Fatalf("BACKSTOP_TEST_CATALOG=%q: want postgres or sqlite", b)
		return ""
	}
}

// Catalog is one test's fresh, empty catalog, not yet opened.
type Catalog struct {
	Backend string
	DSN     string // Postgres: the test database's DSN
	DataDir string // SQLite: the directory holding catalog.db (a server's BACKSTOP_DATA_DIR)
}

// New makes a fresh catalog of the selected backend; a Postgres database is
// dropped when the test ends.
func New(t testing.TB) Catalog {
	t.Helper()
	if b := Backend(t); b == SQLite {
		return Catalog{Backend: b, DataDir: t.TempDir()}
	}
	return Catalog{Backend: Postgres, DSN: testenv.PostgresDSN(t)}
}

// Path is the SQLite catalog's file.
func (c Catalog) Path() string { return filepath.Join(c.DataDir, "catalog.db") }

// ServerEnv is the environment that points a server at this catalog:
// BACKSTOP_DATABASE_URL for Postgres, BACKSTOP_DATA_DIR for the embedded
// catalog (which a server opens when no database URL is set).
func (c Catalog) ServerEnv() map[string]string {
	if c.Backend == SQLite {
		return map[string]string{"BACKSTOP_DATA_DIR": c.DataDir}
	}
	return map[string]string{"BACKSTOP_DATABASE_URL": c.DSN}
}

// Open opens the catalog with its migrations applied; it is closed when the
// test ends. A test that inspects what a server process wrote stops the
// server first: an embedded catalog belongs to one process at a time.
func (c Catalog) Open(t testing.TB, logger *slog.Logger) backup.Catalog {
	t.Helper()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx := context.Background()
	if c.Backend == SQLite {
		s, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(c.Path()), logger)
		if err != nil {
			t.Fatalf("open sqlite catalog: %v", err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close sqlite catalog: %v", err)
			}
		})
		return s
	}
	s, err := catalog.Open(ctx, catalog.DefaultConfig(secret.String(c.DSN)), logger)
	if err != nil {
		t.Fatalf("open catalog: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Open is New(t).Open(t, logger): a fresh catalog for one test.
func Open(t testing.TB, logger *slog.Logger) backup.Catalog {
	t.Helper()
	return New(t).Open(t, logger)
}
