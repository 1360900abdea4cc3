package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// ownS3 runs a versitygw of the test's own on 127.0.0.1 (so that the test
// may stop it) and returns its endpoint and a function that starts it
// again on the same port and directory. It is stopped by PID.
func ownS3(t *testing.T) (endpoint string, stop, restart func()) {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			testenv.Missing(t, testenv.PeerS3, "versitygw is not installed (scripts/peers.sh builds it)")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint = l.Addr().String()
	l.Close()
	dir := t.TempDir()
	var cmd *exec.Cmd
	stop = func() {
		if cmd == nil {
			return
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		cmd = nil
	}
	restart = func() {
		t.Helper()
		cmd = exec.Command(bin, "--port", endpoint, "--access", "readyzkey", "--secret", "readyzsecret", "--quiet", "posix", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for range 100 {
			if c, err := net.Dial("tcp", endpoint); err == nil {
				c.Close()
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("versitygw did not start")
	}
	restart()
	t.Cleanup(stop)
	return endpoint, stop, restart
}

// readyz returns the status of GET /readyz and its problem body, if any.
func readyz(t *testing.T, base string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p map[string]any
	if resp.StatusCode != http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatalf("readyz %d: problem body: %v", resp.StatusCode, err)
		}
		if resp.Header.Get("Retry-After") == "" {
			t.Errorf("readyz %d without Retry-After", resp.StatusCode)
		}
	}
	return resp.StatusCode, p
}

// TestReadyz_RealBackends stops the real S3 server, then locks the real
// Postgres database, and checks /readyz fails each time (503 problem with
// a request id) and recovers when the backend is back.
func TestReadyz_RealBackends(t *testing.T) {
	endpoint, stopS3, restartS3 := ownS3(t)
	dsn := testenv.PostgresDSN(t)
	env := map[string]string{
		"BACKSTOP_DATABASE_URL":  dsn,
		"BACKSTOP_STORE":         "s3://readyz?endpoint=" + endpoint + "&insecure=1",
		"BACKSTOP_S3_ACCESS_KEY": "readyzkey",
		"BACKSTOP_S3_SECRET_KEY": "readyzsecret",
		"BACKSTOP_ADMIN_TOKEN":   opsToken,
	}
	base := startServer(t, env)
	if code, p := readyz(t, base); code != http.StatusOK {
		t.Fatalf("readyz with both backends up: %d %v", code, p)
	}

	stopS3()
	code, p := readyz(t, base)
	if code != http.StatusServiceUnavailable || p["code"] != "unavailable" || p["request_id"] == nil || p["request_id"] == "" {
		t.Errorf("readyz with S3 down: %d %v; want 503 unavailable with a request_id", code, p)
	}
	restartS3()
	if code, p := readyz(t, base); code != http.StatusOK {
		t.Errorf("readyz after S3 came back: %d %v", code, p)
	}

	// Postgres: refuse new connections to the test database and end the
	// open ones, as a database restart or failover does.
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, os.Getenv("BACKSTOP_TEST_PG_DSN"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	runSQL := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	runSQL(`ALTER DATABASE ` + db + ` ALLOW_CONNECTIONS false`)
	runSQL(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + db + `'`)
	code, p = readyz(t, base)
	if code != http.StatusServiceUnavailable || p["code"] != "unavailable" {
		t.Errorf("readyz with Postgres refusing: %d %v; want 503 unavailable", code, p)
	}
	runSQL(`ALTER DATABASE ` + db + ` ALLOW_CONNECTIONS true`)
	if code, p := readyz(t, base); code != http.StatusOK {
		t.Errorf("readyz after Postgres came back: %d %v", code, p)
	}
}
