package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/testenv/testcatalog"
)

// startServer runs the wired server in-process on a loopback port until the
// test ends, and returns its base URL.
func startServer(t *testing.T, env map[string]string) string {
	t.Helper()
	getenv := func(k string) string { return env[k] }
	// Plain HTTP: the zero-config tests cover the generated certificate.
	cfg, _, err := loadConfig("test", getenv, []string{"--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--tls=off"}, io.Discard)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), io.Discard, func(a string) { addr <- a })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v after shutdown", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("server did not shut down")
		}
	})
	select {
	case a := <-addr:
		return "http://" + a
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	return ""
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRun_ServeAndTokenCommand(t *testing.T) {
	env := testcatalog.New(t).ServerEnv()
	env["BACKSTOP_STORE"] = "file://" + t.TempDir()
	env["BACKSTOP_ADMIN_TOKEN"] = "bootstrap-token-for-tests"
	base := startServer(t, env)
	if code, _ := get(t, base+"/healthz", ""); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, body := get(t, base+"/readyz", ""); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}
	if code, _ := get(t, base+"/api/v1/status", ""); code != 401 {
		t.Fatalf("status without token %d, want 401", code)
	}
	if code, _ := get(t, base+"/api/v1/tokens", "bootstrap-token-for-tests"); code != 200 {
		t.Fatalf("tokens with bootstrap token %d", code)
	}

	var out bytes.Buffer
	err := run(context.Background(), []string{"token", "create", "--name", "pve1", "--role", "backup", "--ns", "default"},
		func(k string) string { return env[k] }, &out, io.Discard)
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	tok := strings.TrimSpace(out.String())
	if !strings.HasPrefix(tok, "bst_") {
		t.Fatalf("token create printed %q", tok)
	}
	if code, body := get(t, base+"/api/v1/snapshots", tok); code != 200 {
		t.Fatalf("snapshots with created token: %d %s", code, body)
	}
	if code, _ := get(t, base+"/api/v1/tokens", tok); code != 403 {
		t.Fatalf("tokens with backup token %d, want 403", code)
	}
}

func TestLoadConfig(t *testing.T) {
	env := map[string]string{"BACKSTOP_LISTEN": "127.0.0.1:1", "BACKSTOP_DATABASE_URL": "postgres://x", "BACKSTOP_ADMIN_TOKEN": "0123456789abcdef"}
	cfg, _, err := loadConfig("t", func(k string) string { return env[k] }, []string{"--listen", "127.0.0.1:2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:2" {
		t.Errorf("flag did not override env: %s", cfg.Listen)
	}
	if got := cfg.DatabaseURL.String(); strings.Contains(got, "postgres") {
		t.Errorf("secret printed: %s", got)
	}
	env = map[string]string{"BACKSTOP_LISTEN": "nonsense", "BACKSTOP_ADMIN_TOKEN": "short", "BACKSTOP_TLS_CERT": "x", "BACKSTOP_LOG_FORMAT": "xml"}
	_, _, err = loadConfig("t", func(k string) string { return env[k] }, []string{"--data-dir="}, io.Discard)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"BACKSTOP_LISTEN", "BACKSTOP_ADMIN_TOKEN", "BACKSTOP_TLS_CERT", "BACKSTOP_LOG_FORMAT", "BACKSTOP_DATA_DIR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("config error does not name %s: %v", want, err)
		}
	}
}
