package chunkstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

var testKey = bytes.Repeat([]byte{0x42}, 32)

func mustCodec(t testing.TB, key []byte, compress bool) *codec {
	t.Helper()
	c, err := newCodec(key, compress, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type codecCase struct {
	name     string
	key      []byte
	compress bool
}

var codecCases = []codecCase{
	{"plain", nil, false},
	{"zstd", nil, true},
	{"aes", testKey, false},
	{"zstd+aes", testKey, true},
}

func TestCodec_RoundTrip(t *testing.T) {
	for _, cc := range codecCases {
		c := mustCodec(t, cc.key, cc.compress)
		for _, kind := range []string{"random", "text", "sparse"} {
			for _, n := range []int{1, 100, 64 << 10, 64<<10 + 1, 4 << 20} {
				t.Run(fmt.Sprintf("%s/%s/%d", cc.name, kind, n), func(t *testing.T) {
					p := backuptest.Payload(kind, uint64(n), n)
					id := c.sum(p)
					env := c.encode(id, p, nil)
					if len(env) > len(p)+envelopeOverhead {
						t.Fatalf("envelope is %d bytes for %d bytes of data", len(env), len(p))
					}
					got, err := c.decode(id, bytes.Clone(env), nil)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, p) {
						t.Fatal("round trip changed the data")
					}
				})
			}
		}
	}
}

// Compression is used when it pays and skipped when it does not.
func TestCodec_CompressionDecision(t *testing.T) {
	c := mustCodec(t, nil, true)
	tests := []struct {
		kind     string
		n        int
		wantZstd bool
	}{
		{"random", 4 << 20, false},
		{"random", 1000, false},
		{"text", 4 << 20, true},
		{"text", 1000, true},
		{"sparse", 4 << 20, true},
	}
	for _, tt := range tests {
		p := backuptest.Payload(tt.kind, 1, tt.n)
		env := c.encode(c.sum(p), p, nil)
		if got := env[5]&flagZstd != 0; got != tt.wantZstd {
			t.Errorf("%s %d bytes: zstd = %v, want %v (envelope %d bytes)", tt.kind, tt.n, got, tt.wantZstd, len(env))
		}
	}
	// Half random, half zero: the sample must not talk us out of compressing.
	p := backuptest.Payload("random", 2, 4<<20)
	clear(p[len(p)/2:])
	if env := c.encode(c.sum(p), p, nil); env[5]&flagZstd == 0 || len(env) > len(p)*6/10 {
		t.Errorf("half-zero chunk: flags %#x, %d bytes of %d", env[5], len(env), len(p))
	}
	// Without compression configured, never.
	plain := mustCodec(t, nil, false)
	text := backuptest.Payload("text", 3, 1<<20)
	if env := plain.encode(plain.sum(text), text, nil); env[5] != 0 || len(env) != len(text)+headerSize {
		t.Errorf("compression off: flags %#x, %d bytes", env[5], len(env))
	}
}

func TestCodec_Sum(t *testing.T) {
	p := []byte("backstop")
	if got, want := mustCodec(t, nil, true).sum(p), backup.ChunkID(sha256.Sum256(p)); got != want {
		t.Errorf("unencrypted Sum = %s, want SHA-256 %s", got, want)
	}
	k2 := bytes.Repeat([]byte{0x43}, 32)
	a, b := mustCodec(t, testKey, true).sum(p), mustCodec(t, k2, true).sum(p)
	if a == b || a == sha256.Sum256(p) {
		t.Errorf("keyed ids must differ from each other and from SHA-256: %s %s", a, b)
	}
	if again := mustCodec(t, testKey, false).sum(p); again != a {
		t.Errorf("keyed Sum not stable across codecs: %s then %s", a, again)
	}
}

// Every kind of damage is ErrChecksum naming the chunk id.
func TestCodec_DecodeRejects(t *testing.T) {
	for _, cc := range codecCases {
		c := mustCodec(t, cc.key, cc.compress)
		p := backuptest.Payload("text", 9, 100<<10)
		id := c.sum(p)
		env := c.encode(id, p, nil)
		hdr := headerSize
		if cc.key != nil {
			hdr += nonceSize
		}
		// withCRC rewrites the CRC so that the damage gets past it and the
		// next check has to find it.
		withCRC := func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[12:16], crc32.Checksum(b[headerSize:], castagnoli))
			return b
		}
		damage := map[string]func([]byte) []byte{
			"empty":         func(b []byte) []byte { return nil },
			"short header":  func(b []byte) []byte { return b[:headerSize-1] },
			"header only":   func(b []byte) []byte { return b[:headerSize] },
			"truncated":     func(b []byte) []byte { return b[:len(b)/2] },
			"last byte cut": func(b []byte) []byte { return b[:len(b)-1] },
			"extra byte":    func(b []byte) []byte { return append(b, 0) },
			"magic":         func(b []byte) []byte { b[0] ^= 1; return b },
			"version":       func(b []byte) []byte { b[4] = 2; return b },
			"unknown flag":  func(b []byte) []byte { b[5] |= 0x80; return b },
			"reserved":      func(b []byte) []byte { b[7] = 1; return b },
			"length +1":     func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], uint32(len(p)+1)); return b },
			"length huge":   func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 1<<31); return b },
			"crc":           func(b []byte) []byte { b[12] ^= 1; return b },
			"payload bit":   func(b []byte) []byte { b[hdr+len(b[hdr:])/2] ^= 4; return b },
			"last bit":      func(b []byte) []byte { b[len(b)-1] ^= 1; return b },
			"payload bit, crc fixed": func(b []byte) []byte {
				b[hdr+len(b[hdr:])/2] ^= 4
				return withCRC(b)
			},
			"flag flipped, crc fixed": func(b []byte) []byte { b[5] ^= flagZstd; return withCRC(b) },
			"enc flag flipped":        func(b []byte) []byte { b[5] ^= flagEncrypted; return b },
			"length -1, crc fixed": func(b []byte) []byte {
				binary.LittleEndian.PutUint32(b[8:], uint32(len(p)-1))
				return withCRC(b)
			},
		}
		for name, f := range damage {
			t.Run(cc.name+"/"+name, func(t *testing.T) {
				got, err := c.decode(id, f(bytes.Clone(env)), nil)
				if !errors.Is(err, backup.ErrChecksum) {
					t.Fatalf("decode = %d bytes, %v; want ErrChecksum", len(got), err)
				}
				if !strings.Contains(err.Error(), id.String()) {
					t.Errorf("error %q does not name the chunk", err)
				}
			})
		}
		t.Run(cc.name+"/wrong id", func(t *testing.T) {
			other := c.sum([]byte("other"))
			if _, err := c.decode(other, bytes.Clone(env), nil); !errors.Is(err, backup.ErrChecksum) {
				t.Fatalf("decode under another id = %v; want ErrChecksum", err)
			}
		})
	}
}

