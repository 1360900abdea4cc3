package handlers

import (
	"context"

	"github.com/backstop-pve/backstop/api"
)

// Container archives and file browsing (issue #5).

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
