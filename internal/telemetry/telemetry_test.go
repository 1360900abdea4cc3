package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
	"github.com/backstop-pve/backstop/internal/telemetry"
)

func TestLogHandler_AddsTraceAndSpanIDs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(telemetry.LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	log.InfoContext(ctx, "inside")
	span.End()
	log.InfoContext(context.Background(), "outside")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("log lines: %q", lines)
	}
	var in, out map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &in); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &out); err != nil {
		t.Fatal(err)
	}
	sc := span.SpanContext()
	if in["trace_id"] != sc.TraceID().String() || in["span_id"] != sc.SpanID().String() || in["component"] != "test" {
		t.Errorf("line in a span: %v; want trace_id %s span_id %s", in, sc.TraceID(), sc.SpanID())
	}
	if _, ok := out["trace_id"]; ok {
		t.Errorf("line outside any span has a trace_id: %v", out)
	}
}

// memStore is a Store over the in-memory chunk store, with objects in a map.
type memStore struct {
	backup.ChunkStore
	objects map[string][]byte
}

func (m *memStore) PutObject(_ context.Context, k string, b []byte) error {
	m.objects[k] = b
	return nil
}
func (m *memStore) GetObject(_ context.Context, k string) ([]byte, error) {
	b, ok := m.objects[k]
	if !ok {
		return nil, backup.Errorf(backup.ErrNotFound, "object %s", k)
	}
	return b, nil
}
func (m *memStore) DeleteObject(_ context.Context, k string) error { delete(m.objects, k); return nil }

// TestInstrumentedStore_SpansAndMetrics checks the decorator: one child
// span per call, an error status and recorded error on failure (not on a
// missing object), and requests counted by operation and result.
func TestInstrumentedStore_SpansAndMetrics(t *testing.T) {
	faulty := backuptest.NewFaultyChunkStore(backuptest.NewMemChunkStore())
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	s, err := telemetry.InstrumentStore(&memStore{ChunkStore: faulty, objects: map[string][]byte{}}, tp, mp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := tp.Tracer("t").Start(context.Background(), "job")
	data := []byte("chunk data")
	id := s.Sum(data)
	if _, err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("s3 down")
	faulty.Inject(backuptest.MethodPut, backuptest.Fault{Err: boom})
	if _, err := s.Put(ctx, id, data); !errors.Is(err, boom) {
		t.Fatalf("injected fault: %v", err)
	}
	if _, err := s.GetObject(ctx, "missing"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("missing object: %v", err)
	}
	parent.End()
	// A call outside any trace is counted but makes no root span.
	if _, err := s.Get(context.Background(), id, nil); err != nil {
		t.Fatal(err)
	}

	var spans []sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		if sp.Name() != "job" {
			spans = append(spans, sp)
		}
	}
	if len(spans) != 3 {
		t.Fatalf("%d store spans, want 3 (put, failed put, get_object)", len(spans))
	}
	for i, want := range []codes.Code{codes.Unset, codes.Error, codes.Unset} {
		sp := spans[i]
		if sp.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %s is not a child of the job span", sp.Name())
		}
		if sp.Status().Code != want {
			t.Errorf("span %s status %v, want %v", sp.Name(), sp.Status().Code, want)
		}
		if recorded := len(sp.Events()) > 0; recorded != (want == codes.Error) {
			t.Errorf("span %s events %v", sp.Name(), sp.Events())
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "backstop.store.requests" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				op, _ := dp.Attributes.Value("operation")
				res, _ := dp.Attributes.Value("result")
				got[op.AsString()+"/"+res.AsString()] = dp.Value
			}
		}
	}
	for k, want := range map[string]int64{"put_chunk/ok": 1, "put_chunk/error": 1, "get_object/not_found": 1, "get_chunk/ok": 1, "get_chunk/error": 0} {
		if got[k] != want {
			t.Errorf("requests %s = %d, want %d (all: %v)", k, got[k], want, got)
		}
	}
}

// TestSetup_ConsoleExporter goes through Setup with the console exporter:
// a span made with the global tracer is written out on shutdown.
func TestSetup_ConsoleExporter(t *testing.T) {
	var buf bytes.Buffer
	shutdown, err := telemetry.Setup(context.Background(), telemetry.Config{TracesExporter: "console", Console: &buf, ServiceName: "svc-test"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := telemetry.OtelTracer().Start(context.Background(), "hello")
	span.End()
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"Name":"hello"`) || !strings.Contains(buf.String(), "svc-test") {
		t.Errorf("console output lacks the span or the service name:\n%s", buf.String())
	}
	if _, err := telemetry.Setup(context.Background(), telemetry.Config{TracesExporter: "jaeger"}); err == nil {
		t.Error("an unknown exporter was accepted")
	}
}

func TestQueryTracer_NamesSpansByVerb(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT 1":                             "SELECT",
		"  \n\tinsert into x values ($1)":      "INSERT",
		"-- comment\nUPDATE t SET a = 1":       "UPDATE",
		"WITH c AS (SELECT 1) SELECT * FROM c": "WITH",
		"":                                     "QUERY",
	} {
		if got := telemetry.SQLVerb(sql); got != want {
			t.Errorf("SQLVerb(%q) = %q, want %q", sql, got, want)
		}
	}
}
