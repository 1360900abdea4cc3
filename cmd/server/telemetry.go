package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	"github.com/backstop-pve/backstop/internal/handlers"
	"github.com/backstop-pve/backstop/internal/telemetry"
)

// version is set at build time (-ldflags "-X main.version=…", see
// deploy/Dockerfile) and reported as the service.version resource attribute.
var version = "dev"

// otelConfig reads the standard OpenTelemetry variables (only here: no
// package below cmd reads the environment).
func otelConfig(getenv func(string) string) telemetry.Config {
	c := telemetry.Config{
		ServiceName:        getenv("OTEL_SERVICE_NAME"),
		ServiceVersion:     version,
		ResourceAttributes: getenv("OTEL_RESOURCE_ATTRIBUTES"),
		TracesExporter:     strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")),
		OTLPEndpoint:       getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
	}
	if c.OTLPEndpoint == "" {
		if base := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); base != "" {
			// The general endpoint is a base URL: the signal path goes after it.
			c.OTLPEndpoint = strings.TrimRight(base, "/") + "/v1/traces"
		}
	}
	return c
}

// lastBackupInterval is how often the per-guest last-backup gauges are
// refreshed from the catalog.
var lastBackupInterval = 30 * time.Second // a var: the metrics test shortens it

// serverTelemetry is the server's OpenTelemetry wiring: serve calls one
// method per component it builds.
type serverTelemetry struct {
	*telemetry.Telemetry
	log *slog.Logger
}

// setupTelemetry builds the providers and returns the logger to use, which
// adds trace and span ids to every line logged with a traced context.
func setupTelemetry(ctx context.Context, cfg Config, log *slog.Logger) (*serverTelemetry, *slog.Logger, error) {
	tc := cfg.OTel
	if tc.Console == nil {
		tc.Console = os.Stdout
	}
	t, err := telemetry.New(ctx, tc)
	if err != nil {
		return nil, nil, err
	}
	log = slog.New(telemetry.LogHandler(log.Handler()))
	return &serverTelemetry{Telemetry: t, log: log}, log, nil
}

// catalog adds the query tracer (only when spans are exported).
func (t *serverTelemetry) catalog(c catalog.Config) catalog.Config {
	if t.Tracing {
		c.Tracer = telemetry.NewQueryTracer(t.TracerProvider)
	}
	return c
}

// store wraps the chunk store with spans and request metrics.
func (t *serverTelemetry) store(s telemetry.Store) (telemetry.Store, error) {
	is, err := telemetry.InstrumentStore(s, t.TracerProvider, t.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("instrument chunk store: %w", err)
	}
	return is, nil
}

// service gives the backup service its providers.
func (t *serverTelemetry) service(c *backup.ServiceConfig) {
	c.TracerProvider, c.MeterProvider = t.TracerProvider, t.MeterProvider
}

// handlers gives the HTTP layer its middleware and the /metrics handler.
func (t *serverTelemetry) handlers(d *handlers.Deps) {
	d.Metrics = t.Handler
	d.Telemetry = &handlers.Telemetry{TracerProvider: t.TracerProvider, MeterProvider: t.MeterProvider, Propagator: t.Propagator}
}

// catalogMetrics registers the catalog gauges (last backup per guest, and
// the connection pool of a Postgres catalog) and returns the loop that
// refreshes the former until ctx ends.
func (t *serverTelemetry) catalogMetrics(cat backup.Catalog) (run func(ctx context.Context), err error) {
	if pg, ok := cat.(interface{ PoolStat() *pgxpool.Stat }); ok {
		if err := telemetry.RegisterPoolStats(t.MeterProvider, pg.PoolStat); err != nil {
			return nil, fmt.Errorf("catalog pool metrics: %w", err)
		}
	}
	last, err := telemetry.NewLastBackups(t.log, t.MeterProvider, cat.LastBackups, lastBackupInterval)
	if err != nil {
		return nil, fmt.Errorf("last-backup metrics: %w", err)
	}
	return last.Run, nil
}
