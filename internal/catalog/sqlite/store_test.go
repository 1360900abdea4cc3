package sqlitecat_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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

func TestOpen_Reopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := sqlitecat.Open(t.Context(), sqlitecat.DefaultConfig(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	job, err := s.CreateJob(t.Context(), backup.Job{Node: "n", Storage: "s", StartTime: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Ping(t.Context()); err == nil || !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Ping after Close: %v, want ErrUnavailable", err)
	}
	s2 := mustOpen(t, sqlitecat.DefaultConfig(path))
	if got, err := s2.GetJob(t.Context(), job.ID); err != nil || !got.CreatedAt.Equal(job.CreatedAt) {
		t.Fatalf("GetJob after reopening: %+v, %v", got, err)
	}
}

func TestOpen_Errors(t *testing.T) {
	for _, path := range []string{"", "file:x.db", "x.db?mode=ro", filepath.Join(t.TempDir(), "missing", "dir", "c.db")} {
		if s, err := sqlitecat.Open(t.Context(), sqlitecat.DefaultConfig(path), nil); err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded", path)
		}
	}
	cfg := sqlitecat.DefaultConfig(filepath.Join(t.TempDir(), "c.db"))
	cfg.Synchronous = "OFF"
	if _, err := sqlitecat.Open(t.Context(), cfg, nil); !errors.Is(err, backup.ErrInvalid) {
		t.Errorf("Open with synchronous OFF: %v, want ErrInvalid", err)
	}
}

func TestStore_Now(t *testing.T) {
	cfg := sqlitecat.DefaultConfig(filepath.Join(t.TempDir(), "catalog.db"))
	now := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("CET", 3600))
	cfg.Now = func() time.Time { return now }
	s := mustOpen(t, cfg)
	ctx := t.Context()
	want := now.UTC().Truncate(time.Microsecond)
	j, err := s.CreateJob(ctx, backup.Job{Node: "n", Storage: "s", StartTime: now})
	if err != nil || !j.CreatedAt.Equal(want) || j.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreateJob: %+v, %v; want CreatedAt %v in UTC", j, err, want)
	}
	snap, err := s.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Type: backup.GuestQemu, VMID: 100, BackupTime: now})
	if err != nil || !snap.CreatedAt.Equal(want) {
		t.Fatalf("CreateSnapshot: %+v, %v", snap, err)
	}
	// The session's opening for GC is on the real clock, not the injected one.
	if cut, err := s.GCCutoff(ctx, 0); err != nil || cut.After(time.Now()) || time.Since(cut) > time.Minute {
		t.Fatalf("GCCutoff with a session opened at a fake 2030: %v, %v", cut, err)
	}
	snap, err = s.CommitSnapshot(ctx, snap.ID, 0, 0, nil)
	if err != nil || snap.CommittedAt == nil || !snap.CommittedAt.Equal(want) {
		t.Fatalf("CommitSnapshot: %+v, %v", snap, err)
	}
}

// TestTryLock_SharedByFile: two Stores on one file (one process) share
// their locks; another file's are apart.
func TestTryLock_SharedByFile(t *testing.T) {
	dir := t.TempDir()
	a := mustOpen(t, sqlitecat.DefaultConfig(filepath.Join(dir, "catalog.db")))
	b := mustOpen(t, sqlitecat.DefaultConfig(filepath.Join(dir, ".", "catalog.db")))
	other := mustOpen(t, sqlitecat.DefaultConfig(filepath.Join(dir, "other.db")))
	l, ok, err := a.TryLock(t.Context(), "gc")
	if err != nil || !ok {
		t.Fatalf("TryLock: %v, %v", ok, err)
	}
	if _, ok, err := b.TryLock(t.Context(), "gc"); err != nil || ok {
		t.Fatalf("TryLock on the same file while held: %v, %v", ok, err)
	}
	l2, ok, err := other.TryLock(t.Context(), "gc")
	if err != nil || !ok {
		t.Fatalf("TryLock on another file: %v, %v", ok, err)
	}
	l2.Unlock()
	l.Unlock()
	l3, ok, err := b.TryLock(t.Context(), "gc")
	if err != nil || !ok {
		t.Fatalf("TryLock after Unlock: %v, %v", ok, err)
	}
	l3.Unlock()
}

// TestStore_NoBusy: many writers and readers at once, with a busy timeout
// of one millisecond, never see SQLITE_BUSY: in-process writers queue for
// the one write connection, and WAL readers do not block it.
func TestStore_NoBusy(t *testing.T) {
	cfg := sqlitecat.DefaultConfig(filepath.Join(t.TempDir(), "catalog.db"))
	cfg.BusyTimeout = time.Millisecond
	s := mustOpen(t, cfg)
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 12 {
		wg.Go(func() {
			for i := range 20 {
				ids := make([]backup.ChunkID, 50)
				infos := make([]backup.ChunkInfo, len(ids))
				for k := range ids {
					ids[k] = backup.ChunkID{byte(w), byte(i), byte(k)}
					infos[k] = backup.ChunkInfo{ID: ids[k], Size: 1, StoredSize: 1}
				}
				snap, err := s.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Type: backup.GuestQemu,
					VMID: 100 + w, BackupTime: time.Unix(int64(1700000000+i), 0)})
				if err == nil {
					err = s.AddChunks(ctx, infos)
				}
				if err == nil {
					_, err = s.KnownChunks(ctx, ids)
				}
				if err == nil {
					_, err = s.CommitSnapshot(ctx, snap.ID, 1, 1, ids)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 40 {
				if _, err := s.Usage(ctx, "default", 0); err != nil {
					errs <- err
					return
				}
				if _, err := s.ListSnapshots(ctx, "default", 0, ""); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("under load: %v", err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Snapshots != 12*20 || st.Chunks != 12*20*50 {
		t.Fatalf("Stats after the load: %+v, %v", st, err)
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
	err = s.AddChunks(ctx, []backup.ChunkInfo{{ID: backup.ChunkID{1}, Size: 1, StoredSize: 1}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("AddChunks on a canceled context: %v", err)
	}
	if got, err := s.KnownChunks(t.Context(), []backup.ChunkID{{1}}); err != nil || len(got) != 0 {
		t.Fatalf("KnownChunks after a canceled add: %v, %v", got, err)
	}
}
