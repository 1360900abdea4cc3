package sqlitecat_test

import (
	"crypto/sha256"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// The backup path's catalog calls on both backends side by side, 10,000
// chunks (40 GiB of 4 MiB chunks) per call. The Postgres ones need
// BACKSTOP_TEST_PG_DSN. Run with
//
//	go test -run '^$' -bench . -benchtime 20x -count 3 ./internal/catalog/sqlite/
//
// and compare sqlite/… with postgres/… (benchstat groups them).

const benchChunks = 10000

func benchBackends(b *testing.B, fn func(b *testing.B, c backup.Catalog)) {
	b.Run("sqlite", func(b *testing.B) {
		s, err := sqlitecat.Open(b.Context(), sqlitecat.DefaultConfig(filepath.Join(b.TempDir(), "catalog.db")), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		fn(b, s)
	})
	b.Run("postgres", func(b *testing.B) {
		s, err := catalog.Open(b.Context(), catalog.DefaultConfig(secret.String(testenv.PostgresDSN(b))), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(s.Close)
		fn(b, s)
	})
}

// benchInfos returns n chunk rows numbered from base.
func benchInfos(base, n int) []backup.ChunkInfo {
	out := make([]backup.ChunkInfo, n)
	for i := range out {
		var k [8]byte
		binary.LittleEndian.PutUint64(k[:], uint64(base+i))
		out[i] = backup.ChunkInfo{ID: sha256.Sum256(k[:]), Size: 4 << 20, StoredSize: 1 << 20}
	}
	return out
}

func infoIDs(infos []backup.ChunkInfo) []backup.ChunkID {
	out := make([]backup.ChunkID, len(infos))
	for i := range infos {
		out[i] = infos[i].ID
	}
	return out
}

// BenchmarkKnownChunks: a dedup lookup of 10,000 ids, half of them known,
// in a table of 100,000 chunks.
func BenchmarkKnownChunks(b *testing.B) {
	benchBackends(b, func(b *testing.B, c backup.Catalog) {
		ctx := b.Context()
		for i := 0; i < 100000; i += benchChunks {
			if err := c.AddChunks(ctx, benchInfos(i, benchChunks)); err != nil {
				b.Fatal(err)
			}
		}
		ids := infoIDs(benchInfos(100000-benchChunks/2, benchChunks))
		b.ReportAllocs()
		for b.Loop() {
			known, err := c.KnownChunks(ctx, ids)
			if err != nil || len(known) != benchChunks/2 {
				b.Fatalf("KnownChunks: %d known, %v", len(known), err)
			}
		}
	})
}

// BenchmarkAddChunks: recording 10,000 new chunks.
func BenchmarkAddChunks(b *testing.B) {
	benchBackends(b, func(b *testing.B, c backup.Catalog) {
		ctx := b.Context()
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			if err := c.AddChunks(ctx, benchInfos(n, benchChunks)); err != nil {
				b.Fatal(err)
			}
			n += benchChunks
		}
	})
}

// BenchmarkCommit: committing a snapshot that references 10,000 chunks.
func BenchmarkCommit(b *testing.B) {
	benchBackends(b, func(b *testing.B, c backup.Catalog) {
		ctx := b.Context()
		infos := benchInfos(0, benchChunks)
		if err := c.AddChunks(ctx, infos); err != nil {
			b.Fatal(err)
		}
		refs := infoIDs(infos)
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			at = at.Add(time.Second)
			s, err := c.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Type: backup.GuestQemu, VMID: 100,
				Storage: "backstop", BackupTime: at})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := c.CommitSnapshot(ctx, s.ID, 1, 1, refs); err != nil {
				b.Fatal(err)
			}
		}
	})
}
