package backup_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
	"github.com/backstop-pve/backstop/internal/testenv/testcatalog"
)

// Integration tests of GC, verify and accounting: the real catalog
// (Postgres), the real chunk store over the test S3 server (versitygw, whose
// directory lets tests count and damage objects), and disks served from
// memory, so a test can steer a backup to the exact point it wants.

// testChunk is the chunk size of test disks: small, so that disks of a few
// hundred KiB have many chunks.
const testChunk = 64 << 10

type env struct {
	t      testing.TB
	cat    backup.Catalog
	store  *chunkstore.Store
	faulty *backuptest.FaultyChunkStore // the store as the service sees it
	svc    *backup.Service
	dir    string // the bucket's directory in versitygw's root
	disks  *memDisks
	hook   atomic.Pointer[func(stage string)]
}

// newEnv opens a fresh catalog and bucket. Restores read past no cache, so a
// deleted chunk cannot hide behind one. tune, when given, adjusts the
// service's configuration.
func newEnv(t testing.TB, tune ...func(*backup.ServiceConfig)) *env {
	t.Helper()
	ctx := context.Background()
	s3 := testenv.S3(t)
	if s3.Dir == "" {
		testenv.Missing(t, testenv.PeerS3, "BACKSTOP_TEST_S3_DIR is not set")
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cat := testcatalog.Open(t, log)
	bucket := testenv.Bucket()
	scfg := chunkstore.DefaultConfig()
	scfg.URL = "s3://" + bucket + "?endpoint=" + s3.Endpoint + "&insecure=1"
	scfg.AccessKey, scfg.SecretKey = s3.AccessKey, secret.String(s3.SecretKey)
	store, err := chunkstore.Open(ctx, scfg, log)
	if err != nil {
		t.Fatalf("open chunk store: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	e := &env{t: t, cat: cat, store: store, faulty: backuptest.NewFaultyChunkStore(store),
		dir: filepath.Join(s3.Dir, bucket), disks: &memDisks{m: map[string]*memDisk{}}}
	cfg := backup.DefaultServiceConfig()
	cfg.Pull.ChunkSize = testChunk
	cfg.CacheBytes = 0
	cfg.ProgressInterval = 50 * time.Millisecond
	cfg.Hook = func(stage string) {
		if h := e.hook.Load(); h != nil {
			(*h)(stage)
		}
	}
	for _, f := range tune {
		f(&cfg)
	}
	e.svc = backup.NewService(log, cfg, cat, e.faulty, store, e.disks)
	t.Cleanup(e.svc.Close)
	return e
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// setHook installs fn as the service's hook until the test ends or the
// returned function is called.
func (e *env) setHook(fn func(stage string)) (remove func()) {
	e.hook.Store(&fn)
	remove = func() { e.hook.Store(nil) }
	e.t.Cleanup(remove)
	return remove
}

// memDisk is a disk in memory; dirty lists what changed since the base of
// an incremental (nil: read it all).
type memDisk struct {
	data  []byte
	dirty []backup.Extent
}

type memDisks struct {
	mu sync.Mutex
	m  map[string]*memDisk // by URI
	n  int
}

func (d *memDisks) add(disk *memDisk) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	uri := fmt.Sprintf("mem://disk-%d", d.n)
	d.m[uri] = disk
	return uri
}

func (d *memDisks) OpenURI(_ context.Context, uri string, _ backup.PullRequest) (backup.DiskSource, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	disk := d.m[uri]
	if disk == nil {
		return nil, backup.Errorf(backup.ErrNotFound, "no disk %s", uri)
	}
	return disk, nil
}

func (d *memDisks) OpenConn(context.Context, net.Conn, backup.PullRequest) (backup.DiskSource, error) {
	return nil, backup.ErrNotImplemented
}

func (m *memDisk) Size() int64  { return int64(len(m.data)) }
func (m *memDisk) MaxRead() int { return 1 << 20 }
func (m *memDisk) Extents(context.Context) ([]backup.Extent, error) {
	if m.dirty != nil {
		return m.dirty, nil
	}
	return []backup.Extent{{Offset: 0, Length: int64(len(m.data))}}, nil
}
func (m *memDisk) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, m.data[off:])
	return nil
}
func (m *memDisk) Discard(context.Context, int64, int64) error { return backup.ErrDiscardUnsupported }
func (m *memDisk) Close() error                                { return nil }

const device = "drive-scsi0"

// pull is a running backup of one disk.
type pull struct {
	session backup.Snapshot
	task    backup.Task
}

