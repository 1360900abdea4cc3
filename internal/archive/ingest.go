package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// MetaParams are the default chunk sizes of the meta stream: 32 KiB /
// 64 KiB / 256 KiB. A member's record is about 1.5 KiB, so a meta chunk
// covers some 40 members and a changed member makes 64 KiB of meta stream
// new, not a megabyte (records compress about tenfold in the chunk
// store's envelope). The meta stream is about a tenth of the payload of a
// typical container, so it adds fewer objects than its size suggests.
var MetaParams = chunker.Params{Min: 32 << 10, Avg: 64 << 10, Max: 256 << 10}

// PayloadParams are the default chunk sizes of the payload stream: 64 KiB
// / 256 KiB / 4 MiB (see the package documentation, Chunking).
var PayloadParams = chunker.Params{Min: 64 << 10, Avg: 256 << 10, Max: 4 << 20}

// Config sets the chunk sizes of the three streams and Ingest's limits.
type Config struct {
	Payload  chunker.Params // member data; default PayloadParams
	Meta     chunker.Params // records; default MetaParams
	Volatile chunker.Params // volatile fields; default chunker.DefaultParams
	// MaxHeader bounds the header bytes of one member (PAX headers, GNU
	// long names, sparse maps): 8 MiB by default. archive/tar allows 1 MiB
	// per PAX header but any number of them in a row.
	MaxHeader int
	// Batch is the number of entries per onEntries call (default 1024).
	Batch int
}

// DefaultConfig returns the production configuration.
func DefaultConfig() Config {
	return Config{
		Payload:   PayloadParams,
		Meta:      MetaParams,
		Volatile:  chunker.DefaultParams,
		MaxHeader: 8 << 20,
		Batch:     1024,
	}
}

func (c Config) validate() error {
	var errs []error
	for _, p := range []struct {
		name string
		p    chunker.Params
	}{{"payload", c.Payload}, {"meta", c.Meta}, {"volatile", c.Volatile}} {
		if err := p.p.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	if c.MaxHeader < 4*blockSize || c.Batch <= 0 {
		errs = append(errs, fmt.Errorf("max header %d, batch %d", c.MaxHeader, c.Batch))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("archive: config: %w", err)
	}
	return nil
}

// Writers are the sinks of the three streams.
type Writers struct {
	Meta, Payload, Volatile ChunkSink
}

// Indexes locate the three streams of one archive.
type Indexes struct {
	Meta, Payload, Volatile *backup.DynamicIndex
}

// Stats describe how a tar stream was split.
type Stats struct {
	Members       int64 // tar members, global PAX headers included
	HeaderBytes   int64 // tar bytes kept in records: headers, padding, end blocks
	PayloadBytes  int64 // tar bytes of member data (and anything after the end blocks)
	TrailingBytes int64 // bytes after the end-of-archive blocks
	Holes         int64 // volatile fields cut out of headers
	MetaBytes     int64 // size of the meta stream
	VolatileBytes int64 // size of the volatile stream
}

// Result is what Ingest stored.
type Result struct {
	Indexes
	Size  int64 // tar stream bytes
	Files int64 // entries passed to onEntries
	Stats Stats
}

// Ingest reads a tar stream from r as it arrives and stores it as three
// chunked streams (see the package documentation), calling onEntries with
// the catalog entries in stream order, cfg.Batch at a time (the slices
// are not reused; onEntries may be nil). It returns when the stream is
// consumed to its end.
//
// Memory is bounded whatever the stream size: a 2 × Max chunking buffer per
// stream, one member's headers (at most cfg.MaxHeader), one read buffer,
// and the index entries (40 bytes per chunk).
//
// A stream archive/tar rejects, one that ends early (inside a member or
// without the two end-of-archive blocks), or a member path that escapes
// with ".." or contains NUL fails with a *FormatError naming the offset.
// Errors reading r and sink errors are returned wrapped as they are. After
// any error the caller discards the session: the written chunks are just
// unreferenced.
//
// CPU time is proportional to the stream size: sparse members are not
// expanded (see sparse.go).
func Ingest(ctx context.Context, r io.Reader, w Writers, cfg Config, onEntries func([]Entry) error) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	if onEntries == nil {
		onEntries = func([]Entry) error { return nil }
	}
	in := &ingester{ctx: ctx, cfg: cfg, onEntries: onEntries, drain: make([]byte, 256<<10)}
	var err error
	if in.meta, err = newChunkStream("meta", cfg.Meta, w.Meta); err != nil {
		return Result{}, err
	}
	if in.payload, err = newChunkStream("payload", cfg.Payload, w.Payload); err != nil {
		return Result{}, err
	}
	if in.vol, err = newChunkStream("volatile", cfg.Volatile, w.Volatile); err != nil {
		return Result{}, err
	}
	in.rw = recordWriter{meta: in.meta, vol: in.vol}
	in.rec = &recorder{r: r, max: cfg.MaxHeader}
	in.tr = tar.NewReader(in.rec)
	if err := in.run(); err != nil {
		return Result{}, err
	}
	in.stats.PayloadBytes = in.payload.off
	in.stats.MetaBytes = in.meta.off
	in.stats.VolatileBytes = in.vol.off
	in.stats.Holes = in.rw.holes
	return Result{
		Indexes: Indexes{Meta: in.meta.idx, Payload: in.payload.idx, Volatile: in.vol.idx},
		Size:    in.rec.off,
		Files:   in.files,
		Stats:   in.stats,
	}, nil
}

