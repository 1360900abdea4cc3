package catalogtest

import (
	"slices"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// The contract of backup.FileCatalog (moved here from the Postgres
// catalog's own tests so that every backend meets it).

func file(path string, typ backup.FileType, offset int64) backup.FileEntry {
	return backup.FileEntry{Path: []byte(path), Type: typ, Mode: 0o644, UID: 100000, GID: 100000,
		ModTime: time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC), Offset: offset}
}

func paths(fs []backup.FileEntry) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f.Path)
	}
	return out
}

func testFiles(t *testing.T, s backup.Catalog) {
	ctx := t.Context()
	snap, err := s.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Type: backup.GuestLXC, VMID: 200,
		BackupTime: time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	latin1 := "/etc/caf\xe9" // not UTF-8
	link := file("/etc/localtime", backup.FileSymlink, 4096)
	link.LinkTarget = []byte("/usr/share/zoneinfo/UTC")
	batch1 := []backup.FileEntry{file("/", backup.FileDir, 0), file("/etc", backup.FileDir, 512),
		file("/etc/hosts", backup.FileRegular, 1024), link}
	batch2 := []backup.FileEntry{file(latin1, backup.FileRegular, 8192), file("/etc/ssl", backup.FileDir, 9216)}
	for _, b := range [][]backup.FileEntry{batch1, batch2} {
		if err := s.AddFiles(ctx, snap.ID, "root.tar", b); err != nil {
			t.Fatalf("AddFiles: %v", err)
		}
	}
	got, err := s.ListFiles(ctx, snap.ID, []byte("/etc"))
	if err != nil {
		t.Fatalf("ListFiles /etc: %v", err)
	}
	if want := []string{latin1, "/etc/hosts", "/etc/localtime", "/etc/ssl"}; !slices.Equal(paths(got), want) {
		t.Fatalf("ListFiles /etc: %q, want %q", paths(got), want)
	}
	if got[2].Archive != "root.tar" || string(got[2].LinkTarget) != "/usr/share/zoneinfo/UTC" || got[2].Offset != 4096 ||
		!got[2].ModTime.Equal(link.ModTime) || got[2].UID != 100000 || got[2].Mode != 0o644 {
		t.Fatalf("ListFiles entry: %+v", got[2])
	}
	if got[1].LinkTarget != nil {
		t.Fatalf("regular file has a link target: %+v", got[1])
	}
	if got, err := s.ListFiles(ctx, snap.ID, []byte("/")); err != nil || !slices.Equal(paths(got), []string{"/etc"}) {
		t.Fatalf("ListFiles /: %q, %v", paths(got), err)
	}
	if got, err := s.ListFiles(ctx, snap.ID, []byte("/nope")); err != nil || len(got) != 0 {
		t.Fatalf("ListFiles /nope: %q, %v", paths(got), err)
	}
	f, err := s.StatFile(ctx, snap.ID, []byte(latin1))
	if err != nil || string(f.Path) != latin1 || f.Offset != 8192 {
		t.Fatalf("StatFile: %+v, %v", f, err)
	}
	_, err = s.StatFile(ctx, snap.ID, []byte("/etc/shadow"))
	wantKind(t, "StatFile missing", err, backup.ErrNotFound)

	// The same entry (same stream offset) twice is a conflict.
	wantKind(t, "AddFiles duplicate entry", s.AddFiles(ctx, snap.ID, "root.tar", batch1[2:3]), backup.ErrConflict)
	// A path archived again later in the stream (PVE's mount points) is
	// fine: listings and stat show the later entry.
	again := file("/etc/ssl", backup.FileDir, 20480)
	again.Mode, again.MetaOffset, again.PayloadOffset, again.VolatileOffset = 0o700, 77, 88, 99
	if err := s.AddFiles(ctx, snap.ID, "root.tar", []backup.FileEntry{again}); err != nil {
		t.Fatalf("AddFiles of a path archived twice: %v", err)
	}
	if f, err := s.StatFile(ctx, snap.ID, []byte("/etc/ssl")); err != nil || f.Offset != 20480 || f.Mode != 0o700 ||
		f.MetaOffset != 77 || f.PayloadOffset != 88 || f.VolatileOffset != 99 {
		t.Fatalf("StatFile of a path archived twice: %+v, %v", f, err)
	}
	if got, err := s.ListFiles(ctx, snap.ID, []byte("/etc")); err != nil || len(got) != 4 || got[3].Offset != 20480 {
		t.Fatalf("ListFiles with a path archived twice: %+v, %v", got, err)
	}
	for _, bad := range []string{"etc", "/etc/", "/etc//x", "/etc/../x", "/./x", "/a\x00b", ""} {
		err := s.AddFiles(ctx, snap.ID, "root.tar", []backup.FileEntry{file(bad, backup.FileRegular, 0)})
		wantKind(t, "AddFiles "+bad, err, backup.ErrInvalid)
		_, err = s.ListFiles(ctx, snap.ID, []byte(bad))
		wantKind(t, "ListFiles "+bad, err, backup.ErrInvalid)
	}
	wantKind(t, "AddFiles bad type",
		s.AddFiles(ctx, snap.ID, "root.tar", []backup.FileEntry{file("/x", "socket", 0)}), backup.ErrInvalid)

	if _, err := s.CommitSnapshot(ctx, snap.ID, 1, 1, nil); err != nil {
		t.Fatalf("CommitSnapshot: %v", err)
	}
	wantKind(t, "AddFiles after commit",
		s.AddFiles(ctx, snap.ID, "root.tar", []backup.FileEntry{file("/late", backup.FileRegular, 0)}), backup.ErrConflict)
	_, err = s.ListFiles(ctx, "0190f5c2-7c4e-7c3a-9f1e-3a4b5c6d7e8f", []byte("/"))
	wantKind(t, "ListFiles of a missing snapshot", err, backup.ErrNotFound)

	if err := s.DeleteSnapshot(ctx, "default", snap.Name); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	_, err = s.ListFiles(ctx, snap.ID, []byte("/"))
	wantKind(t, "ListFiles after delete", err, backup.ErrNotFound)
}
