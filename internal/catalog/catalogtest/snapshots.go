package catalogtest

import (
	"bytes"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func testSnapshotCreate(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	job, err := c.CreateJob(ctx, backup.Job{Node: "pve1", Storage: "backstop", StartTime: t0})
	if err != nil {
		t.Fatalf("CreateJob: %v", err)
	}
	in := newSnapshot("default", backup.GuestQemu, 100, "backstop", t0)
	in.JobID = job.ID
	s := mustCreate(t, c, in)
	want := backup.Snapshot{
		ID: s.ID, Namespace: "default", Name: "qemu-100-2026_11_25-22_00_00", JobID: job.ID,
		Storage: "backstop", VMID: 100, Type: backup.GuestQemu, BackupTime: t0,
		State: backup.SnapshotOpen, VerifyState: backup.VerifyNone, CreatedAt: s.CreatedAt,
	}
	if s.ID == "" || s.CreatedAt.IsZero() {
		t.Fatalf("CreateSnapshot: no id or creation time: %+v", s)
	}
	wantEqual(t, "CreateSnapshot", s, want)
	got, err := c.GetSnapshot(ctx, s.ID)
	if err != nil {
		t.Fatalf("GetSnapshot: %v", err)
	}
	wantEqual(t, "GetSnapshot of an open session", got, want)

	// Names are unique per namespace, whatever the state.
	_, err = c.CreateSnapshot(ctx, newSnapshot("default", backup.GuestQemu, 100, "other", t0))
	wantKind(t, "CreateSnapshot with a used name", err, backup.ErrConflict)
	mustCommit(t, c, s.ID, 10, nil)
	_, err = c.CreateSnapshot(ctx, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	wantKind(t, "CreateSnapshot with a committed name", err, backup.ErrConflict)
	// The same name in another namespace (created on first use) is fine.
	o := mustCreate(t, c, newSnapshot("cluster-b", backup.GuestQemu, 100, "backstop", t0))
	if o.Name != s.Name || o.Namespace != "cluster-b" {
		t.Fatalf("CreateSnapshot in another namespace: %+v", o)
	}
	// An explicit name must be the derived one.
	in = newSnapshot("default", backup.GuestLXC, 101, "backstop", t0)
	in.Name = "lxc-101-2026_11_25-22_00_00"
	mustCreate(t, c, in)

	for _, id := range []string{missingID, "not-an-id"} {
		_, err = c.GetSnapshot(ctx, id)
		wantKind(t, "GetSnapshot "+id, err, backup.ErrNotFound)
	}
}

func testSnapshotCreateInvalid(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	cases := map[string]backup.Snapshot{
		"bad namespace":  newSnapshot("../etc", backup.GuestQemu, 100, "s", t0),
		"empty ns":       newSnapshot("", backup.GuestQemu, 100, "s", t0),
		"bad type":       newSnapshot("default", "vm", 100, "s", t0),
		"bad vmid":       newSnapshot("default", backup.GuestQemu, 0, "s", t0),
		"no backup time": newSnapshot("default", backup.GuestQemu, 100, "s", time.Time{}),
		"unknown job":    {Namespace: "default", Type: backup.GuestQemu, VMID: 100, BackupTime: t0, JobID: missingID},
		"name mismatch": {Namespace: "default", Type: backup.GuestQemu, VMID: 100, BackupTime: t0,
			Name: "qemu-101-2026_11_25-22_00_00"},
	}
	for name, s := range cases {
		_, err := c.CreateSnapshot(ctx, s)
		wantKind(t, "CreateSnapshot with "+name, err, backup.ErrInvalid)
	}
	list, err := c.ListSnapshots(ctx, "default", 0, "")
	if err != nil || len(list) != 0 {
		t.Fatalf("ListSnapshots after invalid creates: %v, %v", list, err)
	}
}

func testOpenSessionInvisible(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	list, err := c.ListSnapshots(ctx, "default", 0, "")
	if err != nil || len(list) != 0 {
		t.Fatalf("ListSnapshots with an open session: %+v, %v", list, err)
	}
	_, err = c.SnapshotByName(ctx, "default", s.Name)
	wantKind(t, "SnapshotByName of an open session", err, backup.ErrNotFound)
	_, err = c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "backstop")
	wantKind(t, "LastSnapshot with only an open session", err, backup.ErrNotFound)
	notes := "x"
	_, err = c.UpdateSnapshotMeta(ctx, "default", s.Name, &notes, nil)
	wantKind(t, "UpdateSnapshotMeta of an open session", err, backup.ErrNotFound)
	wantKind(t, "DeleteSnapshot of an open session", c.DeleteSnapshot(ctx, "default", s.Name), backup.ErrNotFound)
	st, err := c.Stats(ctx)
	if err != nil || st.Snapshots != 0 || st.LogicalBytes != 0 {
		t.Fatalf("Stats with an open session: %+v, %v", st, err)
	}

	committed := mustCommit(t, c, s.ID, 1000, nil)
	got, err := c.SnapshotByName(ctx, "default", s.Name)
	if err != nil {
		t.Fatalf("SnapshotByName after commit: %v", err)
	}
	wantEqual(t, "SnapshotByName after commit", got, committed)
	list, err = c.ListSnapshots(ctx, "default", 0, "")
	if err != nil || len(list) != 1 || list[0].ID != s.ID {
		t.Fatalf("ListSnapshots after commit: %+v, %v", list, err)
	}
}

// blobData has every byte value, invalid UTF-8, NUL and CRLF.
func blobData() []byte {
	var b bytes.Buffer
	b.WriteString("# vm config\r\nname: ünïcode\x00\xff\xfe\n")
	for i := range 256 {
		b.WriteByte(byte(i))
	}
	return b.Bytes()
}

func testBlobs(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	for _, kind := range []string{"config", "firewall", "log"} {
		_, err := c.GetSnapshotBlob(ctx, s.ID, kind)
		wantKind(t, "GetSnapshotBlob "+kind+" before put", err, backup.ErrNotFound)
	}
	puts := map[string][]byte{"config": blobData(), "firewall": {}, "log": []byte("INFO: starting\n")}
	for kind, data := range puts {
		if err := c.PutSnapshotBlob(ctx, s.ID, kind, data); err != nil {
			t.Fatalf("PutSnapshotBlob %s: %v", kind, err)
		}
	}
	for kind, want := range puts {
		got, err := c.GetSnapshotBlob(ctx, s.ID, kind)
		if err != nil {
			t.Fatalf("GetSnapshotBlob %s: %v", kind, err)
		}
		if !bytes.Equal(got, want) || got == nil {
			t.Fatalf("GetSnapshotBlob %s: got %q (nil %v), want %q", kind, got, got == nil, want)
		}
	}
	// Putting again replaces.
	if err := c.PutSnapshotBlob(ctx, s.ID, "config", []byte("v2")); err != nil {
		t.Fatalf("PutSnapshotBlob again: %v", err)
	}
	if got, err := c.GetSnapshotBlob(ctx, s.ID, "config"); err != nil || string(got) != "v2" {
		t.Fatalf("GetSnapshotBlob after replace: %q, %v", got, err)
	}
	wantKind(t, "PutSnapshotBlob bad kind", c.PutSnapshotBlob(ctx, s.ID, "notes", nil), backup.ErrInvalid)
	_, err := c.GetSnapshotBlob(ctx, s.ID, "../config")
	wantKind(t, "GetSnapshotBlob bad kind", err, backup.ErrInvalid)
	for _, id := range []string{missingID, "not-an-id"} {
		wantKind(t, "PutSnapshotBlob "+id, c.PutSnapshotBlob(ctx, id, "config", nil), backup.ErrNotFound)
		_, err = c.GetSnapshotBlob(ctx, id, "config")
		wantKind(t, "GetSnapshotBlob "+id, err, backup.ErrNotFound)
	}
}

func testBlobsAfterCommit(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestLXC, 200, "backstop", t0))
	if err := c.PutSnapshotBlob(ctx, s.ID, "config", []byte("arch: amd64\n")); err != nil {
		t.Fatalf("PutSnapshotBlob: %v", err)
	}
	mustCommit(t, c, s.ID, 1, nil)
	wantKind(t, "PutSnapshotBlob config after commit",
		c.PutSnapshotBlob(ctx, s.ID, "config", []byte("changed")), backup.ErrConflict)
	wantKind(t, "PutSnapshotBlob firewall after commit",
		c.PutSnapshotBlob(ctx, s.ID, "firewall", []byte("changed")), backup.ErrConflict)
	if err := c.PutSnapshotBlob(ctx, s.ID, "log", []byte("INFO: done\n")); err != nil {
		t.Fatalf("PutSnapshotBlob log after commit: %v", err)
	}
	if got, err := c.GetSnapshotBlob(ctx, s.ID, "config"); err != nil || string(got) != "arch: amd64\n" {
		t.Fatalf("config after commit: %q, %v", got, err)
	}
	if got, err := c.GetSnapshotBlob(ctx, s.ID, "log"); err != nil || string(got) != "INFO: done\n" {
		t.Fatalf("log after commit: %q, %v", got, err)
	}
}