type ingester struct {
	ctx       context.Context
	cfg       Config
	rec       *recorder
	tr        *tar.Reader
	meta      *chunkStream
	payload   *chunkStream
	vol       *chunkStream
	rw        recordWriter
	onEntries func([]Entry) error
	batch     []Entry
	drain     []byte // archive/tar's logical output of member data, discarded
	open      bool   // the last member's record lacks its padding and end
	fresh     bool   // tr is new: the last member's padding is still to be read
	files     int64
	stats     Stats
}

func (in *ingester) run() error {
	for {
		if err := in.checkCtx(); err != nil {
			return err
		}
		// Members start on block boundaries, so the previous member's
		// padding is what separates start from the next multiple of 512.
		start := in.rec.off
		in.rec.header()
		if in.fresh {
			if err := in.skipPadding(start); err != nil {
				return err
			}
		}
		hdr, err := in.tr.Next()
		raw := in.rec.head
		if err == io.EOF {
			return in.finish(raw, start)
		}
		if err != nil {
			return in.readError(err, start+int64(blockPadding(start)), "header")
		}
		if err := in.member(hdr, raw, start); err != nil {
			return err
		}
	}
}

// member stores one member whose headers archive/tar has just read (raw:
// the previous member's padding, then the headers).
func (in *ingester) member(hdr *tar.Header, raw []byte, start int64) error {
	in.stats.Members++
	pad := blockPadding(start)
	if len(raw) < pad {
		return &FormatError{Offset: in.rec.off, Reason: "truncated inside block padding"}
	}
	off := start + int64(pad)
	if err := in.closeRecord(raw[:pad]); err != nil {
		return err
	}
	if hdr.Typeflag == 'M' {
		return &FormatError{Offset: off, Reason: "multi-volume continuation members are not supported"}
	}
	e, isFile, err := newEntry(hdr)
	if err != nil {
		return &FormatError{Offset: off, Reason: err.Error()}
	}
	e.Offset, e.MetaOffset, e.VolatileOffset, e.PayloadOffset = off, in.meta.off, in.vol.off, in.payload.off
	head := raw[pad:]
	in.stats.HeaderBytes += int64(len(raw))
	if err := in.rw.writeHead(head, findHoles(head)); err != nil {
		return err
	}
	// A large member's data starts and ends a chunk, so its chunks are the
	// same whatever precedes it; small members are cut across.
	big := e.Type == TypeFile && hdr.Size >= int64(in.cfg.Payload.Min)
	if big {
		if err := in.payload.Flush(); err != nil {
			return err
		}
	}
	var n int64
	if kind := sparseKindOf(hdr); kind != notSparse {
		n, err = in.sparseData(hdr, head, kind, off, e.Path)
	} else {
		n, err = in.data(off, e.Path)
	}
	if err != nil {
		return err
	}
	if big {
		if err := in.payload.Flush(); err != nil {
			return err
		}
	}
	if err := in.rw.payload(n); err != nil {
		return err
	}
	in.open = true
	if isFile {
		return in.add(e)
	}
	return nil
}

// data reads the current member's data through archive/tar while the
// recorder passes the raw bytes to the payload stream. It returns the raw
// byte count.
func (in *ingester) data(off int64, path []byte) (int64, error) {
	in.rec.data(in.payload)
	defer in.rec.header()
	for {
		if err := in.checkCtx(); err != nil {
			return 0, err
		}
		_, err := in.tr.Read(in.drain)
		if err == io.EOF {
			return in.rec.paid, nil
		}
		if err != nil {
			return 0, in.readError(err, off, fmt.Sprintf("data of %q", path))
		}
	}
}

// closeRecord ends the open record with the padding after its data.
func (in *ingester) closeRecord(pad []byte) error {
	if !in.open {
		return nil
	}
	in.open = false
	if err := in.rw.literal(pad); err != nil {
		return err
	}
	return in.rw.end()
}