// An envelope sealed under one key does not open under another, and an
// encrypted store refuses plain chunks (and vice versa).
func TestCodec_KeyMismatch(t *testing.T) {
	p := backuptest.Payload("text", 1, 10000)
	a := mustCodec(t, testKey, true)
	b := mustCodec(t, bytes.Repeat([]byte{7}, 32), true)
	plain := mustCodec(t, nil, true)
	id := a.sum(p)
	for name, c := range map[string]*codec{"other key": b, "no key": plain} {
		if _, err := c.decode(id, a.encode(id, p, nil), nil); !errors.Is(err, backup.ErrChecksum) {
			t.Errorf("%s: decode = %v, want ErrChecksum", name, err)
		}
	}
	pid := plain.sum(p)
	if _, err := a.decode(pid, plain.encode(pid, p, nil), nil); !errors.Is(err, backup.ErrChecksum) {
		t.Errorf("plain chunk in encrypted store: %v, want ErrChecksum", err)
	}
}

func TestCodec_Nonces(t *testing.T) {
	c := mustCodec(t, testKey, false)
	p := []byte("same data")
	id := c.sum(p)
	e1, e2 := c.encode(id, p, nil), c.encode(id, p, nil)
	if bytes.Equal(e1[headerSize:headerSize+nonceSize], e2[headerSize:headerSize+nonceSize]) {
		t.Fatal("two encodings share a nonce")
	}
}

