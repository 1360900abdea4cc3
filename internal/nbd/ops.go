package nbd

import (
	"context"
	"fmt"
	"math"
)

// maxTrimLength is the longest single TRIM request Trim sends: a multiple
// of every valid minimum block size, well inside the 32-bit length field.
const maxTrimLength = 1 << 30

// ReadAt reads len(p) bytes at off into p. The range must lie inside the
// export, be aligned to the minimum block size, and be at most MaxRead
// bytes. The data goes straight from the connection into p.
//
// If ctx ends first, ReadAt returns its error and p is no longer written
// to. A reply that was already arriving into p at that moment costs the
// connection (see Client); otherwise the late reply is read and dropped.
// On any error the contents of p are unspecified.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.checkRange(cmdRead, off, int64(len(p)), true); err != nil {
		return err
	}
	if len(p) > c.MaxRead() {
		return invalidRequest("READ of %d bytes exceeds the maximum of %d", len(p), c.MaxRead())
	}
	if len(p) == 0 {
		return nil
	}
	return c.do(ctx, &call{cmd: cmdRead, off: off, length: uint32(len(p)), buf: p})
}

// BlockStatus asks for the status of [off, off+length) in the meta context
// ctxID (an id from MetaContextID). The server may describe less than
// asked, but at least one extent; the extents returned are consecutive
// from off, non-empty and clipped to the request. What their Flags mean
// depends on the context (StateHole/StateZero, StateDirty).
func (c *Client) BlockStatus(ctx context.Context, ctxID uint32, off int64, length uint32) ([]Extent, error) {
	if !c.hasContext(ctxID) {
		return nil, fmt.Errorf("%w: id %d", ErrNoMetaContext, ctxID)
	}
	if length == 0 {
		return nil, invalidRequest("BLOCK_STATUS of length 0")
	}
	if err := c.checkRange(cmdBlockStatus, off, int64(length), false); err != nil {
		return nil, err
	}
	cl := &call{cmd: cmdBlockStatus, off: off, length: length, ctxID: ctxID}
	if err := c.do(ctx, cl); err != nil {
		return nil, err
	}
	return cl.extents, nil
}

// Trim tells the server that [off, off+length) is no longer needed. The
// range must be aligned to the minimum block size; long ranges go out as
// several requests. The server may discard less (QEMU rounds inward to
// its cluster size) and the contents afterwards are unspecified. Trim
// returns ErrTrimUnsupported, without sending anything, when the export
// is read-only or does not advertise TRIM.
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if !c.export.Flags.CanTrim() {
		return ErrTrimUnsupported
	}
	if err := c.checkRange(cmdTrim, off, length, true); err != nil {
		return err
	}
	for length > 0 {
		n := min(length, maxTrimLength)
		if err := c.do(ctx, &call{cmd: cmdTrim, off: off, length: uint32(n)}); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Extent is a run of bytes with the same block status.
type Extent struct {
	Offset int64
	Length int64
	Flags  uint32
}

// maxStatusLength is the longest BLOCK_STATUS request Extents sends:
// 1 GiB, aligned to every minimum block size. QEMU answers at most
// 131072 extents per request and may cover less than asked anyway.
const maxStatusLength = 1 << 30

// Extents maps [off, off+length) of the meta context ctxID: it sends
// BLOCK_STATUS requests until the range is covered and merges neighbours
// with equal flags. The result is sorted, gap-free and covers exactly the
// range.
//
// For a dirty bitmap (DirtyBitmapContext), Flags&StateDirty != 0 marks
// the ranges written since the bitmap was cleared; under PVE's snapshot
// access only those may be read. For ContextBaseAllocation,
// StateZero means the range reads as zeroes and StateHole that it is not
// allocated.
func Extents(ctx context.Context, c *Client, ctxID uint32, off, length int64) ([]Extent, error) {
	if off < 0 || length < 0 || off > math.MaxInt64-length || off+length > c.Size() {
		return nil, invalidRequest("extent map [%d,+%d) outside the export of %d bytes", off, length, c.Size())
	}
	var out []Extent
	for pos, end := off, off+length; pos < end; {
		exts, err := c.BlockStatus(ctx, ctxID, pos, uint32(min(end-pos, maxStatusLength)))
		if err != nil {
			return nil, err
		}
		for _, e := range exts {
			if e.Offset != pos || e.Length <= 0 { // BlockStatus guarantees this
				return nil, protocolError("BLOCK_STATUS extents not consecutive at %d", pos)
			}
			if n := len(out); n > 0 && out[n-1].Flags == e.Flags {
				out[n-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			pos += e.Length
		}
	}
	return out, nil
}