func testDisksAndArchives(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	if got, err := c.ListDisks(ctx, s.ID); err != nil || len(got) != 0 {
		t.Fatalf("ListDisks of a new session: %+v, %v", got, err)
	}
	disks := []backup.Disk{
		{SnapshotID: s.ID, Device: "scsi0", Size: 32 << 30, ChunkSize: 4 << 20, BitmapMode: "new",
			IndexKey: "indexes/a/scsi0.fidx", IndexSum: chunkID("sum0"), NewBytes: 1 << 30},
		{SnapshotID: s.ID, Device: "virtio1", Size: 0, ChunkSize: 4 << 20, BitmapMode: "none",
			IndexKey: "indexes/a/virtio1.fidx", IndexSum: chunkID("sum1")},
	}
	for _, d := range disks {
		if err := c.AddDisk(ctx, d); err != nil {
			t.Fatalf("AddDisk %s: %v", d.Device, err)
		}
	}
	wantKind(t, "AddDisk twice", c.AddDisk(ctx, disks[0]), backup.ErrConflict)
	got, err := c.ListDisks(ctx, s.ID)
	if err != nil {
		t.Fatalf("ListDisks: %v", err)
	}
	wantEqual(t, "ListDisks (by device)", got, disks)

	archives := []backup.Archive{{SnapshotID: s.ID, Name: "root.tar", Size: 12345,
		IndexKey: "indexes/a/root.didx", IndexSum: chunkID("asum"), Files: 42, NewBytes: 100}}
	if err := c.AddArchive(ctx, archives[0]); err != nil {
		t.Fatalf("AddArchive: %v", err)
	}
	wantKind(t, "AddArchive twice", c.AddArchive(ctx, archives[0]), backup.ErrConflict)
	gotA, err := c.ListArchives(ctx, s.ID)
	if err != nil {
		t.Fatalf("ListArchives: %v", err)
	}
	wantEqual(t, "ListArchives", gotA, archives)

	mustCommit(t, c, s.ID, 32<<30, nil)
	late := backup.Disk{SnapshotID: s.ID, Device: "scsi2", Size: 1, ChunkSize: 4 << 20, BitmapMode: "none"}
	wantKind(t, "AddDisk after commit", c.AddDisk(ctx, late), backup.ErrConflict)
	wantKind(t, "AddArchive after commit",
		c.AddArchive(ctx, backup.Archive{SnapshotID: s.ID, Name: "late"}), backup.ErrConflict)
	// Indexes stay readable on the committed snapshot.
	if got, err := c.ListDisks(ctx, s.ID); err != nil || len(got) != 2 {
		t.Fatalf("ListDisks after commit: %+v, %v", got, err)
	}

	for _, id := range []string{missingID, "not-an-id"} {
		d := disks[0]
		d.SnapshotID = id
		wantKind(t, "AddDisk to "+id, c.AddDisk(ctx, d), backup.ErrNotFound)
		wantKind(t, "AddArchive to "+id, c.AddArchive(ctx, backup.Archive{SnapshotID: id, Name: "x"}), backup.ErrNotFound)
		_, err = c.ListDisks(ctx, id)
		wantKind(t, "ListDisks of "+id, err, backup.ErrNotFound)
		_, err = c.ListArchives(ctx, id)
		wantKind(t, "ListArchives of "+id, err, backup.ErrNotFound)
	}
}
