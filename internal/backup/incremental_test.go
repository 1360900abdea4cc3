package backup_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
)

// TestIncremental_BaseDeletedAfterQuery: query incremental offered the last
// snapshot as base; it is deleted before the pull starts. The reuse pull
// must fail rather than lay the dirty bitmap over the older snapshot that is
// now the last.
func TestIncremental_BaseDeletedAfterQuery(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.backup(100, hour(1), disk(1, 2, 3))
	s2 := e.backup(100, hour(2), disk(1, 4, 3))
	next := disk(1, 4, 5)
	dirty := []backup.Extent{{Offset: 2 * testChunk, Length: testChunk}} // since s2
	sess, err := e.cat.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop", VMID: 100,
		Type: backup.GuestQemu, BackupTime: hour(3)})
	if err != nil {
		t.Fatal(err)
	}
	use, err := e.svc.AnswerIncremental(ctx, sess, device, int64(len(next)))
	if err != nil || !use {
		t.Fatalf("AnswerIncremental = %v, %v; want use", use, err)
	}
	e.delete(s2)
	req := backup.PullRequest{Device: device, Size: int64(len(next)), BitmapMode: backup.BitmapReuse, BitmapName: "bm0",
		URI: e.disks.add(&memDisk{data: next, dirty: dirty})}
	_, err = e.svc.StartPull(ctx, sess, req)
	if !errors.Is(err, backup.ErrConflict) || !strings.Contains(backup.Detail(err), "deleted or replaced") {
		t.Fatalf("reuse pull after its base was deleted: %v, want ErrConflict", err)
	}
	// Asked again, the answer is about the snapshot that is last now, and a
	// full pull is always fine.
	if use, err := e.svc.AnswerIncremental(ctx, sess, device, int64(len(next))); err != nil || !use {
		t.Fatalf("AnswerIncremental again = %v, %v", use, err)
	}
	req.BitmapMode, req.URI = backup.BitmapNew, e.disks.add(&memDisk{data: next})
	task, err := e.svc.StartPull(ctx, sess, req)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := e.finish(pull{session: sess, task: task})
	if err != nil {
		t.Fatal(err)
	}
	e.wantRestore(s3, next)
}
