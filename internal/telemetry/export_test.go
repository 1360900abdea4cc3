package telemetry

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// SQLVerb exposes sqlVerb to the black-box tests.
var SQLVerb = sqlVerb

func OtelTracer() trace.Tracer { return otel.Tracer("test") }
