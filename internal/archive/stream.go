package archive

import (
	"fmt"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// ChunkSink stores the chunks of one stream, in order.
//
// Write stores data and returns its id; data is only valid during the call
// (the sink copies what it keeps). All-zero data may be returned as
// backup.ZeroChunk without being stored; readers synthesise it. Write is
// called from one goroutine. *backup.ChunkWriter implements it; the caller
// closes the real writers, and only then are the chunks durable.
type ChunkSink interface {
	Write(data []byte) (backup.ChunkID, error)
}

// chunkStream cuts one stream into content-defined chunks as it is
// written, hands each chunk to its sink and records it in a dynamic index.
//
// Memory: buf holds 2 × Max bytes. A cut is looked for only when at least
// Max bytes are pending (then Cut always finds one, at Max at the latest)
// or on flush, so every byte is hashed once, and compaction moves less than
// Max bytes once per Max bytes written.
type chunkStream struct {
	name       string
	cut        *chunker.Cutter
	max        int
	sink       ChunkSink
	idx        *backup.DynamicIndex
	buf        []byte
	start, end int   // buf[start:end] is written but not yet cut
	off        int64 // stream offset of buf[end]: bytes written so far
}

func newChunkStream(name string, p chunker.Params, sink ChunkSink) (*chunkStream, error) {
	cut, err := chunker.NewCutter(p)
	if err != nil {
		return nil, err
	}
	return &chunkStream{name: name, cut: cut, max: p.Max, sink: sink,
		idx: &backup.DynamicIndex{Params: p.String()}, buf: make([]byte, 2*p.Max)}, nil
}

// Write appends p to the stream, storing every chunk that is complete.
func (s *chunkStream) Write(p []byte) error {
	for len(p) > 0 {
		if s.end == len(s.buf) {
			s.end = copy(s.buf, s.buf[s.start:s.end])
			s.start = 0
		}
		n := copy(s.buf[s.end:], p)
		s.end += n
		s.off += int64(n)
		p = p[n:]
		for s.end-s.start >= s.max {
			if err := s.emit(s.cut.Cut(s.buf[s.start:s.end], false)); err != nil {
				return err
			}
		}
	}
	return nil
}

// appendUvarint writes v in encoding/binary's uvarint form.
func (s *chunkStream) appendUvarint(v uint64) error {
	var b [10]byte
	n := 0
	for v >= 0x80 {
		b[n] = byte(v) | 0x80
		v >>= 7
		n++
	}
	b[n] = byte(v)
	return s.Write(b[:n+1])
}

// Flush cuts everything pending, so that the next byte written starts a
// chunk.
func (s *chunkStream) Flush() error {
	for s.end > s.start {
		if err := s.emit(s.cut.Cut(s.buf[s.start:s.end], true)); err != nil {
			return err
		}
	}
	s.start, s.end = 0, 0
	return nil
}

func (s *chunkStream) emit(n int) error {
	id, err := s.sink.Write(s.buf[s.start : s.start+n])
	if err != nil {
		return fmt.Errorf("archive: store %s chunk at offset %d: %w", s.name, s.off-int64(s.end-s.start), err)
	}
	s.start += n
	end := s.off - int64(s.end-s.start)
	s.idx.Entries = append(s.idx.Entries, backup.IndexEntry{End: uint64(end), ID: id})
	return nil
}
