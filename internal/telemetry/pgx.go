package telemetry

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// QueryTracer is a pgx.QueryTracer that makes one client span per query,
// named after its SQL verb. It records the statement text (Backstop's SQL
// is all parameterised) but never the arguments.
type QueryTracer struct {
	tracer trace.Tracer
}

var (
	_ pgx.QueryTracer    = (*QueryTracer)(nil)
	_ pgx.CopyFromTracer = (*QueryTracer)(nil)
)

// NewQueryTracer returns a tracer for catalog.Config.Tracer.
func NewQueryTracer(tp trace.TracerProvider) *QueryTracer {
	return &QueryTracer{tracer: tp.Tracer("github.com/backstop-pve/backstop/internal/catalog")}
}

// maxStatement bounds the statement text kept on a span.
const maxStatement = 2048

// TraceQueryStart starts the query's span.
func (t *QueryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		// No trace to join (pool housekeeping, background loops without a
		// span): a root span per query would only be noise.
		return ctx
	}
	op := sqlVerb(data.SQL)
	sql := data.SQL
	if len(sql) > maxStatement {
		sql = sql[:maxStatement]
	}
	ctx, _ = t.tracer.Start(ctx, "pg "+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("db.system.name", "postgresql"),
		attribute.String("db.operation.name", op),
		attribute.String("db.query.text", sql),
	))
	return ctx
}

// TraceQueryEnd ends it, with the error status when the query failed.
func (t *QueryTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.Int64("db.response.returned_rows", data.CommandTag.RowsAffected()))
	endSpan(span, data.Err)
}

// TraceCopyFromStart starts the span of a COPY.
func (t *QueryTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	ctx, _ = t.tracer.Start(ctx, "pg COPY", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("db.system.name", "postgresql"),
		attribute.String("db.operation.name", "COPY"),
		attribute.String("db.collection.name", data.TableName.Sanitize()),
	))
	return ctx
}

// TraceCopyFromEnd ends it.
func (t *QueryTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		endSpan(span, data.Err)
	}
}

// sqlVerb returns the statement's first keyword, upper-cased ("SELECT").
func sqlVerb(sql string) string {
	sql = strings.TrimSpace(sql)
	for strings.HasPrefix(sql, "--") { // skip leading line comments
		_, rest, ok := strings.Cut(sql, "\n")
		if !ok {
			return "QUERY"
		}
		sql = strings.TrimSpace(rest)
	}
	end := strings.IndexFunc(sql, func(r rune) bool { return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') })
	if end < 0 {
		end = len(sql)
	}
	if end == 0 {
		return "QUERY"
	}
	return strings.ToUpper(sql[:end])
}
