package handlers

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) StartDiskPull(ctx context.Context, req api.StartDiskPullRequestObject) (api.StartDiskPullResponseObject, error) {
	s, err := h.session(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	b := req.Body
	pr := backup.PullRequest{Device: b.Device, Size: b.Size, BitmapMode: backup.BitmapMode(b.BitmapMode)}
	if b.BitmapName != nil {
		pr.BitmapName = *b.BitmapName
	}
	if b.Source.Uri != nil {
		pr.URI = *b.Source.Uri
	}
	if b.Source.Tunnel != nil {
		pr.Tunnel = *b.Source.Tunnel
	}
	if b.BandwidthLimit != nil {
		pr.BandwidthLimit = *b.BandwidthLimit
	}
	task, err := h.backups.StartPull(ctx, s, pr)
	if err != nil {
		return nil, err
	}
	setLogAttrs(ctx, slog.String("task_id", task.ID))
	return api.StartDiskPull202JSONResponse{TaskId: parseUUID(task.ID)}, nil
}

// OpenDiskTunnel upgrades the connection to carry NBD: after the 101 the
// server is the NBD client of QEMU's export at the far end, which the
// plugin relays.
func (h *handler) OpenDiskTunnel(ctx context.Context, req api.OpenDiskTunnelRequestObject) (api.OpenDiskTunnelResponseObject, error) {
	s, err := h.session(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	if err := h.backups.TunnelWaiting(s.ID, req.Device); err != nil {
		return nil, err
	}
	return tunnelResponse{h: h, session: s.ID, device: req.Device}, nil
}

type tunnelResponse struct {
	h       *handler
	session string
	device  string
}

// upgradeTimeout bounds writing the 101 answer.
const upgradeTimeout = 10 * time.Second

func (t tunnelResponse) VisitOpenDiskTunnelResponse(w http.ResponseWriter) error {
	conn, err := upgrade(w)
	if err != nil || conn == nil {
		return err
	}
	if err := t.h.backups.AttachTunnel(t.session, t.device, conn); err != nil {
		t.h.log.Warn("tunnel attach failed after upgrade", "snapshot_id", t.session, "disk", t.device, "err", err)
	}
	return nil
}

// upgrade takes the connection over and answers 101 for the nbd protocol.
// The guard checked the Upgrade headers (x-backstop-upgrade in the
// contract) before the operation ran. A nil conn and nil error mean the
// client went away.
func upgrade(w http.ResponseWriter) (net.Conn, error) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(upgradeTimeout))
	if _, err := conn.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: nbd\r\n\r\n")); err != nil {
		conn.Close()
		return nil, nil
	}
	_ = conn.SetDeadline(time.Time{})
	return bufferedConn{Conn: conn, r: rw.Reader}, nil
}

// bufferedConn reads first what the HTTP server had already buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// requireUpgrade refuses a request that does not ask for the protocol
// upgrade its route serves, before anything else happens.
func requireUpgrade(r *http.Request, proto string) error {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), proto) {
		return backup.Errorf(backup.ErrInvalid, "this route needs the headers Connection: Upgrade and Upgrade: %s", proto)
	}
	if r.ProtoMajor != 1 {
		return backup.Errorf(backup.ErrInvalid, "the NBD tunnel needs HTTP/1.1")
	}
	return nil
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
