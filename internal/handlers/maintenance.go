package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
)

// Garbage collection and verification (issue #7).

func (h *handler) StartGC(context.Context, api.StartGCRequestObject) (api.StartGCResponseObject, error) {
	return nil, notYet("garbage collection")
}

func (h *handler) StartVerify(context.Context, api.StartVerifyRequestObject) (api.StartVerifyResponseObject, error) {
	return nil, notYet("verification")
}
