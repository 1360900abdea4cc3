package catalogtest

import (
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func runStates(runs []backup.BackupRun) string {
	var b strings.Builder
	for i, r := range runs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.Name + "=" + string(r.State))
	}
	return b.String()
}

func mustRuns(t *testing.T, c backup.Catalog, f backup.BackupRunFilter) []backup.BackupRun {
	t.Helper()
	runs, err := c.ListBackupRuns(t.Context(), f)
	if err != nil {
		t.Fatalf("ListBackupRuns(%+v): %v", f, err)
	}
	return runs
}

// testBackupRuns: every session leaves a run that follows it through
// commit, discard (with the reason) and deletion of its snapshot.
func testBackupRuns(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ok := mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0), 1000)
	tick()
	failed := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0.Add(time.Hour)))
	if err := c.DiscardSnapshot(ctx, failed.ID, "task backup-disk failed: nbd: connection reset"); err != nil {
		t.Fatalf("DiscardSnapshot: %v", err)
	}
	tick()
	running := mustCreate(t, c, newSnapshot("default", backup.GuestLXC, 200, "backstop", t0.Add(2*time.Hour)))
	tick()
	mustCreate(t, c, newSnapshot("other", backup.GuestQemu, 100, "backstop", t0.Add(3*time.Hour)))

	runs := mustRuns(t, c, backup.BackupRunFilter{Namespace: "default"})
	want := running.Name + "=running " + failed.Name + "=failed " + ok.Name + "=ok"
	if got := runStates(runs); got != want {
		t.Fatalf("runs of default = %s; want newest first %s", got, want)
	}
	r := runs[0]
	if r.ID != running.ID || r.VMID != 200 || r.Type != backup.GuestLXC || r.Storage != "backstop" ||
		r.FinishedAt != nil || r.SnapshotAvailable || r.Error != "" || r.StartedAt.IsZero() {
		t.Fatalf("running run = %+v", r)
	}
	r = runs[1]
	if r.ID != failed.ID || r.Error != "task backup-disk failed: nbd: connection reset" || r.FinishedAt == nil ||
		r.SnapshotAvailable || r.Size != 0 {
		t.Fatalf("failed run = %+v", r)
	}
	r = runs[2]
	if r.ID != ok.ID || r.Size != 1000 || r.NewBytes != ok.NewBytes || !r.SnapshotAvailable || r.FinishedAt == nil ||
		r.FinishedAt.Before(r.StartedAt) || r.Error != "" {
		t.Fatalf("committed run = %+v (snapshot %+v)", r, ok)
	}

	// Filters.
	if got := runStates(mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", State: backup.RunFailed})); got != failed.Name+"=failed" {
		t.Fatalf("failed runs = %s", got)
	}
	if got := runStates(mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", VMID: 100})); got != failed.Name+"=failed "+ok.Name+"=ok" {
		t.Fatalf("runs of vmid 100 = %s", got)
	}
	if got := runStates(mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", Limit: 1})); got != running.Name+"=running" {
		t.Fatalf("runs limited to 1 = %s", got)
	}
	if got := mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("runs since an hour from now = %s", runStates(got))
	}
	if got := mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", Since: runs[1].StartedAt}); len(got) != 2 {
		t.Fatalf("runs since the failed one started = %s; want it and the running one", runStates(got))
	}
	if got := mustRuns(t, c, backup.BackupRunFilter{Namespace: "nobody"}); len(got) != 0 {
		t.Fatalf("runs of an unknown namespace = %s", runStates(got))
	}
	_, err := c.ListBackupRuns(ctx, backup.BackupRunFilter{Namespace: "default", State: "weird"})
	wantKind(t, "ListBackupRuns with a bad state", err, backup.ErrInvalid)

	// The run outlives its snapshot, and says it is gone.
	if err := c.DeleteSnapshot(ctx, "default", ok.Name); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	runs = mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", VMID: 100, State: backup.RunOK})
	if len(runs) != 1 || runs[0].ID != ok.ID || runs[0].SnapshotAvailable || runs[0].Size != 1000 {
		t.Fatalf("run of a deleted snapshot = %+v", runs)
	}

	// A discard without a reason still says something.
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 300, "backstop", t0))
	if err := c.DiscardSnapshot(ctx, s.ID, ""); err != nil {
		t.Fatalf("DiscardSnapshot: %v", err)
	}
	runs = mustRuns(t, c, backup.BackupRunFilter{Namespace: "default", VMID: 300})
	if len(runs) != 1 || runs[0].State != backup.RunFailed || runs[0].Error == "" {
		t.Fatalf("run discarded without a reason = %+v", runs)
	}
}

