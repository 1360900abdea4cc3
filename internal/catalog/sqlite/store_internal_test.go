package sqlitecat

import (
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestOpen_Pragmas checks what the design relies on, on both pools: WAL,
// foreign keys, the busy timeout, synchronous=FULL on the writer, and
// readers that cannot write.
func TestOpen_Pragmas(t *testing.T) {
	cfg := DefaultConfig(filepath.Join(t.TempDir(), "catalog.db"))
	s, err := Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	for name, db := range map[string]interface {
		querier
	}{"writer": s.wdb, "reader": s.rdb} {
		var mode string
		var fk, busy, sync, queryOnly int
		for _, p := range []struct {
			pragma string
			dest   any
		}{{"journal_mode", &mode}, {"foreign_keys", &fk}, {"busy_timeout", &busy}, {"synchronous", &sync}, {"query_only", &queryOnly}} {
			if err := db.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(p.dest); err != nil {
				t.Fatalf("%s: PRAGMA %s: %v", name, p.pragma, err)
			}
		}
		if mode != "wal" || fk != 1 || busy != int(cfg.BusyTimeout.Milliseconds()) {
			t.Errorf("%s: journal_mode %s, foreign_keys %d, busy_timeout %d", name, mode, fk, busy)
		}
		if name == "writer" && (sync != 2 || queryOnly != 0) {
			t.Errorf("writer: synchronous %d (want 2, FULL), query_only %d", sync, queryOnly)
		}
		if name == "reader" && queryOnly != 1 {
			t.Errorf("reader: query_only %d", queryOnly)
		}
	}
	if _, err := s.rdb.ExecContext(ctx, `DELETE FROM tokens`); err == nil {
		t.Errorf("a write through the read pool succeeded")
	}
	if n := s.wdb.Stats().MaxOpenConnections; n != 1 {
		t.Errorf("write pool allows %d connections, want 1", n)
	}
}

// TestMigrations_DownUp checks every Down section undoes its Up.
func TestMigrations_DownUp(t *testing.T) {
	s, err := Open(t.Context(), DefaultConfig(filepath.Join(t.TempDir(), "catalog.db")), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	p, err := newProvider(s.wdb, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("DownTo 0: %v", err)
	}
	var tables []string
	rows, err := s.wdb.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type IN ('table', 'index')
		AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'goose%'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(tables) != 0 {
		t.Fatalf("left after migrating down: %s", strings.Join(tables, ", "))
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("Up again: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTouchNow_Increasing: touch times never repeat nor go back, even when
// asked for from many goroutines within one microsecond.
func TestTouchNow_Increasing(t *testing.T) {
	const workers, each = 8, 2000
	out := make([][]int64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				out[w] = append(out[w], touchNow())
			}
		})
	}
	wg.Wait()
	seen := map[int64]bool{}
	for _, times := range out {
		for i, v := range times {
			if i > 0 && v <= times[i-1] {
				t.Fatalf("touch time %d after %d", v, times[i-1])
			}
			if seen[v] {
				t.Fatalf("touch time %d handed out twice", v)
			}
			seen[v] = true
		}
	}
}
