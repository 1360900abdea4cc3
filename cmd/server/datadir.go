package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/backstop-pve/backstop/internal/handlers"
)

// Files of the data directory (BACKSTOP_DATA_DIR). It holds what the server
// keeps on its own host: the embedded catalog when BACKSTOP_DATABASE_URL is
// unset, the chunk store when BACKSTOP_STORE is unset, the generated
// bootstrap admin token when BACKSTOP_ADMIN_TOKEN is unset, and the
// generated TLS certificate (tlscert.go) when none is configured.
const (
	catalogFile    = "catalog.db"
	chunksDir      = "chunks"
	adminTokenFile = "admin-token"
	lockFile       = "lock"
)

// usesDataDir reports whether the server keeps anything in the data
// directory. With a Postgres catalog, an explicit store and an admin token
// it does not, so stateless replicas need no local directory.
func (c Config) usesDataDir() bool {
	return c.DatabaseURL == "" || c.Store == ""
}

// embeddedCatalog reports whether the catalog is the embedded one.
func (c Config) embeddedCatalog() bool { return c.DatabaseURL == "" }

// dataDir is the data directory of a running server, held under an
// exclusive lock so that a second server on the same directory refuses
// instead of sharing the catalog and the chunks.
type dataDir struct {
	path string // absolute
	lock *os.File
}

// ensureDataDir creates the data directory (0700) if it is missing and
// checks that the server can write there. It returns the absolute path.
func ensureDataDir(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("data directory %s: %w", path, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("data directory %s cannot be created (set BACKSTOP_DATA_DIR to a writable directory): %w", abs, err)
	}
	// Root passes every permission check, so only a real write tells.
	probe, err := os.CreateTemp(abs, ".write-test-*")
	if err != nil {
		return "", fmt.Errorf("data directory %s is not writable (set BACKSTOP_DATA_DIR to a writable directory): %w", abs, err)
	}
	probe.Close()
	_ = os.Remove(probe.Name())
	return abs, nil
}

// lockDataDir creates the data directory if needed and takes its lock: an
// flock on dir/lock, which holds the PID of the server that has it. The
// kernel drops the lock when the process dies, even by SIGKILL, so a stale
// lock file never blocks a restart.
func lockDataDir(path string) (*dataDir, error) {
	abs, err := ensureDataDir(path)
	if err != nil {
		return nil, err
	}
	name := filepath.Join(abs, lockFile)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: open lock file: %w", abs, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "unknown PID"
			if b, rerr := os.ReadFile(name); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = "PID " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("data directory %s is in use by another Backstop server (%s, see %s); stop it or give this one another BACKSTOP_DATA_DIR", abs, holder, name)
		}
		return nil, fmt.Errorf("data directory %s: lock %s: %w", abs, name, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory %s: write lock file: %w", abs, err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory %s: write lock file: %w", abs, err)
	}
	return &dataDir{path: abs, lock: f}, nil
}

// Close releases the lock. The lock file stays: removing it could let a
// second server lock a fresh file while a third still waits on the old one.
func (d *dataDir) Close() error { return d.lock.Close() }

// catalogPath is where the embedded catalog lives.
func catalogPath(dir string) string { return filepath.Join(dir, catalogFile) }

// defaultStore is the file:// chunk store inside the data directory.
func defaultStore(dir string) string {
	return (&url.URL{Scheme: "file", Path: filepath.Join(dir, chunksDir)}).String()
}

// adminToken returns the bootstrap admin token kept in the data directory,
// generating it on first start. created tells the caller to show it.
func (d *dataDir) adminToken() (token, path string, created bool, err error) {
	path = filepath.Join(d.path, adminTokenFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		fi, serr := os.Stat(path)
		if serr != nil {
			return "", path, false, serr
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", path, false, fmt.Errorf("%s is readable by others (mode %04o): chmod 600 it, and replace the token if others may have read it", path, fi.Mode().Perm())
		}
		token = strings.TrimSpace(string(b))
		if len(token) < 16 {
			return "", path, false, fmt.Errorf("%s holds no usable token (at least 16 characters); delete it to generate a new one", path)
		}
		return token, path, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", path, false, fmt.Errorf("read %s: %w", path, err)
	}
	_, token, _, err = handlers.NewToken()
	if err != nil {
		return "", path, false, err
	}
	// Written under a temporary name and renamed, so a crash never leaves
	// a half-written token that the next start would reject.
	if err := writeFileAtomic(path, []byte(token+"\n"), 0o600); err != nil {
		return "", path, false, err
	}
	return token, path, true, nil
}
