package handlers

import (
	"context"
	"net/http"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// GetMetrics serves the Prometheus registry. Auth (role read) has run in
// guard like for any route; the exposition itself is promhttp's.
func (h *handler) GetMetrics(ctx context.Context, _ api.GetMetricsRequestObject) (api.GetMetricsResponseObject, error) {
	if h.metrics == nil {
		return nil, backup.Errorf(backup.ErrNotImplemented, "metrics are not enabled on this server")
	}
	return metricsResponse{ctx: ctx, h: h.metrics}, nil
}

type metricsResponse struct {
	ctx context.Context
	h   http.Handler
}

// VisitGetMetricsResponse runs the handler with a plain GET: the text
// format of the contract, uncompressed.
func (m metricsResponse) VisitGetMetricsResponse(w http.ResponseWriter) error {
	req, err := http.NewRequestWithContext(m.ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return err
	}
	m.h.ServeHTTP(w, req)
	return nil
}
