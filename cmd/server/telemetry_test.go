package main

import (
	"io"
	"strings"
	"testing"
)

func TestOTelConfig_StandardVariables(t *testing.T) {
	env := map[string]string{
		"OTEL_TRACES_EXPORTER":        " otlp ",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
		"OTEL_SERVICE_NAME":           "bs1",
		"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment=prod",
	}
	c := otelConfig(func(k string) string { return env[k] })
	if c.TracesExporter != "otlp" || c.OTLPEndpoint != "http://collector:4318/v1/traces" || c.ServiceName != "bs1" ||
		c.ResourceAttributes != "deployment.environment=prod" || c.ServiceVersion != version {
		t.Errorf("otelConfig = %+v", c)
	}
	env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "https://traces.example/v1/t"
	if c := otelConfig(func(k string) string { return env[k] }); c.OTLPEndpoint != "https://traces.example/v1/t" {
		t.Errorf("the traces endpoint does not win: %s", c.OTLPEndpoint)
	}

	env = map[string]string{"BACKSTOP_DATABASE_URL": "postgres://x", "OTEL_TRACES_EXPORTER": "zipkin", "OTEL_RESOURCE_ATTRIBUTES": "novalue"}
	_, _, err := loadConfig("t", func(k string) string { return env[k] }, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "OTEL_TRACES_EXPORTER") || !strings.Contains(err.Error(), "OTEL_RESOURCE_ATTRIBUTES") {
		t.Errorf("bad OTEL settings: %v", err)
	}
}
