package chunker

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// window is the number of bytes the gear hash depends on: every step shifts
// fp left by one, so a byte's contribution is gone after 64 steps.
const window = 64

// normLevel is FastCDC's normalization level: the strict mask (before Avg)
// has log2(Avg)+normLevel bits, the loose mask (from Avg on)
// log2(Avg)-normLevel. Level 2 is the paper's recommendation.
const normLevel = 2

// Params are the chunk sizes of content-defined chunking, in bytes. They are
// part of the on-disk format (recorded in each dynamic index): the same data
// cut with other Params gives other chunks.
type Params struct {
	// Min is the smallest chunk (except the last chunk of a stream).
	// No cut is looked for before it, which is also why CDC is fast.
	Min int
	// Avg is the normal size, where the strict mask gives way to the loose
	// one. It must be a power of two. On random data the mean chunk size is
	// about 1.2 × Avg when Min = Avg/2.
	Avg int
	// Max is the largest chunk; a cut is forced there.
	Max int
}

// DefaultParams are the archive chunk sizes: Min 512 KiB, Avg 1 MiB,
// Max 4 MiB.
//
//   - Max = 4 MiB = DefaultFixedSize, so disk and archive pipelines share one
//     pool of 4 MiB buffers and one memory bound (workers × 4 MiB), and no
//     stored object is larger than a disk chunk.
//   - Avg = 1 MiB: every chunk costs one S3 object (a PUT and a GET with tens
//     of milliseconds of latency, billed per request), one catalog row and a
//     40-byte index entry. At ~1.2 MiB mean those costs are small next to the
//     data, while files that change in place (logs, databases, packages)
//     still dedup at megabyte granularity. Most container dedup comes from
//     unchanged files, which the archive pipeline cuts per payload anyway, so
//     smaller chunks would mostly add objects. (restic uses 512 KiB / 1 MiB /
//     8 MiB for the same kind of data.)
//   - Min = Avg/2: the first Min bytes of a chunk are never hashed (about 40%
//     of all bytes at a 1.2 MiB mean), and with normalization level 2 chunk
//     sizes stay close to Avg. The price is that after an edit an old cut
//     point less than Min behind a new one is skipped, so realignment may
//     take one more chunk; TestCDC_InsertionDedup measures it.
//
// DefaultParams is a variable only because Go has no struct constants; it
// must never be modified.
var DefaultParams = Params{Min: 512 << 10, Avg: 1 << 20, Max: 4 << 20}

// Validate reports every problem with p, each wrapping [ErrInvalidParams].
// Valid params satisfy 64 <= Min < Avg < Max <= [MaxSize], with Avg a power
// of two.
func (p Params) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidParams}, args...)...))
	}
	if p.Min < window {
		bad("min %d is below %d", p.Min, window)
	}
	if p.Avg <= p.Min {
		bad("avg %d is not above min %d", p.Avg, p.Min)
	}
	if p.Avg <= 0 || p.Avg&(p.Avg-1) != 0 {
		bad("avg %d is not a power of two", p.Avg)
	}
	if p.Max <= p.Avg {
		bad("max %d is not above avg %d", p.Max, p.Avg)
	}
	if p.Max > MaxSize {
		bad("max %d is above %d", p.Max, MaxSize)
	}
	return errors.Join(errs...)
}

// String formats p as "min/avg/max" in bytes.
func (p Params) String() string { return fmt.Sprintf("%d/%d/%d", p.Min, p.Avg, p.Max) }

// Cutter finds content-defined cut points in byte slices. It is immutable
// and safe for concurrent use.
type Cutter struct {
	p Params
	// The masks select the top bits of the gear hash, which depend on the
	// whole 64-byte window; a cut is where fp&mask == 0.
	maskS uint64 // strict, for chunk lengths in [Min, Avg)
	maskL uint64 // loose, for chunk lengths in [Avg, Max)
}

// NewCutter returns a Cutter for p, or an error wrapping [ErrInvalidParams].
func NewCutter(p Params) (*Cutter, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b := bits.TrailingZeros(uint(p.Avg))
	return &Cutter{
		p:     p,
		maskS: ^uint64(0) << (64 - (b + normLevel)),
		maskL: ^uint64(0) << (64 - (b - normLevel)),
	}, nil
}

// Params returns the params c was made with.
func (c *Cutter) Params() Params { return c.p }

// Cut returns the length of the chunk that starts at data[0], or 0 when that
// cannot be decided yet.
//
// A cut is final as soon as it is found: it depends only on data[:n], never
// on what follows. So Cut returns n > 0 when it finds a cut in data, when
// len(data) >= Max (n = Max at most), or when atEOF (n = len(data) if there
// is no earlier cut). It returns 0 only when data is empty or when
// !atEOF, no cut was found and len(data) < Max: the caller should append
// more data and call again with the same start. A caller holding a whole
// tar entry payload loops with atEOF = true:
//
//	for len(data) > 0 {
//		n := c.Cut(data, true)
//		emit(data[:n])
//		data = data[n:]
//	}
func (c *Cutter) Cut(data []byte, atEOF bool) int {
	minSize, avgSize, maxSize := c.p.Min, c.p.Avg, c.p.Max
	if len(data) > maxSize {
		data = data[:maxSize]
	}
	n := len(data)
	if n < minSize {
		if atEOF {
			return n
		}
		return 0
	}
	// Warm the hash up on the window before the first candidate, so a cut
	// after byte i depends on data[i-63:i+1] alone.
	var fp uint64
	for _, b := range data[minSize-window : minSize-1] {
		fp = fp<<1 + gear[b]
	}
	// Candidate cut after data[i] for i in [Min-1, Avg-1): strict mask.
	i := minSize - 1
	end := min(avgSize-1, n)
	j, fp := scan(data[i:end], fp, c.maskS)
	if j >= 0 {
		return i + j + 1
	}
	// For i in [Avg-1, Max-1): loose mask. Length Max is forced below.
	if i = avgSize - 1; i < n {
		end = min(maxSize-1, n)
		if j, _ = scan(data[i:end], fp, c.maskL); j >= 0 {
			return i + j + 1
		}
	}
	if n == maxSize || atEOF {
		return n
	}
	return 0
}

