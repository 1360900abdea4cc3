package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog/catalogtest"
	"github.com/backstop-pve/backstop/internal/testenv"
	"github.com/backstop-pve/backstop/internal/testenv/testcatalog"
)

// The test binary doubles as the server binary: with this variable set it
// runs main, so a test can start a real server process and kill -9 it.
const runServerEnv = "BACKSTOP_TEST_RUN_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(runServerEnv) == "1" {
		main()
		return
	}
	code := m.Run()
	if buildDir != "" { // the server binary zeroconf_test.go built
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

type serverProc struct {
	cmd  *exec.Cmd
	base string
}

func startServerProc(t *testing.T, env []string) *serverProc {
	t.Helper()
	port := freeTCPPort(t)
	cmd := exec.Command(os.Args[0], "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--nbd-listen", "127.0.0.1:0")
	// The server sees only the test's BACKSTOP_* settings, none of the
	// caller's.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BACKSTOP_") || strings.HasPrefix(kv, "BACKSTOP_TEST_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Plain HTTP unless env says otherwise: TLS changes nothing here, and
	// an embedded catalog would otherwise bring a generated certificate.
	cmd.Env = append(append(cmd.Env, runServerEnv+"=1", "BACKSTOP_TLS=off"), env...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	for range 200 {
		if resp, err := http.Get(p.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server did not get ready:\n%s", logs.String())
	return nil
}

func (p *serverProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

// stop ends the server with SIGTERM and waits for it.
func (p *serverProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("server exited after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		t.Error("server ignored SIGTERM for 30 s")
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func call(t *testing.T, method, url, token string, body any, out any) int {
	t.Helper()
	return callWith(t, http.DefaultClient, method, url, token, body, out)
}

// callWith is call through client (e.g. one pinned to a certificate).
func callWith(t *testing.T, client *http.Client, method, url, token string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, b)
		}
	}
	return resp.StatusCode
}

func qemuTool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, testenv.PeerQEMU, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestCrash_MidPull kills the server with SIGKILL in the middle of a disk
// pull. After a restart no snapshot is visible, the session cannot be
// committed, and every chunk object in the bucket is known to the catalog
// (reserved or stored), so GC can reclaim what the crash left. It runs
// against the catalog BACKSTOP_TEST_CATALOG selects (scripts/test runs
// both).
func TestCrash_MidPull(t *testing.T) {
	tc := testcatalog.New(t)
	s3 := testenv.S3(t)
	if s3.Dir == "" {
		testenv.Missing(t, testenv.PeerS3, "BACKSTOP_TEST_S3_DIR is not set")
	}
	bucket := testenv.Bucket()
	var env []string
	for k, v := range tc.ServerEnv() {
		env = append(env, k+"="+v)
	}
	env = append(env,
		"BACKSTOP_STORE=s3://"+bucket+"?endpoint="+s3.Endpoint+"&insecure=1",
		"BACKSTOP_S3_ACCESS_KEY="+s3.AccessKey, "BACKSTOP_S3_SECRET_KEY="+s3.SecretKey,
		"BACKSTOP_ADMIN_TOKEN=crash-test-admin-token",
	)
	crashMidPull(t, env, func() string { return "crash-test-admin-token" }, filepath.Join(s3.Dir, bucket, "chunks"),
		func() catalogtest.Inspector { return inspector(t, tc) })
}

// TestCrash_MidPullZeroConfig is the same crash in zero-config mode: no
// catalog, store or token configured, so the server keeps all of them in its
// data directory, whose lock the killed process must not leave held.
func TestCrash_MidPullZeroConfig(t *testing.T) {
	data := t.TempDir()
	env := []string{"BACKSTOP_DATA_DIR=" + data}
	tok := func() string {
		b, err := os.ReadFile(filepath.Join(data, adminTokenFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	tc := testcatalog.Catalog{Backend: testcatalog.SQLite, DataDir: data}
	crashMidPull(t, env, tok, filepath.Join(data, chunksDir), func() catalogtest.Inspector { return inspector(t, tc) })
}

func inspector(t *testing.T, tc testcatalog.Catalog) catalogtest.Inspector {
	t.Helper()
	cat, ok := tc.Open(t, nil).(catalogtest.Inspector)
	if !ok {
		t.Fatalf("the %s catalog cannot list chunk references", tc.Backend)
	}
	return cat
}

// crashMidPull starts a server with env, kills it mid-pull, restarts it and
// checks invariant 1. tok returns the admin token once the server runs;
// chunks is the store's directory of chunk objects.
func crashMidPull(t *testing.T, env []string, tok func() string, chunks string, inspect func() catalogtest.Inspector) {
	t.Helper()
	// A 64 MiB disk of incompressible data served by qemu-nbd.
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	f, _ := os.Create(raw)
	rnd, _ := os.Open("/dev/urandom")
	if _, err := io.CopyN(f, rnd, 64<<20); err != nil {
		t.Fatal(err)
	}
	rnd.Close()
	f.Close()
	pidFile := filepath.Join(dir, "nbd.pid")
	sock := filepath.Join(dir, "nbd.sock")
	qemuTool(t, "qemu-nbd", "--fork", "--pid-file="+pidFile, "--persistent", "--shared=4", "--read-only",
		"-f", "raw", "-x", "drive-scsi0", "-k", sock, raw)
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})

	srv := startServerProc(t, env)
	token := tok()
	var b struct{ ID, Name string }
	if code := call(t, "POST", srv.base+"/api/v1/backups", token, map[string]any{
		"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764100000}, &b); code != 201 {
		t.Fatalf("create backup: %d", code)
	}
	var task struct {
		TaskID string `json:"task_id"`
	}
	// 8 MiB/s: the pull takes about 8 s, so the kill lands in the middle.
	if code := call(t, "POST", srv.base+"/api/v1/backups/"+b.ID+"/disks", token, map[string]any{
		"device": "drive-scsi0", "size": 64 << 20, "bitmap_mode": "none", "bandwidth_limit": 8 << 20,
		"source": map[string]any{"uri": "nbd+unix:///drive-scsi0?socket=" + sock}}, &task); code != 202 {
		t.Fatalf("start pull: %d", code)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var tv struct {
			State string
			Done  int64
		}
		call(t, "GET", srv.base+"/api/v1/tasks/"+task.TaskID, token, nil, &tv)
		if tv.State != "running" {
			t.Fatalf("pull ended before the kill: %+v", tv)
		}
		if tv.Done >= 20<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pull made no progress")
		}
		time.Sleep(100 * time.Millisecond)
	}
	srv.kill9(t)

	srv = startServerProc(t, env)
	var snaps []map[string]any
	if code := call(t, "GET", srv.base+"/api/v1/snapshots", token, nil, &snaps); code != 200 || len(snaps) != 0 {
		t.Fatalf("snapshots after the crash: %d %v", code, snaps)
	}
	if code := call(t, "POST", srv.base+"/api/v1/backups/"+b.ID+"/commit", token, nil, nil); code != http.StatusConflict {
		t.Fatalf("commit of the crashed session: %d, want 409", code)
	}

	// Every chunk object the crash left is in the catalog. The server
	// stops first: the embedded catalog has one process at a time.
	srv.stop(t)
	var ids []backup.ChunkID
	err := filepath.WalkDir(chunks, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		id, err := backup.ParseChunkID(d.Name())
		if err != nil {
			return nil // versitygw's own files
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) == 0 {
		t.Fatal("no chunk reached the store before the kill; the test proves nothing")
	}
	rows, err := inspect().ChunkRefs(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, ok := rows[id]; !ok {
			t.Errorf("chunk object %s is not in the catalog: GC could never reclaim it", id)
		}
	}
	t.Logf("%d chunk objects after the crash, all in the catalog", len(ids))
}
