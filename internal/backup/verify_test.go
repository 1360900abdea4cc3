package backup_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

// verify runs a verify task to its end.
func (e *env) verify(opts backup.VerifyOptions) (backup.Task, string) {
	e.t.Helper()
	t, err := e.svc.StartVerify(context.Background(), opts)
	if err != nil {
		e.t.Fatalf("StartVerify: %v", err)
	}
	return e.waitTask(t.ID), e.taskLog(t.ID)
}

func (e *env) verifyState(s backup.Snapshot) backup.VerifyState {
	e.t.Helper()
	got, err := e.cat.GetSnapshot(context.Background(), s.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return got.VerifyState
}

func (e *env) wantStates(want map[*backup.Snapshot]backup.VerifyState) {
	e.t.Helper()
	for s, w := range want {
		if got := e.verifyState(*s); got != w {
			e.t.Errorf("%s: verify state %q, want %q", s.Name, got, w)
		}
	}
	if e.t.Failed() {
		e.t.FailNow()
	}
}

// objectPath is where versitygw keeps a chunk.
func (e *env) objectPath(id backup.ChunkID) string {
	return filepath.Join(e.dir, "chunks", id.String()[:4], id.String())
}

// TestVerify_DamagedAndMissingChunks: verify finds a damaged and a missing
// chunk, fails the snapshots in the run and outside it that reference them,
// leaves the others ok, and a backup producing that content again repairs
// the chunks.
func TestVerify_DamagedAndMissingChunks(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s1 := e.backup(100, hour(1), disk(1, 2))
	s2 := e.backup(101, hour(1), disk(2, 3))
	s3 := e.backup(102, hour(1), disk(4, 5))
	task, log := e.verify(backup.VerifyOptions{})
	if task.State != backup.TaskOK || !strings.Contains(log, "verified 3 snapshots (0 failed): 5 chunks") {
		t.Fatalf("verify of a healthy repository: %+v\n%s", task, log)
	}
	e.wantStates(map[*backup.Snapshot]backup.VerifyState{&s1: backup.VerifyOK, &s2: backup.VerifyOK, &s3: backup.VerifyOK})

	b, err := os.ReadFile(e.objectPath(e.store.Sum(block(2))))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(e.objectPath(e.store.Sum(block(2))), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.objectPath(e.store.Sum(block(5)))); err != nil {
		t.Fatal(err)
	}
	// Verifying s1 alone also fails s2, which shares the damaged chunk.
	task, log = e.verify(backup.VerifyOptions{Snapshot: s1.Name})
	if task.State != backup.TaskError || !strings.Contains(task.Error, "1 of 1 snapshots failed") ||
		!strings.Contains(log, s2.Name+" in default marked failed") {
		t.Fatalf("verify of s1: %+v\n%s", task, log)
	}
	e.wantStates(map[*backup.Snapshot]backup.VerifyState{&s1: backup.VerifyFailed, &s2: backup.VerifyFailed, &s3: backup.VerifyOK})
	task, log = e.verify(backup.VerifyOptions{Namespace: "default"})
	if task.State != backup.TaskError || !strings.Contains(log, "verified 3 snapshots (3 failed)") || !strings.Contains(log, "2 bad chunks") {
		t.Fatalf("verify of everything: %+v\n%s", task, log)
	}
	// Failed snapshots are no incremental base; dedup no longer trusts the
	// bad chunks.
	for _, s := range []backup.Snapshot{s1, s3} {
		sess := backup.Snapshot{Namespace: "default", VMID: s.VMID, Type: backup.GuestQemu, Storage: "backstop"}
		if _, _, err := e.svc.IncrementalBase(ctx, sess, device, 2*testChunk); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("IncrementalBase on failed %s: %v, want ErrNotFound", s.Name, err)
		}
	}
	known, err := e.cat.KnownChunks(ctx, []backup.ChunkID{e.store.Sum(block(1)), e.store.Sum(block(2)), e.store.Sum(block(5))})
	if err != nil || len(known) != 1 {
		t.Fatalf("KnownChunks after verify: %v, %v; want only block 1", known, err)
	}
	// A later backup with the same content repairs both chunks.
	s4 := e.backup(103, hour(2), disk(2, 5))
	if s4.NewBytes == 0 {
		t.Fatal("the repairing backup stored nothing")
	}
	task, log = e.verify(backup.VerifyOptions{})
	if task.State != backup.TaskOK || !strings.Contains(log, "verified 4 snapshots (0 failed)") {
		t.Fatalf("verify after the repair: %+v\n%s", task, log)
	}
	e.wantRestore(s1, disk(1, 2))
	e.wantRestore(s3, disk(4, 5))
}

