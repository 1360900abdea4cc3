package catalogtest

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func mustTask(t *testing.T, c backup.Catalog, task backup.Task) backup.Task {
	t.Helper()
	got, err := c.CreateTask(t.Context(), task)
	if err != nil {
		t.Fatalf("CreateTask: %v", err)
	}
	return got
}

func testTasks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	task := mustTask(t, c, backup.Task{Kind: "backup-disk", Namespace: "default", SnapshotID: s.ID, Total: 100})
	if task.ID == "" || task.State != backup.TaskRunning || task.CreatedAt.IsZero() || task.UpdatedAt.IsZero() ||
		task.FinishedAt != nil || task.SnapshotID != s.ID || task.Kind != "backup-disk" || task.Total != 100 {
		t.Fatalf("CreateTask returned %+v", task)
	}
	got, err := c.GetTask(ctx, task.ID)
	if err != nil {
		t.Fatalf("GetTask: %v", err)
	}
	wantEqual(t, "GetTask", got, task)
	second := mustTask(t, c, backup.Task{Kind: "backup-disk", Namespace: "default", SnapshotID: s.ID, Total: 7})
	mustTask(t, c, backup.Task{Kind: "gc"})
	list, err := c.ListTasks(ctx, s.ID)
	if err != nil || len(list) != 2 || list[0].ID != task.ID || list[1].ID != second.ID {
		t.Fatalf("ListTasks = %+v, %v; want the two tasks of the snapshot, oldest first", list, err)
	}
	if list, err := c.ListTasks(ctx, "not-a-uuid"); err != nil || len(list) != 0 {
		t.Fatalf("ListTasks(bad id) = %v, %v", list, err)
	}

	for _, done := range []int64{10, 50, 100} {
		if err := c.UpdateTaskProgress(ctx, task.ID, done, 100); err != nil {
			t.Fatalf("UpdateTaskProgress: %v", err)
		}
	}
	if got, err = c.GetTask(ctx, task.ID); err != nil || got.Done != 100 || got.Total != 100 ||
		got.State != backup.TaskRunning {
		t.Fatalf("GetTask after progress: %+v, %v", got, err)
	}
	if err := c.FinishTask(ctx, task.ID, backup.TaskError, "nbd: connection reset"); err != nil {
		t.Fatalf("FinishTask: %v", err)
	}
	got, err = c.GetTask(ctx, task.ID)
	if err != nil || got.State != backup.TaskError || got.Error != "nbd: connection reset" || got.FinishedAt == nil {
		t.Fatalf("GetTask after finish: %+v, %v", got, err)
	}
	// The first final state wins; late progress changes nothing.
	wantKind(t, "FinishTask twice", c.FinishTask(ctx, task.ID, backup.TaskOK, ""), backup.ErrConflict)
	if err := c.UpdateTaskProgress(ctx, task.ID, 1, 2); err != nil {
		t.Fatalf("UpdateTaskProgress after finish: %v", err)
	}
	again, err := c.GetTask(ctx, task.ID)
	if err != nil {
		t.Fatalf("GetTask: %v", err)
	}
	wantEqual(t, "task after late finish and progress", again, got)

	gc := mustTask(t, c, backup.Task{Kind: "gc"})
	if err := c.FinishTask(ctx, gc.ID, backup.TaskOK, ""); err != nil {
		t.Fatalf("FinishTask ok: %v", err)
	}
	if got, err := c.GetTask(ctx, gc.ID); err != nil || got.State != backup.TaskOK || got.Error != "" ||
		got.SnapshotID != "" || got.Namespace != "" {
		t.Fatalf("GetTask gc: %+v, %v", got, err)
	}
}

