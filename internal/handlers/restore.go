package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

const defaultExportTTL = 24 * time.Hour

func (h *handler) CreateExport(ctx context.Context, req api.CreateExportRequestObject) (api.CreateExportResponseObject, error) {
	var body api.ExportCreate
	if req.Body != nil {
		body = *req.Body
	}
	snap, err := h.snapshot(ctx, body.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	ttl := defaultExportTTL
	if body.TtlSeconds != nil {
		ttl = time.Duration(*body.TtlSeconds) * time.Second
	}
	ri := requestInfoFrom(ctx)
	var client string
	if body.BindClient != nil && *body.BindClient {
		client, _, _ = net.SplitHostPort(ri.remote)
	}
	e, err := h.backups.CreateExport(ctx, snap, req.Device, ttl, client)
	if err != nil {
		return nil, err
	}
	setLogAttrs(ctx, slog.String("export_id", e.ID))
	return api.CreateExport201JSONResponse(h.toAPIExport(ctx, e)), nil
}

func (h *handler) toAPIExport(ctx context.Context, e backup.Export) api.Export {
	adv := h.cfg.NBDAdvertise
	if adv == "" {
		host := requestInfoFrom(ctx).host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			host = hh
		}
		adv = net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(h.cfg.NBDPort))
	}
	out := api.Export{
		Id: e.ID, Export: e.Name, Uri: "nbd://" + adv + "/" + e.Name, ExpiresAt: e.ExpiresAt,
		Ns: e.Namespace, Snapshot: e.Snapshot, Device: e.Device, Tunnel: "/api/v1/exports/" + e.ID + "/tunnel",
	}
	if e.ClientIP != "" {
		c := e.ClientIP
		out.Client = &c
	}
	return out
}

func (h *handler) ListExports(ctx context.Context, _ api.ListExportsRequestObject) (api.ListExportsResponseObject, error) {
	p, _ := principalFrom(ctx)
	out := api.ListExports200JSONResponse{}
	for _, e := range h.backups.ListExports() {
		if p.InNamespace(e.Namespace) {
			out = append(out, h.toAPIExport(ctx, e))
		}
	}
	return out, nil
}

// export returns a live export the caller may act on.
func (h *handler) export(ctx context.Context, id string) (backup.Export, error) {
	e, err := h.backups.GetExport(id)
	if err != nil {
		return e, err
	}
	if err := requireNamespace(ctx, e.Namespace); err != nil {
		return e, backup.Errorf(backup.ErrNotFound, "export %s not found or expired", id)
	}
	return e, nil
}

func (h *handler) DeleteExport(ctx context.Context, req api.DeleteExportRequestObject) (api.DeleteExportResponseObject, error) {
	if _, err := h.export(ctx, req.Id); err != nil {
		return nil, err
	}
	if err := h.backups.DeleteExport(req.Id); err != nil {
		return nil, err
	}
	return api.DeleteExport204Response{}, nil
}

// OpenExportTunnel serves the export's NBD over the upgraded connection.
func (h *handler) OpenExportTunnel(ctx context.Context, req api.OpenExportTunnelRequestObject) (api.OpenExportTunnelResponseObject, error) {
	if _, err := h.export(ctx, req.Id); err != nil {
		return nil, err
	}
	if h.nbd == nil {
		return nil, notYet("the NBD server")
	}
	return exportTunnelResponse{ctx: ctx, h: h}, nil
}

type exportTunnelResponse struct {
	ctx context.Context
	h   *handler
}

func (t exportTunnelResponse) VisitOpenExportTunnelResponse(w http.ResponseWriter) error {
	conn, err := upgrade(w)
	if err != nil || conn == nil {
		return err
	}
	// The request context ends when this returns; the NBD session is this
	// handler's, so it runs here until the client disconnects.
	t.h.nbd.ServeConn(context.WithoutCancel(t.ctx), conn)
	return nil
}

// GetDiskRaw streams a disk image, or one byte range of it (single ranges;
// a multi-range request gets the whole image, as RFC 9110 allows).
func (h *handler) GetDiskRaw(ctx context.Context, req api.GetDiskRawRequestObject) (api.GetDiskRawResponseObject, error) {
	snap, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	im, err := h.backups.OpenImage(ctx, snap, req.Device)
	if err != nil {
		return nil, err
	}
	size := im.Size()
	resp := rawResponse{ctx: ctx, h: h, im: im, off: 0, length: size, size: size}
	if req.Params.Range != nil {
		off, length, ok, err := parseRange(*req.Params.Range, size)
		if err != nil {
			return rangeNotSatisfiable{ctx: ctx, size: size, detail: err.Error()}, nil
		}
		if ok {
			resp.off, resp.length, resp.partial = off, length, true
		}
	}
	return resp, nil
}

// parseRange parses a single "bytes=" range against size. ok is false for
// forms it serves whole (several ranges, other units).
func parseRange(s string, size int64) (off, length int64, ok bool, err error) {
	spec, found := strings.CutPrefix(strings.TrimSpace(s), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, nil
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, fmt.Errorf("malformed range %q", s)
	}
	if first == "" { // suffix: the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, fmt.Errorf("malformed range %q", s)
		}
		n = min(n, size)
		return size - n, n, true, nil
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 {
		return 0, 0, false, fmt.Errorf("malformed range %q", s)
	}
	if a >= size {
		return 0, 0, false, fmt.Errorf("range %q starts at or after the end (%d bytes)", s, size)
	}
	b := size - 1
	if last != "" {
		if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
			return 0, 0, false, fmt.Errorf("malformed range %q", s)
		}
		b = min(b, size-1)
	}
	return a, b - a + 1, true, nil
}

type rawResponse struct {
	ctx               context.Context
	h                 *handler
	im                *backup.Image
	off, length, size int64
	partial           bool
}

func (r rawResponse) VisitGetDiskRawResponse(w http.ResponseWriter) error {
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Content-Length", strconv.FormatInt(r.length, 10))
	status := http.StatusOK
	if r.partial {
		hd.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", r.off, r.off+r.length-1, r.size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	if _, err := r.im.WriteRange(r.ctx, w, r.off, r.length); err != nil {
		if r.ctx.Err() == nil {
			r.h.log.ErrorContext(r.ctx, "raw download failed mid-stream; aborting the response", "err", err)
		}
		// Headers are out: cut the connection so the client sees a short
		// body, never wrong bytes.
		panic(http.ErrAbortHandler)
	}
	return nil
}

type rangeNotSatisfiable struct {
	ctx    context.Context
	size   int64
	detail string
}

func (r rangeNotSatisfiable) VisitGetDiskRawResponse(w http.ResponseWriter) error {
	w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", r.size))
	writeProblemStatus(w, r.ctx, http.StatusRequestedRangeNotSatisfiable, codeRange, r.detail)
	return nil
}
