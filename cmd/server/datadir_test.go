package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var tokenFormat = regexp.MustCompile(`^bst_[0-9a-f]{16}_[0-9a-f]{64}$`)

// A token file others can read is refused, not used.
func TestAdminTokenFile_Mode(t *testing.T) {
	dd, err := lockDataDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Close()
	tok, path, created, err := dd.adminToken()
	if err != nil || !created || !tokenFormat.MatchString(tok) {
		t.Fatalf("first start: %q %v %v", tok, created, err)
	}
	again, _, created, err := dd.adminToken()
	if err != nil || created || again != tok {
		t.Fatalf("second read: %q created=%v %v", again, created, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := dd.adminToken(); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a world-readable token file was accepted: %v", err)
	}
}

// The lock is per process: a second lock in the same directory fails and
// names the holder, and a released lock can be taken again.
func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	first, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDataDir(dir); err == nil || !strings.Contains(err.Error(), "PID "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	second.Close()
}