func testTaskErrors(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	task := mustTask(t, c, backup.Task{Kind: "verify"})
	wantKind(t, "FinishTask running", c.FinishTask(ctx, task.ID, backup.TaskRunning, ""), backup.ErrInvalid)
	wantKind(t, "FinishTask bogus", c.FinishTask(ctx, task.ID, "done", ""), backup.ErrInvalid)
	_, err := c.CreateTask(ctx, backup.Task{Kind: "x", SnapshotID: missingID})
	wantKind(t, "CreateTask for a missing snapshot", err, backup.ErrInvalid)
	for _, id := range []string{missingID, "not-an-id"} {
		_, err := c.GetTask(ctx, id)
		wantKind(t, "GetTask "+id, err, backup.ErrNotFound)
		wantKind(t, "UpdateTaskProgress "+id, c.UpdateTaskProgress(ctx, id, 1, 1), backup.ErrNotFound)
		wantKind(t, "FinishTask "+id, c.FinishTask(ctx, id, backup.TaskOK, ""), backup.ErrNotFound)
		wantKind(t, "AppendTaskLog "+id, c.AppendTaskLog(ctx, id, "x"), backup.ErrNotFound)
		_, err = c.TaskLog(ctx, id, 0)
		wantKind(t, "TaskLog "+id, err, backup.ErrNotFound)
	}
}

func logTexts(lines []backup.TaskLogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Text
	}
	return out
}

func testTaskLog(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	task := mustTask(t, c, backup.Task{Kind: "backup-disk"})
	lines, err := c.TaskLog(ctx, task.ID, 0)
	if err != nil || len(lines) != 0 {
		t.Fatalf("TaskLog of a new task: %+v, %v", lines, err)
	}
	if err := c.AppendTaskLog(ctx, task.ID, "starting", "scsi0: 32 GiB, 12 dirty"); err != nil {
		t.Fatalf("AppendTaskLog: %v", err)
	}
	if err := c.AppendTaskLog(ctx, task.ID); err != nil {
		t.Fatalf("AppendTaskLog with no lines: %v", err)
	}
	if err := c.AppendTaskLog(ctx, task.ID, "", "done ✓"); err != nil {
		t.Fatalf("AppendTaskLog: %v", err)
	}
	lines, err = c.TaskLog(ctx, task.ID, 0)
	if err != nil {
		t.Fatalf("TaskLog: %v", err)
	}
	wantEqual(t, "TaskLog texts", logTexts(lines), []string{"starting", "scsi0: 32 GiB, 12 dirty", "", "done ✓"})
	for i, l := range lines {
		if l.Seq != int64(i+1) || l.Time.IsZero() {
			t.Fatalf("line %d: %+v, want Seq %d and a time", i, l, i+1)
		}
	}
	lines, err = c.TaskLog(ctx, task.ID, 2)
	if err != nil {
		t.Fatalf("TaskLog since 2: %v", err)
	}
	wantEqual(t, "TaskLog since 2", logTexts(lines), []string{"", "done ✓"})
	if lines, err = c.TaskLog(ctx, task.ID, 4); err != nil || len(lines) != 0 {
		t.Fatalf("TaskLog since the end: %+v, %v", lines, err)
	}
	// Any bytes are accepted; what is not UTF-8 may come back replaced.
	if err := c.AppendTaskLog(ctx, task.ID, "peer said \xff\xfe\x00!"); err != nil {
		t.Fatalf("AppendTaskLog with bytes that are not UTF-8: %v", err)
	}
	if lines, err = c.TaskLog(ctx, task.ID, 4); err != nil || len(lines) != 1 ||
		!strings.HasPrefix(lines[0].Text, "peer said ") || !strings.HasSuffix(lines[0].Text, "!") {
		t.Fatalf("TaskLog of a line with bytes that are not UTF-8: %+v, %v", lines, err)
	}
	// Logs may grow after the task finished (late cleanup messages).
	if err := c.FinishTask(ctx, task.ID, backup.TaskOK, ""); err != nil {
		t.Fatalf("FinishTask: %v", err)
	}
	if err := c.AppendTaskLog(ctx, task.ID, "cleanup"); err != nil {
		t.Fatalf("AppendTaskLog after finish: %v", err)
	}
	if lines, err = c.TaskLog(ctx, task.ID, 5); err != nil || len(lines) != 1 || lines[0].Seq != 6 {
		t.Fatalf("TaskLog after finish: %+v, %v", lines, err)
	}
}

