package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/handlers"
	"github.com/backstop-pve/backstop/internal/nbd"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
	"github.com/backstop-pve/backstop/internal/testenv/testcatalog"
)

const adminToken = "test-admin-token-0123456789"

type testServer struct {
	t        *testing.T
	url      string
	handler  http.Handler
	catalog  backup.Catalog
	store    *chunkstore.Store
	storeDir string // the file:// store's directory ("" for S3)
	backups  *backup.Service
	status   *handlers.StatusCache
	router   routers.Router
}

// newTestServer serves the API over a real catalog and a file:// store.
func newTestServer(t *testing.T) *testServer {
	t.Helper()
	scfg := chunkstore.DefaultConfig()
	dir := t.TempDir()
	scfg.URL = "file://" + dir
	s := newTestServerWith(t, scfg)
	s.storeDir = dir
	return s
}

// newS3TestServer serves the API over a real catalog and a fresh bucket of
// the test S3 server.
func newS3TestServer(t *testing.T) *testServer {
	t.Helper()
	s3 := testenv.S3(t)
	scfg := chunkstore.DefaultConfig()
	scfg.URL = "s3://" + testenv.Bucket() + "?endpoint=" + s3.Endpoint + "&insecure=1"
	scfg.AccessKey, scfg.SecretKey = s3.AccessKey, secret.String(s3.SecretKey)
	return newTestServerWith(t, scfg)
}

func newTestServerWith(t *testing.T, scfg chunkstore.Config) *testServer {
	t.Helper()
	ctx := context.Background()
	cat := testcatalog.Open(t, nil)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := chunkstore.Open(ctx, scfg, log)
	if err != nil {
		t.Fatalf("open chunk store: %v", err)
	}
	svc := backup.NewService(log, backup.DefaultServiceConfig(), cat, store, store, nbd.Opener{})
	t.Cleanup(svc.Close)
	nbdServer := nbd.NewServer(nbd.NewBackupExports(svc), nbd.ServerOptions{Logger: log})
	nbdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nctx, stopNBD := context.WithCancel(context.Background())
	nbdDone := make(chan error, 1)
	go func() { nbdDone <- nbdServer.Serve(nctx, nbdLn) }()
	t.Cleanup(func() { stopNBD(); <-nbdDone })
	status := handlers.NewStatusCache(log, cat.Stats, nil, time.Second)
	h, err := handlers.New(log, handlers.Config{AdminToken: adminToken, NBDPort: nbdLn.Addr().(*net.TCPAddr).Port},
		handlers.Deps{Catalog: cat, Backups: svc, Status: status, NBD: nbdServer, Ready: []func(context.Context) error{cat.Ping}})
	if err != nil {
		t.Fatalf("handlers.New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &testServer{t: t, url: srv.URL, handler: h, catalog: cat, store: store, backups: svc, status: status, router: specRouter(t)}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	spec, err := api.GetSwagger()
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	spec.Servers = nil // match any host
	return spec
}

func specRouter(t *testing.T) routers.Router {
	t.Helper()
	r, err := legacy.NewRouter(loadSpec(t))
	if err != nil {
		t.Fatalf("spec router: %v", err)
	}
	return r
}

func init() {
	openapi3filter.RegisterBodyDecoder("application/problem+json", openapi3filter.JSONBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/yaml", openapi3filter.PlainBodyDecoder)
	for _, ct := range []string{"text/html", "text/css", "text/javascript", "image/svg+xml"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// do sends a request and checks the response against the contract: every
// documented route's responses must match their schema and status list.
func (s *testServer) do(method, path, token, contentType string, body io.Reader) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	s.checkContract(req, resp, b)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (s *testServer) checkContract(req *http.Request, resp *http.Response, body []byte) {
	s.t.Helper()
	if resp.StatusCode >= 400 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			s.t.Errorf("%s %s: error %d with Content-Type %q, want application/problem+json", req.Method, req.URL.Path, resp.StatusCode, ct)
		}
		var p struct {
			Code   string `json:"code"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Code == "" || p.Status != resp.StatusCode {
			s.t.Errorf("%s %s: bad problem body %q", req.Method, req.URL.Path, body)
		}
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return // not a documented route (404 tests); the problem check above applies
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		s.t.Errorf("%s %s: response %d does not match the contract: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
}

func (s *testServer) doJSON(method, path, token string, v any) response {
	s.t.Helper()
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			s.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	return s.do(method, path, token, ct, body)
}

func wantStatus(t *testing.T, r response, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d; body: %s", r.status, want, r.body)
	}
}

func wantProblem(t *testing.T, r response, status int, code string) {
	t.Helper()
	wantStatus(t, r, status)
	var p struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	}
	r.json(t, &p)
	if p.Code != code {
		t.Fatalf("problem code %q, want %q; body: %s", p.Code, code, r.body)
	}
}

// mustToken creates a token in the catalog and returns its bearer string.
func (s *testServer) mustToken(role backup.Role, namespaces ...string) string {
	s.t.Helper()
	c, err := handlers.CreateToken(context.Background(), s.catalog, backup.Token{
		Name: "test " + string(role), Role: role, Namespaces: namespaces, CreatedAt: time.Now().UTC(),
	})
	if err != nil {
		s.t.Fatalf("create token: %v", err)
	}
	return c.Bearer
}
