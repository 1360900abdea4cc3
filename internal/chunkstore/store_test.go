package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

var (
	key1 = chunkstore.Key(bytes.Repeat([]byte{0x11}, 32))
	key2 = chunkstore.Key(bytes.Repeat([]byte{0x22}, 32))
)

// backend makes the configuration of a fresh, empty repository and returns
// the directory in which the object with key K is the file dir/K.
type backend struct {
	name string
	new  func(t testing.TB) (cfg chunkstore.Config, dir string)
}

var backends = []backend{
	{"file", newFileRepo},
	{"s3", newS3Repo},
}

func newFileRepo(t testing.TB) (chunkstore.Config, string) {
	dir := filepath.Join(t.TempDir(), "repo")
	cfg := chunkstore.DefaultConfig()
	cfg.URL = "file://" + dir
	return cfg, dir
}

// newS3Repo uses the test S3 server (versitygw, see testenv.S3) with a
// fresh bucket, removed when the test ends.
func newS3Repo(t testing.TB) (chunkstore.Config, string) {
	peer := testenv.S3(t)
	bucket := testenv.Bucket()
	cfg := chunkstore.DefaultConfig()
	cfg.URL = fmt.Sprintf("s3://%s?endpoint=%s&insecure=1", bucket, peer.Endpoint)
	cfg.AccessKey, cfg.SecretKey = peer.AccessKey, secret.String(peer.SecretKey)
	cfg.RetryBase, cfg.MaxRetries = 10*time.Millisecond, 3
	t.Cleanup(func() { removeBucket(t, peer, bucket) })
	dir := ""
	if peer.Dir != "" {
		dir = filepath.Join(peer.Dir, bucket)
	}
	return cfg, dir
}