// TestVerify_DamagedIndexAndUncountedRefs: an index that does not match its
// checksum, or references a chunk the catalog does not count for the
// snapshot (one GC could take), fails the snapshot.
func TestVerify_DamagedIndexAndUncountedRefs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s1 := e.backup(100, hour(1), disk(1, 2))
	disks, err := e.cat.ListDisks(ctx, s1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutObject(ctx, disks[0].IndexKey, []byte("not the index")); err != nil {
		t.Fatal(err)
	}
	// A snapshot whose catalog refs miss a chunk its index has.
	idx := backup.NewFixedIndex(testChunk, 2*testChunk)
	idx.IDs[0], idx.IDs[1] = e.store.Sum(block(3)), e.store.Sum(block(4))
	for _, n := range []int{3, 4} {
		size, err := e.store.Put(ctx, e.store.Sum(block(n)), block(n))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.cat.AddChunks(ctx, []backup.ChunkInfo{{ID: e.store.Sum(block(n)), Size: testChunk, StoredSize: size}}); err != nil {
			t.Fatal(err)
		}
	}
	sess, err := e.cat.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop", VMID: 101,
		Type: backup.GuestQemu, BackupTime: hour(1)})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := idx.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	key := "indexes/" + sess.ID + "/" + device + ".fidx"
	if err := e.store.PutObject(ctx, key, ib); err != nil {
		t.Fatal(err)
	}
	if err := e.cat.AddDisk(ctx, backup.Disk{SnapshotID: sess.ID, Device: device, Size: 2 * testChunk, ChunkSize: testChunk,
		BitmapMode: "none", IndexKey: key, IndexSum: sha256.Sum256(ib)}); err != nil {
		t.Fatal(err)
	}
	s2, err := e.cat.CommitSnapshot(ctx, sess.ID, 2*testChunk, 0, idx.IDs[:1])
	if err != nil {
		t.Fatal(err)
	}
	task, log := e.verify(backup.VerifyOptions{})
	if task.State != backup.TaskError || !strings.Contains(log, "index of disk "+device) ||
		!strings.Contains(log, "which the catalog does not count for it") {
		t.Fatalf("verify: %+v\n%s", task, log)
	}
	e.wantStates(map[*backup.Snapshot]backup.VerifyState{&s1: backup.VerifyFailed, &s2: backup.VerifyFailed})
}

// TestVerify_BackendDown: a store that fails otherwise than with missing or
// damaged data fails the task and marks nothing.
func TestVerify_BackendDown(t *testing.T) {
	e := newEnv(t)
	s := e.backup(100, hour(1), disk(1, 2))
	e.faulty.Inject(backuptest.MethodGet, backuptest.Fault{Err: backup.ErrUnavailable, Times: -1})
	task, _ := e.verify(backup.VerifyOptions{})
	if task.State != backup.TaskError || !strings.Contains(task.Error, "unavailable") {
		t.Fatalf("verify with the store down: %+v", task)
	}
	if got := e.verifyState(s); got != backup.VerifyNone {
		t.Fatalf("verify state %q after a failed run, want none", got)
	}
	known, err := e.cat.KnownChunks(context.Background(), []backup.ChunkID{e.store.Sum(block(1)), e.store.Sum(block(2))})
	if err != nil || len(known) != 2 {
		t.Fatalf("chunks marked bad by a run that could not read them: %v, %v", known, err)
	}
	if _, err := e.svc.StartVerify(context.Background(), backup.VerifyOptions{Snapshot: "qemu-1-2020_01_01-00_00_00"}); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("verify of an unknown snapshot: %v, want ErrNotFound", err)
	}
}
