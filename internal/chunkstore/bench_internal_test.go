package chunkstore

import (
	"testing"

	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

// Envelope and store benchmarks on 4 MiB chunks (the fixed chunk size of VM
// disks), random (incompressible) and text (compressible) data:
//
//	go test -run '^$' -bench 'Envelope|Store|Sum|IsZero' -benchmem -count 10 -cpuprofile cpu.out ./internal/chunkstore/ | tee new.txt
//	benchstat old.txt new.txt
//
// Record the machine (CPU model, cores) next to the figures.

const benchChunk = 4 << 20

var benchKinds = []string{"random", "text"}

func BenchmarkEnvelope(b *testing.B) {
	for _, cc := range codecCases {
		c := mustCodec(b, cc.key, cc.compress)
		for _, kind := range benchKinds {
			p := backuptest.Payload(kind, 1, benchChunk)
			id := c.sum(p)
			b.Run("encode/"+cc.name+"/"+kind, func(b *testing.B) {
				dst := c.encode(id, p, nil)
				b.SetBytes(int64(len(p)))
				b.ReportAllocs()
				for b.Loop() {
					dst = c.encode(id, p, dst[:0])
				}
				b.ReportMetric(float64(len(dst))/float64(len(p)), "ratio")
			})
			b.Run("decode/"+cc.name+"/"+kind, func(b *testing.B) {
				env := c.encode(id, p, nil)
				obj := make([]byte, len(env))
				out := make([]byte, 0, len(p))
				b.SetBytes(int64(len(p)))
				b.ReportAllocs()
				for b.Loop() {
					copy(obj, env) // decode decrypts in place
					var err error
					if out, err = c.decode(id, obj, out); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkStore runs Put and Get through a Store over an in-memory
// backend: envelope work plus the store's own overhead (pooling, keys).
func BenchmarkStore(b *testing.B) {
	for _, cc := range []codecCase{codecCases[1], codecCases[3]} {
		for _, kind := range benchKinds {
			s, _ := newMemStore(b, cc.key, cc.compress)
			p := backuptest.Payload(kind, 2, benchChunk)
			id := s.Sum(p)
			b.Run("Put/"+cc.name+"/"+kind, func(b *testing.B) {
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.Put(b.Context(), id, p); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Get/"+cc.name+"/"+kind, func(b *testing.B) {
				buf := make([]byte, 0, benchChunk)
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if buf, err = s.Get(b.Context(), id, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkSum(b *testing.B) {
	p := backuptest.Payload("random", 3, benchChunk)
	for _, cc := range []codecCase{codecCases[0], codecCases[2]} {
		c := mustCodec(b, cc.key, false)
		b.Run(map[bool]string{false: "sha256", true: "hmac-sha256"}[cc.key != nil], func(b *testing.B) {
			b.SetBytes(benchChunk)
			b.ReportAllocs()
			for b.Loop() {
				c.sum(p)
			}
		})
	}
}

func BenchmarkIsZero(b *testing.B) {
	z := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	for b.Loop() {
		if !isZero(z) {
			b.Fatal("not zero")
		}
	}
}
