package handlers

import (
	"context"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// Garbage collection and verification run as tasks; the calls answer 202
// with the task, or 409 while a task of the kind runs on any replica.

func (h *handler) StartGC(ctx context.Context, req api.StartGCRequestObject) (api.StartGCResponseObject, error) {
	var grace *time.Duration
	if req.Body != nil && req.Body.GraceSeconds != nil {
		g := time.Duration(*req.Body.GraceSeconds) * time.Second
		if g/time.Second != time.Duration(*req.Body.GraceSeconds) {
			return nil, backup.Errorf(backup.ErrInvalid, "grace_seconds %d is too large", *req.Body.GraceSeconds)
		}
		grace = &g
	}
	t, err := h.backups.StartGC(ctx, grace)
	if err != nil {
		return nil, err
	}
	return api.StartGC202JSONResponse{TaskId: parseUUID(t.ID)}, nil
}

func (h *handler) StartVerify(ctx context.Context, req api.StartVerifyRequestObject) (api.StartVerifyResponseObject, error) {
	var opts backup.VerifyOptions
	if b := req.Body; b != nil {
		if b.Ns != nil {
			opts.Namespace = *b.Ns
		}
		if b.Snapshot != nil {
			opts.Snapshot = *b.Snapshot
			if _, _, _, err := backup.ParseSnapshotName(opts.Snapshot); err != nil {
				return nil, err
			}
		}
		if b.OlderThanDays != nil {
			opts.OlderThan = time.Duration(*b.OlderThanDays) * 24 * time.Hour
		}
	}
	t, err := h.backups.StartVerify(ctx, opts)
	if err != nil {
		return nil, err
	}
	return api.StartVerify202JSONResponse{TaskId: parseUUID(t.ID)}, nil
}
