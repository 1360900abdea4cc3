// Package catalogtest is the contract suite for backup.Catalog. Every
// catalog backend runs it from its own tests:
//
//	func TestStore(t *testing.T) {
//		catalogtest.Run(t, func(t *testing.T) backup.Catalog { return newTestStore(t) })
//	}
//
// The suite uses only the backup.Catalog interface, plus Inspector where a
// backend offers it, so any backend can run it.
package catalogtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Inspector lets the suite look at what the Catalog interface does not
// show. Subtests that need it skip when the catalog lacks it.
type Inspector interface {
	// ChunkRefs returns the reference count of each of ids that is known.
	ChunkRefs(ctx context.Context, ids []backup.ChunkID) (map[backup.ChunkID]int64, error)
	// MarkChunksBad flags chunks as damaged.
	MarkChunksBad(ctx context.Context, ids []backup.ChunkID) error
}

// Run runs the contract suite. newCatalog returns an empty catalog for one
// subtest and arranges its cleanup with t.Cleanup; subtests run in parallel.
func Run(t *testing.T, newCatalog func(t *testing.T) backup.Catalog) {
	tests := []struct {
		name string
		fn   func(t *testing.T, c backup.Catalog)
	}{
		{"Ping", testPing},
		{"Tokens", testTokens},
		{"TokenErrors", testTokenErrors},
		{"Jobs", testJobs},
		{"SnapshotCreate", testSnapshotCreate},
		{"SnapshotCreateInvalid", testSnapshotCreateInvalid},
		{"OpenSessionInvisible", testOpenSessionInvisible},
		{"Blobs", testBlobs},
		{"BlobsAfterCommit", testBlobsAfterCommit},
		{"DisksAndArchives", testDisksAndArchives},
		{"Commit", testCommit},
		{"CommitUnknownRef", testCommitUnknownRef},
		{"CommitBadChunk", testCommitBadChunk},
		{"CommitTwice", testCommitTwice},
		{"Discard", testDiscard},
		{"UpdateMeta", testUpdateMeta},
		{"Delete", testDelete},
		{"RefCounts", testRefCounts},
		{"ConcurrentCommits", testConcurrentCommits},
		{"ListSnapshots", testListSnapshots},
		{"LastSnapshot", testLastSnapshot},
		{"LastBackups", testLastBackups},
		{"KnownChunks", testKnownChunks},
		{"KnownChunksBad", testKnownChunksBad},
		{"KnownChunksLargeBatch", testKnownChunksLargeBatch},
		{"PendingChunks", testPendingChunks},
		{"Stats", testStats},
		{"Tasks", testTasks},
		{"TaskErrors", testTaskErrors},
		{"TaskLog", testTaskLog},
		{"TaskLogConcurrent", testTaskLogConcurrent},
		{"FailStaleTasks", testFailStaleTasks},
		{"BackupRuns", testBackupRuns},
		{"FindTasks", testFindTasks},
		{"Files", testFiles},
	}
	tests = append(tests, maintenanceTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newCatalog(t))
		})
	}
}

func testPing(t *testing.T, c backup.Catalog) {
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// t0 is a backup time with a name of its own: qemu-100-2026_11_25-22_00_00.
var t0 = time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)

// missingID is a well-formed id that names nothing.
const missingID = "0190f5c2-7c4e-7c3a-9f1e-3a4b5c6d7e8f"

// chunkID returns a distinct chunk id for a label.
func chunkID(label string) backup.ChunkID { return sha256.Sum256([]byte(label)) }

func chunkIDs(prefix string, n int) []backup.ChunkID {
	ids := make([]backup.ChunkID, n)
	for i := range ids {
		ids[i] = chunkID(fmt.Sprintf("%s-%d", prefix, i))
	}
	return ids
}

func chunkInfos(ids []backup.ChunkID) []backup.ChunkInfo {
	out := make([]backup.ChunkInfo, len(ids))
	for i, id := range ids {
		out[i] = backup.ChunkInfo{ID: id, Size: 4 << 20, StoredSize: int64(1000 + i)}
	}
	return out
}

func mustAddChunks(t *testing.T, c backup.Catalog, ids []backup.ChunkID) {
	t.Helper()
	if err := c.AddChunks(t.Context(), chunkInfos(ids)); err != nil {
		t.Fatalf("AddChunks: %v", err)
	}
}

func newSnapshot(ns string, typ backup.GuestType, vmid int, storage string, at time.Time) backup.Snapshot {
	return backup.Snapshot{Namespace: ns, Type: typ, VMID: vmid, Storage: storage, BackupTime: at}
}

func mustCreate(t *testing.T, c backup.Catalog, s backup.Snapshot) backup.Snapshot {
	t.Helper()
	got, err := c.CreateSnapshot(t.Context(), s)
	if err != nil {
		t.Fatalf("CreateSnapshot %s/%s %d: %v", s.Namespace, s.Type, s.VMID, err)
	}
	return got
}

func mustCommit(t *testing.T, c backup.Catalog, id string, size int64, refs []backup.ChunkID) backup.Snapshot {
	t.Helper()
	got, err := c.CommitSnapshot(t.Context(), id, size, size/2, refs)
	if err != nil {
		t.Fatalf("CommitSnapshot %s: %v", id, err)
	}
	return got
}

// mustSnapshot creates and commits a snapshot without refs.
func mustSnapshot(t *testing.T, c backup.Catalog, s backup.Snapshot, size int64) backup.Snapshot {
	t.Helper()
	return mustCommit(t, c, mustCreate(t, c, s).ID, size, nil)
}

// wantKind fails unless err is of the given error kind.
func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: got error %v, want %v", what, err, kind)
	}
}

// wantEqual compares values whose times may differ in location only.
func wantEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// normalize returns v with every time.Time (and *time.Time) field in UTC.
func normalize[T any](v T) T {
	rv := reflect.ValueOf(&v).Elem()
	normalizeValue(rv)
	return v
}

var timeType = reflect.TypeFor[time.Time]()

func normalizeValue(v reflect.Value) {
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
	case v.Kind() == reflect.Pointer && !v.IsNil():
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(v.Elem())
		normalizeValue(p.Elem())
		v.Set(p)
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				normalizeValue(v.Field(i))
			}
		}
	case v.Kind() == reflect.Slice:
		if v.Len() == 0 { // nil and empty mean the same here
			v.Set(reflect.Zero(v.Type()))
			return
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(c, v)
		for i := range c.Len() {
			normalizeValue(c.Index(i))
		}
		v.Set(c)
	}
}

func inspector(t *testing.T, c backup.Catalog) Inspector {
	t.Helper()
	in, ok := c.(Inspector)
	if !ok {
		t.Skipf("%T does not implement catalogtest.Inspector", c)
	}
	return in
}

func wantRefs(t *testing.T, c backup.Catalog, want map[backup.ChunkID]int64) {
	t.Helper()
	ids := make([]backup.ChunkID, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	got, err := inspector(t, c).ChunkRefs(t.Context(), ids)
	if err != nil {
		t.Fatalf("ChunkRefs: %v", err)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("refs of chunk %.8s: got %d, want %d", id, got[id], w)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}
