package handlers_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/dashboard"
	"github.com/backstop-pve/backstop/internal/handlers"
)

// newDashboardServer serves the router with no backends: the dashboard's
// routes need none.
func newDashboardServer(t *testing.T) *httptest.Server {
	t.Helper()
	h, err := handlers.New(slog.New(slog.DiscardHandler), handlers.Config{AdminToken: adminToken}, handlers.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestDashboard_PageAndAssetsArePublicWithStrictHeaders(t *testing.T) {
	srv := newDashboardServer(t)
	cases := []struct{ path, contentType, contains string }{
		{"/", "text/html; charset=utf-8", `<script type="module" src="/ui/app.js">`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "import"},
		{"/ui/pages.js", "text/javascript; charset=utf-8", "export const pages"},
		{"/ui/app.css", "text/css; charset=utf-8", ":focus-visible"},
		{"/ui/icon.svg", "image/svg+xml", "<svg"},
	}
	for _, c := range cases {
		resp, body := get(t, srv.URL+c.path)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token: %d %s", c.path, resp.StatusCode, body)
			continue
		}
		if got := resp.Header.Get("Content-Type"); got != c.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", c.path, got, c.contentType)
		}
		if !strings.Contains(string(body), c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", c.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("GET %s: CSP %q allows inline or eval", c.path, csp)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", c.path, got)
		}
		etag := resp.Header.Get("ETag")
		if !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(etag) {
			t.Errorf("GET %s: ETag %q is not a content hash", c.path, etag)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s: Cache-Control %q, want no-cache (revalidate by ETag)", c.path, cc)
		}
		// Revalidation: the same ETag gives 304 and no body.
		resp, body = get(t, srv.URL+c.path, "If-None-Match", etag)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("GET %s with If-None-Match %s: %d, %d bytes; want 304, none", c.path, etag, resp.StatusCode, len(body))
		}
		resp, _ = get(t, srv.URL+c.path, "If-None-Match", `"0000"`)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s with a stale ETag: %d, want 200", c.path, resp.StatusCode)
		}
	}
}

func TestDashboard_UnknownAssetIs404(t *testing.T) {
	srv := newDashboardServer(t)
	for _, p := range []string{"/ui/nope.js", "/ui/index.html", "/ui/app.txt", "/ui/..%2Fapi.gen.go"} {
		resp, body := get(t, srv.URL+p)
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s, want 404 (or 400 for a name the contract refuses)", p, resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("GET %s: Content-Type %q, want a problem", p, ct)
		}
	}
	if resp, _ := get(t, srv.URL+"/ui/nope.js"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /ui/nope.js: %d, want 404", resp.StatusCode)
	}
}

// TestDashboard_NoExternalURLs: the dashboard loads nothing from elsewhere
// (no CDN, no fonts), and has no inline script for the CSP to refuse.
func TestDashboard_NoExternalURLs(t *testing.T) {
	a, err := dashboard.Load()
	if err != nil {
		t.Fatal(err)
	}
	origin := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	// The SVG namespace is a name, not a URL that is fetched.
	const svgNS = "http://www.w3.org/2000/svg"
	names := a.Names()
	if len(names) < 6 {
		t.Fatalf("only %d embedded files: %v", len(names), names)
	}
	for _, n := range names {
		body := strings.ReplaceAll(string(a.Body(n)), svgNS, "")
		if m := origin.FindString(body); m != "" {
			t.Errorf("%s refers to an external origin: %q", n, m)
		}
	}
	index := string(a.Body(dashboard.IndexFile))
	for _, m := range regexp.MustCompile(`(?is)<script[^>]*>(.*?)</script>`).FindAllStringSubmatch(index, -1) {
		if strings.TrimSpace(m[1]) != "" {
			t.Errorf("index.html has an inline script: %q", m[1])
		}
	}
	if regexp.MustCompile(`(?i)\son[a-z]+=|style=`).MatchString(index) {
		t.Error("index.html has inline event handlers or style attributes, which the CSP refuses")
	}
}
