package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Opener opens NBD exports as the sources of disk pulls.
type Opener struct{}

var _ backup.SourceOpener = Opener{}

// OpenURI dials an NBD URI and negotiates what the pull needs.
func (Opener) OpenURI(ctx context.Context, uri string, req backup.PullRequest) (backup.DiskSource, error) {
	c, err := Dial(ctx, uri, sourceOptions(req))
	if err != nil {
		return nil, err
	}
	return newSource(c, req)
}

// OpenConn runs the client over conn (the plugin's tunnel to QEMU's
// socket); the export name is the device, as PVE names its exports.
func (Opener) OpenConn(ctx context.Context, conn net.Conn, req backup.PullRequest) (backup.DiskSource, error) {
	c, err := NewClient(ctx, conn, req.Device, sourceOptions(req))
	if err != nil {
		return nil, err
	}
	return newSource(c, req)
}

// sourceOptions asks for the one meta context the extent map needs: QEMU
// fails block-status requests that span several contexts, and a region the
// bitmap marks clean must never be queried with base:allocation.
func sourceOptions(req backup.PullRequest) Options {
	switch req.BitmapMode {
	case backup.BitmapReuse:
		return Options{MetaContexts: []string{DirtyBitmapContext(req.BitmapName)}}
	case backup.BitmapNone:
		return Options{MetaContexts: []string{ContextBaseAllocation}}
	}
	return Options{} // new: the whole disk is dirty
}

// Source is an NBD export read by a disk pull.
type Source struct {
	c     *Client
	req   backup.PullRequest
	ctxID uint32
	mode  string // "bitmap", "allocation" or "all"
}

func newSource(c *Client, req backup.PullRequest) (*Source, error) {
	s := &Source{c: c, req: req, mode: "all"}
	switch req.BitmapMode {
	case backup.BitmapReuse:
		id, ok := c.MetaContextID(DirtyBitmapContext(req.BitmapName))
		if !ok {
			c.Close()
			return nil, backup.Errorf(backup.ErrInvalid, "the export of %s does not offer the dirty bitmap %q", req.Device, req.BitmapName)
		}
		s.ctxID, s.mode = id, "bitmap"
	case backup.BitmapNone:
		if id, ok := c.MetaContextID(ContextBaseAllocation); ok {
			s.ctxID, s.mode = id, "allocation"
		}
	}
	return s, nil
}

// Size is the export size.
func (s *Source) Size() int64 { return s.c.Size() }

// MaxRead is the largest read the export takes.
func (s *Source) MaxRead() int { return s.c.MaxRead() }

// Extents returns what to read: the dirty regions (reuse), the regions
// base:allocation does not report as zero (none, when offered), or the
// whole disk.
func (s *Source) Extents(ctx context.Context) ([]backup.Extent, error) {
	size := s.c.Size()
	if s.mode == "all" {
		if size == 0 {
			return nil, nil
		}
		return []backup.Extent{{Offset: 0, Length: size}}, nil
	}
	exts, err := Extents(ctx, s.c, s.ctxID, 0, size)
	if err != nil {
		return nil, err
	}
	var out []backup.Extent
	for _, e := range exts {
		var read bool
		if s.mode == "bitmap" {
			read = e.Flags&StateDirty != 0
		} else {
			read = e.Flags&StateZero == 0 // a hole without the zero flag may still hold data (backing file)
		}
		if !read {
			continue
		}
		if n := len(out); n > 0 && out[n-1].End() == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, backup.Extent{Offset: e.Offset, Length: e.Length})
	}
	return out, nil
}

// ReadAt reads from the export.
func (s *Source) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.c.ReadAt(ctx, p, off)
}

// Discard trims a stored region. A read-only export, or one that refuses
// TRIM, is backup.ErrDiscardUnsupported.
func (s *Source) Discard(ctx context.Context, off, length int64) error {
	err := s.c.Trim(ctx, off, length)
	var se *ServerError
	if errors.Is(err, ErrTrimUnsupported) || errors.As(err, &se) && (se.Errno == EPERM || se.Errno == EINVAL || se.Errno == ENOTSUP) {
		return fmt.Errorf("%w: %w", backup.ErrDiscardUnsupported, err)
	}
	return err
}

// Close disconnects.
func (s *Source) Close() error { return s.c.Close() }
