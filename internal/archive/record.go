package archive

import (
	"encoding/binary"
	"errors"
	"io"
)

// Record operations. Each is one uvarint in the meta stream, arg<<opBits |
// op; see the package documentation.
const (
	opEnd      = 0 // end of the record; arg 0
	opLiteral  = 1 // arg bytes follow in the meta stream
	opVolatile = 2 // arg 0; the volatile stream holds uvarint(n) and n bytes
	opZeros    = 3 // arg 0; the volatile stream holds uvarint(n): n zero bytes
	opPayload  = 4 // the next arg bytes of the payload stream
	opBits     = 3
)

// Decoder limits: the encoder stays within them, and they keep a damaged
// stream from expanding without bound.
const (
	blockSize = 512
	maxZeros  = blockSize - 1 // zeros only ever stand for block padding
	maxHole   = 1 << 20       // archive/tar's own limit on one PAX header
)

// metaReader is the meta or volatile stream as the decoder reads it.
type metaReader interface {
	io.Reader
	io.ByteReader
}

// countingReader counts what its decoder consumed, for error messages.
type countingReader struct {
	r   metaReader
	off int64 // stream offset of the next byte
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.off += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.off++
	}
	return b, err
}

// decoder turns records back into tar bytes: it is an io.Reader of the
// restored stream. It allocates nothing that depends on the data: every
// operation is a bounded copy from one of the three streams.
type decoder struct {
	meta, vol *countingReader
	// payload returns the reader of the next n payload bytes.
	payload func(n int64) (io.Reader, error)
	single  bool // stop after one record (OpenFile)

	records  int64
	inRecord bool
	src      io.Reader // current operation's source; left bytes to go
	left     int64
	err      error // sticky; io.EOF at the end
}

func newDecoder(meta, vol metaReader, metaOff, volOff int64, payload func(int64) (io.Reader, error)) *decoder {
	return &decoder{
		meta:    &countingReader{r: meta, off: metaOff},
		vol:     &countingReader{r: vol, off: volOff},
		payload: payload,
	}
}

// Read implements io.Reader.
func (d *decoder) Read(p []byte) (int, error) {
	for d.left == 0 {
		if d.err != nil {
			return 0, d.err
		}
		d.err = d.next()
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.src.Read(p)
	d.left -= int64(n)
	switch {
	case err == io.EOF && d.left > 0:
		d.err = corruptf("meta stream at offset %d: %s", d.meta.off, d.shortSource())
	case err != nil && err != io.EOF:
		d.err = err
	}
	if n == 0 && d.err != nil {
		return 0, d.err
	}
	return n, nil
}

// shortSource names the stream that ran out.
func (d *decoder) shortSource() string {
	switch d.src {
	case d.meta:
		return "literal runs past the end of the meta stream"
	case d.vol:
		return "volatile stream ends inside a field"
	}
	return "payload stream ends inside a member"
}

// next reads one operation and sets src and left, or returns io.EOF at the
// end of the records.
func (d *decoder) next() error {
	if !d.inRecord && d.single && d.records > 0 {
		return io.EOF
	}
	at := d.meta.off
	v, err := binary.ReadUvarint(d.meta)
	if err == io.EOF && !d.inRecord && !d.single {
		return io.EOF
	}
	if err != nil {
		return corruptf("meta stream at offset %d: %w", at, unexpected(err))
	}
	d.inRecord = true
	op, arg := v&(1<<opBits-1), v>>opBits
	if arg > 1<<62 {
		return corruptf("meta stream at offset %d: length %d", at, arg)
	}
	switch op {
	case opEnd:
		if arg != 0 {
			break
		}
		d.inRecord = false
		d.records++
		return nil
	case opLiteral:
		d.src, d.left = d.meta, int64(arg)
		return nil
	case opVolatile, opZeros:
		if arg != 0 {
			break
		}
		vat := d.vol.off
		n, err := binary.ReadUvarint(d.vol)
		if err != nil {
			return corruptf("volatile stream at offset %d (meta offset %d): %w", vat, at, unexpected(err))
		}
		if op == opZeros {
			if n > maxZeros {
				return corruptf("meta offset %d: %d zeros", at, n)
			}
			d.src, d.left = zeros{}, int64(n)
			return nil
		}
		if n > maxHole {
			return corruptf("volatile stream at offset %d: field of %d bytes", vat, n)
		}
		d.src, d.left = d.vol, int64(n)
		return nil
	case opPayload:
		r, err := d.payload(int64(arg))
		if err != nil {
			return err
		}
		d.src, d.left = r, int64(arg)
		return nil
	}
	return corruptf("meta stream at offset %d: operation %d with argument %d", at, op, arg)
}

// unexpected turns io.EOF inside a value into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// recordWriter writes records: operations to the meta stream, field
// values to the volatile stream.
type recordWriter struct {
	meta, vol *chunkStream
	holes     int64
}

func (w *recordWriter) literal(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := w.meta.appendUvarint(uint64(len(b))<<opBits | opLiteral); err != nil {
		return err
	}
	return w.meta.Write(b)
}

// volatile writes b as a field whose value lives in the volatile stream.
func (w *recordWriter) volatile(b []byte) error {
	w.holes++
	if err := w.meta.appendUvarint(opVolatile); err != nil {
		return err
	}
	if err := w.vol.appendUvarint(uint64(len(b))); err != nil {
		return err
	}
	return w.vol.Write(b)
}

// zeros writes n < 512 zero bytes whose count lives in the volatile stream.
func (w *recordWriter) zeros(n int) error {
	w.holes++
	if err := w.meta.appendUvarint(opZeros); err != nil {
		return err
	}
	return w.vol.appendUvarint(uint64(n))
}

func (w *recordWriter) payload(n int64) error {
	if n == 0 {
		return nil
	}
	return w.meta.appendUvarint(uint64(n)<<opBits | opPayload)
}

func (w *recordWriter) end() error { return w.meta.appendUvarint(opEnd) }
