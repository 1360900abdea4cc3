package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// server is one Backstop server process with its own database and bucket.
type server struct {
	tag     string
	c       *child
	base    string // http://127.0.0.1:PORT
	nbdAddr string // 127.0.0.1:PORT of BACKSTOP_NBD_LISTEN
	token   string
	db      string
	bucket  string
	logPath string
	dir     string
	bin     string
	env     []string
	http    *http.Client
	hwmKB   int64 // VmHWM of the last process, read just before its stop
}

// createDB creates a fresh database on the Postgres of BACKSTOP_TEST_PG_DSN
// and returns its DSN; the database is dropped at cleanup.
func (b *bench) createDB(ctx context.Context, name string) (string, error) {
	base := b.pgDSN
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("BACKSTOP_TEST_PG_DSN must be a postgres:// URL, got %q", base)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, base)
	if err != nil {
		return "", fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(cctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	b.onCleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			b.logf("drop database %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			b.logf("drop database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String(), nil
}

// startServer starts the server binary on free 127.0.0.1 ports with a fresh
// database and bucket and waits until /readyz answers 200.
func (b *bench) startServer(ctx context.Context, tag string) (*server, error) {
	suffix := randomHex(4)
	s := &server{tag: tag, token: "bench-" + randomHex(24), db: "backstop_bench_" + tag + "_" + suffix,
		bucket: "bench-" + tag + "-" + suffix, http: &http.Client{}}
	dsn, err := b.createDB(ctx, s.db)
	if err != nil {
		return nil, err
	}
	b.onCleanup(func() { b.removeBucket(s.bucket) })
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	nbdPort, err := freePort()
	if err != nil {
		return nil, err
	}
	s.base = fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	s.nbdAddr = fmt.Sprintf("127.0.0.1:%d", nbdPort)
	s.dir = filepath.Join(b.work, "server-"+tag)
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	s.logPath = filepath.Join(b.work, "server-"+tag+".log")
	s.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + s.dir, "TMPDIR=" + s.dir,
		"GOMAXPROCS=" + strconv.Itoa(runtime.NumCPU()),
		"BACKSTOP_LISTEN=127.0.0.1:" + strconv.Itoa(httpPort),
		"BACKSTOP_NBD_LISTEN=" + s.nbdAddr,
		"BACKSTOP_NBD_ADVERTISE=" + s.nbdAddr,
		"BACKSTOP_DATABASE_URL=" + dsn,
		"BACKSTOP_STORE=s3://" + s.bucket + "?endpoint=" + b.s3.endpoint + "&insecure=1",
		"BACKSTOP_S3_ACCESS_KEY=" + b.s3.access,
		"BACKSTOP_S3_SECRET_KEY=" + b.s3.secret,
		"BACKSTOP_ADMIN_TOKEN=" + s.token,
		"BACKSTOP_DATA_DIR=" + s.dir,
		"BACKSTOP_LOG_LEVEL=info",
	}
	s.env = append(s.env, b.serverEnv...)
	s.bin = b.serverBin
	b.onCleanup(s.stop)
	if err := s.launch(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// launch starts a server process and waits until it is ready.
func (s *server) launch(ctx context.Context) error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(s.bin)
	cmd.Dir, cmd.Env = s.dir, s.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if s.c, err = startChild(cmd); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if s.c.exited() {
			return fmt.Errorf("server %s exited at start: %v; log: %s", s.tag, s.c.err, s.logTail())
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/readyz", nil)
		if resp, err := s.http.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("server %s not ready after 60 s; log: %s", s.tag, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restart stops the server process and starts a new one on the same
// database, bucket and ports: a restore then starts with an empty chunk
// cache, as it would on a server that has not just read the same disk.
func (s *server) restart(ctx context.Context) error {
	s.stop()
	s.http.CloseIdleConnections()
	return s.launch(ctx)
}

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	return tail(string(b), 800)
}

func (s *server) pid() int { return s.c.pid() }

// peakRSS is the server's VmHWM so far, in bytes.
func (s *server) peakRSS() int64 {
	if s.c.exited() {
		return s.hwmKB << 10
	}
	kb, err := procStatusKB(s.pid(), "VmHWM")
	if err != nil {
		return 0
	}
	return kb << 10
}

// stop reads VmHWM and stops the server by its PID.
func (s *server) stop() {
	if s == nil || s.c == nil || s.c.exited() {
		return
	}
	if kb, err := procStatusKB(s.pid(), "VmHWM"); err == nil {
		s.hwmKB = kb
	}
	s.c.stop(40 * time.Second)
}

// apiError is an unexpected answer of the API.
type apiError struct {
	method, path string
	status       int
	code, detail string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.method, e.path, e.status, e.code, e.detail)
}

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status
	}
	return 0
}

// call sends a request with the admin token; body is JSON (or an
// io.Reader sent as contentType). A status other than want is an
// *apiError; out, when set, receives the JSON answer.
func (s *server) call(ctx context.Context, method, path string, body any, contentType string, want int, out any) error {
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case io.Reader:
		rd = v
	default:
		js, err := json.Marshal(v)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(js)
		contentType = "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		var p struct{ Code, Detail, Title string }
		_ = json.Unmarshal(rb, &p)
		if p.Detail == "" {
			p.Detail = tail(string(rb), 300)
		}
		return &apiError{method: method, path: path, status: resp.StatusCode, code: p.Code, detail: p.Detail}
	}
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			return fmt.Errorf("%s %s: answer %q: %w", method, path, tail(string(rb), 200), err)
		}
	}
	return nil
}