// startBackup opens a session of vmid at backup time at and starts pulling
// data: whole, or (dirty != nil) as an incremental of the last snapshot.
func (e *env) startBackup(vmid int, at time.Time, data []byte, dirty []backup.Extent) (pull, error) {
	ctx := context.Background()
	sess, err := e.cat.CreateSnapshot(ctx, backup.Snapshot{Namespace: backup.DefaultNamespace, Storage: "backstop",
		VMID: vmid, Type: backup.GuestQemu, BackupTime: at})
	if err != nil {
		return pull{}, err
	}
	req := backup.PullRequest{Device: device, Size: int64(len(data)), BitmapMode: backup.BitmapNone,
		URI: e.disks.add(&memDisk{data: data, dirty: dirty})}
	if dirty != nil {
		req.BitmapMode, req.BitmapName = backup.BitmapReuse, "bm0"
	}
	task, err := e.svc.StartPull(ctx, sess, req)
	if err != nil {
		return pull{session: sess}, err
	}
	return pull{session: sess, task: task}, nil
}

// finish waits for the pull and commits it.
func (e *env) finish(p pull) (backup.Snapshot, error) {
	if t := e.waitTask(p.task.ID); t.State != backup.TaskOK {
		return backup.Snapshot{}, fmt.Errorf("pull of %s: %s", p.session.Name, t.Error)
	}
	return e.svc.Commit(context.Background(), p.session)
}

// backup backs data up in full and commits it.
func (e *env) backup(vmid int, at time.Time, data []byte) backup.Snapshot {
	e.t.Helper()
	p, err := e.startBackup(vmid, at, data, nil)
	if err != nil {
		e.t.Fatalf("start backup: %v", err)
	}
	s, err := e.finish(p)
	if err != nil {
		e.t.Fatalf("backup: %v", err)
	}
	return s
}

func (e *env) waitTask(id string) backup.Task {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		t, err := e.cat.GetTask(context.Background(), id)
		if err != nil {
			e.t.Fatalf("get task: %v", err)
		}
		if t.State != backup.TaskRunning {
			return t
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("task %s still running", id)
	return backup.Task{}
}

func (e *env) taskLog(id string) string {
	e.t.Helper()
	lines, err := e.cat.TaskLog(context.Background(), id, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.Text + "\n")
	}
	return b.String()
}

// gc runs a GC with the given grace to its end and returns its task.
func (e *env) gc(grace time.Duration) backup.Task {
	e.t.Helper()
	t, err := e.svc.StartGC(context.Background(), &grace)
	if err != nil {
		e.t.Fatalf("StartGC: %v", err)
	}
	done := e.waitTask(t.ID)
	if done.State != backup.TaskOK {
		e.t.Fatalf("gc failed: %s\n%s", done.Error, e.taskLog(t.ID))
	}
	return done
}

// restore reads a snapshot's disk back.
func (e *env) restore(s backup.Snapshot) ([]byte, error) {
	im, err := e.svc.OpenImage(context.Background(), s, device)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	_, err = im.WriteTo(context.Background(), &buf)
	return buf.Bytes(), err
}

func (e *env) wantRestore(s backup.Snapshot, want []byte) {
	e.t.Helper()
	got, err := e.restore(s)
	if err != nil {
		e.t.Fatalf("restore %s: %v", s.Name, err)
	}
	if !bytes.Equal(got, want) {
		e.t.Fatalf("restore %s: %d bytes differ from the %d backed up", s.Name, len(got), len(want))
	}
}

// objects returns the chunk objects in versitygw's directory.
func (e *env) objects() map[backup.ChunkID]string {
	e.t.Helper()
	out := map[backup.ChunkID]string{}
	err := filepath.WalkDir(filepath.Join(e.dir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		id, perr := backup.ParseChunkID(d.Name())
		if perr != nil {
			return nil // versitygw's own files
		}
		out[id] = p
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// referenced returns the union of the chunks the committed snapshots of the
// default namespace reference, from their indexes.
func (e *env) referenced() map[backup.ChunkID]bool {
	e.t.Helper()
	ctx := context.Background()
	snaps, err := e.cat.ListSnapshots(ctx, backup.DefaultNamespace, 0, "")
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[backup.ChunkID]bool{}
	for _, s := range snaps {
		for _, id := range e.indexRefs(s) {
			out[id] = true
		}
	}
	return out
}

// indexRefs reads a snapshot's index objects and returns its distinct
// chunks.
func (e *env) indexRefs(s backup.Snapshot) []backup.ChunkID {
	e.t.Helper()
	ctx := context.Background()
	disks, err := e.cat.ListDisks(ctx, s.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []backup.ChunkID
	for _, d := range disks {
		b, err := e.store.GetObject(ctx, d.IndexKey)
		if err != nil {
			e.t.Fatal(err)
		}
		idx, err := backup.UnmarshalFixedIndex(b)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, idx.Refs()...)
	}
	return out
}

// wantObjectsExactly checks that the bucket holds exactly the referenced
// chunks.
func (e *env) wantObjectsExactly(what string) {
	e.t.Helper()
	objs, refs := e.objects(), e.referenced()
	for id := range refs {
		if _, ok := objs[id]; !ok {
			e.t.Errorf("%s: referenced chunk %s has no object", what, id)
		}
	}
	for id := range objs {
		if !refs[id] {
			e.t.Errorf("%s: chunk %s is stored but nothing references it", what, id)
		}
	}
	if e.t.Failed() {
		e.t.FailNow()
	}
}
