package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/backstop-pve/backstop/internal/backup"
)

// exportService is what BackupExports needs of backup.Service.
type exportService interface {
	OpenExport(name string, remote net.Addr) (*backup.Image, func(), error)
	ExportNames(remote net.Addr) []string
}

// BackupExports serves the restore exports of a backup.Service.
type BackupExports struct{ svc exportService }

// NewBackupExports returns the Exports of svc's restore exports.
func NewBackupExports(svc exportService) BackupExports { return BackupExports{svc: svc} }

var _ Exports = BackupExports{}

// Lookup opens an export by its name. Names are capabilities: an unknown,
// expired or foreign-bound one is just unknown.
func (e BackupExports) Lookup(_ context.Context, name string, remote net.Addr) (Image, func(), error) {
	im, release, err := e.svc.OpenExport(name, remote)
	if errors.Is(err, backup.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnknownExport, err)
	}
	if err != nil {
		return nil, nil, err
	}
	return backupImage{im}, release, nil
}

// List shows a client only the exports bound to its own address: an
// unbound export's name must not be handed to whoever asks.
func (e BackupExports) List(_ context.Context, remote net.Addr) ([]string, error) {
	names := e.svc.ExportNames(remote)
	if names == nil {
		names = []string{}
	}
	return names, nil
}

// backupImage serves a snapshot disk; zero chunks go out as holes.
type backupImage struct{ im *backup.Image }

func (b backupImage) Size() int64 { return b.im.Size() }

func (b backupImage) ReadAt(ctx context.Context, p []byte, off int64) error {
	return b.im.ReadAt(ctx, p, off)
}

func (b backupImage) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	exts, err := b.im.Extents(off, length)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, len(exts))
	for i, e := range exts {
		out[i] = Extent{Offset: e.Offset, Length: e.Length}
		if e.Zero {
			out[i].Flags = StateHole | StateZero
		}
	}
	return out, nil
}
