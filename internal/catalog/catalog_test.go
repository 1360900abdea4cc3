package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	"github.com/backstop-pve/backstop/internal/catalog/catalogtest"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func mustOpen(t *testing.T, cfg catalog.Config) *catalog.Store {
	t.Helper()
	s, err := catalog.Open(t.Context(), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// newTestStore opens a Store on a fresh database of its own.
func newTestStore(t *testing.T) *catalog.Store {
	t.Helper()
	return mustOpen(t, catalog.DefaultConfig(secret.String(testenv.PostgresDSN(t))))
}

func TestStore_Contract(t *testing.T) {
	catalogtest.Run(t, func(t *testing.T) backup.Catalog { return newTestStore(t) })
}

func TestOpen_Twice(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	s1 := mustOpen(t, catalog.DefaultConfig(dsn))
	if _, err := s1.CreateJob(t.Context(), backup.Job{Node: "n", Storage: "s", StartTime: time.Now()}); err != nil {
		t.Fatalf("CreateJob: %v", err)
	}
	s1.Close()
	s2 := mustOpen(t, catalog.DefaultConfig(dsn))
	if err := catalog.Migrate(t.Context(), dsn, nil); err != nil {
		t.Fatalf("Migrate on a current schema: %v", err)
	}
	if err := s2.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// TestOpen_Concurrent starts several replicas at once on an empty database:
// the advisory lock lets one migrate while the others wait, and all start.
func TestOpen_Concurrent(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	const replicas = 5
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	for i := range replicas {
		wg.Go(func() {
			s, err := catalog.Open(t.Context(), catalog.DefaultConfig(dsn), testLogger(t))
			if err == nil {
				err = s.Ping(t.Context())
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
}

func TestOpen_Unreachable(t *testing.T) {
	cfg := catalog.DefaultConfig("postgres://backstop:hunter2@127.0.0.1:1/backstop?sslmode=disable")
	cfg.ConnectTimeout = 2 * time.Second
	_, err := catalog.Open(t.Context(), cfg, nil)
	if !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Open on a closed port: %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestOpen_BadDSN(t *testing.T) {
	_, err := catalog.Open(t.Context(), catalog.DefaultConfig("postgres://u:hunter2@[::1/x"), nil)
	if !errors.Is(err, backup.ErrInvalid) {
		t.Fatalf("Open with a bad DSN: %v, want ErrInvalid", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestSecret_Redacts(t *testing.T) {
	cfg := catalog.DefaultConfig("postgres://u:hunter2@db/x")
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "dsn", cfg.DSN, "cfg", cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg),
		fmt.Sprintf("%v", cfg.DSN), buf.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("secret shows in %q", s)
		}
	}
}

func TestStore_Close(t *testing.T) {
	s := newTestStore(t)
	s.Close()
	if err := s.Ping(t.Context()); err == nil {
		t.Fatalf("Ping after Close: no error")
	}
}

func TestStore_Now(t *testing.T) {
	cfg := catalog.DefaultConfig(secret.String(testenv.PostgresDSN(t)))
	now := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("CET", 3600))
	cfg.Now = func() time.Time { return now }
	s := mustOpen(t, cfg)
	ctx := t.Context()
	want := now.UTC().Truncate(time.Microsecond)
	j, err := s.CreateJob(ctx, backup.Job{Node: "n", Storage: "s", StartTime: now})
	if err != nil || !j.CreatedAt.Equal(want) || j.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreateJob: %+v, %v; want CreatedAt %v in UTC", j, err, want)
	}
	snap, err := s.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Type: backup.GuestQemu, VMID: 100,
		BackupTime: now})
	if err != nil || !snap.CreatedAt.Equal(want) {
		t.Fatalf("CreateSnapshot: %+v, %v", snap, err)
	}
	snap, err = s.CommitSnapshot(ctx, snap.ID, 0, 0, nil)
	if err != nil || snap.CommittedAt == nil || !snap.CommittedAt.Equal(want) {
		t.Fatalf("CommitSnapshot: %+v, %v", snap, err)
	}
}

func TestStore_ErrorDetail(t *testing.T) {
	s := newTestStore(t)
	_, err := s.SnapshotByName(t.Context(), "default", "qemu-100-2026_11_25-22_00_00")
	if got, want := backup.Detail(err), "snapshot qemu-100-2026_11_25-22_00_00 not found in namespace default"; got != want {
		t.Fatalf("Detail: %q, want %q (err %v)", got, want, err)
	}
	if !strings.HasPrefix(err.Error(), "catalog: ") {
		t.Fatalf("error %q lacks the package prefix", err)
	}
}

func TestStore_ContextCanceled(t *testing.T) {
	s := newTestStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.ListSnapshots(ctx, "default", 0, "")
	if !errors.Is(err, context.Canceled) || errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("ListSnapshots on a canceled context: %v", err)
	}
}
