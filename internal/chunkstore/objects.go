package chunkstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/backstop-pve/backstop/internal/backup"
)

// maxObjectKey bounds object keys (S3 allows 1024 bytes).
const maxObjectKey = 512

// PutObject stores data under key as is (no envelope: the catalog keeps its
// own checksum of each index). Keys are checked by CheckObjectKey. It
// returns once the object is durable and does not keep data; a repeated put
// replaces the object.
func (s *Store) PutObject(ctx context.Context, key string, data []byte) error {
	if err := CheckObjectKey(key); err != nil {
		return fmt.Errorf("chunkstore: put object: %w", err)
	}
	return s.blobs.Put(ctx, key, data)
}

// GetObject returns the object under key; a missing one is
// backup.ErrNotFound. Objects above Config.MaxObjectSize are refused.
func (s *Store) GetObject(ctx context.Context, key string) ([]byte, error) {
	if err := CheckObjectKey(key); err != nil {
		return nil, fmt.Errorf("chunkstore: get object: %w", err)
	}
	return s.blobs.Get(ctx, key, nil, s.maxObject)
}

// DeleteObject removes the object under key; a missing one is not an error.
func (s *Store) DeleteObject(ctx context.Context, key string) error {
	if err := CheckObjectKey(key); err != nil {
		return fmt.Errorf("chunkstore: delete object: %w", err)
	}
	return s.blobs.Delete(ctx, []string{key})
}

// CheckObjectKey accepts keys such as "indexes/qemu-100/2026_11_25-22_00_00.fidx":
// up to 512 bytes of '/'-separated segments, each starting with a letter or
// digit and made of letters, digits, '.', '_' and '-'. The chunks/ tree and
// the repository marker are reserved. Violations wrap backup.ErrInvalid.
func CheckObjectKey(key string) error {
	bad := func(why string) error {
		return backup.Errorf(backup.ErrInvalid, "object key %q: %s", key, why)
	}
	if key == "" || len(key) > maxObjectKey {
		return bad(fmt.Sprintf("want 1 to %d bytes", maxObjectKey))
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" {
			return bad("empty path segment")
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
			if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
				return bad("segments start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
			}
		}
	}
	if key+"/" == chunkPrefix || strings.HasPrefix(key, chunkPrefix) || key == markerKey {
		return bad("reserved for the chunk store")
	}
	return nil
}
