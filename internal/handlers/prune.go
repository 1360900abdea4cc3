package handlers

import (
	"context"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) Prune(ctx context.Context, req api.PruneRequestObject) (api.PruneResponseObject, error) {
	b := req.Body
	ns := nsOrDefault(b.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	deref := func(p *int) int {
		if p == nil {
			return 0
		}
		return *p
	}
	keep := backup.KeepOptions{
		Last: deref(b.Keep.Last), Hourly: deref(b.Keep.Hourly), Daily: deref(b.Keep.Daily),
		Weekly: deref(b.Keep.Weekly), Monthly: deref(b.Keep.Monthly), Yearly: deref(b.Keep.Yearly),
	}
	var vmid int
	if b.Vmid != nil {
		vmid = *b.Vmid
	}
	var typ backup.GuestType
	if b.Type != nil {
		typ = backup.GuestType(*b.Type)
	}
	dry := b.DryRun != nil && *b.DryRun
	res, err := h.backups.Prune(ctx, ns, vmid, typ, keep, dry, time.Local)
	if err != nil {
		return nil, err
	}
	out := make(api.Prune200JSONResponse, 0, len(res))
	for _, r := range res {
		out = append(out, api.PruneMark{Name: r.Snapshot.Name, Mark: api.PruneMarkMark(r.Mark)})
	}
	return out, nil
}
