package sqlitecat_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunkstore"
)

func openFileStore(t *testing.T, key chunkstore.Key) *chunkstore.Store {
	t.Helper()
	cfg := chunkstore.DefaultConfig()
	cfg.URL = "file://" + filepath.Join(t.TempDir(), "store")
	cfg.EncryptionKey = key
	s, err := chunkstore.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestCopyChunks_Encrypted copies between two encrypted stores with one key,
// and refuses a target whose ids would differ (another key, or none).
func TestCopyChunks_Encrypted(t *testing.T) {
	ctx := t.Context()
	key := chunkstore.Key(bytes.Repeat([]byte{7}, 32))
	from := openFileStore(t, key)
	cat := newTestStore(t)
	data := bytes.Repeat([]byte("secret "), 1000)
	id := from.Sum(data)
	n, err := from.Put(ctx, id, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.AddChunks(ctx, []backup.ChunkInfo{{ID: id, Size: int64(len(data)), StoredSize: n}}); err != nil {
		t.Fatal(err)
	}
	// A pending chunk is not part of the repository: not copied, and its
	// object need not exist.
	if err := cat.ReserveChunks(ctx, []backup.ChunkInfo{{ID: backup.ChunkID{9}, Size: 1}}); err != nil {
		t.Fatal(err)
	}

	same := openFileStore(t, key)
	rep, err := cat.CopyChunks(ctx, from, same, 4, nil)
	if err != nil || rep.Chunks != 1 || rep.Bytes != int64(len(data)) || rep.StoredBytes != n || rep.SizeChanged != 0 {
		t.Fatalf("CopyChunks to a store with the same key: %+v, %v", rep, err)
	}
	if got, err := same.Get(ctx, id, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("chunk in the target: %v", err)
	}

	plain := openFileStore(t, nil)
	_, err = cat.CopyChunks(ctx, from, plain, 4, nil)
	if !errors.Is(err, backup.ErrInvalid) || !strings.Contains(err.Error(), "encryption key") {
		t.Fatalf("CopyChunks to an unencrypted store: %v, want ErrInvalid about the key", err)
	}
	if _, err := plain.Get(ctx, id, nil); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("the refused chunk reached the target: %v", err)
	}
}
