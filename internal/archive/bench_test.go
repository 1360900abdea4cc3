package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/backup"
)

// hashSink hashes each chunk, as backup.ChunkWriter does before its dedup
// lookup, and keeps nothing.
type hashSink struct{}

func (hashSink) Write(data []byte) (backup.ChunkID, error) { return sha256.Sum256(data), nil }

func hashWriters() archive.Writers {
	return archive.Writers{Meta: hashSink{}, Payload: hashSink{}, Volatile: hashSink{}}
}

// containerTar writes a PAX tar of about size bytes shaped like a
// container (GNU tar's headers with atime and ctime): three quarters of
// the bytes in files of 1-16 MiB, the rest in files of 0-64 KiB.
func containerTar(w io.Writer, size int64, seed uint64) error {
	src := rand.NewChaCha8([32]byte{byte(seed)})
	r := rand.New(src)
	tw := tar.NewWriter(w)
	mt := time.Unix(1795651037, 906981630)
	buf := make([]byte, 16<<20)
	for i, written := 0, int64(0); written < size; i++ {
		n := r.IntN(64 << 10)
		if r.IntN(4) == 0 {
			n = 1<<20 + r.IntN(15<<20)
		}
		if n > 1<<20 && r.IntN(16) != 0 {
			n = r.IntN(64 << 10)
		}
		hdr := &tar.Header{Name: fmt.Sprintf("./usr/lib/d%03d/file%06d", i/200, i), Typeflag: tar.TypeReg,
			Size: int64(n), Mode: 0o644, ModTime: mt, AccessTime: mt.Add(time.Duration(i)), ChangeTime: mt, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, _ = src.Read(buf[:n])
		if _, err := tw.Write(buf[:n]); err != nil {
			return err
		}
		written += int64(n) + 1536
	}
	return tw.Close()
}

// BenchmarkIngest measures Ingest's CPU cost (tar parsing, splitting, CDC
// of three streams and SHA-256 of every chunk) on a 256 MiB stream held
// in memory, with DefaultConfig:
//
//	go test -run '^$' -bench Ingest -benchtime 5x -count 5 ./internal/archive/
func BenchmarkIngest(b *testing.B) {
	var buf bytes.Buffer
	if err := containerTar(&buf, 256<<20, 1); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		_, err := archive.Ingest(context.Background(), bytes.NewReader(data), hashWriters(), archive.DefaultConfig(),
			func([]archive.Entry) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestore measures Restore of the same stream from an in-memory
// store, which verifies each chunk's SHA-256 on Get:
//
//	go test -run '^$' -bench Restore -benchtime 5x -count 5 ./internal/archive/
func BenchmarkRestore(b *testing.B) {
	var buf bytes.Buffer
	if err := containerTar(&buf, 256<<20, 1); err != nil {
		b.Fatal(err)
	}
	s := newTestStore()
	res, _ := mustIngest(b, s, buf.Bytes(), archive.DefaultConfig())
	b.SetBytes(res.Size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := archive.Restore(context.Background(), io.Discard, res.Indexes, s); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIngest_Memory streams a 1 GiB tar (generated while it is read, never
// held whole) through Ingest and samples the heap: it must stay far below
// the stream size, at the bound Ingest documents.
func TestIngest_Memory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GiB")
	}
	size := int64(1 << 30)
	if raceEnabled {
		size = 256 << 20
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(containerTar(pw, size, 2)) }()

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	})
	var files int64
	res, err := archive.Ingest(t.Context(), pr, hashWriters(), archive.DefaultConfig(), func(es []archive.Entry) error {
		files += int64(len(es))
		return nil
	})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	grew := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("%d MiB, %d files: heap in use grew by %.1f MiB at most", res.Size>>20, files, float64(grew)/(1<<20))
	// Chunking buffers (8 + 8 + 0.5 MiB), one member's headers, the read
	// buffer, the generator's 16 MiB buffer and garbage not yet collected.
	if limit := int64(96 << 20); grew > limit {
		t.Errorf("heap grew by %d MiB, want < %d MiB", grew>>20, limit>>20)
	}
}
