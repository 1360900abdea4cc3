package backup_test

import (
	"context"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/telemetry"
)

// BenchmarkPull_Telemetry measures what telemetry costs a disk pull: "off"
// has no-op providers and the bare store (OTEL_TRACES_EXPORTER=none without
// metrics); "on" has the SDK meter provider exporting to a Prometheus
// registry, the store decorator, and a sampled job span whose S3 spans go
// to a batching console exporter (into io.Discard). Same 256 MiB of unique
// chunks, a store that keeps only ids: the pipeline's CPU cost (read,
// SHA-256, dedup, bookkeeping) is all that is left, so the ratio is an
// upper bound on the overhead against real S3.
//
//	go test -run '^$' -bench BenchmarkPull_Telemetry -count 6 ./internal/backup | benchstat -
func BenchmarkPull_Telemetry(b *testing.B) {
	const size = 256 << 20
	b.Run("off", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			if err := backup.RunPull(context.Background(), backup.NewBenchSource(size), &backup.BenchStore{}, metricnoop.NewMeterProvider()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("on", func(b *testing.B) {
		exp, err := otelprom.New(otelprom.WithRegisterer(prometheus.NewRegistry()))
		if err != nil {
			b.Fatal(err)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
		spans, err := stdouttrace.New(stdouttrace.WithWriter(io.Discard))
		if err != nil {
			b.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
		store, err := telemetry.InstrumentStore(&backup.BenchStore{}, tp, mp)
		if err != nil {
			b.Fatal(err)
		}
		tracer := tp.Tracer("bench")
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			ctx, span := tracer.Start(context.Background(), "backup.pull_disk")
			if err := backup.RunPull(ctx, backup.NewBenchSource(size), store, mp); err != nil {
				b.Fatal(err)
			}
			span.End()
		}
	})
}
