package chunkstore_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
	"github.com/backstop-pve/backstop/internal/chunkstore"
)

// flakyS3 is just enough of S3 for one bucket (HEAD bucket, PUT, GET and
// DELETE object) to fail requests on demand. It checks no signatures.
type flakyS3 struct {
	mu        sync.Mutex
	objects   map[string][]byte // guarded by mu
	failNext  int               // guarded by mu; requests still to fail
	failWith  int               // guarded by mu; status of failed requests
	failCode  string            // guarded by mu; S3 error code of failed requests
	stallNext int               // guarded by mu; requests still to leave unanswered
	requests  int               // guarded by mu
}

// stall makes the next n requests hang until the client gives up.
func (f *flakyS3) stall(n int) (requestsSoFar int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stallNext = n
	return f.requests
}

// stalled counts r and reports whether it is to hang.
func (f *flakyS3) stalled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stallNext == 0 {
		return false
	}
	f.stallNext--
	f.requests++
	return true
}

func newFlakyS3(t *testing.T) (*flakyS3, chunkstore.Config) {
	f := &flakyS3{objects: make(map[string][]byte)}
	srv := httptest.NewServer(f) // binds 127.0.0.1
	t.Cleanup(srv.Close)
	cfg := chunkstore.DefaultConfig()
	cfg.URL = "s3://flaky?insecure=1&endpoint=" + strings.TrimPrefix(srv.URL, "http://")
	cfg.AccessKey, cfg.SecretKey = "key", "secret"
	cfg.MaxRetries, cfg.RetryBase, cfg.RetryMax = 4, time.Millisecond, 5*time.Millisecond
	return f, cfg
}

// fail makes the next n requests fail with status and S3 code.
func (f *flakyS3) fail(n, status int, code string) (requestsSoFar int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext, f.failWith, f.failCode = n, status, code
	return f.requests
}

func (f *flakyS3) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

