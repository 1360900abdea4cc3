package dashboard_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/dashboard"
)

func TestAssets_ServeHTTP(t *testing.T) {
	a, err := dashboard.Load()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, path, ifNoneMatch string
		status                    int
		contentType               string
	}{
		{"GET", "/", "", http.StatusOK, "text/html; charset=utf-8"},
		{"GET", "/ui/app.js", "", http.StatusOK, "text/javascript; charset=utf-8"},
		{"GET", "/ui/app.css", "", http.StatusOK, "text/css; charset=utf-8"},
		{"GET", "/ui/index.html", "", http.StatusNotFound, ""},
		{"GET", "/ui/missing.js", "", http.StatusNotFound, ""},
		{"GET", "/other", "", http.StatusNotFound, ""},
		{"POST", "/", "", http.StatusMethodNotAllowed, ""},
		{"GET", "/ui/app.js", "*", http.StatusNotModified, ""},
		{"GET", "/ui/app.js", `"nope", W/"also-nope"`, http.StatusOK, "text/javascript; charset=utf-8"},
	}
	for _, c := range cases {
		req := httptest.NewRequest(c.method, c.path, nil)
		if c.ifNoneMatch != "" {
			req.Header.Set("If-None-Match", c.ifNoneMatch)
		}
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("%s %s (If-None-Match %q): %d, want %d", c.method, c.path, c.ifNoneMatch, rec.Code, c.status)
		}
		if c.contentType != "" && rec.Header().Get("Content-Type") != c.contentType {
			t.Errorf("%s %s: Content-Type %q, want %q", c.method, c.path, rec.Header().Get("Content-Type"), c.contentType)
		}
		if c.status < 300 && !strings.Contains(rec.Header().Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("%s %s: no CSP", c.method, c.path)
		}
	}

	// A weak validator of the current ETag matches too (RFC 9110 weak comparison).
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/app.css", nil))
	etag := rec.Header().Get("ETag")
	req := httptest.NewRequest("GET", "/ui/app.css", nil)
	req.Header.Set("If-None-Match", `"x", W/`+etag)
	rec = httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Errorf("If-None-Match with W/%s: %d and %d bytes, want 304 and none", etag, rec.Code, rec.Body.Len())
	}
}

func TestAssets_ETagsDiffer(t *testing.T) {
	a, err := dashboard.Load()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, n := range a.Names() {
		rec := httptest.NewRecorder()
		a.Write(rec, n, "")
		etag := rec.Header().Get("ETag")
		if other, dup := seen[etag]; dup {
			t.Errorf("%s and %s share ETag %s", n, other, etag)
		}
		seen[etag] = n
	}
}
