package handlers_test

import (
	"net/http"
	"strings"
	"testing"
)

type session struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func (s *testServer) openBackup(token string, vmid int, typ string, at int64) session {
	s.t.Helper()
	r := s.doJSON("POST", "/api/v1/backups", token, map[string]any{
		"storage": "bs", "vmid": vmid, "type": typ, "backup_time": at,
	})
	wantStatus(s.t, r, http.StatusCreated)
	var b session
	r.json(s.t, &b)
	return b
}

// TestBackupSession_Lifecycle replays a backup's calls as the plugin makes
// them (job_init, backup_init, config, commit, cleanup, log, job_cleanup)
// and checks what a restore and the listings see.
func TestBackupSession_Lifecycle(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")

	r := s.doJSON("POST", "/api/v1/jobs", bk, map[string]any{"node": "pve1", "storage": "bs", "start_time": 1764108000})
	wantStatus(t, r, http.StatusCreated)
	var job struct {
		ID string `json:"id"`
	}
	r.json(t, &job)

	r = s.doJSON("POST", "/api/v1/backups", bk, map[string]any{
		"job_id": job.ID, "storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764108000,
	})
	wantStatus(t, r, http.StatusCreated)
	var b session
	r.json(t, &b)
	if b.Name != "qemu-100-2025_11_25-22_00_00" {
		t.Fatalf("snapshot name %q", b.Name)
	}
	// Same guest and time again: the name is taken.
	dup := s.doJSON("POST", "/api/v1/backups", bk, map[string]any{"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764108000})
	wantProblem(t, dup, http.StatusConflict, "conflict")

	// Invisible until committed.
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNotFound, "not_found")

	config := "boot: order=scsi0\nscsi0: local:vm-100-disk-0,size=32G\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n\xff\x00binary tail"
	wantStatus(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/config", bk, "text/plain", strings.NewReader(config)), http.StatusNoContent)
	wantStatus(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/firewall", bk, "text/plain; charset=utf-8", strings.NewReader("[OPTIONS]\nenable: 1\n")), http.StatusNoContent)

	inc := s.doJSON("POST", "/api/v1/backups/"+b.ID+"/incremental", bk, map[string]any{"devices": map[string]any{"drive-scsi0": map[string]any{"size": 1 << 30}}})
	wantStatus(t, inc, http.StatusOK)
	if !strings.Contains(string(inc.body), `"drive-scsi0":"new"`) {
		t.Fatalf("first backup incremental answer %s, want new", inc.body)
	}

	r = s.do("POST", "/api/v1/backups/"+b.ID+"/commit", bk, "", nil)
	wantStatus(t, r, http.StatusOK)
	wantProblem(t, s.do("POST", "/api/v1/backups/"+b.ID+"/commit", bk, "", nil), http.StatusConflict, "conflict")
	// Config is frozen after commit.
	wantProblem(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/config", bk, "text/plain", strings.NewReader("x")), http.StatusConflict, "conflict")

	// backup_cleanup with failure after commit must not lose the snapshot.
	r = s.doJSON("POST", "/api/v1/backups/"+b.ID+"/finish", bk, map[string]any{"success": false, "error": "late failure"})
	wantStatus(t, r, http.StatusOK)
	wantStatus(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/log", bk, "text/plain", strings.NewReader("INFO: done\n")), http.StatusNoContent)
	wantStatus(t, s.do("POST", "/api/v1/jobs/"+job.ID+"/finish", bk, "", nil), http.StatusOK)
	wantStatus(t, s.do("POST", "/api/v1/jobs/"+job.ID+"/finish", bk, "", nil), http.StatusOK) // twice is fine

	got := s.do("GET", "/api/v1/snapshots/"+b.Name+"/config", bk, "", nil)
	wantStatus(t, got, http.StatusOK)
	if string(got.body) != config {
		t.Fatalf("config not byte-exact:\n got %q\nwant %q", got.body, config)
	}
	if got := s.do("GET", "/api/v1/snapshots/"+b.Name+"/log", bk, "", nil); string(got.body) != "INFO: done\n" {
		t.Fatalf("log %q", got.body)
	}
	list := s.do("GET", "/api/v1/snapshots?vmid=100&type=qemu", bk, "", nil)
	wantStatus(t, list, http.StatusOK)
	if !strings.Contains(string(list.body), `"volname":"backup/`+b.Name+`"`) {
		t.Fatalf("listing %s lacks the snapshot", list.body)
	}
	if got := s.do("GET", "/api/v1/snapshots?vmid=101", bk, "", nil); strings.TrimSpace(string(got.body)) != "[]" {
		t.Fatalf("vmid filter: %s", got.body)
	}

	// Protected snapshots cannot be deleted; notes round-trip.
	r = s.doJSON("PATCH", "/api/v1/snapshots/"+b.Name, bk, map[string]any{"notes": "before upgrade", "protected": true})
	wantStatus(t, r, http.StatusOK)
	if !strings.Contains(string(r.body), `"notes":"before upgrade"`) || !strings.Contains(string(r.body), `"protected":true`) {
		t.Fatalf("patch answer %s", r.body)
	}
	wantProblem(t, s.do("DELETE", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusConflict, "conflict")
	wantStatus(t, s.doJSON("PATCH", "/api/v1/snapshots/"+b.Name, bk, map[string]any{"protected": false}), http.StatusOK)
	wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNoContent)
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNotFound, "not_found")
}

func TestBackupSession_FailedIsDiscarded(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	b := s.openBackup(bk, 200, "lxc", 1764108000)
	wantStatus(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/config", bk, "text/plain", strings.NewReader("arch: amd64\n")), http.StatusNoContent)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+b.ID+"/finish", bk, map[string]any{"success": false, "error": "tar failed"}), http.StatusOK)
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNotFound, "not_found")
	wantProblem(t, s.do("POST", "/api/v1/backups/"+b.ID+"/commit", bk, "", nil), http.StatusNotFound, "not_found")
	// The name is free again for a retry.
	s.openBackup(bk, 200, "lxc", 1764108000)

	// Claiming success without a commit discards too, and says so.
	c := s.openBackup(bk, 201, "lxc", 1764108000)
	wantProblem(t, s.doJSON("POST", "/api/v1/backups/"+c.ID+"/finish", bk, map[string]any{"success": true}), http.StatusConflict, "conflict")
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+c.Name, bk, "", nil), http.StatusNotFound, "not_found")
}

func TestStatus_FromCache(t *testing.T) {
	s := newTestServer(t)
	r := s.do("GET", "/api/v1/status", adminToken, "", nil)
	wantStatus(t, r, http.StatusOK)
	var st struct {
		Active bool `json:"active"`
	}
	r.json(t, &st)
	if st.Active {
		t.Fatal("status active before the first refresh")
	}
	s.status.Refresh(t.Context())
	r = s.do("GET", "/api/v1/status", adminToken, "", nil)
	r.json(t, &st)
	if !st.Active {
		t.Fatalf("status after refresh: %s", r.body)
	}
}