func (f *flakyS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.stalled() {
		// Read the body first: only then does net/http notice the client
		// hanging up and cancel r.Context().
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if f.failNext > 0 {
		f.failNext--
		writeS3Error(w, f.failWith, f.failCode)
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/flaky/")
	switch {
	case r.URL.Path == "/flaky" || r.URL.Path == "/flaky/":
		w.WriteHeader(http.StatusOK) // HEAD bucket: it exists
	case r.Method == http.MethodPut:
		body, err := readS3Body(r)
		if err != nil {
			writeS3Error(w, http.StatusBadRequest, "IncompleteBody")
			return
		}
		f.objects[key] = body
		w.Header().Set("ETag", `"0"`)
	case r.Method == http.MethodGet:
		b, ok := f.objects[key]
		if !ok {
			writeS3Error(w, http.StatusNotFound, "NoSuchKey")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Header().Set("Last-Modified", time.Unix(0, 0).UTC().Format(http.TimeFormat))
		w.Write(b)
	case r.Method == http.MethodDelete:
		delete(f.objects, key)
		w.WriteHeader(http.StatusNoContent)
	default:
		writeS3Error(w, http.StatusNotImplemented, "NotImplemented")
	}
}

func writeS3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected</Message></Error>`, code)
}

// readS3Body returns a PUT body, undoing aws-chunked framing
// ("<hex size>;chunk-signature=…\r\n<data>\r\n", ending with size 0), which
// minio-go uses for signed uploads over plain HTTP.
func readS3Body(r *http.Request) ([]byte, error) {
	if !strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-") {
		return io.ReadAll(r.Body)
	}
	br := bufio.NewReader(r.Body)
	var out []byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.ParseInt(strings.SplitN(strings.TrimSpace(line), ";", 2)[0], 16, 64)
		if err != nil {
			return nil, err
		}
		if size == 0 {
			return out, nil
		}
		chunk := make([]byte, size+2) // data and CRLF
		if _, err := io.ReadFull(br, chunk); err != nil {
			return nil, err
		}
		out = append(out, chunk[:size]...)
	}
}

// Transient failures (503, SlowDown, 500) are retried and then succeed.
func TestS3_RetriesTransientErrors(t *testing.T) {
	f, cfg := newFlakyS3(t)
	f.fail(2, http.StatusServiceUnavailable, "ServiceUnavailable") // Open retries too
	s := mustOpen(t, cfg)
	ctx := t.Context()
	data := backuptest.Payload("text", 1, 300<<10)
	id := s.Sum(data)

	cases := []struct {
		status int
		code   string
	}{
		{http.StatusServiceUnavailable, "ServiceUnavailable"},
		{http.StatusServiceUnavailable, "SlowDown"},
		{http.StatusInternalServerError, "InternalError"},
	}
	for _, c := range cases {
		const n = 3 // below MaxRetries (4)
		before := f.fail(n, c.status, c.code)
		if _, err := s.Put(ctx, id, data); err != nil {
			t.Fatalf("Put after %d × %s: %v", n, c.code, err)
		}
		if got := f.count() - before; got != n+1 {
			t.Errorf("Put after %d × %s: %d requests, want %d", n, c.code, got, n+1)
		}
		before = f.fail(n, c.status, c.code)
		got, err := s.Get(ctx, id, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get after %d × %s: %d bytes, %v", n, c.code, len(got), err)
		}
		if got := f.count() - before; got != n+1 {
			t.Errorf("Get after %d × %s: %d requests, want %d", n, c.code, got, n+1)
		}
	}
}

// A backend that keeps failing gives ErrUnavailable after MaxRetries+1
// attempts.
func TestS3_GivesUpAsUnavailable(t *testing.T) {
	f, cfg := newFlakyS3(t)
	s := mustOpen(t, cfg)
	data := backuptest.Payload("random", 1, 1000)
	id := s.Sum(data)
	before := f.fail(1000, http.StatusServiceUnavailable, "SlowDown")
	_, err := s.Put(t.Context(), id, data)
	if !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Put against a failing backend = %v; want ErrUnavailable", err)
	}
	if got, want := f.count()-before, cfg.MaxRetries+1; got != want {
		t.Errorf("Put made %d requests, want %d", got, want)
	}
	if !strings.Contains(err.Error(), "SlowDown") && !strings.Contains(err.Error(), "injected") {
		t.Errorf("error lost the cause: %v", err)
	}
	before = f.count()
	if _, err := s.Get(t.Context(), id, nil); !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Get against a failing backend = %v; want ErrUnavailable", err)
	}
	if err := s.Ping(t.Context()); !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Ping against a failing backend = %v; want ErrUnavailable", err)
	}
	if got, want := f.count()-before, 2*(cfg.MaxRetries+1); got != want {
		t.Errorf("Get and Ping made %d requests, want %d", got, want)
	}
}

// Permanent errors are not retried and keep their kind.
func TestS3_NoRetryOnPermanentErrors(t *testing.T) {
	f, cfg := newFlakyS3(t)
	s := mustOpen(t, cfg)
	ctx := t.Context()
	data := backuptest.Payload("random", 1, 1000)
	id := s.Sum(data)

	before := f.count()
	if _, err := s.Get(ctx, id, nil); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("Get(missing) = %v; want ErrNotFound", err)
	}
	before = f.fail(1, http.StatusForbidden, "AccessDenied")
	_, err := s.Put(ctx, id, data)
	if err == nil || errors.Is(err, backup.ErrUnavailable) || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("Put denied = %v; want a plain error naming AccessDenied", err)
	}
	if got := f.count() - before; got != 1 {
		t.Errorf("denied Put made %d requests, want 1", got)
	}
	f.fail(1, http.StatusInsufficientStorage, "XMinioStorageFull")
	if _, err := s.Put(ctx, id, data); !errors.Is(err, backup.ErrStorageFull) {
		t.Fatalf("Put on a full backend = %v; want ErrStorageFull", err)
	}
}

// Cancelling the context stops the backoff at once.
func TestS3_CancelDuringBackoff(t *testing.T) {
	f, cfg := newFlakyS3(t)
	cfg.RetryBase, cfg.RetryMax, cfg.MaxRetries = time.Hour, time.Hour, 3
	s := mustOpen(t, cfg)
	data := backuptest.Payload("random", 1, 1000)
	f.fail(1000, http.StatusServiceUnavailable, "SlowDown")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Put(ctx, s.Sum(data), data)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put = %v; want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Put returned after %v", d)
	}
}

// An attempt that hangs is cut off by Config.Timeout and retried; when all
// attempts hang the result is ErrUnavailable, not the caller's deadline.
func TestS3_AttemptTimeout(t *testing.T) {
	f, cfg := newFlakyS3(t)
	cfg.Timeout, cfg.MaxRetries = 100*time.Millisecond, 2
	s := mustOpen(t, cfg)
	data := backuptest.Payload("text", 1, 1000)
	id := s.Sum(data)
	before := f.stall(1)
	if _, err := s.Put(t.Context(), id, data); err != nil {
		t.Fatalf("Put after one hung attempt: %v", err)
	}
	if got := f.count() - before; got != 2 {
		t.Errorf("Put made %d requests, want 2", got)
	}
	f.stall(1000)
	_, err := s.Get(t.Context(), id, nil)
	if !errors.Is(err, backup.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with every attempt hung = %v; want ErrUnavailable and no DeadlineExceeded", err)
	}
}
