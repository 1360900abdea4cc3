// Package telemetry wires OpenTelemetry for the server: the resource, the
// W3C TraceContext+Baggage propagator, a batched tracer provider whose
// exporter follows OTEL_TRACES_EXPORTER, and a meter provider exported to
// Prometheus on its own registry (GET /metrics). It also holds the
// instrumentation that belongs to no domain package: the slog handler
// that adds trace ids, the pgx query tracer, the tracing and metrics
// decorator over the chunk store, and the gauges fed from the catalog.
//
// Only cmd/server imports it. It reads no environment variable: the caller
// passes the values of the standard OTEL_* variables in Config.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Exporter values of OTEL_TRACES_EXPORTER.
const (
	ExporterNone    = "none"
	ExporterOTLP    = "otlp"
	ExporterConsole = "console"
)

// Config holds the values of the standard OTEL_* variables, read by the
// caller. The zero value traces nothing and still serves metrics.
type Config struct {
	ServiceName        string // OTEL_SERVICE_NAME; "" means "backstop"
	ServiceVersion     string
	ResourceAttributes string // OTEL_RESOURCE_ATTRIBUTES: k=v,k2=v2
	TracesExporter     string // OTEL_TRACES_EXPORTER: otlp, console or none ("" = none)
	// OTLPEndpoint is OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
	// OTEL_EXPORTER_OTLP_ENDPOINT (a URL; the signal path /v1/traces is
	// appended to the latter by the caller's choice of variable); "" uses
	// the exporter's default, http://localhost:4318.
	OTLPEndpoint string
	// Console receives the console exporter's spans (one JSON object per
	// span); nil means io.Discard.
	Console io.Writer
	// Sampler, when set, replaces the default parent-based always-on one
	// (tests use it; production follows the exporter choice).
	Sampler sdktrace.Sampler
}

// Validate checks the exporter choice.
func (c Config) Validate() error {
	var errs []error
	switch c.TracesExporter {
	case "", ExporterNone, ExporterOTLP, ExporterConsole:
	default:
		errs = append(errs, fmt.Errorf("OTEL_TRACES_EXPORTER %q: want otlp, console or none", c.TracesExporter))
	}
	if _, err := parseResourceAttributes(c.ResourceAttributes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Telemetry is the set of providers the server passes to its components.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	// Registry holds the OTel metrics and the Go runtime and process
	// collectors; Handler serves it in the Prometheus text format.
	Registry *prometheus.Registry
	Handler  http.Handler
	// Tracing reports whether spans are exported at all.
	Tracing bool

	shutdown []func(context.Context) error
}

// New builds the providers without touching OpenTelemetry's globals (so
// that several servers may run in one test process). Call Shutdown to
// flush them.
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	res, err := newResource(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t := &Telemetry{
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		Registry:   prometheus.NewRegistry(),
	}
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	t.Handler = promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{})

	exp, err := otelprom.New(otelprom.WithRegisterer(t.Registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(exp))
	t.MeterProvider = mp
	t.shutdown = append(t.shutdown, mp.Shutdown)

	spanExp, err := newSpanExporter(ctx, cfg)
	if err != nil {
		return nil, errors.Join(err, t.Shutdown(ctx))
	}
	if spanExp == nil {
		t.TracerProvider = tracenoop.NewTracerProvider()
		return t, nil
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithBatcher(spanExp)}
	if cfg.Sampler != nil {
		opts = append(opts, sdktrace.WithSampler(cfg.Sampler))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.TracerProvider, t.Tracing = tp, true
	t.shutdown = append(t.shutdown, tp.Shutdown)
	return t, nil
}

// Shutdown flushes and stops the providers (spans first).
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for i := len(t.shutdown) - 1; i >= 0; i-- {
		errs = append(errs, t.shutdown[i](ctx))
	}
	t.shutdown = nil
	return errors.Join(errs...)
}

// Setup builds the providers and installs them as OpenTelemetry's globals,
// for code that uses otel.Tracer and otel.Meter. It returns the function
// that flushes them.
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	t, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	otel.SetTracerProvider(t.TracerProvider)
	otel.SetMeterProvider(t.MeterProvider)
	otel.SetTextMapPropagator(t.Propagator)
	return t.Shutdown, nil
}

func newSpanExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	switch cfg.TracesExporter {
	case ExporterOTLP:
		var opts []otlptracehttp.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(cfg.OTLPEndpoint))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
		}
		return exp, nil
	case ExporterConsole:
		w := cfg.Console
		if w == nil {
			w = io.Discard
		}
		exp, err := stdouttrace.New(stdouttrace.WithWriter(w))
		if err != nil {
			return nil, fmt.Errorf("telemetry: console exporter: %w", err)
		}
		return exp, nil
	}
	return nil, nil
}

func newResource(ctx context.Context, cfg Config) (*resource.Resource, error) {
	attrs, err := parseResourceAttributes(cfg.ResourceAttributes)
	if err != nil {
		return nil, err
	}
	name := cfg.ServiceName
	if name == "" {
		name = "backstop"
	}
	attrs = append(attrs, attribute.String("service.name", name))
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.ServiceVersion))
	}
	res, err := resource.New(ctx, resource.WithAttributes(attrs...), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}

// parseResourceAttributes parses OTEL_RESOURCE_ATTRIBUTES (k=v pairs
// separated by commas, values percent-decoded as the specification says).
func parseResourceAttributes(s string) ([]attribute.KeyValue, error) {
	var out []attribute.KeyValue
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %q is not key=value", kv)
		}
		if dv, err := urlUnescape(strings.TrimSpace(v)); err == nil {
			v = dv
		}
		out = append(out, attribute.String(strings.TrimSpace(k), v))
	}
	return out, nil
}
