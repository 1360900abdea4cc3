package handlers

import (
	"context"
	"strings"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) CreateJob(ctx context.Context, req api.CreateJobRequestObject) (api.CreateJobResponseObject, error) {
	j, err := h.catalog.CreateJob(ctx, backup.Job{
		Node: req.Body.Node, Storage: req.Body.Storage, StartTime: fromUnix(req.Body.StartTime),
	})
	if err != nil {
		return nil, err
	}
	return api.CreateJob201JSONResponse(toAPIJob(j)), nil
}

func (h *handler) FinishJob(ctx context.Context, req api.FinishJobRequestObject) (api.FinishJobResponseObject, error) {
	j, err := h.catalog.FinishJob(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	return api.FinishJob200JSONResponse(toAPIJob(j)), nil
}

func (h *handler) CreateBackup(ctx context.Context, req api.CreateBackupRequestObject) (api.CreateBackupResponseObject, error) {
	b := req.Body
	ns := nsOrDefault(b.Ns)
	if err := requireNamespace(ctx, ns); err != nil {
		return nil, err
	}
	s := backup.Snapshot{
		Namespace:  ns,
		Storage:    b.Storage,
		VMID:       b.Vmid,
		Type:       backup.GuestType(b.Type),
		BackupTime: fromUnix(b.BackupTime),
	}
	if b.JobId != nil {
		s.JobID = b.JobId.String()
		if _, err := h.catalog.GetJob(ctx, s.JobID); err != nil {
			return nil, err
		}
	}
	s.Name = backup.SnapshotName(s.Type, s.VMID, s.BackupTime)
	if err := h.backups.CheckQuota(ctx, ns); err != nil {
		return nil, err
	}
	created, err := h.catalog.CreateSnapshot(ctx, s)
	if err != nil {
		return nil, err
	}
	return api.CreateBackup201JSONResponse{Id: parseUUID(created.ID), Name: created.Name}, nil
}

// session loads a backup session and checks the caller may act in its
// namespace.
func (h *handler) session(ctx context.Context, id string) (backup.Snapshot, error) {
	s, err := h.catalog.GetSnapshot(ctx, id)
	if err != nil {
		return s, err
	}
	return s, requireNamespace(ctx, s.Namespace)
}

// openSession is session for calls that only make sense before commit.
func (h *handler) openSession(ctx context.Context, id string) (backup.Snapshot, error) {
	s, err := h.session(ctx, id)
	if err == nil && s.State != backup.SnapshotOpen {
		err = backup.Errorf(backup.ErrConflict, "backup %s is already committed as %s", id, s.Name)
	}
	return s, err
}

func (h *handler) QueryIncremental(ctx context.Context, req api.QueryIncrementalRequestObject) (api.QueryIncrementalResponseObject, error) {
	s, err := h.openSession(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	out := api.QueryIncremental200JSONResponse{Devices: map[string]api.IncrementalAnswerDevices{}}
	for dev, q := range req.Body.Devices {
		out.Devices[dev] = api.IncrementalAnswerDevicesNew
		if s.Type != backup.GuestQemu {
			continue
		}
		use, err := h.backups.AnswerIncremental(ctx, s, dev, q.Size)
		if err != nil {
			return nil, err
		}
		if use {
			out.Devices[dev] = api.IncrementalAnswerDevicesUse
		}
	}
	return out, nil
}

func (h *handler) putBlob(ctx context.Context, id, kind string, body *string) error {
	if _, err := h.openSession(ctx, id); err != nil {
		return err
	}
	var data []byte
	if body != nil {
		data = []byte(*body)
	}
	return h.catalog.PutSnapshotBlob(ctx, id, kind, data)
}

func (h *handler) PutBackupConfig(ctx context.Context, req api.PutBackupConfigRequestObject) (api.PutBackupConfigResponseObject, error) {
	if err := h.putBlob(ctx, req.Id.String(), "config", req.Body); err != nil {
		return nil, err
	}
	return api.PutBackupConfig204Response{}, nil
}

func (h *handler) PutBackupFirewall(ctx context.Context, req api.PutBackupFirewallRequestObject) (api.PutBackupFirewallResponseObject, error) {
	if err := h.putBlob(ctx, req.Id.String(), "firewall", req.Body); err != nil {
		return nil, err
	}
	return api.PutBackupFirewall204Response{}, nil
}

// PutBackupLog may come after commit: PVE uploads the per-guest log in
// backup_handle_log_file, after backup_cleanup.
func (h *handler) PutBackupLog(ctx context.Context, req api.PutBackupLogRequestObject) (api.PutBackupLogResponseObject, error) {
	id := req.Id.String()
	if _, err := h.session(ctx, id); err != nil {
		return nil, err
	}
	var data []byte
	if req.Body != nil {
		data = []byte(*req.Body)
	}
	if err := h.catalog.PutSnapshotBlob(ctx, id, "log", data); err != nil {
		return nil, err
	}
	return api.PutBackupLog204Response{}, nil
}

func (h *handler) CommitBackup(ctx context.Context, req api.CommitBackupRequestObject) (api.CommitBackupResponseObject, error) {
	s, err := h.session(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	c, err := h.backups.Commit(ctx, s)
	if err != nil {
		return nil, err
	}
	return api.CommitBackup200JSONResponse{Name: c.Name, Size: c.Size}, nil
}

// FinishBackup ends a session. A committed snapshot is never touched; an
// uncommitted one is discarded, and when the caller claimed success that is
// a conflict it is told about (the plugin must commit inside backup_vm).
func (h *handler) FinishBackup(ctx context.Context, req api.FinishBackupRequestObject) (api.FinishBackupResponseObject, error) {
	s, err := h.session(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	if s.State == backup.SnapshotCommitted {
		return api.FinishBackup200JSONResponse{ArchiveSize: s.Size}, nil
	}
	if err := h.backups.Discard(ctx, s, h.discardReason(ctx, s, req.Body)); err != nil {
		return nil, err
	}
	if req.Body.Success {
		return nil, backup.Errorf(backup.ErrConflict, "backup %s was never committed; it has been discarded", s.ID)
	}
	return api.FinishBackup200JSONResponse{ArchiveSize: 0}, nil
}

// discardReason says why a session finished without a commit, for its
// run's history: the client's error, else the failed task, else what the
// client said.
func (h *handler) discardReason(ctx context.Context, s backup.Snapshot, body *api.BackupFinish) string {
	if body.Error != nil && strings.TrimSpace(*body.Error) != "" {
		return strings.TrimSpace(*body.Error)
	}
	if why := h.backups.FailedTaskReason(ctx, s.ID); why != "" {
		return why
	}
	if body.Success {
		return "finished as successful but never committed"
	}
	return "the client ended the backup without success"
}

func (h *handler) GetTask(ctx context.Context, req api.GetTaskRequestObject) (api.GetTaskResponseObject, error) {
	t, err := h.task(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	return api.GetTask200JSONResponse(toAPITask(t)), nil
}

func (h *handler) task(ctx context.Context, id string) (backup.Task, error) {
	t, err := h.catalog.GetTask(ctx, id)
	if err != nil {
		return t, err
	}
	if t.Namespace != "" {
		err = requireNamespace(ctx, t.Namespace)
	}
	return t, err
}

func (h *handler) GetTaskLog(ctx context.Context, req api.GetTaskLogRequestObject) (api.GetTaskLogResponseObject, error) {
	if _, err := h.task(ctx, req.Id.String()); err != nil {
		return nil, err
	}
	var since int64
	if req.Params.Since != nil {
		since = *req.Params.Since
	}
	lines, err := h.catalog.TaskLog(ctx, req.Id.String(), since)
	if err != nil {
		return nil, err
	}
	out := api.GetTaskLog200JSONResponse{Lines: make([]api.TaskLogLine, 0, len(lines))}
	for _, l := range lines {
		out.Lines = append(out.Lines, api.TaskLogLine{Seq: l.Seq, Text: l.Text, Time: l.Time})
	}
	return out, nil
}
