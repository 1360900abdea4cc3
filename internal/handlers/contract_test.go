package handlers_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/handlers"
)

// specOps lists the contract's operations as "METHOD /path".
func specOps(t *testing.T) []string {
	t.Helper()
	var out []string
	for path, item := range loadSpec(t).Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// TestContract_RoutesMatchSpec fails when a route of api/openapi.yaml is not
// served, or a served route is not in it.
func TestContract_RoutesMatchSpec(t *testing.T) {
	if err := loadSpec(t).Validate(context.Background()); err != nil {
		t.Fatalf("api/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	h, err := handlers.New(slog.New(slog.DiscardHandler), handlers.Config{}, handlers.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	served, err := handlers.Routes(h)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(served)
	want := specOps(t)
	for _, op := range want {
		if !slices.Contains(served, op) {
			t.Errorf("contract route %s is not served", op)
		}
	}
	for _, r := range served {
		if !slices.Contains(want, r) {
			t.Errorf("served route %s is not in api/openapi.yaml", r)
		}
	}
	if len(want) < 40 {
		t.Errorf("only %d operations in the contract; the spec did not load whole", len(want))
	}
}

// samplePath fills a contract path's parameters with valid values.
func samplePath(p string) string {
	r := strings.NewReplacer(
		"{id}", "7d3f4a52-8f7e-4b1c-9a57-0a6b3c2d1e0f",
		"{name}", "qemu-100-2026_11_25-22_00_00",
		"{device}", "drive-scsi0",
		"{file}", "app.js",
	)
	p = r.Replace(p)
	if strings.HasSuffix(p, "/files/content") {
		p += "?path=/etc/hosts"
	}
	return p
}

// TestAuth_EveryRouteNeedsAToken walks the whole contract: only /healthz,
// /readyz and the dashboard's static files answer without a token; a bad
// token is refused everywhere else.
func TestAuth_EveryRouteNeedsAToken(t *testing.T) {
	s := newTestServer(t)
	public := []string{"GET /healthz", "GET /readyz", "GET /", "GET /ui/{file}"}
	for _, op := range specOps(t) {
		method, path, _ := strings.Cut(op, " ")
		r := s.do(method, samplePath(path), "", "", nil)
		if slices.Contains(public, op) {
			if r.status != http.StatusOK {
				t.Errorf("%s without token: %d, want 200", op, r.status)
			}
			continue
		}
		if r.status != http.StatusUnauthorized {
			t.Errorf("%s without token: %d, want 401; body %s", op, r.status, r.body)
		}
		r = s.do(method, samplePath(path), "bst_0123456789abcdef_"+strings.Repeat("ab", 32), "", nil)
		if r.status != http.StatusUnauthorized {
			t.Errorf("%s with unknown token: %d, want 401", op, r.status)
		}
	}
	// Unknown routes give nothing away without a token either.
	wantProblem(t, s.do("GET", "/api/v1/nope", "", "", nil), http.StatusUnauthorized, "unauthorized")
}

func TestAuth_Roles(t *testing.T) {
	s := newTestServer(t)
	read := s.mustToken(backup.RoleRead)
	bk := s.mustToken(backup.RoleBackup)

	wantStatus(t, s.do("GET", "/api/v1/snapshots", read, "", nil), http.StatusOK)
	wantProblem(t, s.doJSON("POST", "/api/v1/jobs", read, map[string]any{"node": "pve1", "storage": "bs", "start_time": 1}),
		http.StatusForbidden, "forbidden")
	wantStatus(t, s.doJSON("POST", "/api/v1/jobs", bk, map[string]any{"node": "pve1", "storage": "bs", "start_time": 1}),
		http.StatusCreated)
	wantProblem(t, s.do("GET", "/api/v1/tokens", bk, "", nil), http.StatusForbidden, "forbidden")
	wantStatus(t, s.do("GET", "/api/v1/tokens", adminToken, "", nil), http.StatusOK)
	// The bootstrap token is compared whole: a prefix or a longer string is not it.
	wantStatus(t, s.do("GET", "/api/v1/tokens", adminToken[:len(adminToken)-1], "", nil), http.StatusUnauthorized)
	wantStatus(t, s.do("GET", "/api/v1/tokens", adminToken+"x", "", nil), http.StatusUnauthorized)
	// A wrong secret for a real token id is refused.
	wrong := bk[:len(bk)-1] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", bk[len(bk)-1])+1)%16])
	wantStatus(t, s.do("GET", "/api/v1/snapshots", wrong, "", nil), http.StatusUnauthorized)
}

func TestAuth_Namespaces(t *testing.T) {
	s := newTestServer(t)
	tenant := s.mustToken(backup.RoleBackup, "tenant-a")
	body := map[string]any{"ns": "tenant-b", "storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764108000}
	wantProblem(t, s.doJSON("POST", "/api/v1/backups", tenant, body), http.StatusForbidden, "forbidden")
	wantProblem(t, s.do("GET", "/api/v1/snapshots?ns=tenant-b", tenant, "", nil), http.StatusForbidden, "forbidden")
	// Default namespace is a namespace too.
	wantProblem(t, s.do("GET", "/api/v1/snapshots", tenant, "", nil), http.StatusForbidden, "forbidden")
	body["ns"] = "tenant-a"
	wantStatus(t, s.doJSON("POST", "/api/v1/backups", tenant, body), http.StatusCreated)
	wantStatus(t, s.do("GET", "/api/v1/snapshots?ns=tenant-a", tenant, "", nil), http.StatusOK)
	// A backup session of another namespace cannot be touched by id either.
	other := s.doJSON("POST", "/api/v1/backups", adminToken,
		map[string]any{"ns": "tenant-b", "storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764108000})
	wantStatus(t, other, http.StatusCreated)
	var b struct {
		ID string `json:"id"`
	}
	other.json(t, &b)
	wantProblem(t, s.do("PUT", "/api/v1/backups/"+b.ID+"/config", tenant, "text/plain", strings.NewReader("x")),
		http.StatusForbidden, "forbidden")
}

func TestTokens_Lifecycle(t *testing.T) {
	s := newTestServer(t)
	r := s.doJSON("POST", "/api/v1/tokens", adminToken, map[string]any{"name": "ops", "role": "read", "namespaces": []string{"default"}})
	wantStatus(t, r, http.StatusCreated)
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	r.json(t, &tok)
	wantStatus(t, s.do("GET", "/api/v1/snapshots", tok.Token, "", nil), http.StatusOK)

	list := s.do("GET", "/api/v1/tokens", adminToken, "", nil)
	wantStatus(t, list, http.StatusOK)
	if strings.Contains(string(list.body), tok.Token[len(tok.Token)-64:]) {
		t.Fatal("token listing contains the secret")
	}
	if !strings.Contains(string(list.body), tok.ID) {
		t.Fatalf("token listing %s lacks %s", list.body, tok.ID)
	}
	wantStatus(t, s.do("DELETE", "/api/v1/tokens/"+tok.ID, adminToken, "", nil), http.StatusNoContent)
	wantStatus(t, s.do("GET", "/api/v1/snapshots", tok.Token, "", nil), http.StatusUnauthorized)
	wantProblem(t, s.do("DELETE", "/api/v1/tokens/"+tok.ID, adminToken, "", nil), http.StatusNotFound, "not_found")

	// An expired token is refused.
	r = s.doJSON("POST", "/api/v1/tokens", adminToken, map[string]any{"name": "old", "role": "read", "expires_at": "2001-01-01T00:00:00Z"})
	wantProblem(t, r, http.StatusBadRequest, "bad_request")
}

func TestOps_HealthReadyStatusSpec(t *testing.T) {
	s := newTestServer(t)
	wantStatus(t, s.do("GET", "/healthz", "", "", nil), http.StatusOK)
	wantStatus(t, s.do("GET", "/readyz", "", "", nil), http.StatusOK)
	spec := s.do("GET", "/api/openapi.yaml", adminToken, "", nil)
	wantStatus(t, spec, http.StatusOK)
	if !strings.HasPrefix(string(spec.body), "openapi: 3.0") {
		t.Fatalf("spec body starts %q", spec.body[:20])
	}
}

func TestReadyz_FailsWhenABackendIsDown(t *testing.T) {
	h, err := handlers.New(slog.New(slog.DiscardHandler), handlers.Config{}, handlers.Deps{
		Ready: []func(ctx context.Context) error{func(context.Context) error { return backup.ErrUnavailable }},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("readyz with a backend down: %d %s (Retry-After %q)", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
}
