package backup

import (
	"context"
	"encoding/binary"

	"go.opentelemetry.io/otel/metric"
)

// Test-only access to the pull pipeline, for the external benchmarks.

// NewBenchSource returns a source of size bytes whose 4 MiB slots all
// differ (nothing dedups, nothing is zero). Reads are a copy: the source
// costs next to nothing, so the pipeline's own cost is what is measured.
func NewBenchSource(size int64) DiskSource {
	block := make([]byte, 4<<20)
	for i := range block {
		block[i] = byte(i*7 + i>>8 + 1)
	}
	return &benchSource{size: size, block: block}
}

type benchSource struct {
	size  int64
	block []byte
}

func (s *benchSource) Size() int64  { return s.size }
func (s *benchSource) MaxRead() int { return 1 << 20 }
func (s *benchSource) Extents(context.Context) ([]Extent, error) {
	return []Extent{{0, s.size}}, nil
}
func (s *benchSource) ReadAt(_ context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		in := off % int64(len(s.block))
		n := copy(p, s.block[in:])
		if in == 0 { // stamp each slot so that no two chunks are equal
			binary.LittleEndian.PutUint64(p, uint64(off)+1)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}
func (s *benchSource) Discard(context.Context, int64, int64) error { return nil }
func (s *benchSource) Close() error                                { return nil }

// BenchStore is a chunk and object store that keeps only ids.
type BenchStore struct{ countingStore }

func (*BenchStore) PutObject(context.Context, string, []byte) error   { return nil }
func (*BenchStore) GetObject(context.Context, string) ([]byte, error) { return nil, ErrNotFound }
func (*BenchStore) DeleteObject(context.Context, string) error        { return nil }

// RunPull pulls src into chunks with an in-memory dedup catalog and the
// Service's metrics on mp, as a Service's pull does.
func RunPull(ctx context.Context, src DiskSource, chunks ChunkStore, mp metric.MeterProvider) error {
	m, err := newServiceMetrics(mp, &Service{exports: newExportRegistry()})
	if err != nil {
		return err
	}
	p := &puller{cfg: DefaultPullConfig(), chunks: chunks, catalog: &memCatalog{rows: map[ChunkID]bool{}},
		src: src, stats: &pullStats{}, metrics: m}
	_, err = p.run(ctx)
	return err
}
