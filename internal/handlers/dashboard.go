package handlers

import (
	"context"
	"net/http"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/dashboard"
)

// The dashboard's page and assets are public: they hold no data, and the
// page's script reaches the API only with the token the user types in.

// dashboardFile writes one embedded file with the dashboard's headers.
type dashboardFile struct {
	assets      *dashboard.Assets
	name        string
	ifNoneMatch string
}

func (f dashboardFile) VisitGetDashboardResponse(w http.ResponseWriter) error {
	f.assets.Write(w, f.name, f.ifNoneMatch)
	return nil
}

func (f dashboardFile) VisitGetDashboardAssetResponse(w http.ResponseWriter) error {
	f.assets.Write(w, f.name, f.ifNoneMatch)
	return nil
}

func (h *handler) GetDashboard(_ context.Context, req api.GetDashboardRequestObject) (api.GetDashboardResponseObject, error) {
	return dashboardFile{h.dashboard, dashboard.IndexFile, optionalHeader(req.Params.IfNoneMatch)}, nil
}

func (h *handler) GetDashboardAsset(_ context.Context, req api.GetDashboardAssetRequestObject) (api.GetDashboardAssetResponseObject, error) {
	if req.File == dashboard.IndexFile || !h.dashboard.Has(req.File) {
		return nil, backup.Errorf(backup.ErrNotFound, "no dashboard asset %q", req.File)
	}
	return dashboardFile{h.dashboard, req.File, optionalHeader(req.Params.IfNoneMatch)}, nil
}

func optionalHeader(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
