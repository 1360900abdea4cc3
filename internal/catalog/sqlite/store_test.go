package sqlitecat_test

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog/catalogtest"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func mustOpen(t *testing.T, cfg sqlitecat.Config) *sqlitecat.Store {
	t.Helper()
	s, err := sqlitecat.Open(t.Context(), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newTestStore opens a Store on a fresh file of its own.
func newTestStore(t *testing.T) *sqlitecat.Store {
	t.Helper()
	return mustOpen(t, sqlitecat.DefaultConfig(filepath.Join(t.TempDir(), "catalog.db")))
}

func TestStore(t *testing.T) {
	catalogtest.Run(t, func(t *testing.T) backup.Catalog { return newTestStore(t) })
}
