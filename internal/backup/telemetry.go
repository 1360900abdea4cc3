package backup

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// instrumentationName names the tracer and meter of this package.
const instrumentationName = "github.com/backstop-pve/backstop/internal/backup"

// serviceMetrics are the Service's instruments. Per-chunk work only adds to
// counters (a few atomic adds); spans cover jobs, disks and S3 calls. No
// instrument carries a digest or an id: the attributes are kinds, states
// and results.
type serviceMetrics struct {
	nbdRead      metric.Int64Counter
	uploaded     metric.Int64Counter
	newChunks    metric.Int64Counter
	dedupHits    metric.Int64Counter
	tasks        metric.Int64Counter
	tasksRunning metric.Int64UpDownCounter
	maintRuns    metric.Int64Counter
	gcFreed      metric.Int64Counter
	gcChunks     metric.Int64Counter
	verifyFailed metric.Int64Counter

	mu     sync.Mutex
	lastOK map[string]bool // guarded by mu; last maintenance outcome by kind
	lastAt map[string]time.Time
}

func newServiceMetrics(mp metric.MeterProvider, s *Service) (*serviceMetrics, error) {
	m := mp.Meter(instrumentationName)
	sm := &serviceMetrics{lastOK: map[string]bool{}, lastAt: map[string]time.Time{}}
	var err error
	counter := func(name, unit, desc string) metric.Int64Counter {
		if err != nil {
			return nil
		}
		var c metric.Int64Counter
		c, err = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		return c
	}
	sm.nbdRead = counter("backstop.nbd.read", "By", "Bytes read from NBD sources by disk pulls.")
	sm.uploaded = counter("backstop.upload", "By", "Bytes of new chunks written to the chunk store (envelopes included).")
	sm.newChunks = counter("backstop.chunks.new", "{chunk}", "Chunks uploaded because no snapshot had them yet.")
	sm.dedupHits = counter("backstop.dedup.hits", "{chunk}", "Chunks not uploaded because the store already had them.")
	sm.tasks = counter("backstop.tasks", "{task}", "Finished tasks by kind and state.")
	sm.maintRuns = counter("backstop.maintenance.runs", "{run}", "Finished GC, verify and prune runs by kind and result.")
	sm.gcFreed = counter("backstop.gc.freed", "By", "Stored bytes removed by GC.")
	sm.gcChunks = counter("backstop.gc.removed", "{chunk}", "Chunks removed by GC.")
	sm.verifyFailed = counter("backstop.verify.failed_snapshots", "{snapshot}", "Snapshots that failed verification.")
	if err != nil {
		return nil, err
	}
	if sm.tasksRunning, err = m.Int64UpDownCounter("backstop.tasks.running", metric.WithUnit("{task}"),
		metric.WithDescription("Tasks running on this server by kind.")); err != nil {
		return nil, err
	}
	exports, err := m.Int64ObservableGauge("backstop.exports.active", metric.WithUnit("{export}"),
		metric.WithDescription("NBD restore exports registered on this server."))
	if err != nil {
		return nil, err
	}
	conns, err := m.Int64ObservableGauge("backstop.exports.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Open NBD connections to restore exports."))
	if err != nil {
		return nil, err
	}
	lastOK, err := m.Int64ObservableGauge("backstop.maintenance.last_run_ok",
		metric.WithDescription("1 when the last run of the kind on this server succeeded, 0 when it failed."))
	if err != nil {
		return nil, err
	}
	lastAt, err := m.Float64ObservableGauge("backstop.maintenance.last_run_time", metric.WithUnit("s"),
		metric.WithDescription("Unix time at which the last run of the kind on this server ended."))
	if err != nil {
		return nil, err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		n, c := s.exports.counts()
		o.ObserveInt64(exports, int64(n))
		o.ObserveInt64(conns, int64(c))
		sm.mu.Lock()
		defer sm.mu.Unlock()
		for kind, ok := range sm.lastOK {
			attrs := metric.WithAttributes(attribute.String("kind", kind))
			v := int64(0)
			if ok {
				v = 1
			}
			o.ObserveInt64(lastOK, v, attrs)
			o.ObserveFloat64(lastAt, float64(sm.lastAt[kind].UnixNano())/1e9, attrs)
		}
		return nil
	}, exports, conns, lastOK, lastAt)
	if err != nil {
		return nil, err
	}
	// Start the failure series at zero, so that a first failure is an
	// increase that alert rules see.
	for _, kind := range []string{TaskGC, TaskVerify, TaskPrune} {
		for _, result := range []string{"ok", "error"} {
			sm.maintRuns.Add(context.Background(), 0, metric.WithAttributes(
				attribute.String("kind", kind), attribute.String("result", result)))
		}
	}
	return sm, nil
}

// Per-chunk helpers: nil-safe so that unit tests may build a puller bare.

func (m *serviceMetrics) addRead(ctx context.Context, n int) {
	if m != nil {
		m.nbdRead.Add(ctx, int64(n))
	}
}

func (m *serviceMetrics) addUpload(ctx context.Context, stored int64) {
	if m != nil {
		m.uploaded.Add(ctx, stored)
		m.newChunks.Add(ctx, 1)
	}
}

func (m *serviceMetrics) addDedupHits(ctx context.Context, n int) {
	if m != nil && n > 0 {
		m.dedupHits.Add(ctx, int64(n))
	}
}

// taskStarted counts a running task of kind; the returned func records its
// end state.
func (m *serviceMetrics) taskStarted(ctx context.Context, kind string) (done func(state TaskState)) {
	kindAttr := metric.WithAttributes(attribute.String("kind", kind))
	m.tasksRunning.Add(ctx, 1, kindAttr)
	return func(state TaskState) {
		m.tasksRunning.Add(ctx, -1, kindAttr)
		m.tasks.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind), attribute.String("state", string(state))))
	}
}

// maintenanceDone records the outcome of a GC, verify or prune run.
func (m *serviceMetrics) maintenanceDone(ctx context.Context, kind string, ok bool, at time.Time) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.maintRuns.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind), attribute.String("result", result)))
	m.mu.Lock()
	m.lastOK[kind], m.lastAt[kind] = ok, at
	m.mu.Unlock()
}

// startJobSpan starts the span of a job that outlives the request that
// started it: its parent is the request's span (from reqCtx), so the job
// shows in the request's trace, while ctx (the Service's lifetime) keeps
// its cancellation.
func (s *Service) startJobSpan(ctx, reqCtx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	parent := trace.SpanContextFromContext(reqCtx)
	opts := []trace.SpanStartOption{trace.WithAttributes(attrs...)}
	if parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, parent)
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: parent}))
	}
	return s.tracer.Start(ctx, name, opts...)
}

// endSpan ends span, recording err with an error status.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, firstLineOf(err.Error()))
	}
	span.End()
}

func firstLineOf(s string) string {
	for i := range len(s) {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// tracerOrNoop returns the Service's tracer, or a no-op one for a Service
// built bare in a unit test.
func (s *Service) tracerOrNoop() trace.Tracer {
	if s.tracer == nil {
		return tracenoop.NewTracerProvider().Tracer(instrumentationName)
	}
	return s.tracer
}

// telemetryProviders returns the configured providers or no-op ones.
func telemetryProviders(cfg ServiceConfig) (trace.TracerProvider, metric.MeterProvider) {
	tp, mp := cfg.TracerProvider, cfg.MeterProvider
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	return tp, mp
}