// testFindTasks: listing across snapshots, newest first, with filters and
// the snapshot's name and guest.
func testFindTasks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	disk := mustTask(t, c, backup.Task{Kind: "backup-disk", Namespace: "default", SnapshotID: s.ID, Total: 10})
	tick()
	gc := mustTask(t, c, backup.Task{Kind: "gc"})
	tick()
	other := mustTask(t, c, backup.Task{Kind: "prune", Namespace: "other"})
	if err := c.FinishTask(ctx, gc.ID, backup.TaskError, "store unreachable"); err != nil {
		t.Fatalf("FinishTask: %v", err)
	}

	ids := func(tasks []backup.Task) string {
		var out []string
		for _, t := range tasks {
			out = append(out, t.Kind)
		}
		return strings.Join(out, " ")
	}
	find := func(f backup.TaskFilter) []backup.Task {
		t.Helper()
		tasks, err := c.FindTasks(ctx, f)
		if err != nil {
			t.Fatalf("FindTasks(%+v): %v", f, err)
		}
		return tasks
	}
	if got := ids(find(backup.TaskFilter{})); got != "prune gc backup-disk" {
		t.Fatalf("all tasks = %s; want newest first", got)
	}
	all := find(backup.TaskFilter{})
	if all[2].ID != disk.ID || all[2].SnapshotName != s.Name || all[2].VMID != 100 || all[2].SnapshotID != s.ID ||
		all[2].Total != 10 || all[2].State != backup.TaskRunning {
		t.Fatalf("disk task = %+v", all[2])
	}
	if all[1].ID != gc.ID || all[1].SnapshotName != "" || all[1].VMID != 0 || all[1].Error != "store unreachable" ||
		all[1].FinishedAt == nil {
		t.Fatalf("gc task = %+v", all[1])
	}
	if all[0].ID != other.ID || all[0].Namespace != "other" {
		t.Fatalf("prune task = %+v", all[0])
	}
	if got := ids(find(backup.TaskFilter{Namespaces: []string{"default", ""}})); got != "gc backup-disk" {
		t.Fatalf("tasks of default and maintenance = %s", got)
	}
	if got := ids(find(backup.TaskFilter{Namespaces: []string{"default"}})); got != "backup-disk" {
		t.Fatalf("tasks of default = %s", got)
	}
	if got := ids(find(backup.TaskFilter{Namespaces: []string{}})); got != "" {
		t.Fatalf("tasks of no namespace = %s", got)
	}
	if got := ids(find(backup.TaskFilter{State: backup.TaskError})); got != "gc" {
		t.Fatalf("failed tasks = %s", got)
	}
	if got := ids(find(backup.TaskFilter{Kind: "backup-disk"})); got != "backup-disk" {
		t.Fatalf("backup-disk tasks = %s", got)
	}
	if got := ids(find(backup.TaskFilter{Limit: 2})); got != "prune gc" {
		t.Fatalf("two newest tasks = %s", got)
	}
	if got := ids(find(backup.TaskFilter{Since: gc.CreatedAt})); got != "prune gc" {
		t.Fatalf("tasks since gc = %s", got)
	}
	_, err := c.FindTasks(ctx, backup.TaskFilter{State: "weird"})
	wantKind(t, "FindTasks with a bad state", err, backup.ErrInvalid)

	// A discarded session's tasks stay, without a snapshot.
	if err := c.DiscardSnapshot(ctx, s.ID, "x"); err != nil {
		t.Fatalf("DiscardSnapshot: %v", err)
	}
	got := find(backup.TaskFilter{Kind: "backup-disk"})
	if len(got) != 1 || got[0].SnapshotName != "" || got[0].VMID != 0 {
		t.Fatalf("task of a discarded session = %+v", got)
	}
}
