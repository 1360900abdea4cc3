package sqlitecat_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// memSource serves disks from memory by URI ("mem://<name>").
type memSource map[string][]byte

func (m memSource) OpenURI(_ context.Context, uri string, _ backup.PullRequest) (backup.DiskSource, error) {
	data, ok := m[uri]
	if !ok {
		return nil, backup.Errorf(backup.ErrNotFound, "no disk %s", uri)
	}
	return memDisk(data), nil
}

func (m memSource) OpenConn(context.Context, net.Conn, backup.PullRequest) (backup.DiskSource, error) {
	return nil, backup.ErrNotImplemented
}

type memDisk []byte

func (d memDisk) Size() int64  { return int64(len(d)) }
func (d memDisk) MaxRead() int { return 1 << 20 }
func (d memDisk) Extents(context.Context) ([]backup.Extent, error) {
	return []backup.Extent{{Offset: 0, Length: int64(len(d))}}, nil
}
func (d memDisk) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, d[off:])
	return nil
}
func (d memDisk) Discard(context.Context, int64, int64) error { return backup.ErrDiscardUnsupported }
func (d memDisk) Close() error                                { return nil }

const restoreDevice = "drive-scsi0"

// TestCopyToPostgres_Restore backs disks up through the backup service on
// the embedded catalog and a file:// chunk store, copies the catalog into
// Postgres, and restores them through a service on the Postgres catalog
// and the same store: byte for byte what was backed up, also after a GC
// run on the new catalog (which must find nothing of theirs to collect).
func TestCopyToPostgres_Restore(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	ctx := t.Context()
	scfg := chunkstore.DefaultConfig()
	scfg.URL = "file://" + filepath.Join(t.TempDir(), "store")
	store, err := chunkstore.Open(ctx, scfg, nil)
	if err != nil {
		t.Fatalf("open chunk store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })

	rng := rand.New(rand.NewPCG(1, 2))
	first := make([]byte, 3<<20+12345) // not a multiple of the chunk size
	for i := range first {
		first[i] = byte(rng.IntN(256))
	}
	clear(first[1<<20 : 2<<20]) // zero chunks are not stored
	second := bytes.Clone(first)
	copy(second[100<<10:], bytes.Repeat([]byte("changed"), 10000)) // most chunks shared
	disks := memSource{"mem://first": first, "mem://second": second}

	cfg := backup.DefaultServiceConfig()
	cfg.Pull.ChunkSize = 64 << 10
	cfg.CacheBytes = 0
	src := newTestStore(t)
	svc := backup.NewService(testLogger(t), cfg, src, store, store, disks)
	var snaps []backup.Snapshot
	for i, uri := range []string{"mem://first", "mem://second"} {
		sess, err := src.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop", VMID: 100,
			Type: backup.GuestQemu, BackupTime: time.Date(2026, 11, 25, 22, i, 0, 0, time.UTC)})
		if err != nil {
			t.Fatal(err)
		}
		task, err := svc.StartPull(ctx, sess, backup.PullRequest{Device: restoreDevice, Size: int64(len(disks[uri])),
			BitmapMode: backup.BitmapNone, URI: uri})
		if err != nil {
			t.Fatalf("StartPull: %v", err)
		}
		if done := waitTask(t, src, task.ID); done.State != backup.TaskOK {
			t.Fatalf("pull %s: %s", uri, done.Error)
		}
		snap, err := svc.Commit(ctx, sess)
		if err != nil {
			t.Fatalf("Commit: %v", err)
		}
		snaps = append(snaps, snap)
	}
	svc.Close()

	if _, err := sqlitecat.CopyToPostgres(ctx, src, dsn, testLogger(t)); err != nil {
		t.Fatalf("CopyToPostgres: %v", err)
	}
	dst, err := catalog.Open(ctx, catalog.DefaultConfig(dsn), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dst.Close)
	svc2 := backup.NewService(testLogger(t), cfg, dst, store, store, disks)
	t.Cleanup(svc2.Close)

	restoreAll := func(when string) {
		t.Helper()
		for i, want := range [][]byte{first, second} {
			snap, err := dst.SnapshotByName(ctx, "default", snaps[i].Name)
			if err != nil {
				t.Fatalf("%s: SnapshotByName: %v", when, err)
			}
			im, err := svc2.OpenImage(ctx, snap, restoreDevice)
			if err != nil {
				t.Fatalf("%s: OpenImage: %v", when, err)
			}
			var got bytes.Buffer
			if _, err := im.WriteTo(ctx, &got); err != nil {
				t.Fatalf("%s: restore %s: %v", when, snap.Name, err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("%s: restore of %s differs from what was backed up (%d bytes, want %d)",
					when, snap.Name, got.Len(), len(want))
			}
		}
	}
	restoreAll("after the copy")

	grace := time.Duration(0)
	gc, err := svc2.StartGC(ctx, &grace)
	if err != nil {
		t.Fatalf("StartGC: %v", err)
	}
	if done := waitTask(t, dst, gc.ID); done.State != backup.TaskOK {
		t.Fatalf("gc: %s", done.Error)
	}
	restoreAll("after a GC on Postgres")
	st, err := dst.Stats(ctx)
	if err != nil || st.Snapshots != 2 || st.Chunks == 0 {
		t.Fatalf("Stats on Postgres: %+v, %v", st, err)
	}
}

func waitTask(t *testing.T, c backup.Catalog, id string) backup.Task {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		task, err := c.GetTask(t.Context(), id)
		if err != nil {
			t.Fatalf("GetTask: %v", err)
		}
		if task.State != backup.TaskRunning {
			return task
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("task %s still running", id)
	return backup.Task{}
}