type session struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type task struct {
	State string `json:"state"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	Error string `json:"error"`
}

func (s *server) openBackup(ctx context.Context, vmid int, typ string, at int64) (session, error) {
	var sess session
	err := s.call(ctx, "POST", "/api/v1/backups", map[string]any{
		"storage": "bench", "vmid": vmid, "type": typ, "backup_time": at}, "", http.StatusCreated, &sess)
	return sess, err
}

// discard ends a session that failed, best effort.
func (s *server) discard(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = s.call(ctx, "POST", "/api/v1/backups/"+id+"/finish", map[string]any{"success": false, "error": "benchmark phase failed"}, "", http.StatusOK, nil)
}

// waitTask polls a task until it is no longer running.
func (s *server) waitTask(ctx context.Context, id string) (task, error) {
	for {
		var t task
		if err := s.call(ctx, "GET", "/api/v1/tasks/"+id, nil, "", http.StatusOK, &t); err != nil {
			return t, err
		}
		if t.State != "running" {
			if t.State != "ok" {
				return t, fmt.Errorf("task %s ended %s: %s", id, t.State, t.Error)
			}
			return t, nil
		}
		select {
		case <-ctx.Done():
			return t, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// vmBackup is one VM backup as the plugin drives it: open a session, (for
// reuse) ask whether the bitmap may be reused, start the disk pull from
// the NBD URI, wait for its task and commit.
type vmBackup struct {
	snapshot string
	task     task
	dur      time.Duration
	newBytes int64
}

func (s *server) backupVM(ctx context.Context, vmid int, at int64, uri string, size int64, mode string) (vmBackup, error) {
	var out vmBackup
	start := time.Now()
	sess, err := s.openBackup(ctx, vmid, "qemu", at)
	if err != nil {
		return out, err
	}
	committed := false
	defer func() {
		if !committed {
			s.discard(sess.ID)
		}
	}()
	const dev = "drive-scsi0"
	if mode == "reuse" {
		var a struct {
			Devices map[string]string `json:"devices"`
		}
		if err := s.call(ctx, "POST", "/api/v1/backups/"+sess.ID+"/incremental",
			map[string]any{"devices": map[string]any{dev: map[string]any{"size": size}}}, "", http.StatusOK, &a); err != nil {
			return out, err
		}
		if a.Devices[dev] != "use" {
			return out, fmt.Errorf("incremental query answered %q for %s, want use", a.Devices[dev], dev)
		}
	}
	body := map[string]any{"device": dev, "size": size, "bitmap_mode": mode, "source": map[string]any{"uri": uri}}
	if mode != "none" {
		body["bitmap_name"] = "bm0"
	}
	var tr struct {
		TaskID string `json:"task_id"`
	}
	if err := s.call(ctx, "POST", "/api/v1/backups/"+sess.ID+"/disks", body, "", http.StatusAccepted, &tr); err != nil {
		return out, err
	}
	if out.task, err = s.waitTask(ctx, tr.TaskID); err != nil {
		return out, err
	}
	if err := s.call(ctx, "POST", "/api/v1/backups/"+sess.ID+"/commit", nil, "", http.StatusOK, nil); err != nil {
		return out, err
	}
	committed = true
	out.dur = time.Since(start)
	out.snapshot = sess.Name
	var snap struct {
		NewBytes int64 `json:"new_bytes"`
	}
	if err := s.call(ctx, "GET", "/api/v1/snapshots/"+sess.Name, nil, "", http.StatusOK, &snap); err == nil {
		out.newBytes = snap.NewBytes
	}
	return out, nil
}

// download streams GET path into file and returns the bytes written.
func (s *server) download(ctx context.Context, path, file string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.base+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var p struct{ Code, Detail string }
		_ = json.Unmarshal(rb, &p)
		return 0, &apiError{method: "GET", path: path, status: resp.StatusCode, code: p.Code, detail: p.Detail}
	}
	f, err := os.Create(file)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(f, resp.Body, make([]byte, 4*mib))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}