func removeBucket(t testing.TB, peer testenv.S3Config, bucket string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := minio.New(peer.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(peer.AccessKey, peer.SecretKey, ""), BucketLookup: minio.BucketLookupPath,
		Region: "us-east-1",
	})
	if err != nil {
		t.Logf("cleanup bucket %s: %v", bucket, err)
		return
	}
	objects := c.ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Recursive: true})
	results, err := c.RemoveObjectsWithIter(ctx, bucket, objects, minio.RemoveObjectsOptions{})
	if err == nil {
		for r := range results {
			if r.Err != nil && minio.ToErrorResponse(r.Err).Code != minio.NoSuchBucket {
				err = r.Err
			}
		}
	}
	if err == nil {
		err = c.RemoveBucket(ctx, bucket)
	}
	if err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchBucket {
		t.Logf("cleanup bucket %s: %v", bucket, err)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func mustOpen(t testing.TB, cfg chunkstore.Config) *chunkstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := chunkstore.Open(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.URL, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStore_Conformance(t *testing.T) {
	variants := []struct {
		name     string
		key      chunkstore.Key
		compress bool
	}{
		{"zstd", nil, true},
		{"zstd+aes", key1, true},
		{"plain", nil, false},
	}
	for _, b := range backends {
		for _, v := range variants {
			t.Run(b.name+"/"+v.name, func(t *testing.T) {
				backuptest.RunChunkStoreTests(t, func(t *testing.T) backup.ChunkStore {
					cfg, _ := b.new(t)
					cfg.EncryptionKey = v.key
					cfg.DisableCompression = !v.compress
					return mustOpen(t, cfg)
				})
			})
		}
	}
}

// objectFile returns the file holding chunk id in a repository whose
// objects live under dir.
func objectFile(t testing.TB, dir string, id backup.ChunkID) string {
	t.Helper()
	if dir == "" {
		testenv.Missing(t, testenv.PeerS3, "BACKSTOP_TEST_S3_DIR is not set: cannot reach stored objects")
	}
	return filepath.Join(dir, "chunks", id.String()[:4], id.String())
}

// Damage done to a stored object behind the store's back is found on read.
func TestStore_Corruption(t *testing.T) {
	damages := []struct {
		name string
		fn   func(b []byte) []byte
	}{
		{"magic byte", func(b []byte) []byte { b[0] ^= 0xFF; return b }},
		{"flags byte", func(b []byte) []byte { b[5] ^= 0x01; return b }},
		{"length byte", func(b []byte) []byte { b[9] ^= 0x01; return b }},
		{"crc byte", func(b []byte) []byte { b[13] ^= 0x10; return b }},
		{"payload first byte", func(b []byte) []byte { b[16] ^= 0x01; return b }},
		{"payload middle byte", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
		{"last byte", func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }},
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }},
		{"truncated by one", func(b []byte) []byte { return b[:len(b)-1] }},
		{"truncated to header", func(b []byte) []byte { return b[:16] }},
		{"truncated to 10", func(b []byte) []byte { return b[:10] }},
		{"emptied", func(b []byte) []byte { return b[:0] }},
		{"byte appended", func(b []byte) []byte { return append(b, 0) }},
	}
	for _, be := range backends {
		for _, key := range []chunkstore.Key{nil, key1} {
			t.Run(fmt.Sprintf("%s/encrypted=%v", be.name, key != nil), func(t *testing.T) {
				cfg, dir := be.new(t)
				cfg.EncryptionKey = key
				s := mustOpen(t, cfg)
				ctx := t.Context()
				for i, d := range damages {
					for _, kind := range []string{"random", "text"} {
						t.Run(d.name+"/"+kind, func(t *testing.T) {
							data := backuptest.Payload(kind, uint64(1000+i), 256<<10)
							id := s.Sum(data)
							if _, err := s.Put(ctx, id, data); err != nil {
								t.Fatal(err)
							}
							name := objectFile(t, dir, id)
							obj, err := os.ReadFile(name)
							if err != nil {
								t.Fatalf("stored object: %v", err)
							}
							if err := os.WriteFile(name, d.fn(obj), 0o600); err != nil {
								t.Fatal(err)
							}
							got, err := s.Get(ctx, id, nil)
							if !errors.Is(err, backup.ErrChecksum) {
								t.Fatalf("Get = %d bytes, %v; want ErrChecksum", len(got), err)
							}
							if !strings.Contains(err.Error(), id.String()) {
								t.Errorf("error %q does not name the chunk", err)
							}
							// Putting it again repairs it.
							if _, err := s.Put(ctx, id, data); err != nil {
								t.Fatal(err)
							}
							if got, err := s.Get(ctx, id, nil); err != nil || !bytes.Equal(got, data) {
								t.Fatalf("Get after re-put: %d bytes, %v", len(got), err)
							}
						})
					}
				}
				t.Run("deleted", func(t *testing.T) {
					data := backuptest.Payload("text", 1, 10<<10)
					id := s.Sum(data)
					if _, err := s.Put(ctx, id, data); err != nil {
						t.Fatal(err)
					}
					if err := os.Remove(objectFile(t, dir, id)); err != nil {
						t.Fatal(err)
					}
					if _, err := s.Get(ctx, id, nil); !errors.Is(err, backup.ErrNotFound) {
						t.Fatalf("Get(deleted object) = %v; want ErrNotFound", err)
					}
				})
				t.Run("swapped with another chunk", func(t *testing.T) {
					a, b := backuptest.Payload("text", 2, 10<<10), backuptest.Payload("text", 3, 10<<10)
					ida, idb := s.Sum(a), s.Sum(b)
					for _, p := range [][]byte{a, b} {
						if _, err := s.Put(ctx, s.Sum(p), p); err != nil {
							t.Fatal(err)
						}
					}
					objb, err := os.ReadFile(objectFile(t, dir, idb))
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(objectFile(t, dir, ida), objb, 0o600); err != nil {
						t.Fatal(err)
					}
					if _, err := s.Get(ctx, ida, nil); !errors.Is(err, backup.ErrChecksum) {
						t.Fatalf("Get(a) holding b's envelope = %v; want ErrChecksum", err)
					}
				})
			})
		}
	}
}

