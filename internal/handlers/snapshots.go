package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// snapshot loads a committed snapshot by name after checking the caller
// may act in its namespace.
func (h *handler) snapshot(ctx context.Context, ns *string, name string) (backup.Snapshot, error) {
	n := nsOrDefault(ns)
	if err := requireNamespace(ctx, n); err != nil {
		return backup.Snapshot{}, err
	}
	return h.catalog.SnapshotByName(ctx, n, name)
}

func (h *handler) ListSnapshots(ctx context.Context, req api.ListSnapshotsRequestObject) (api.ListSnapshotsResponseObject, error) {
	ns := nsOrDefault(req.Params.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	var vmid int
	if req.Params.Vmid != nil {
		vmid = *req.Params.Vmid
	}
	var typ backup.GuestType
	if req.Params.Type != nil {
		typ = backup.GuestType(*req.Params.Type)
	}
	snaps, err := h.catalog.ListSnapshots(ctx, ns, vmid, typ)
	if err != nil {
		return nil, err
	}
	out := make(api.ListSnapshots200JSONResponse, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, toAPISnapshot(s))
	}
	return out, nil
}

func (h *handler) GetSnapshot(ctx context.Context, req api.GetSnapshotRequestObject) (api.GetSnapshotResponseObject, error) {
	s, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	out, err := h.snapshotDetail(ctx, s)
	if err != nil {
		return nil, err
	}
	return api.GetSnapshot200JSONResponse(out), nil
}

func (h *handler) PatchSnapshot(ctx context.Context, req api.PatchSnapshotRequestObject) (api.PatchSnapshotResponseObject, error) {
	ns := nsOrDefault(req.Params.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	s, err := h.catalog.UpdateSnapshotMeta(ctx, ns, req.Name, req.Body.Notes, req.Body.Protected)
	if err != nil {
		return nil, err
	}
	return api.PatchSnapshot200JSONResponse(toAPISnapshot(s)), nil
}

func (h *handler) DeleteSnapshot(ctx context.Context, req api.DeleteSnapshotRequestObject) (api.DeleteSnapshotResponseObject, error) {
	ns := nsOrDefault(req.Params.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	snap, err := h.catalog.SnapshotByName(ctx, ns, req.Name)
	if err != nil {
		return nil, err
	}
	if err := h.backups.Delete(ctx, snap); err != nil {
		return nil, err
	}
	return api.DeleteSnapshot204Response{}, nil
}

func (h *handler) snapshotBlob(ctx context.Context, ns *string, name, kind string) (string, error) {
	s, err := h.snapshot(ctx, ns, name)
	if err != nil {
		return "", err
	}
	b, err := h.catalog.GetSnapshotBlob(ctx, s.ID, kind)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func (h *handler) GetSnapshotConfig(ctx context.Context, req api.GetSnapshotConfigRequestObject) (api.GetSnapshotConfigResponseObject, error) {
	b, err := h.snapshotBlob(ctx, req.Params.Ns, req.Name, "config")
	if err != nil {
		return nil, err
	}
	return api.GetSnapshotConfig200TextResponse(b), nil
}

func (h *handler) GetSnapshotFirewall(ctx context.Context, req api.GetSnapshotFirewallRequestObject) (api.GetSnapshotFirewallResponseObject, error) {
	b, err := h.snapshotBlob(ctx, req.Params.Ns, req.Name, "firewall")
	if err != nil {
		return nil, err
	}
	return api.GetSnapshotFirewall200TextResponse(b), nil
}

func (h *handler) GetSnapshotLog(ctx context.Context, req api.GetSnapshotLogRequestObject) (api.GetSnapshotLogResponseObject, error) {
	b, err := h.snapshotBlob(ctx, req.Params.Ns, req.Name, "log")
	if err != nil {
		return nil, err
	}
	return api.GetSnapshotLog200TextResponse(b), nil
}

func (h *handler) ListSnapshotDisks(ctx context.Context, req api.ListSnapshotDisksRequestObject) (api.ListSnapshotDisksResponseObject, error) {
	s, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	disks, err := h.catalog.ListDisks(ctx, s.ID)
	if err != nil {
		return nil, err
	}
	out := make(api.ListSnapshotDisks200JSONResponse, 0, len(disks))
	for _, d := range disks {
		out = append(out, api.DiskInfo{Device: d.Device, Size: d.Size})
	}
	return out, nil
}
