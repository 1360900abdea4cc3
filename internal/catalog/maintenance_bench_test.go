package catalog_test

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// BenchmarkAccounting_1TiB measures the accounting queries on a namespace
// of 8 snapshots of a 1 TiB disk (262,144 chunks of 4 MiB each) that differ
// by 1% from one to the next: 2.1 million references to 283,000 chunks.
// Run with
//
//	go test -run '^$' -bench Accounting -benchtime 5x ./internal/catalog/
func BenchmarkAccounting_1TiB(b *testing.B) {
	const slots, snaps, change = 262144, 8, 2621
	s, err := catalog.Open(b.Context(), catalog.DefaultConfig(secret.String(testenv.PostgresDSN(b))), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	ctx := b.Context()
	id := func(n int) backup.ChunkID {
		var k [8]byte
		binary.LittleEndian.PutUint64(k[:], uint64(n))
		return sha256.Sum256(k[:])
	}
	add := func(from, to int) {
		for i := from; i < to; i += 20000 {
			var infos []backup.ChunkInfo
			for j := i; j < min(i+20000, to); j++ {
				infos = append(infos, backup.ChunkInfo{ID: id(j), Size: 4 << 20, StoredSize: 1<<20 + int64(j%1000)})
			}
			if err := s.AddChunks(ctx, infos); err != nil {
				b.Fatal(err)
			}
		}
	}
	start := time.Now()
	add(0, slots+snaps*change)
	refs := make([]backup.ChunkID, slots)
	for i := range refs {
		refs[i] = id(i)
	}
	var ids []string
	for n := range snaps {
		for j := range change { // 1% of the disk changed since the last one
			refs[(n*change+j)*97%slots] = id(slots + n*change + j)
		}
		sess, err := s.CreateSnapshot(ctx, backup.Snapshot{Namespace: "bench", Storage: "s", VMID: 100, Type: backup.GuestQemu,
			BackupTime: time.Date(2026, 1, 1+n, 0, 0, 0, 0, time.UTC)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.CommitSnapshot(ctx, sess.ID, 1<<40, 0, refs); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, sess.ID)
	}
	b.Logf("setup: %d chunks, %d snapshots in %v", slots+snaps*change, snaps, time.Since(start))
	b.Run("ExclusiveBytes", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.ExclusiveBytes(ctx, ids[snaps-1]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("NamespaceStoredBytes", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.NamespaceStoredBytes(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Usage", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Usage(ctx, "bench", 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Stats", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Stats(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The catalog side of GC, once: what deleting all the snapshots leaves,
	// claimed and forgotten in batches of 1000.
	for n := range snaps {
		if err := s.DeleteSnapshot(ctx, "bench", fmt.Sprintf("qemu-100-2026_01_%02d-00_00_00", n+1)); err != nil {
			b.Fatal(err)
		}
	}
	start = time.Now()
	cutoff, err := s.GCCutoff(ctx, 0)
	if err != nil {
		b.Fatal(err)
	}
	var after backup.ChunkID
	total := 0
	for {
		batch, err := s.ClaimChunks(ctx, cutoff, after, 1000)
		if err != nil {
			b.Fatal(err)
		}
		if len(batch) == 0 {
			break
		}
		claimed := make([]backup.ChunkID, len(batch))
		for i, c := range batch {
			claimed[i] = c.ID
			if string(c.ID[:]) > string(after[:]) {
				after = c.ID
			}
		}
		if _, err := s.ForgetChunks(ctx, claimed); err != nil {
			b.Fatal(err)
		}
		total += len(batch)
	}
	b.Logf("claimed and forgot %d chunks in %v", total, time.Since(start))
}
