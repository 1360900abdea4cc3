package handlers_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// TestBadInput: every malformed request gets a problem+json 4xx and writes
// nothing.
func TestBadInput(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	valid := `{"storage":"bs","vmid":100,"type":"qemu","backup_time":1764108000}`
	cases := []struct {
		name, method, path, ct, body string
		status                       int
		code                         string
	}{
		{"malformed JSON", "POST", "/api/v1/backups", "application/json", `{"storage":`, 400, "bad_request"},
		{"not an object", "POST", "/api/v1/backups", "application/json", `[1,2]`, 400, "bad_request"},
		{"unknown field", "POST", "/api/v1/backups", "application/json", `{"storage":"bs","vmid":100,"type":"qemu","backup_time":1,"evil":1}`, 400, "bad_request"},
		{"wrong type", "POST", "/api/v1/backups", "application/json", `{"storage":"bs","vmid":"100","type":"qemu","backup_time":1}`, 400, "bad_request"},
		{"bad enum", "POST", "/api/v1/backups", "application/json", `{"storage":"bs","vmid":100,"type":"docker","backup_time":1}`, 400, "bad_request"},
		{"missing field", "POST", "/api/v1/backups", "application/json", `{"storage":"bs","type":"qemu","backup_time":1}`, 400, "bad_request"},
		{"vmid out of range", "POST", "/api/v1/backups", "application/json", `{"storage":"bs","vmid":0,"type":"qemu","backup_time":1}`, 400, "bad_request"},
		{"bad namespace", "POST", "/api/v1/backups", "application/json", `{"ns":"../etc","storage":"bs","vmid":100,"type":"qemu","backup_time":1}`, 400, "bad_request"},
		{"empty body", "POST", "/api/v1/backups", "application/json", ``, 400, "bad_request"},
		{"wrong content type", "POST", "/api/v1/backups", "text/plain", valid, 415, "unsupported_media_type"},
		{"no content type", "POST", "/api/v1/backups", "", valid, 415, "unsupported_media_type"},
		{"body over the limit", "POST", "/api/v1/backups", "application/json", `{"storage":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "payload_too_large"},
		{"bad uuid", "POST", "/api/v1/backups/not-a-uuid/commit", "", ``, 400, "bad_request"},
		{"bad snapshot name", "GET", "/api/v1/snapshots/qemu-100-..%2F..%2Fetc", "", ``, 400, "bad_request"},
		{"bad query type", "GET", "/api/v1/snapshots?vmid=abc", "", ``, 400, "bad_request"},
		{"bad query enum", "GET", "/api/v1/snapshots?type=vm", "", ``, 400, "bad_request"},
		{"unknown route", "GET", "/api/v1/nope", "", ``, 404, "not_found"},
		{"wrong method", "DELETE", "/api/v1/jobs", "", ``, 405, "method_not_allowed"},
		{"unknown session", "POST", "/api/v1/backups/7d3f4a52-8f7e-4b1c-9a57-0a6b3c2d1e0f/commit", "", ``, 404, "not_found"},
		{"unknown snapshot", "GET", "/api/v1/snapshots/qemu-100-2026_11_25-22_00_00", "", ``, 404, "not_found"},
		{"empty patch", "PATCH", "/api/v1/snapshots/qemu-100-2026_11_25-22_00_00", "application/json", `{}`, 400, "bad_request"},
		{"config too large", "PUT", "/api/v1/backups/7d3f4a52-8f7e-4b1c-9a57-0a6b3c2d1e0f/config", "text/plain", strings.Repeat("x", 17<<20), 413, "payload_too_large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.do(c.method, c.path, bk, c.ct, bytes.NewReader([]byte(c.body)))
			wantProblem(t, r, c.status, c.code)
		})
	}
	list := s.do("GET", "/api/v1/snapshots", bk, "", nil)
	wantStatus(t, list, http.StatusOK)
	if strings.TrimSpace(string(list.body)) != "[]" {
		t.Fatalf("bad input left snapshots behind: %s", list.body)
	}
	st, err := s.catalog.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Snapshots != 0 || st.Chunks != 0 {
		t.Fatalf("bad input changed the catalog: %+v", st)
	}
}
