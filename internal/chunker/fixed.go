package chunker

import (
	"errors"
	"fmt"
	"io"
)

// DefaultFixedSize is the disk chunk size: 4 MiB, QEMU's dirty-bitmap
// granularity, so one bitmap bit maps to exactly one chunk.
const DefaultFixedSize = 4 << 20

// Fixed cuts a stream into chunks of one size; only the last chunk may be
// shorter. A Fixed is not safe for concurrent use.
type Fixed struct {
	r    io.Reader
	size int
	off  int64 // stream offset of the next chunk
	err  error // sticky: io.EOF after the last chunk, or a read error
}

// NewFixed returns a Fixed that reads r in chunks of size bytes
// (0 < size <= [MaxSize]; use [DefaultFixedSize] for disks).
func NewFixed(r io.Reader, size int) (*Fixed, error) {
	if size <= 0 || size > MaxSize {
		return nil, fmt.Errorf("%w: fixed size %d not in (0, %d]", ErrInvalidParams, size, MaxSize)
	}
	return &Fixed{r: r, size: size}, nil
}

// Size returns the chunk size.
func (f *Fixed) Size() int { return f.size }

// Reset makes f read r from offset 0, keeping its size.
func (f *Fixed) Reset(r io.Reader) {
	*f = Fixed{r: r, size: f.size}
}

// Next reads the next chunk into buf and returns it. When cap(buf) is at
// least the chunk size the chunk's Data is buf[:Length] and nothing is
// allocated; otherwise a new buffer is allocated for this chunk.
//
// At the end of the stream Next returns io.EOF (never together with data).
// A read error other than io.EOF is returned wrapped, and returned again by
// every later call; the bytes of the incomplete chunk are discarded, because
// a chunk with a hole in it is worthless.
func (f *Fixed) Next(buf []byte) (Chunk, error) {
	if f.err != nil {
		return Chunk{}, f.err
	}
	buf = grow(buf, f.size)
	n, err := readFull(f.r, buf)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		f.err = io.EOF
		if n == 0 {
			return Chunk{}, io.EOF
		}
	default:
		f.err = fmt.Errorf("chunker: read at offset %d: %w", f.off+int64(n), err)
		return Chunk{}, f.err
	}
	c := Chunk{Offset: f.off, Length: n, Data: buf[:n]}
	f.off += int64(n)
	return c, nil
}
