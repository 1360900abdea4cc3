package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/backstop-pve/backstop/internal/backup"
)

// tmpPrefix starts the names of files being written. A crash can leave
// such files behind; List skips them.
const tmpPrefix = ".tmp-"

// fileStore keeps objects as files under root, one per key.
type fileStore struct {
	root string
}

var _ blobStore = (*fileStore)(nil)

func openFileStore(root string) (*fileStore, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fileErr("open", root, err)
	}
	return &fileStore{root: root}, nil
}

func (f *fileStore) path(key string) string { return filepath.Join(f.root, filepath.FromSlash(key)) }

// Put writes a temporary file next to the target, fsyncs it, renames it into
// place and fsyncs the directory, so a crash leaves the old object, the new
// one, or no object, never a torn one. Concurrent puts of one key each use
// their own temporary file; rename is atomic.
func (f *fileStore) Put(ctx context.Context, key string, data []byte) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunkstore: put %s: %w", key, err)
	}
	name := f.path(key)
	dir := filepath.Dir(name)
	if err := f.mkdirs(dir); err != nil {
		return fileErr("put", key, err)
	}
	tmp, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return fileErr("put", key, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fileErr("put", key, err)
	}
	if err = tmp.Sync(); err != nil {
		return fileErr("put", key, err)
	}
	if err = tmp.Close(); err != nil {
		return fileErr("put", key, err)
	}
	if err = os.Rename(tmp.Name(), name); err != nil {
		return fileErr("put", key, err)
	}
	if err = syncDir(dir); err != nil {
		return fileErr("put", key, err)
	}
	return nil
}

// mkdirs creates dir and missing parents below root, fsyncing each parent
// that got a new entry so the new directory survives a crash.
func (f *fileStore) mkdirs(dir string) error {
	err := os.Mkdir(dir, 0o700)
	switch {
	case err == nil:
		return syncDir(filepath.Dir(dir))
	case errors.Is(err, fs.ErrExist):
		return nil
	case errors.Is(err, fs.ErrNotExist) && filepath.Dir(dir) != f.root:
		// A missing root is an outage (unmounted, removed), not something
		// to paper over by creating it again.
		if err := f.mkdirs(filepath.Dir(dir)); err != nil {
			return err
		}
		return f.mkdirs(dir)
	default:
		return err
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

func (f *fileStore) Get(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("chunkstore: get %s: %w", key, err)
	}
	file, err := os.Open(f.path(key))
	if err != nil {
		return nil, fileErr("get", key, err)
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, fileErr("get", key, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("chunkstore: get %s: not a regular file", key)
	}
	b, err := readObject(file, st.Size(), limit, buf)
	if err != nil {
		return nil, fileErr("get", key, err)
	}
	return b, nil
}

func (f *fileStore) Delete(ctx context.Context, keys []string) error {
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("chunkstore: delete %s: %w", key, err)
		}
		if err := os.Remove(f.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fileErr("delete", key, err)
		}
	}
	return nil
}

func (f *fileStore) List(ctx context.Context, prefix string, fn func(key string) error) error {
	// Walk the deepest directory the prefix names completely.
	start := f.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = f.path(prefix[:i])
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(f.root, p)
		if err != nil {
			return err
		}
		if key := filepath.ToSlash(rel); strings.HasPrefix(key, prefix) {
			return fn(key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunkstore: list %s: %w", prefix, err)
	}
	return nil
}

func (f *fileStore) Ping(ctx context.Context) error {
	st, err := os.Stat(f.root)
	if err != nil {
		return fileErr("ping", f.root, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("chunkstore: ping %s: not a directory: %w", f.root, backup.ErrUnavailable)
	}
	return ctx.Err()
}

func (f *fileStore) Close() error { return nil }

// fileErr translates file system errors into error kinds, keeping the cause.
// A missing file is ErrNotFound for reads; for writes and probes it means the
// repository directory is gone, ErrUnavailable.
func fileErr(op, key string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist) && (op == "get" || op == "delete"):
		return fmt.Errorf("chunkstore: %s %s: %w: %w", op, key, backup.ErrNotFound, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("chunkstore: %s %s: %w: %w", op, key, backup.ErrUnavailable, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("chunkstore: %s %s: %w: %w", op, key, backup.ErrStorageFull, err)
	default:
		return fmt.Errorf("chunkstore: %s %s: %w", op, key, err)
	}
}
