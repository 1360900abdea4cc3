package chunker_test

// Benchmarks for the chunk pipeline's CPU stages: cutting (fixed vs CDC),
// the zero check and the SHA-256 chunk digest. Run them with
//
//	go test -run '^$' -bench . -benchtime 2s -count 10 ./internal/chunker/ | tee new.txt
//	benchstat old.txt new.txt
//
// and record the machine (CPU model, cores) next to the figures. Inputs are
// seeded and built before the timer starts; every benchmark reports MB/s of
// stream processed and allocations (expected: 0 per op).

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/backstop-pve/backstop/internal/chunker"
)

// benchSize is several chunks of the largest size, so per-stream setup and
// the short tail do not dominate.
const benchSize = 32 << 20

func BenchmarkFixed(b *testing.B) {
	data := randomData("bench fixed", benchSize)
	rd := bytes.NewReader(data)
	f, err := chunker.NewFixed(rd, chunker.DefaultFixedSize)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, chunker.DefaultFixedSize)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(data)
		f.Reset(rd)
		for {
			if _, err := f.Next(buf); err != nil {
				break
			}
		}
	}
}

func BenchmarkCDC(b *testing.B) {
	data := randomData("bench cdc", benchSize)
	for _, bc := range []struct {
		name string
		p    chunker.Params
	}{
		{"default", chunker.DefaultParams},
		{"avg64KiB", chunker.Params{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}},
	} {
		// Next: through an io.Reader, copying each chunk to the caller's
		// buffer, as the archive pipeline does with a request body.
		b.Run(bc.name+"/Next", func(b *testing.B) {
			rd := bytes.NewReader(data)
			c := mustCDC(b, rd, bc.p)
			buf := make([]byte, bc.p.Max)
			chunks := 0
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(data)
				c.Reset(rd)
				for {
					if _, err := c.Next(buf); err != nil {
						break
					}
					chunks++
				}
			}
			b.ReportMetric(float64(len(data))*float64(b.N)/float64(chunks), "B/chunk")
		})
		// Cut: data already in memory (a tar entry payload); no copying.
		b.Run(bc.name+"/Cut", func(b *testing.B) {
			c := mustCutter(b, bc.p)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				for d := data; len(d) > 0; {
					d = d[c.Cut(d, true):]
				}
			}
		})
	}
}

func BenchmarkIsZero(b *testing.B) {
	// All zeros is the worst case: every byte must be read.
	data := make([]byte, chunker.DefaultFixedSize)
	b.Run("words", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if !chunker.IsZero(data) {
				b.Fatal("IsZero(zeros) = false")
			}
		}
	})
	// The byte loop IsZero replaces, for comparison.
	b.Run("bytes", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if !isZeroRef(data) {
				b.Fatal("isZeroRef(zeros) = false")
			}
		}
	})
}

func BenchmarkSHA256(b *testing.B) {
	data := randomData("bench sha256", chunker.DefaultFixedSize)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		_ = sha256.Sum256(data)
	}
}
