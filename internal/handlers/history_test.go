package handlers_test

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type runView struct {
	ID                string  `json:"id"`
	Name              string  `json:"name"`
	Vmid              int     `json:"vmid"`
	State             string  `json:"state"`
	Error             *string `json:"error"`
	Size              int64   `json:"size"`
	SnapshotAvailable bool    `json:"snapshot_available"`
	FinishedAt        *string `json:"finished_at"`
}

type taskListView struct {
	ID       string  `json:"id"`
	Kind     string  `json:"kind"`
	State    string  `json:"state"`
	Error    *string `json:"error"`
	Ns       *string `json:"ns"`
	Snapshot *string `json:"snapshot"`
	Vmid     *int    `json:"vmid"`
}

// TestBackupRuns_History: failed backups stay visible with their reason
// (the client's error, else the failed pull), committed ones say whether
// their snapshot still exists, and listings respect namespaces.
func TestBackupRuns_History(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	rd := s.mustToken("read")

	// A pull from an NBD socket nobody serves fails; the client then ends
	// the backup without saying why.
	pulled := s.openBackup(bk, 101, "qemu", 1764108000)
	sock := filepath.Join(t.TempDir(), "missing.sock")
	taskID := s.startPull(bk, pulled.ID, map[string]any{"device": "drive-scsi0", "size": 1 << 20, "bitmap_mode": "none",
		"source": map[string]any{"uri": "nbd+unix:///?socket=" + sock}})
	if tv := s.waitTask(bk, taskID); tv.State != "error" {
		t.Fatalf("pull from a missing socket ended %+v", tv)
	}
	// While the session is open, the task names its snapshot and guest.
	var tasks []taskListView
	r := s.do("GET", "/api/v1/tasks?ns=default&state=error", rd, "", nil)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &tasks)
	if len(tasks) != 1 || tasks[0].ID != taskID || tasks[0].Kind != "backup-disk" || tasks[0].Snapshot == nil ||
		*tasks[0].Snapshot != pulled.Name || tasks[0].Vmid == nil || *tasks[0].Vmid != 101 || tasks[0].Error == nil {
		t.Fatalf("failed tasks = %s", r.body)
	}
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+pulled.ID+"/finish", bk, map[string]any{"success": false}), http.StatusOK)

	// The client says why.
	told := s.openBackup(bk, 102, "lxc", 1764108000)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+told.ID+"/finish", bk, map[string]any{"success": false, "error": "tar: exit code 2"}), http.StatusOK)

	// One that worked, and one still running.
	ok := s.openBackup(bk, 103, "qemu", 1764108000)
	wantStatus(t, s.do("POST", "/api/v1/backups/"+ok.ID+"/commit", bk, "", nil), http.StatusOK)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+ok.ID+"/finish", bk, map[string]any{"success": true}), http.StatusOK)
	running := s.openBackup(bk, 104, "qemu", 1764108000)

	var runs []runView
	r = s.do("GET", "/api/v1/backups", rd, "", nil)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &runs)
	byName := map[string]runView{}
	for _, run := range runs {
		byName[run.Name] = run
	}
	if len(runs) != 4 || runs[0].ID != running.ID {
		t.Fatalf("runs = %s; want 4, newest first", r.body)
	}
	if run := byName[pulled.Name]; run.State != "failed" || run.Error == nil ||
		!strings.Contains(*run.Error, "backup-disk failed") || run.FinishedAt == nil || run.SnapshotAvailable {
		t.Fatalf("run with a failed pull = %+v (error %v)", run, deref(run.Error))
	}
	if run := byName[told.Name]; run.State != "failed" || deref(run.Error) != "tar: exit code 2" {
		t.Fatalf("run the client failed = %+v (error %v)", run, deref(run.Error))
	}
	if run := byName[ok.Name]; run.State != "ok" || run.Error != nil || !run.SnapshotAvailable {
		t.Fatalf("committed run = %+v", run)
	}
	if run := byName[running.Name]; run.State != "running" || run.FinishedAt != nil {
		t.Fatalf("open run = %+v", run)
	}

	// Filters.
	r = s.do("GET", "/api/v1/backups?state=failed&since="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), rd, "", nil)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &runs)
	if len(runs) != 2 || runs[0].State != "failed" || runs[1].State != "failed" {
		t.Fatalf("failed runs = %s", r.body)
	}
	r = s.do("GET", "/api/v1/backups?vmid=103", rd, "", nil)
	r.json(t, &runs)
	if len(runs) != 1 || runs[0].ID != ok.ID {
		t.Fatalf("runs of 103 = %s", r.body)
	}

	// Deleting the snapshot keeps the run.
	adm := s.mustToken("admin")
	wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+ok.Name, adm, "", nil), http.StatusNoContent)
	r = s.do("GET", "/api/v1/backups?vmid=103", rd, "", nil)
	r.json(t, &runs)
	if len(runs) != 1 || runs[0].State != "ok" || runs[0].SnapshotAvailable {
		t.Fatalf("run of a deleted snapshot = %s", r.body)
	}

	// Namespaces: a token of another namespace sees nothing of default.
	other := s.mustToken("read", "other")
	wantProblem(t, s.do("GET", "/api/v1/backups?ns=default", other, "", nil), http.StatusForbidden, "forbidden")
	wantProblem(t, s.do("GET", "/api/v1/tasks?ns=default", other, "", nil), http.StatusForbidden, "forbidden")
	r = s.do("GET", "/api/v1/tasks", other, "", nil)
	wantStatus(t, r, http.StatusOK)
	r.json(t, &tasks)
	if len(tasks) != 0 {
		t.Fatalf("tasks a token of namespace other sees = %s", r.body)
	}

	// Bad input.
	wantProblem(t, s.do("GET", "/api/v1/backups?state=weird", rd, "", nil), http.StatusBadRequest, "bad_request")
	wantProblem(t, s.do("GET", "/api/v1/backups?limit=0", rd, "", nil), http.StatusBadRequest, "bad_request")
	wantProblem(t, s.do("GET", "/api/v1/tasks?since=yesterday", rd, "", nil), http.StatusBadRequest, "bad_request")
	wantProblem(t, s.do("GET", "/api/v1/tasks", "", "", nil), http.StatusUnauthorized, "unauthorized")
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}
