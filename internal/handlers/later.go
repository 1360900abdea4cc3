package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// Operations of the contract that later issues implement. Each answers 501
// with a problem that says so; the README lists them.

func notYet(what string) error {
	return backup.Errorf(backup.ErrNotImplemented, "%s is not implemented yet", what)
}

func (h *handler) PutBackupArchive(context.Context, api.PutBackupArchiveRequestObject) (api.PutBackupArchiveResponseObject, error) {
	return nil, notYet("container archive upload")
}

func (h *handler) GetSnapshotArchive(context.Context, api.GetSnapshotArchiveRequestObject) (api.GetSnapshotArchiveResponseObject, error) {
	return nil, notYet("container archive download")
}

func (h *handler) ListSnapshotFiles(context.Context, api.ListSnapshotFilesRequestObject) (api.ListSnapshotFilesResponseObject, error) {
	return nil, notYet("file browsing")
}

func (h *handler) GetSnapshotFileContent(context.Context, api.GetSnapshotFileContentRequestObject) (api.GetSnapshotFileContentResponseObject, error) {
	return nil, notYet("single-file restore")
}

func (h *handler) StartGC(context.Context, api.StartGCRequestObject) (api.StartGCResponseObject, error) {
	return nil, notYet("garbage collection")
}

func (h *handler) StartVerify(context.Context, api.StartVerifyRequestObject) (api.StartVerifyResponseObject, error) {
	return nil, notYet("verification")
}

func (h *handler) GetMetrics(context.Context, api.GetMetricsRequestObject) (api.GetMetricsResponseObject, error) {
	return nil, notYet("the metrics endpoint")
}

func (h *handler) GetDashboard(context.Context, api.GetDashboardRequestObject) (api.GetDashboardResponseObject, error) {
	return nil, notYet("the dashboard")
}