func TestCodec_ReusesBuffers(t *testing.T) {
	c := mustCodec(t, testKey, true)
	p := backuptest.Payload("text", 1, 1<<20)
	id := c.sum(p)
	dst := make([]byte, 0, 2<<20)
	env := c.encode(id, p, dst)
	if &env[0] != &dst[:1][0] {
		t.Error("encode did not use dst")
	}
	out := make([]byte, 0, len(p))
	got, err := c.decode(id, env, out)
	if err != nil || &got[0] != &out[:1][0] {
		t.Errorf("decode did not use dst (err %v)", err)
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 64 << 10, 64<<10 + 1, 4 << 20} {
		z := make([]byte, n)
		if !isZero(z) {
			t.Errorf("isZero(%d zeros) = false", n)
		}
		for _, pos := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			z[pos] = 1
			if isZero(z) {
				t.Errorf("isZero(%d bytes, 1 at %d) = true", n, pos)
			}
			z[pos] = 0
		}
	}
}

func TestChunkKey(t *testing.T) {
	id, err := backup.ParseChunkID("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chunkKey(id), "chunks/abcd/"+id.String(); got != want {
		t.Fatalf("chunkKey = %q, want %q", got, want)
	}
}

// countingBlobs counts backend calls around a map.
type countingBlobs struct {
	mu    sync.Mutex
	calls int               // guarded by mu
	objs  map[string][]byte // guarded by mu
}

func (c *countingBlobs) Put(ctx context.Context, key string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.objs[key] = bytes.Clone(data)
	return nil
}

func (c *countingBlobs) Get(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	b, ok := c.objs[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	}
	return append(buf[:0], b...), nil
}

func (c *countingBlobs) Delete(ctx context.Context, keys []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	for _, k := range keys {
		delete(c.objs, k)
	}
	return nil
}

func (c *countingBlobs) List(ctx context.Context, prefix string, fn func(string) error) error {
	return nil
}
func (c *countingBlobs) Ping(ctx context.Context) error { return nil }
func (c *countingBlobs) Close() error                   { return nil }

func newMemStore(t testing.TB, key []byte, compress bool) (*Store, *countingBlobs) {
	t.Helper()
	blobs := &countingBlobs{objs: make(map[string][]byte)}
	cfg := DefaultConfig()
	return newStore(blobs, mustCodec(t, key, compress), slog.New(slog.DiscardHandler), cfg), blobs
}

// The zero chunk never reaches the backend, whatever its length.
func TestStore_ZeroChunkNoBackendCall(t *testing.T) {
	s, blobs := newMemStore(t, testKey, true)
	for _, n := range []int{0, 1, 4096, 4 << 20} {
		z := make([]byte, n)
		if got, err := s.Put(t.Context(), s.Sum(z), z); got != 0 || err != nil {
			t.Fatalf("Put(%d zeros) = %d, %v", n, got, err)
		}
	}
	if blobs.calls != 0 {
		t.Fatalf("backend called %d times for zero chunks", blobs.calls)
	}
}

func TestStore_PutTooLarge(t *testing.T) {
	s, blobs := newMemStore(t, nil, true)
	p := backuptest.Payload("random", 1, 16<<20+1)
	if _, err := s.Put(t.Context(), s.Sum(p), p); !errors.Is(err, backup.ErrInvalid) || blobs.calls != 0 {
		t.Fatalf("Put(16 MiB + 1) = %v (%d backend calls); want ErrInvalid and none", err, blobs.calls)
	}
}

func TestStore_MemConformance(t *testing.T) {
	for _, cc := range codecCases {
		t.Run(cc.name, func(t *testing.T) {
			backuptest.RunChunkStoreTests(t, func(t *testing.T) backup.ChunkStore {
				s, _ := newMemStore(t, cc.key, cc.compress)
				return s
			})
		})
	}
}
