package backup

import (
	"context"
	"fmt"
	"io"
)

// Image reads a VM disk snapshot back through its fixed index. Zero chunks
// are synthesised; every other chunk comes from the store through a shared
// ChunkCache, verified, so a read either returns the bytes that were backed
// up or an error (invariant 4). After each read the next chunks are
// fetched ahead, several at once. Image is safe for concurrent use.
type Image struct {
	idx       *FixedIndex
	cache     *ChunkCache
	readAhead int // chunks fetched ahead of a read
}

// NewImage returns the image of a fixed index read through cache.
func NewImage(idx *FixedIndex, cache *ChunkCache, readAhead int) *Image {
	return &Image{idx: idx, cache: cache, readAhead: readAhead}
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
	last := -1
	for len(p) > 0 {
		slot := int(off / cs)
		slotOff, slotLen := im.idx.Slot(slot)
		in := off - slotOff
		n := min(int64(len(p)), int64(slotLen)-in)
		if id := im.idx.IDs[slot]; id.IsZero() {
			clear(p[:n])
		} else {
			data, err := im.cache.Get(ctx, id)
			if err != nil {
				return fmt.Errorf("backup: chunk %s at %d: %w", id, slotOff, err)
			}
			if len(data) != slotLen {
				return Errorf(ErrChecksum, "chunk %s at %d has %d bytes, want %d", id, slotOff, len(data), slotLen)
			}
			copy(p[:n], data[in:])
		}
		p, off, last = p[n:], off+n, slot
	}
	im.readAheadFrom(ctx, last+1)
	return nil
}

func (im *Image) readAheadFrom(ctx context.Context, slot int) {
	for i := slot; i < min(slot+im.readAhead, len(im.idx.IDs)); i++ {
		if id := im.idx.IDs[i]; !id.IsZero() {
			im.cache.Prefetch(ctx, id)
		}
	}
}

// ImageExtent is a run of an image that is all data or all zeros.
type ImageExtent struct {
	Offset, Length int64
	Zero           bool
}

// Extents describes [off, off+length) as data and zero runs, from the
// index alone (zero chunks are the zero runs), merging neighbours.
func (im *Image) Extents(off, length int64) ([]ImageExtent, error) {
	if off < 0 || length < 0 || off > im.idx.Size || length > im.idx.Size-off {
		return nil, Errorf(ErrInvalid, "extents [%d,+%d) outside the %d-byte image", off, length, im.idx.Size)
	}
	var out []ImageExtent
	cs := int64(im.idx.ChunkSize)
	for end := off + length; off < end; {
		slot := int(off / cs)
		slotOff, slotLen := im.idx.Slot(slot)
		n := min(end, slotOff+int64(slotLen)) - off
		zero := im.idx.IDs[slot].IsZero()
		if k := len(out); k > 0 && out[k-1].Zero == zero {
			out[k-1].Length += n
		} else {
			out = append(out, ImageExtent{Offset: off, Length: n, Zero: zero})
		}
		off += n
	}
	return out, nil
}

// WriteTo writes the whole image to w, chunk by chunk.
func (im *Image) WriteTo(ctx context.Context, w io.Writer) (int64, error) {
	return im.WriteRange(ctx, w, 0, im.idx.Size)
}

// WriteRange writes [off, off+length) to w, chunk by chunk; zero chunks
// come from a shared zero buffer, without a fetch.
func (im *Image) WriteRange(ctx context.Context, w io.Writer, off, length int64) (int64, error) {
	var written int64
	buf := make([]byte, im.idx.ChunkSize)
	for length > 0 {
		n := min(length, int64(im.idx.ChunkSize)-off%int64(im.idx.ChunkSize))
		if err := im.ReadAt(ctx, buf[:n], off); err != nil {
			return written, err
		}
		m, err := w.Write(buf[:n])
		written += int64(m)
		if err != nil {
			return written, err
		}
		off, length = off+n, length-n
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
			return NewImage(idx, s.cache, s.cfg.ReadAhead), nil
		}
	}
	return nil, Errorf(ErrNotFound, "snapshot %s has no disk %s", snap.Name, device)
}
