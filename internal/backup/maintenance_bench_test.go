package backup_test

import (
	"context"
	"crypto/rand"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Benchmarks of GC and verify against Postgres and versitygw (the peers of
// scripts/peers.sh). Run with
//
//	go test -run '^$' -bench 'GC|Verify' -benchtime 3x ./internal/backup/
//
// Setup (uploading the chunks) is outside the timer.

// BenchmarkGC_10kChunks collects 10,000 unreferenced 4 KiB chunks: claim,
// DeleteObjects in batches of 1000, forget.
func BenchmarkGC_10kChunks(b *testing.B) {
	const n = 10000
	e := newEnv(b, func(c *backup.ServiceConfig) {
		if p := os.Getenv("BACKSTOP_BENCH_GC_PARALLEL"); p != "" {
			c.GC.Parallel, _ = strconv.Atoi(p)
		}
	})
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		infos := make([]backup.ChunkInfo, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for i := range infos {
			g.Go(func() error {
				data := make([]byte, 4096)
				rand.Read(data)
				id := e.store.Sum(data)
				size, err := e.store.Put(gctx, id, data)
				infos[i] = backup.ChunkInfo{ID: id, Size: 4096, StoredSize: size}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		for i := 0; i < n; i += 1000 {
			if err := e.cat.AddChunks(ctx, infos[i:i+1000]); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond)
		b.StartTimer()
		task := e.gc(0)
		b.StopTimer()
		if task.Done != n {
			b.Fatalf("gc processed %d chunks, want %d", task.Done, n)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "chunks/s")
}

// BenchmarkVerify_256MiB verifies a snapshot of 64 incompressible 4 MiB
// chunks.
func BenchmarkVerify_256MiB(b *testing.B) {
	e := newEnv(b, func(c *backup.ServiceConfig) { c.Pull.ChunkSize = 4 << 20 })
	data := make([]byte, 256<<20)
	rand.Read(data)
	p, err := e.startBackup(100, hour(1), data, nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.finish(p); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		task, err := e.svc.StartVerify(context.Background(), backup.VerifyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if got := e.waitTask(task.ID); got.State != backup.TaskOK {
			b.Fatalf("verify: %+v", got)
		}
	}
}