// finish stores the end of the archive: the last member's padding, the
// two zero blocks (checked, since archive/tar also reports io.EOF for a
// stream that just stops at a block boundary) and whatever follows them,
// which GNU tar fills up to its 10 KiB record size.
func (in *ingester) finish(raw []byte, start int64) error {
	pad := blockPadding(start)
	switch {
	case in.rec.off == 0:
		return &FormatError{Offset: 0, Reason: "empty stream, not a tar archive"}
	case len(raw) != pad+2*blockSize || !allZero(raw[pad:]):
		// archive/tar also ends quietly after PAX or GNU headers that
		// lack their member.
		return &FormatError{Offset: in.rec.off, Reason: "truncated: the stream ends without the end-of-archive blocks", Err: io.ErrUnexpectedEOF}
	}
	if err := in.closeRecord(raw[:pad]); err != nil {
		return err
	}
	in.stats.HeaderBytes += int64(len(raw))
	// The trailing bytes (zeros, normally) get chunks of their own.
	if err := in.payload.Flush(); err != nil {
		return err
	}
	if err := in.rw.literal(raw[pad:]); err != nil {
		return err
	}
	in.rec.data(in.payload)
	for {
		if err := in.checkCtx(); err != nil {
			return err
		}
		_, err := in.rec.Read(in.drain)
		if err == io.EOF {
			break
		}
		if err != nil {
			return in.readError(err, in.rec.off, "bytes after the end of the archive")
		}
	}
	in.stats.TrailingBytes = in.rec.paid
	if err := in.rw.payload(in.rec.paid); err != nil {
		return err
	}
	if err := in.rw.end(); err != nil {
		return err
	}
	for _, s := range []*chunkStream{in.meta, in.payload, in.vol} {
		if err := s.Flush(); err != nil {
			return err
		}
	}
	if len(in.batch) > 0 {
		return in.flushEntries()
	}
	return nil
}

func (in *ingester) checkCtx() error {
	if err := in.ctx.Err(); err != nil {
		return fmt.Errorf("archive: ingest stopped at offset %d: %w", in.rec.off, err)
	}
	return nil
}

func (in *ingester) add(e Entry) error {
	if in.batch == nil {
		in.batch = make([]Entry, 0, in.cfg.Batch)
	}
	in.batch = append(in.batch, e)
	in.files++
	if len(in.batch) >= in.cfg.Batch {
		return in.flushEntries()
	}
	return nil
}

func (in *ingester) flushEntries() error {
	b := in.batch
	in.batch = nil
	if err := in.onEntries(b); err != nil {
		return fmt.Errorf("archive: catalog entries: %w", err)
	}
	return nil
}

// readError explains an error of archive/tar or of the recorder under it.
// off is the member's offset, what the part being read.
func (in *ingester) readError(err error, off int64, what string) error {
	switch {
	case in.rec.sinkErr != nil:
		return in.rec.sinkErr
	case in.rec.srcErr != nil:
		return fmt.Errorf("archive: read tar stream at offset %d: %w", in.rec.off, in.rec.srcErr)
	case errors.Is(err, errHeaderTooBig):
		return &FormatError{Offset: off, Reason: fmt.Sprintf("headers of one member exceed %d bytes", in.cfg.MaxHeader)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &FormatError{Offset: in.rec.off, Reason: fmt.Sprintf("truncated inside the %s of the member at offset %d", what, off), Err: err}
	}
	return &FormatError{Offset: off, Reason: "invalid " + what + " (read up to offset " + fmt.Sprint(in.rec.off) + ")", Err: err}
}

// errHeaderTooBig stops archive/tar when one member's headers exceed
// Config.MaxHeader.
var errHeaderTooBig = errors.New("archive: member headers too big")

// recorder sits between archive/tar and the tar stream and keeps every
// byte archive/tar consumes: in header mode it appends them to head, in
// data mode it writes them to the payload stream. archive/tar reads
// headers block by block and data exactly (it neither buffers nor reads
// ahead, and it seeks only on an io.Seeker, which the recorder is not), so
// the split is exact.
type recorder struct {
	r       io.Reader
	off     int64        // bytes consumed
	payload *chunkStream // data mode when not nil
	paid    int64        // bytes written to payload in this data mode
	head    []byte       // header mode: bytes since header()
	max     int          // limit of len(head)
	srcErr  error        // first error of r other than io.EOF
	sinkErr error        // first error of the payload stream
}

// header starts header mode with an empty head.
func (c *recorder) header() {
	c.payload, c.head = nil, c.head[:0]
}

// data starts data mode.
func (c *recorder) data(s *chunkStream) {
	c.payload, c.paid = s, 0
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n < 0 || n > len(p) {
		n, err = 0, fmt.Errorf("archive: reader returned %d for a %d-byte read", n, len(p))
	}
	if err != nil && err != io.EOF && c.srcErr == nil {
		c.srcErr = err
	}
	if n == 0 {
		return 0, err
	}
	c.off += int64(n)
	if c.payload != nil {
		c.paid += int64(n)
		if werr := c.payload.Write(p[:n]); werr != nil {
			c.sinkErr = werr
			return n, werr
		}
		return n, err
	}
	if len(c.head)+n > c.max {
		return n, errHeaderTooBig
	}
	c.head = append(c.head, p[:n]...)
	return n, err
}
