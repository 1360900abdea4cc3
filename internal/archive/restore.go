package archive

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/backstop-pve/backstop/internal/backup"
)

// ChunkGetter fetches stored chunks; backup.ChunkStore implements it. Get
// must be safe for concurrent use: readers keep several chunks in flight.
type ChunkGetter interface {
	Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error)
}

// Chunks in flight per stream while restoring: the payload stream
// carries the bytes; records and volatile fields are small.
const (
	payloadAhead = 4
	metaAhead    = 2
)

// Restore writes the archive's tar stream to w, byte for byte as Ingest
// read it, and returns the bytes written. It streams: whatever the archive
// size, it holds the chunks in flight (payloadAhead of the payload stream,
// metaAhead of each other stream) and the one being copied per stream. A
// chunk that cannot be read, or streams that do not decode, end it with an
// error: never with made-up bytes.
func Restore(ctx context.Context, w io.Writer, idx Indexes, chunks ChunkGetter) (int64, error) {
	if err := idx.check(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	meta := newChunkReader(ctx, idx.Meta, chunks, 0, idx.Meta.Size(), metaAhead)
	defer meta.Close()
	vol := newChunkReader(ctx, idx.Volatile, chunks, 0, idx.Volatile.Size(), metaAhead)
	defer vol.Close()
	pay := newChunkReader(ctx, idx.Payload, chunks, 0, idx.Payload.Size(), payloadAhead)
	defer pay.Close()
	metaBuf, volBuf := bufio.NewReaderSize(meta, 64<<10), bufio.NewReaderSize(vol, 16<<10)
	d := newDecoder(metaBuf, volBuf, 0, 0, func(int64) (io.Reader, error) { return pay, nil })
	n, err := io.CopyBuffer(w, struct{ io.Reader }{d}, make([]byte, 256<<10))
	if err != nil {
		return n, fmt.Errorf("archive: restore: %w", err)
	}
	// Every byte of the other streams must have been used.
	if _, err := volBuf.ReadByte(); err != io.EOF {
		return n, fmt.Errorf("archive: restore: %w", leftover("volatile", err))
	}
	if _, err := pay.Read(make([]byte, 1)); err != io.EOF {
		return n, fmt.Errorf("archive: restore: %w", leftover("payload", err))
	}
	return n, nil
}

func leftover(stream string, err error) error {
	if err != nil {
		return err
	}
	return corruptf("the %s stream is longer than its records", stream)
}

func (idx Indexes) check() error {
	if idx.Meta == nil || idx.Payload == nil || idx.Volatile == nil {
		return errors.New("archive: incomplete indexes")
	}
	return nil
}

// File is one regular file's content, as OpenFile returns it.
type File struct {
	tr      *tar.Reader
	hdr     *tar.Header
	readers []*chunkReader
	cancel  context.CancelFunc
}

// Read reads the file's content; io.EOF after Size bytes.
func (f *File) Read(p []byte) (int, error) { return f.tr.Read(p) }

// Size is the file's logical size (a sparse file's holes included).
func (f *File) Size() int64 { return f.hdr.Size }

// Close stops the chunk fetches still in flight and waits for them.
func (f *File) Close() error {
	f.cancel()
	for _, r := range f.readers {
		r.Close()
	}
	return nil
}

// OpenFile returns the content of a regular file: it rebuilds the tar
// bytes of e's record alone (headers from the meta and volatile streams,
// data from the payload stream) and reads them through archive/tar, so a
// sparse file comes back with its holes as zeros and its size is e.Size.
// Other types are a backup.ErrInvalid error (a hard link's content is its
// target's). The caller closes the File.
func OpenFile(ctx context.Context, idx Indexes, chunks ChunkGetter, e Entry) (*File, error) {
	if err := idx.check(); err != nil {
		return nil, err
	}
	if e.Type != TypeFile {
		return nil, backup.Errorf(backup.ErrInvalid, "%q is a %s, not a regular file", e.Path, e.Type)
	}
	if e.MetaOffset < 0 || e.MetaOffset >= idx.Meta.Size() || e.VolatileOffset < 0 ||
		e.VolatileOffset > idx.Volatile.Size() || e.PayloadOffset < 0 || e.PayloadOffset > idx.Payload.Size() {
		return nil, corruptf("entry %q: offsets out of range", e.Path)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &File{cancel: cancel}
	meta := newChunkReader(ctx, idx.Meta, chunks, e.MetaOffset, idx.Meta.Size(), 1)
	vol := newChunkReader(ctx, idx.Volatile, chunks, e.VolatileOffset, idx.Volatile.Size(), 1)
	f.readers = append(f.readers, meta, vol)
	pos := e.PayloadOffset
	payload := func(n int64) (io.Reader, error) {
		if n > idx.Payload.Size()-pos {
			return nil, corruptf("entry %q: payload beyond the stream", e.Path)
		}
		r := newChunkReader(ctx, idx.Payload, chunks, pos, pos+n, payloadAhead)
		f.readers = append(f.readers, r)
		pos += n
		return r, nil
	}
	d := newDecoder(bufio.NewReaderSize(meta, 4<<10), bufio.NewReaderSize(vol, 4<<10), e.MetaOffset, e.VolatileOffset, payload)
	d.single = true
	f.tr = tar.NewReader(d)
	hdr, err := f.tr.Next()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("archive: open %q: %w", e.Path, recordError(err))
	}
	if !samePath(hdr.Name, e.Path) {
		f.Close()
		return nil, corruptf("entry %q: its record holds %q", e.Path, hdr.Name)
	}
	f.hdr = hdr
	return f, nil
}

// recordError says that archive/tar failing on a rebuilt record means
// damage, not bad input.
func recordError(err error) error {
	if errors.Is(err, tar.ErrHeader) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corruptf("rebuilt member does not parse: %v", err)
	}
	return err
}
