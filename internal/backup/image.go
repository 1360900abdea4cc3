package backup

import (
	"context"
	"fmt"
	"io"
)

// Image reads a VM disk snapshot back through its fixed index. Zero chunks
// are synthesised; every other chunk comes from the store, verified, so a
// read either returns the bytes that were backed up or an error
// (invariant 4).
type Image struct {
	idx    *FixedIndex
	chunks ChunkStore
}

// NewImage returns the image of a fixed index.
func NewImage(idx *FixedIndex, chunks ChunkStore) *Image {
	return &Image{idx: idx, chunks: chunks}
}

// Size is the disk size.
func (im *Image) Size() int64 { return im.idx.Size }

// Index is the image's fixed index.
func (im *Image) Index() *FixedIndex { return im.idx }

// ReadAt fills p from off.
func (im *Image) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off > im.idx.Size || int64(len(p)) > im.idx.Size-off {
		return Errorf(ErrInvalid, "read [%d,+%d) outside the %d-byte image", off, len(p), im.idx.Size)
	}
	cs := int64(im.idx.ChunkSize)
	var buf []byte
	for len(p) > 0 {
		slot := int(off / cs)
		slotOff, slotLen := im.idx.Slot(slot)
		in := off - slotOff
		n := min(int64(len(p)), int64(slotLen)-in)
		id := im.idx.IDs[slot]
		if id.IsZero() {
			clear(p[:n])
		} else {
			data, err := im.chunks.Get(ctx, id, buf)
			if err != nil {
				return fmt.Errorf("backup: chunk %s at %d: %w", id, slotOff, err)
			}
			if len(data) != slotLen {
				return Errorf(ErrChecksum, "chunk %s at %d has %d bytes, want %d", id, slotOff, len(data), slotLen)
			}
			copy(p[:n], data[in:])
			buf = data
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteTo writes the whole image to w, chunk by chunk.
func (im *Image) WriteTo(ctx context.Context, w io.Writer) (int64, error) {
	var written int64
	buf := make([]byte, im.idx.ChunkSize)
	for i := range im.idx.IDs {
		off, n := im.idx.Slot(i)
		if err := im.ReadAt(ctx, buf[:n], off); err != nil {
			return written, err
		}
		m, err := w.Write(buf[:n])
		written += int64(m)
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// OpenImage returns the image of one disk of a committed snapshot.
func (s *Service) OpenImage(ctx context.Context, snap Snapshot, device string) (*Image, error) {
	disks, err := s.catalog.ListDisks(ctx, snap.ID)
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		if d.Device == device {
			idx, err := s.loadFixedIndex(ctx, d)
			if err != nil {
				return nil, err
			}
			return NewImage(idx, s.chunks), nil
		}
	}
	return nil, Errorf(ErrNotFound, "snapshot %s has no disk %s", snap.Name, device)
}
