package telemetry

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Store is what the backup service uses of the chunk store: chunks and the
// index objects beside them.
type Store interface {
	backup.ChunkStore
	backup.ObjectStore
}

// InstrumentedStore decorates a Store with a client span per call and
// request counts and latencies per operation (objstore's TracingBucket and
// metricBucket). It adds nothing per byte: one span and two metric updates
// per S3 request. The decorated store keeps its own contract.
type InstrumentedStore struct {
	next     Store
	tracer   trace.Tracer
	requests metric.Int64Counter
	duration metric.Float64Histogram
	bytes    metric.Int64Counter
}

var _ Store = (*InstrumentedStore)(nil)

// latencyBuckets (seconds) cover a loopback GET of a small chunk up to a
// slow multi-part PUT on a busy WAN.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// InstrumentStore returns next with tracing and metrics.
func InstrumentStore(next Store, tp trace.TracerProvider, mp metric.MeterProvider) (*InstrumentedStore, error) {
	const name = "github.com/backstop-pve/backstop/internal/chunkstore"
	m := mp.Meter(name)
	s := &InstrumentedStore{next: next, tracer: tp.Tracer(name)}
	var err error
	if s.requests, err = m.Int64Counter("backstop.store.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Chunk store (S3) requests by operation and result (ok, not_found, error).")); err != nil {
		return nil, err
	}
	if s.duration, err = m.Float64Histogram("backstop.store.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Chunk store request latency by operation, retries included."),
		metric.WithExplicitBucketBoundaries(latencyBuckets...)); err != nil {
		return nil, err
	}
	if s.bytes, err = m.Int64Counter("backstop.store.transferred", metric.WithUnit("By"),
		metric.WithDescription("Bytes sent to (put) and received from (get) the chunk store, as stored.")); err != nil {
		return nil, err
	}
	// Start the ok and error series of every operation at zero, so that a
	// first failure is an increase that alert rules see.
	for _, op := range []string{"put_chunk", "get_chunk", "delete_chunks", "put_object", "get_object", "delete_object"} {
		for _, result := range []string{"ok", "error"} {
			s.requests.Add(context.Background(), 0, metric.WithAttributes(
				attribute.String("operation", op), attribute.String("result", result)))
		}
	}
	return s, nil
}

// observe starts the span of one operation; the returned func ends it and
// records the request.
func (s *InstrumentedStore) observe(ctx context.Context, op string, attrs ...attribute.KeyValue) (context.Context, func(error)) {
	start := time.Now()
	span := trace.SpanFromContext(ctx) // non-recording unless a job or request traces this call
	if span.IsRecording() {
		ctx, span = s.tracer.Start(ctx, "chunkstore."+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	}
	return ctx, func(err error) {
		result := "ok"
		switch {
		case errors.Is(err, backup.ErrNotFound):
			result = "not_found"
		case err != nil:
			result = "error"
		}
		opAttr := attribute.String("operation", op)
		s.requests.Add(ctx, 1, metric.WithAttributes(opAttr, attribute.String("result", result)))
		s.duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(opAttr))
		if !span.IsRecording() {
			return
		}
		if result == "error" {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// Sum is pure: no span, no metric.
func (s *InstrumentedStore) Sum(data []byte) backup.ChunkID { return s.next.Sum(data) }

func (s *InstrumentedStore) Put(ctx context.Context, id backup.ChunkID, data []byte) (int64, error) {
	ctx, done := s.observe(ctx, "put_chunk", attribute.Int("size", len(data)))
	n, err := s.next.Put(ctx, id, data)
	if err == nil {
		s.bytes.Add(ctx, n, metric.WithAttributes(attribute.String("direction", "put")))
	}
	done(err)
	return n, err
}

func (s *InstrumentedStore) Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error) {
	ctx, done := s.observe(ctx, "get_chunk")
	b, err := s.next.Get(ctx, id, buf)
	if err == nil {
		s.bytes.Add(ctx, int64(len(b)), metric.WithAttributes(attribute.String("direction", "get")))
	}
	done(err)
	return b, err
}

func (s *InstrumentedStore) Delete(ctx context.Context, ids []backup.ChunkID) error {
	ctx, done := s.observe(ctx, "delete_chunks", attribute.Int("chunks", len(ids)))
	err := s.next.Delete(ctx, ids)
	done(err)
	return err
}

func (s *InstrumentedStore) PutObject(ctx context.Context, key string, data []byte) error {
	ctx, done := s.observe(ctx, "put_object", attribute.Int("size", len(data)))
	err := s.next.PutObject(ctx, key, data)
	done(err)
	return err
}

func (s *InstrumentedStore) GetObject(ctx context.Context, key string) ([]byte, error) {
	ctx, done := s.observe(ctx, "get_object")
	b, err := s.next.GetObject(ctx, key)
	done(err)
	return b, err
}

func (s *InstrumentedStore) DeleteObject(ctx context.Context, key string) error {
	ctx, done := s.observe(ctx, "delete_object")
	err := s.next.DeleteObject(ctx, key)
	done(err)
	return err
}

// endSpan ends span, recording err with an error status.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
