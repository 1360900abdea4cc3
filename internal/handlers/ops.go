package handlers

import (
	"context"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) GetHealthz(context.Context, api.GetHealthzRequestObject) (api.GetHealthzResponseObject, error) {
	return api.GetHealthz200TextResponse("ok\n"), nil
}

// readyTimeout bounds a readiness probe: a hung backend is a failed probe.
const readyTimeout = 3 * time.Second

func (h *handler) GetReadyz(ctx context.Context, _ api.GetReadyzRequestObject) (api.GetReadyzResponseObject, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for _, check := range h.ready {
		if check == nil {
			continue
		}
		if err := check(ctx); err != nil {
			h.log.WarnContext(ctx, "readiness check failed", "err", err)
			return nil, backup.ErrUnavailable
		}
	}
	return api.GetReadyz200TextResponse("ready\n"), nil
}

func (h *handler) GetOpenAPI(context.Context, api.GetOpenAPIRequestObject) (api.GetOpenAPIResponseObject, error) {
	return api.GetOpenAPI200ApplicationyamlResponse{Body: strings.NewReader(api.Spec), ContentLength: int64(len(api.Spec))}, nil
}
