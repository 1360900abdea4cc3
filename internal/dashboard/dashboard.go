// Package dashboard holds Backstop's web dashboard: static HTML, CSS and
// JavaScript modules embedded in the binary (no build step, nothing loaded
// from elsewhere) and the code that serves them with strict headers.
//
// The page holds no data and needs no session: its script asks the user for
// an API token, keeps it in sessionStorage and calls the public REST API
// (/api/v1/…) with it as a bearer token. No cookie is ever set, so there is
// no ambient authority for another site to ride on (no CSRF surface), and
// everything the dashboard shows can also be had with curl.
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed static
var static embed.FS

// IndexFile is the page served at "/".
const IndexFile = "index.html"

// Prefix is the URL path the assets are served under.
const Prefix = "/ui/"

// CSP allows only the dashboard's own scripts, styles and images and its
// own API; no inline script or style, no framing, no plugins.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

type asset struct {
	body        []byte
	contentType string
	etag        string // strong, from the content's SHA-256
}

// Assets are the embedded files, read and hashed once.
type Assets struct {
	files map[string]asset
}

// contentTypes are set explicitly: mime.TypeByExtension depends on the
// host's mime tables, and a module script must be text/javascript.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// Load reads the embedded files.
func Load() (*Assets, error) {
	a := &Assets{files: make(map[string]asset)}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			return fmt.Errorf("dashboard: no content type for %s", p)
		}
		sum := sha256.Sum256(b)
		a.files[strings.TrimPrefix(p, "static/")] = asset{body: b, contentType: ct,
			etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dashboard: load assets: %w", err)
	}
	if _, ok := a.files[IndexFile]; !ok {
		return nil, fmt.Errorf("dashboard: %s missing", IndexFile)
	}
	return a, nil
}

// Names lists the embedded files.
func (a *Assets) Names() []string {
	out := make([]string, 0, len(a.files))
	for n := range a.files {
		out = append(out, n)
	}
	return out
}

// Has reports whether name is an embedded file.
func (a *Assets) Has(name string) bool {
	_, ok := a.files[name]
	return ok
}

// Body returns the bytes of an embedded file (nil when there is none).
func (a *Assets) Body(name string) []byte { return a.files[name].body }

// SetSecurityHeaders sets the headers every dashboard response carries.
func SetSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// Write answers a request for the file name: 304 when ifNoneMatch names its
// ETag, else the bytes. It returns false, writing nothing, when there is no
// such file. Files are revalidated on every use (no-cache) and answered 304
// while unchanged, so an upgraded server never runs a stale script.
func (a *Assets) Write(w http.ResponseWriter, name, ifNoneMatch string) bool {
	f, ok := a.files[name]
	if !ok {
		return false
	}
	h := w.Header()
	SetSecurityHeaders(h)
	h.Set("ETag", f.etag)
	h.Set("Cache-Control", "no-cache")
	if etagMatch(ifNoneMatch, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return true
	}
	h.Set("Content-Type", f.contentType)
	h.Set("Content-Length", fmt.Sprint(len(f.body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(f.body)
	return true
}

// etagMatch implements If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// ServeHTTP serves "/" and Prefix+file on their own, for use without the
// API router; the server uses Write through its contract routes.
func (a *Assets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := IndexFile
	if r.URL.Path != "/" {
		n, ok := strings.CutPrefix(r.URL.Path, Prefix)
		if !ok || n == IndexFile {
			http.NotFound(w, r)
			return
		}
		name = n
	}
	if !a.Write(w, name, r.Header.Get("If-None-Match")) {
		http.NotFound(w, r)
	}
}
