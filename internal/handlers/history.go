package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) ListBackupRuns(ctx context.Context, req api.ListBackupRunsRequestObject) (api.ListBackupRunsResponseObject, error) {
	ns := nsOrDefault(req.Params.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	f := backup.BackupRunFilter{Namespace: ns}
	if req.Params.Vmid != nil {
		f.VMID = *req.Params.Vmid
	}
	if req.Params.State != nil {
		f.State = backup.BackupRunState(*req.Params.State)
	}
	if req.Params.Since != nil {
		f.Since = *req.Params.Since
	}
	if req.Params.Limit != nil {
		f.Limit = *req.Params.Limit
	}
	runs, err := h.catalog.ListBackupRuns(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make(api.ListBackupRuns200JSONResponse, 0, len(runs))
	for _, r := range runs {
		out = append(out, toAPIBackupRun(r))
	}
	return out, nil
}

// ListTasks lists the tasks of one namespace (ns given) or of every
// namespace the token may see, plus the maintenance tasks (namespace "")
// for tokens that are not limited to namespaces.
func (h *handler) ListTasks(ctx context.Context, req api.ListTasksRequestObject) (api.ListTasksResponseObject, error) {
	p, ok := principalFrom(ctx)
	if !ok {
		return nil, backup.Errorf(backup.ErrUnauthorized, "not authenticated")
	}
	unrestricted := p.Role == backup.RoleAdmin || len(p.Namespaces) == 0
	var f backup.TaskFilter
	switch {
	case req.Params.Ns != nil:
		if err := requireNamespace(ctx, *req.Params.Ns); err != nil {
			return nil, err
		}
		f.Namespaces = []string{*req.Params.Ns}
		if unrestricted {
			f.Namespaces = append(f.Namespaces, "")
		}
	case !unrestricted:
		f.Namespaces = append([]string(nil), p.Namespaces...)
	}
	if req.Params.State != nil {
		f.State = backup.TaskState(*req.Params.State)
	}
	if req.Params.Kind != nil {
		f.Kind = *req.Params.Kind
	}
	if req.Params.Since != nil {
		f.Since = *req.Params.Since
	}
	if req.Params.Limit != nil {
		f.Limit = *req.Params.Limit
	}
	tasks, err := h.catalog.FindTasks(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make(api.ListTasks200JSONResponse, 0, len(tasks))
	for _, t := range tasks {
		out = append(out, toAPITask(t))
	}
	return out, nil
}

func toAPIBackupRun(r backup.BackupRun) api.BackupRun {
	out := api.BackupRun{
		Id:                parseUUID(r.ID),
		Ns:                r.Namespace,
		Name:              r.Name,
		Vmid:              r.VMID,
		Type:              api.GuestType(r.Type),
		Storage:           r.Storage,
		State:             api.BackupRunState(r.State),
		StartedAt:         r.StartedAt,
		FinishedAt:        r.FinishedAt,
		Size:              r.Size,
		NewBytes:          r.NewBytes,
		SnapshotAvailable: r.SnapshotAvailable,
	}
	if r.Error != "" {
		e := r.Error
		out.Error = &e
	}
	return out
}
