package catalogtest

import (
	"sort"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func names(list []backup.Snapshot) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.Name
	}
	return out
}

func testListSnapshots(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	h := time.Hour
	// Created out of time order on purpose.
	for _, s := range []backup.Snapshot{
		newSnapshot("default", backup.GuestQemu, 100, "s1", t0.Add(2*h)),
		newSnapshot("default", backup.GuestQemu, 100, "s1", t0),
		newSnapshot("default", backup.GuestLXC, 100, "s1", t0.Add(3*h)),
		newSnapshot("default", backup.GuestQemu, 101, "s2", t0.Add(h)),
		newSnapshot("other", backup.GuestQemu, 100, "s1", t0.Add(4*h)),
	} {
		mustSnapshot(t, c, s, 1)
	}
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "s1", t0.Add(5*h))) // open: never listed

	cases := []struct {
		ns   string
		vmid int
		typ  backup.GuestType
		want []string
	}{
		{"default", 0, "", []string{"lxc-100-2026_11_26-01_00_00", "qemu-100-2026_11_26-00_00_00",
			"qemu-101-2026_11_25-23_00_00", "qemu-100-2026_11_25-22_00_00"}},
		{"default", 100, "", []string{"lxc-100-2026_11_26-01_00_00", "qemu-100-2026_11_26-00_00_00",
			"qemu-100-2026_11_25-22_00_00"}},
		{"default", 0, backup.GuestQemu, []string{"qemu-100-2026_11_26-00_00_00",
			"qemu-101-2026_11_25-23_00_00", "qemu-100-2026_11_25-22_00_00"}},
		{"default", 100, backup.GuestQemu, []string{"qemu-100-2026_11_26-00_00_00", "qemu-100-2026_11_25-22_00_00"}},
		{"default", 102, "", nil},
		{"other", 0, "", []string{"qemu-100-2026_11_26-02_00_00"}},
		{"nobody", 0, "", nil},
	}
	for _, tc := range cases {
		got, err := c.ListSnapshots(ctx, tc.ns, tc.vmid, tc.typ)
		if err != nil {
			t.Fatalf("ListSnapshots(%s, %d, %q): %v", tc.ns, tc.vmid, tc.typ, err)
		}
		wantEqual(t, "ListSnapshots("+tc.ns+") names, newest first", names(got), tc.want)
		for _, s := range got {
			if s.State != backup.SnapshotCommitted || s.Namespace != tc.ns {
				t.Fatalf("ListSnapshots(%s) returned %+v", tc.ns, s)
			}
		}
	}
}

func testLastSnapshot(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	h := time.Hour
	_, err := c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "s1")
	wantKind(t, "LastSnapshot with none", err, backup.ErrNotFound)
	old := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "s1", t0), 1)
	newest := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "s1", t0.Add(2*h)), 1)
	viaS2 := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "s2", t0.Add(3*h)), 1)
	mustSnapshot(t, c, newSnapshot("default", backup.GuestLXC, 100, "s1", t0.Add(4*h)), 1)
	mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 101, "s1", t0.Add(5*h)), 1)
	mustSnapshot(t, c, newSnapshot("other", backup.GuestQemu, 100, "s1", t0.Add(6*h)), 1)
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "s1", t0.Add(7*h))) // open

	got, err := c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "s1")
	if err != nil {
		t.Fatalf("LastSnapshot s1: %v", err)
	}
	wantEqual(t, "LastSnapshot through s1", got, newest)
	got, err = c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "s2")
	if err != nil {
		t.Fatalf("LastSnapshot s2: %v", err)
	}
	wantEqual(t, "LastSnapshot through s2", got, viaS2)
	_, err = c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "s3")
	wantKind(t, "LastSnapshot through an unused storage", err, backup.ErrNotFound)

	if err := c.DeleteSnapshot(ctx, "default", newest.Name); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	got, err = c.LastSnapshot(ctx, "default", 100, backup.GuestQemu, "s1")
	if err != nil {
		t.Fatalf("LastSnapshot after delete: %v", err)
	}
	wantEqual(t, "LastSnapshot after deleting the newest", got, old)
}

func testStats(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	wantEqual(t, "Stats of an empty catalog", st, backup.RepositoryStats{})
	ids := chunkIDs("stats", 3)
	mustAddChunks(t, c, ids) // stored sizes 1000, 1001, 1002
	mustAddChunks(t, c, ids) // again: no change
	a := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "s", t0))
	mustCommit(t, c, a.ID, 5000, ids)
	mustSnapshot(t, c, newSnapshot("other", backup.GuestLXC, 200, "s", t0), 700)
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "s", t0.Add(time.Hour))) // open
	st, err = c.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	wantEqual(t, "Stats", st, backup.RepositoryStats{Snapshots: 2, LogicalBytes: 5700, StoredBytes: 3003, Chunks: 3})
}

// testLastBackups: the newest committed snapshot per guest, across
// namespaces and storages; open sessions do not count.
func testLastBackups(t *testing.T, c backup.Catalog) {
	if got, err := c.LastBackups(t.Context()); err != nil || len(got) != 0 {
		t.Fatalf("LastBackups of an empty catalog = %+v, %v", got, err)
	}
	mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "a", t0), 10)
	newest := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "b", t0.Add(time.Hour)), 20)
	mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "a", t0.Add(-time.Hour)), 30)
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "a", t0.Add(2*time.Hour))) // open
	mustSnapshot(t, c, newSnapshot("default", backup.GuestLXC, 100, "a", t0), 40)
	mustSnapshot(t, c, newSnapshot("other", backup.GuestQemu, 100, "a", t0.Add(3*time.Hour)), 50)
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 101, "a", t0)) // never committed

	got, err := c.LastBackups(t.Context())
	if err != nil {
		t.Fatalf("LastBackups: %v", err)
	}
	sort.Slice(got, func(i, j int) bool {
		a, b := got[i], got[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.VMID != b.VMID {
			return a.VMID < b.VMID
		}
		return a.Type < b.Type
	})
	want := []backup.LastBackup{
		{Namespace: "default", VMID: 100, Type: backup.GuestLXC, Time: t0, Size: 40},
		{Namespace: "default", VMID: 100, Type: backup.GuestQemu, Time: newest.BackupTime, Size: 20},
		{Namespace: "other", VMID: 100, Type: backup.GuestQemu, Time: t0.Add(3 * time.Hour), Size: 50},
	}
	wantEqual(t, "LastBackups", got, want)
}
