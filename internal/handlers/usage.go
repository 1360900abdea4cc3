package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// Accounting and quotas, answered from the catalog's reference counts.

func (h *handler) GetUsage(ctx context.Context, req api.GetUsageRequestObject) (api.GetUsageResponseObject, error) {
	ns := nsOrDefault(req.Params.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	var vmid int
	if req.Params.Vmid != nil {
		vmid = *req.Params.Vmid
	}
	u, err := h.backups.Usage(ctx, ns, vmid)
	if err != nil {
		return nil, err
	}
	out := api.GetUsage200JSONResponse{
		Ns: ns, QuotaBytes: u.QuotaBytes, Vmid: req.Params.Vmid, Guests: make([]api.GuestUsage, 0, len(u.Guests)),
		Snapshots: u.Snapshots, LogicalBytes: u.LogicalBytes, NewBytes: u.NewBytes, Chunks: u.Chunks,
		StoredBytes: u.StoredBytes, ExclusiveBytes: u.ExclusiveBytes,
	}
	for _, g := range u.Guests {
		out.Guests = append(out.Guests, api.GuestUsage{
			Vmid: g.VMID, Type: api.GuestType(g.Type),
			Snapshots: g.Snapshots, LogicalBytes: g.LogicalBytes, NewBytes: g.NewBytes, Chunks: g.Chunks,
			StoredBytes: g.StoredBytes, ExclusiveBytes: g.ExclusiveBytes,
		})
	}
	return out, nil
}

func (h *handler) PutNamespace(ctx context.Context, req api.PutNamespaceRequestObject) (api.PutNamespaceResponseObject, error) {
	n, err := h.catalog.SetNamespaceQuota(ctx, req.Ns, req.Body.QuotaBytes)
	if err != nil {
		return nil, err
	}
	stored, err := h.catalog.NamespaceStoredBytes(ctx, n.Name)
	if err != nil {
		return nil, err
	}
	return api.PutNamespace200JSONResponse{Name: n.Name, QuotaBytes: n.QuotaBytes, StoredBytes: stored, CreatedAt: n.CreatedAt}, nil
}

// snapshotDetail is a snapshot with the figures only its detail view has.
func (h *handler) snapshotDetail(ctx context.Context, s backup.Snapshot) (api.Snapshot, error) {
	out := toAPISnapshot(s)
	excl, err := h.catalog.ExclusiveBytes(ctx, s.ID)
	if err != nil {
		return api.Snapshot{}, err
	}
	out.ExclusiveBytes = &excl
	return out, nil
}
