package chunker

import (
	"errors"
	"io"
)

// ErrInvalidParams is wrapped by every error about a bad chunk size or
// [Params] value.
var ErrInvalidParams = errors.New("chunker: invalid params")

// MaxSize is the largest chunk size any chunker accepts (64 MiB). Chunks are
// held in memory whole, several at a time, so larger sizes are a mistake.
const MaxSize = 64 << 20

// Chunk is one piece of a stream.
type Chunk struct {
	// Offset is the position of the chunk's first byte in the stream.
	Offset int64
	// Length is the number of bytes in the chunk; it equals len(Data).
	Length int
	// Data holds the chunk's bytes. It aliases the buffer passed to Next
	// when that buffer was large enough, and is only valid until the
	// caller reuses that buffer.
	Data []byte
}

// maxEmptyReads bounds how often a reader may return (0, nil) in a row
// before we give up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// readFull reads into b until b is full or r returns an error. Unlike
// io.ReadFull it passes io.EOF through unchanged even after a partial read,
// so an io.ErrUnexpectedEOF from r itself stays distinguishable from a short
// tail.
func readFull(r io.Reader, b []byte) (int, error) {
	n, empty := 0, 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
		if m > 0 {
			empty = 0
			continue
		}
		if empty++; empty >= maxEmptyReads {
			return n, io.ErrNoProgress
		}
	}
	return n, nil
}

// grow returns buf[:n], allocating a new slice only when buf is too small.
func grow(buf []byte, n int) []byte {
	if cap(buf) < n {
		return make([]byte, n)
	}
	return buf[:n]
}
