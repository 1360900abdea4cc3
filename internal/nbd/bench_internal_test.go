package nbd

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sync/errgroup"
)

// BenchmarkReadAt_Fake measures the client's read path against an
// in-memory server (net.Pipe) that answers every READ with one
// OFFSET_DATA chunk, 16 requests in flight.
//
//	go test -run '^$' -bench ReadAt_Fake -count 5 ./internal/nbd/
func BenchmarkReadAt_Fake(b *testing.B) {
	for _, reqSize := range []int{64 << 10, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("req=%dK", reqSize>>10), func(b *testing.B) {
			ex := defaultFakeExport()
			ex.size = 1 << 30
			data := pattern(reqSize, 7)
			c := newFakeClient(b, ex, Options{}, func(s *fakeServer) error {
				var hdr [chunkHeaderSize + 8]byte
				for {
					r, err := s.expect(cmdRead)
					if err != nil {
						return err
					}
					h := chunkHeader{Flags: replyFlagDone, Type: chunkOffsetData, Cookie: r.Cookie, Length: r.Length + 8}
					h.encode((*[chunkHeaderSize]byte)(hdr[:]))
					binary.BigEndian.PutUint64(hdr[chunkHeaderSize:], r.Offset)
					if _, err := s.conn.Write(hdr[:]); err != nil {
						return err
					}
					if _, err := s.conn.Write(data[:r.Length]); err != nil {
						return err
					}
				}
			})
			const inFlight = 16
			slots := make(chan []byte, inFlight)
			for range inFlight {
				slots <- make([]byte, reqSize)
			}
			const perOp = 64 // requests per benchmark op
			b.SetBytes(int64(perOp * reqSize))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				var g errgroup.Group
				for i := range perOp {
					buf := <-slots
					g.Go(func() error {
						defer func() { slots <- buf }()
						return c.ReadAt(b.Context(), buf, int64(i*reqSize))
					})
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