// scan feeds b into the gear hash fp and returns the index of the first byte
// after which fp&mask == 0, or -1 and the final fp.
//
// This is the hot loop. The plain recurrence fp = fp<<1 + gear[x] is a chain
// of two dependent operations per byte. Here the chain advances two bytes at
// a time, fp₂ = fp<<2 + (gear[x₀]<<1 + gear[x₁]), where the bracket does not
// depend on fp, and the hash after the odd byte, fp<<1 + gear[x₀], is
// computed beside the chain. Every position still gets exactly the hash of
// the plain recurrence, so cut points are unchanged (TestCutter_Reference),
// and throughput is about 1.7 × that of the plain loop. The loop is unrolled
// by eight and free of bounds checks: gear is indexed by a byte, and
// len(b) >= 8 proves b[0..7] in range.
func scan(b []byte, fp, mask uint64) (int, uint64) {
	i := 0
	for ; len(b) >= 8; b, i = b[8:], i+8 {
		g0, g1 := gear[b[0]], gear[b[1]]
		f1 := fp<<1 + g0
		f2 := fp<<2 + (g0<<1 + g1)
		if f1&mask == 0 {
			return i, f1
		}
		if f2&mask == 0 {
			return i + 1, f2
		}
		g2, g3 := gear[b[2]], gear[b[3]]
		f3 := f2<<1 + g2
		f4 := f2<<2 + (g2<<1 + g3)
		if f3&mask == 0 {
			return i + 2, f3
		}
		if f4&mask == 0 {
			return i + 3, f4
		}
		g4, g5 := gear[b[4]], gear[b[5]]
		f5 := f4<<1 + g4
		f6 := f4<<2 + (g4<<1 + g5)
		if f5&mask == 0 {
			return i + 4, f5
		}
		if f6&mask == 0 {
			return i + 5, f6
		}
		g6, g7 := gear[b[6]], gear[b[7]]
		f7 := f6<<1 + g6
		fp = f6<<2 + (g6<<1 + g7)
		if f7&mask == 0 {
			return i + 6, f7
		}
		if fp&mask == 0 {
			return i + 7, fp
		}
	}
	for j, x := range b {
		if fp = fp<<1 + gear[x]; fp&mask == 0 {
			return i + j, fp
		}
	}
	return -1, fp
}

// CDC cuts a stream into content-defined chunks. A CDC is not safe for
// concurrent use.
type CDC struct {
	cut *Cutter
	r   io.Reader
	// buf holds read-ahead; buf[pos:end] is not yet returned. len(buf) is
	// 2 × Max: a refill happens only when buf[pos:end] holds no complete
	// chunk, so it moves less than Max bytes and reads more than Max.
	buf      []byte
	pos, end int
	off      int64 // stream offset of buf[pos]
	eof      bool  // r reported io.EOF
	err      error // sticky read error
}

// NewCDC returns a CDC that reads r with params p, or an error wrapping
// [ErrInvalidParams]. It allocates its 2 × p.Max read-ahead buffer here.
func NewCDC(r io.Reader, p Params) (*CDC, error) {
	cut, err := NewCutter(p)
	if err != nil {
		return nil, err
	}
	return &CDC{cut: cut, r: r, buf: make([]byte, 2*p.Max)}, nil
}

// Params returns the params c was made with.
func (c *CDC) Params() Params { return c.cut.p }

// Reset makes c read r from offset 0, keeping its params and buffer.
func (c *CDC) Reset(r io.Reader) {
	*c = CDC{cut: c.cut, r: r, buf: c.buf}
}

// Next copies the next chunk into buf and returns it. When cap(buf) is at
// least the chunk length (always, if it is Max) the chunk's Data is
// buf[:Length] and nothing is allocated; otherwise a new buffer is allocated
// for this chunk.
//
// At the end of the stream Next returns io.EOF (never together with data).
// A read error other than io.EOF is returned wrapped, and returned again by
// every later call; buffered bytes are discarded, because the rest of the
// stream cannot be chunked without them.
func (c *CDC) Next(buf []byte) (Chunk, error) {
	for c.err == nil {
		data := c.buf[c.pos:c.end]
		// Cut what is buffered first and read only when that is not enough,
		// so a refill moves one partial chunk (less than Max bytes) to the
		// front; the price is hashing that partial chunk twice, which
		// happens at most once per Max bytes read.
		if n := c.cut.Cut(data, c.eof); n > 0 {
			buf = grow(buf, n)
			copy(buf, data[:n])
			ch := Chunk{Offset: c.off, Length: n, Data: buf}
			c.pos += n
			c.off += int64(n)
			return ch, nil
		}
		if c.eof {
			return Chunk{}, io.EOF
		}
		c.fill()
	}
	return Chunk{}, c.err
}

// fill moves the unread bytes to the front of c.buf and reads until it is
// full, r ends, or r fails.
func (c *CDC) fill() {
	c.end = copy(c.buf, c.buf[c.pos:c.end])
	c.pos = 0
	n, err := readFull(c.r, c.buf[c.end:])
	c.end += n
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		c.eof = true
	default:
		c.err = fmt.Errorf("chunker: read at offset %d: %w", c.off+int64(c.end), err)
	}
}