// Ids depend on the encryption key: equal data in two repositories with
// different keys gets different ids, and neither is the plain SHA-256.
func TestStore_KeyedIDs(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfgA, dirA := be.new(t)
			cfgA.EncryptionKey = key1
			cfgB, dirB := be.new(t)
			cfgB.EncryptionKey = key2
			cfgP, _ := be.new(t)
			a, b, p := mustOpen(t, cfgA), mustOpen(t, cfgB), mustOpen(t, cfgP)
			data := backuptest.Payload("text", 1, 64<<10)
			ida, idb, idp := a.Sum(data), b.Sum(data), p.Sum(data)
			if ida == idb || ida == idp || idb == idp {
				t.Fatalf("ids must differ: key1 %s, key2 %s, plain %s", ida, idb, idp)
			}
			for _, s := range []*chunkstore.Store{a, b} {
				if _, err := s.Put(t.Context(), s.Sum(data), data); err != nil {
					t.Fatal(err)
				}
			}
			// b's envelope under a's name: it does not open with a's key.
			env, err := os.ReadFile(objectFile(t, dirB, idb))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(objectFile(t, dirA, ida), env, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Get(t.Context(), ida, nil); !errors.Is(err, backup.ErrChecksum) {
				t.Fatalf("Get of another key's envelope = %v; want ErrChecksum", err)
			}
			// A second repository with the same key names data alike.
			cfgA2, _ := be.new(t)
			cfgA2.EncryptionKey = key1
			if got := mustOpen(t, cfgA2).Sum(data); got != ida {
				t.Fatalf("same key, other repository: id %s, want %s", got, ida)
			}
		})
	}
}

// Opening a repository with another key, or without its key, fails.
func TestOpen_KeyMismatch(t *testing.T) {
	cfg, _ := newFileRepo(t)
	cfg.EncryptionKey = key1
	mustOpen(t, cfg)
	for name, k := range map[string]chunkstore.Key{"other key": key2, "no key": nil} {
		c := cfg
		c.EncryptionKey = k
		if s, err := chunkstore.Open(t.Context(), c, nil); !errors.Is(err, backup.ErrInvalid) {
			if s != nil {
				s.Close()
			}
			t.Errorf("%s: Open = %v; want ErrInvalid", name, err)
		}
	}
	mustOpen(t, cfg) // the right key still works

	plainCfg, _ := newFileRepo(t)
	mustOpen(t, plainCfg)
	plainCfg.EncryptionKey = key1
	if _, err := chunkstore.Open(t.Context(), plainCfg, nil); !errors.Is(err, backup.ErrInvalid) {
		t.Errorf("key on an unencrypted repository: Open = %v; want ErrInvalid", err)
	}
}

func TestStore_Objects(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfg, _ := be.new(t)
			s := mustOpen(t, cfg)
			ctx := t.Context()
			const key = "indexes/qemu-100/2026_11_25-22_00_00.fidx"
			if _, err := s.GetObject(ctx, key); !errors.Is(err, backup.ErrNotFound) {
				t.Fatalf("GetObject(missing) = %v; want ErrNotFound", err)
			}
			for _, data := range [][]byte{[]byte("first version"), backuptest.Payload("random", 1, 1<<20)} {
				if err := s.PutObject(ctx, key, data); err != nil {
					t.Fatal(err)
				}
				got, err := s.GetObject(ctx, key)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("GetObject = %d bytes, %v; want the %d put", len(got), err, len(data))
				}
			}
			if err := s.PutObject(ctx, "indexes/empty", nil); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetObject(ctx, "indexes/empty"); err != nil || len(got) != 0 {
				t.Fatalf("GetObject(empty) = %q, %v", got, err)
			}
			for range 2 {
				if err := s.DeleteObject(ctx, key); err != nil {
					t.Fatalf("DeleteObject: %v", err)
				}
			}
			if _, err := s.GetObject(ctx, key); !errors.Is(err, backup.ErrNotFound) {
				t.Fatalf("GetObject(deleted) = %v; want ErrNotFound", err)
			}
			for _, bad := range []string{"chunks/abcd/x", "backstop-repository", "../etc/passwd", "a//b", ""} {
				if err := s.PutObject(ctx, bad, []byte("x")); !errors.Is(err, backup.ErrInvalid) {
					t.Errorf("PutObject(%q) = %v; want ErrInvalid", bad, err)
				}
			}
		})
	}
}