// testTaskLogConcurrent appends from several goroutines at once, while a
// reader polls with since like a client does: sequence numbers are 1..n
// without gaps or duplicates, each writer's lines keep their order, and the
// poller never misses a line.
func testTaskLogConcurrent(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	task := mustTask(t, c, backup.Task{Kind: "gc"})
	const writers, appends, perAppend = 8, 20, 3
	const total = writers * appends * perAppend
	var writersWG, pollerWG sync.WaitGroup
	errs := make(chan error, writers*appends+1)
	for w := range writers {
		writersWG.Go(func() {
			for a := range appends {
				lines := make([]string, perAppend)
				for l := range lines {
					lines[l] = fmt.Sprintf("w%d %d", w, a*perAppend+l)
				}
				if err := c.AppendTaskLog(ctx, task.ID, lines...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	writersDone := make(chan struct{})
	var polled []backup.TaskLogLine
	pollerWG.Go(func() {
		var since int64
		for since < total {
			finished := false
			select {
			case <-writersDone:
				finished = true
			default:
			}
			lines, err := c.TaskLog(ctx, task.ID, since)
			if err != nil {
				errs <- err
				return
			}
			polled = append(polled, lines...)
			if len(lines) > 0 {
				since = lines[len(lines)-1].Seq
			} else if finished {
				return // a writer failed; its error is reported below
			}
		}
	})
	writersWG.Wait()
	close(writersDone)
	pollerWG.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent log: %v", err)
	}
	all, err := c.TaskLog(ctx, task.ID, 0)
	if err != nil {
		t.Fatalf("TaskLog: %v", err)
	}
	wantEqual(t, "lines seen by the poller", polled, all)
	next := make(map[string]int) // writer -> next line number expected
	for i, l := range all {
		if l.Seq != int64(i+1) {
			t.Fatalf("line %d has Seq %d", i, l.Seq)
		}
		w, n, _ := strings.Cut(l.Text, " ")
		num, _ := strconv.Atoi(n)
		if num != next[w] {
			t.Fatalf("line %q at Seq %d: writer %s out of order, want %d", l.Text, l.Seq, w, next[w])
		}
		next[w]++
	}
	if len(all) != total {
		t.Fatalf("got %d lines, want %d", len(all), total)
	}
}

func testFailStaleTasks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	old := mustTask(t, c, backup.Task{Kind: "backup-disk", Total: 10})
	done := mustTask(t, c, backup.Task{Kind: "gc"})
	if err := c.FinishTask(ctx, done.ID, backup.TaskOK, ""); err != nil {
		t.Fatal(err)
	}
	if n, err := c.FailStaleTasks(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("FailStaleTasks(1h) = %d, %v; nothing is an hour old", n, err)
	}
	// Wide margins: the suite runs in parallel on loaded machines, and the
	// fresh task must not age past staleAfter before the call.
	time.Sleep(3 * time.Second)
	fresh := mustTask(t, c, backup.Task{Kind: "backup-disk", Total: 10})
	n, err := c.FailStaleTasks(ctx, 2*time.Second)
	if err != nil || n != 1 {
		t.Fatalf("FailStaleTasks = %d, %v; want the one old running task", n, err)
	}
	got, err := c.GetTask(ctx, old.ID)
	if err != nil || got.State != backup.TaskError || !strings.Contains(got.Error, "stalled") || got.FinishedAt == nil {
		t.Fatalf("stale task after FailStaleTasks: %+v, %v", got, err)
	}
	for _, id := range []string{fresh.ID, done.ID} {
		if got, err := c.GetTask(ctx, id); err != nil || got.State == backup.TaskError {
			t.Fatalf("task %s was failed too: %+v, %v", id, got, err)
		}
	}
}
