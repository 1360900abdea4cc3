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

func (h *handler) GetMetrics(context.Context, api.GetMetricsRequestObject) (api.GetMetricsResponseObject, error) {
	return nil, notYet("the metrics endpoint")
}

func (h *handler) GetDashboard(context.Context, api.GetDashboardRequestObject) (api.GetDashboardResponseObject, error) {
	return nil, notYet("the dashboard")
}