func TestStore_ListChunks(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfg, _ := be.new(t)
			s := mustOpen(t, cfg)
			ctx := t.Context()
			var want []backup.ChunkID
			for i := range 3 {
				data := backuptest.Payload("random", uint64(i), 1000)
				id := s.Sum(data)
				if _, err := s.Put(ctx, id, data); err != nil {
					t.Fatal(err)
				}
				want = append(want, id)
			}
			if _, err := s.Put(ctx, s.Sum(make([]byte, 10)), make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			if err := s.PutObject(ctx, "indexes/x", []byte("not a chunk")); err != nil {
				t.Fatal(err)
			}
			var got []backup.ChunkID
			if err := s.ListChunks(ctx, func(id backup.ChunkID) error { got = append(got, id); return nil }); err != nil {
				t.Fatal(err)
			}
			cmp := func(a, b backup.ChunkID) int { return bytes.Compare(a[:], b[:]) }
			slices.SortFunc(got, cmp)
			slices.SortFunc(want, cmp)
			if !slices.Equal(got, want) {
				t.Fatalf("ListChunks = %v, want %v", got, want)
			}
			stop := errors.New("stop")
			if err := s.ListChunks(ctx, func(backup.ChunkID) error { return stop }); !errors.Is(err, stop) {
				t.Fatalf("ListChunks with failing fn = %v; want its error", err)
			}
		})
	}
}

func TestStore_Ping(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			cfg, _ := be.new(t)
			if err := mustOpen(t, cfg).Ping(t.Context()); err != nil {
				t.Fatalf("Ping: %v", err)
			}
		})
	}
	cfg, dir := newFileRepo(t)
	s := mustOpen(t, cfg)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Ping after the directory was removed = %v; want ErrUnavailable", err)
	}
	data := backuptest.Payload("text", 1, 1000)
	if _, err := s.Put(t.Context(), s.Sum(data), data); !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Put after the directory was removed = %v; want ErrUnavailable", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Put re-created the removed repository directory (stat: %v)", err)
	}
}

func TestOpen_S3BadCredentials(t *testing.T) {
	cfg, _ := newS3Repo(t)
	cfg.SecretKey = "wrong-secret"
	start := time.Now()
	s, err := chunkstore.Open(t.Context(), cfg, testLogger(t))
	if err == nil {
		s.Close()
		t.Fatal("Open with a wrong secret succeeded")
	}
	if errors.Is(err, backup.ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("Open with a wrong secret = %v after %v; want a prompt, non-retried failure", err, time.Since(start))
	}
	if strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("error shows the secret: %v", err)
	}
}

func TestOpen_S3Unreachable(t *testing.T) {
	cfg := chunkstore.DefaultConfig()
	cfg.URL = "s3://backstop-test?endpoint=127.0.0.1:1&insecure=1"
	cfg.AccessKey, cfg.SecretKey = "k", "s"
	cfg.MaxRetries, cfg.RetryBase = 2, time.Millisecond
	_, err := chunkstore.Open(t.Context(), cfg, testLogger(t))
	if !errors.Is(err, backup.ErrUnavailable) {
		t.Fatalf("Open(closed port) = %v; want ErrUnavailable", err)
	}
}

// BenchmarkS3 measures Put and Get of 4 MiB chunks against the test S3
// server, 4 in flight per core, through the whole store (envelope, signing,
// HTTP). It needs the peers that scripts/test starts:
//
//	. scripts/peers.sh && peers_start && go test -run '^$' -bench S3 -benchmem -count 5 ./internal/chunkstore/; peers_stop
func BenchmarkS3(b *testing.B) {
	for _, key := range []chunkstore.Key{nil, key1} {
		for _, kind := range []string{"random", "text"} {
			name := fmt.Sprintf("%s/encrypted=%v", kind, key != nil)
			cfg, _ := newS3Repo(b)
			cfg.EncryptionKey = key
			s := mustOpen(b, cfg)
			const n = 16
			datas := make([][]byte, n)
			ids := make([]backup.ChunkID, n)
			for i := range datas {
				datas[i] = backuptest.Payload(kind, uint64(i), 4<<20)
				ids[i] = s.Sum(datas[i])
			}
			b.Run("Put/"+name, func(b *testing.B) {
				b.SetBytes(4 << 20)
				b.ReportAllocs()
				b.SetParallelism(4)
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := next.Add(1) % n
						if _, err := s.Put(b.Context(), ids[i], datas[i]); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("Get/"+name, func(b *testing.B) {
				b.SetBytes(4 << 20)
				b.ReportAllocs()
				b.SetParallelism(4)
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, 0, 4<<20)
					for pb.Next() {
						i := next.Add(1) % n
						var err error
						if buf, err = s.Get(b.Context(), ids[i], buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
