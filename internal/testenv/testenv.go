// Package testenv gives integration tests the real peers they run against
// (Postgres, an S3 server, QEMU's NBD tools) and decides what happens when a
// peer is missing: the test skips with a reason, unless the peer is named in
// BACKSTOP_TEST_REQUIRE (comma-separated: pg,s3,qemu,browser), where it fails.
// CI sets BACKSTOP_TEST_REQUIRE=pg,s3,qemu,browser so that no integration test
// skips there.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Peer names used in BACKSTOP_TEST_REQUIRE.
const (
	PeerPostgres = "pg"
	PeerS3       = "s3"
	PeerQEMU     = "qemu"
	PeerBrowser  = "browser" // headless Chromium for the dashboard tests
	// PeerCompose is `docker compose` (the plugin) or Debian's
	// docker-compose, used to validate docker-compose.yml; no engine needed.
	PeerCompose = "compose"
)

// Missing skips t, or fails it when peer is required.
func Missing(t testing.TB, peer, reason string) {
	t.Helper()
	for _, p := range strings.Split(os.Getenv("BACKSTOP_TEST_REQUIRE"), ",") {
		if strings.TrimSpace(p) == peer {
			t.Fatalf("required test peer %q missing: %s", peer, reason)
		}
	}
	t.Skipf("test peer %q missing: %s (set it up as .ci/run does)", peer, reason)
}

// RandomSuffix returns a short random lowercase hex string for names.
func RandomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// PostgresDSN creates a fresh, empty database on the server named by
// BACKSTOP_TEST_PG_DSN and returns its DSN; the database is dropped when the
// test ends.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv("BACKSTOP_TEST_PG_DSN")
	if base == "" {
		Missing(t, PeerPostgres, "BACKSTOP_TEST_PG_DSN is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		Missing(t, PeerPostgres, "connect: "+err.Error())
	}
	defer admin.Close(context.Background())
	name := "backstop_test_" + RandomSuffix()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" STRATEGY file_copy"); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop test database %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("BACKSTOP_TEST_PG_DSN: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// S3Config says how to reach the test S3 server.
type S3Config struct {
	Endpoint  string // host:port, plain HTTP
	AccessKey string
	SecretKey string
	Dir       string // versitygw's posix root, where each bucket is a folder ("" if unknown)
}

// S3 returns the test S3 server from BACKSTOP_TEST_S3_ENDPOINT,
// BACKSTOP_TEST_S3_ACCESS_KEY, BACKSTOP_TEST_S3_SECRET_KEY and
// BACKSTOP_TEST_S3_DIR.
func S3(t testing.TB) S3Config {
	t.Helper()
	c := S3Config{
		Endpoint:  os.Getenv("BACKSTOP_TEST_S3_ENDPOINT"),
		AccessKey: os.Getenv("BACKSTOP_TEST_S3_ACCESS_KEY"),
		SecretKey: os.Getenv("BACKSTOP_TEST_S3_SECRET_KEY"),
		Dir:       os.Getenv("BACKSTOP_TEST_S3_DIR"),
	}
	if c.Endpoint == "" || c.AccessKey == "" || c.SecretKey == "" {
		Missing(t, PeerS3, "BACKSTOP_TEST_S3_ENDPOINT/_ACCESS_KEY/_SECRET_KEY are not set")
	}
	return c
}

// Bucket returns a fresh bucket name for one test (the store creates it).
func Bucket() string { return "backstop-test-" + RandomSuffix() }

// Tool returns the path of a command-line peer (qemu-img, qemu-nbd,
// nbdinfo, ...), counted as part of peer.
func Tool(t testing.TB, peer, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, peer, name+" not in PATH")
	}
	return p
}

// Chromium returns the path of the Chromium the dashboard tests drive
// (/usr/bin/chromium, as Debian's chromium package installs it, else
// chromium or chromium-browser in PATH). Tests never download a browser.
func Chromium(t testing.TB) string {
	t.Helper()
	const debian = "/usr/bin/chromium"
	if fi, err := os.Stat(debian); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return debian
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Missing(t, PeerBrowser, debian+" not found (apt-get install chromium)")
	return ""
}

// ArtifactsDir returns a directory for files a test leaves for people to
// look at (screenshots): $BACKSTOP_TEST_ARTIFACTS/<test name> when that is
// set, else a directory under the test's temporary directory.
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("BACKSTOP_TEST_ARTIFACTS")
	if base == "" {
		return t.TempDir()
	}
	dir := filepath.Join(base, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts dir: %v", err)
	}
	return dir
}
