// Indexes turn chunks back into images and streams: a fixed index per VM
// disk (one chunk id per chunk-size slot of the disk) and a dynamic index per container archive (end offset and chunk
// id per content-defined chunk). Indexes are stored as objects beside the
// chunks, compact and binary: a 1 TiB disk at 4 MiB chunks is 262,144 ids,
// 8 MiB, never one catalog row per chunk.
//
// # Layout (all integers big-endian)
//
//	fixed:   "BSFIDX" u16 version=1 | u32 chunk size | u64 disk size | u64 count | count × 32-byte id | 32-byte SHA-256 of all before
//	dynamic: "BSDIDX" u16 version=1 | u16 len + params text | u64 count | count × (u64 end offset, 32-byte id) | 32-byte SHA-256 of all before
//
// In both kinds the all-zero id (ZeroChunk) stands for a chunk of zeros,
// which is never stored; readers synthesise it from the entry's length.

package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

const (
	version    = 1
	idSize     = len(ChunkID{})
	sumSize    = sha256.Size
	maxEntries = 1 << 28 // 1 PiB at 4 MiB chunks; bounds allocation on decode
)

var (
	fixedMagic   = []byte("BSFIDX")
	dynamicMagic = []byte("BSDIDX")
)

// ZeroChunk is the id an index records for a chunk of zeros.
var ZeroChunk ChunkID

// FixedIndex maps each ChunkSize slot of a disk to a chunk id. The last slot
// may be short when Size is not a multiple of ChunkSize.
type FixedIndex struct {
	ChunkSize int
	Size      int64
	IDs       []ChunkID
}

// NewFixedIndex returns an index of zero chunks for a disk.
func NewFixedIndex(chunkSize int, size int64) *FixedIndex {
	n := (size + int64(chunkSize) - 1) / int64(chunkSize)
	return &FixedIndex{ChunkSize: chunkSize, Size: size, IDs: make([]ChunkID, n)}
}

// Slot returns the offset and length of slot i.
func (f *FixedIndex) Slot(i int) (off int64, length int) {
	off = int64(i) * int64(f.ChunkSize)
	length = f.ChunkSize
	if rest := f.Size - off; rest < int64(length) {
		length = int(rest)
	}
	return off, length
}

// Refs returns the distinct stored chunk ids (zero chunks excluded).
func (f *FixedIndex) Refs() []ChunkID { return distinct(f.IDs) }

// MarshalBinary encodes the index.
func (f *FixedIndex) MarshalBinary() ([]byte, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(fixedMagic)+2+4+8+8+len(f.IDs)*idSize+sumSize)
	b = append(b, fixedMagic...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint32(b, uint32(f.ChunkSize))
	b = binary.BigEndian.AppendUint64(b, uint64(f.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(len(f.IDs)))
	for _, id := range f.IDs {
		b = append(b, id[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

func (f *FixedIndex) check() error {
	if f.ChunkSize <= 0 || f.Size < 0 {
		return fmt.Errorf("backup: index: fixed: chunk size %d, size %d", f.ChunkSize, f.Size)
	}
	if want := (f.Size + int64(f.ChunkSize) - 1) / int64(f.ChunkSize); int64(len(f.IDs)) != want {
		return fmt.Errorf("backup: index: fixed: %d ids for %d bytes at %d per chunk, want %d", len(f.IDs), f.Size, f.ChunkSize, want)
	}
	return nil
}

// UnmarshalFixedIndex decodes and validates a fixed index. Damage is
// ErrChecksum; anything else malformed is ErrInvalid.
func UnmarshalFixedIndex(b []byte) (*FixedIndex, error) {
	body, err := verify(b, fixedMagic)
	if err != nil {
		return nil, err
	}
	if len(body) < 4+8+8 {
		return nil, malformed("fixed: short header")
	}
	f := &FixedIndex{
		ChunkSize: int(binary.BigEndian.Uint32(body)),
		Size:      int64(binary.BigEndian.Uint64(body[4:])),
	}
	n := binary.BigEndian.Uint64(body[12:])
	body = body[20:]
	if f.ChunkSize == 0 || f.Size < 0 || n > maxEntries || uint64(len(body)) != n*uint64(idSize) {
		return nil, malformed("fixed: header does not match the body")
	}
	f.IDs = make([]ChunkID, n)
	for i := range f.IDs {
		copy(f.IDs[i][:], body[i*idSize:])
	}
	if err := f.check(); err != nil {
		return nil, malformed(err.Error())
	}
	return f, nil
}

// IndexEntry is one chunk of a dynamic index: it ends at End (exclusive) in
// the stream and starts where the previous entry ends.
type IndexEntry struct {
	End uint64
	ID  ChunkID
}

// DynamicIndex lists the content-defined chunks of a stream in order.
type DynamicIndex struct {
	Params  string // chunker parameters, e.g. "524288/1048576/4194304"
	Entries []IndexEntry
}

// Size is the stream length.
func (d *DynamicIndex) Size() int64 {
	if len(d.Entries) == 0 {
		return 0
	}
	return int64(d.Entries[len(d.Entries)-1].End)
}

// Refs returns the distinct chunk ids.
func (d *DynamicIndex) Refs() []ChunkID {
	ids := make([]ChunkID, len(d.Entries))
	for i, e := range d.Entries {
		ids[i] = e.ID
	}
	return distinct(ids)
}

func (d *DynamicIndex) check() error {
	var prev uint64
	for i, e := range d.Entries {
		if e.End <= prev || e.End > 1<<62 {
			return fmt.Errorf("backup: index: dynamic: entry %d ends at %d after %d", i, e.End, prev)
		}
		prev = e.End
	}
	if len(d.Params) > 1<<10 {
		return fmt.Errorf("backup: index: dynamic: params text too long")
	}
	return nil
}

// MarshalBinary encodes the index.
func (d *DynamicIndex) MarshalBinary() ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(dynamicMagic)+2+2+len(d.Params)+8+len(d.Entries)*(8+idSize)+sumSize)
	b = append(b, dynamicMagic...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.Params)))
	b = append(b, d.Params...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(d.Entries)))
	for _, e := range d.Entries {
		b = binary.BigEndian.AppendUint64(b, e.End)
		b = append(b, e.ID[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

// UnmarshalDynamicIndex decodes and validates a dynamic index.
func UnmarshalDynamicIndex(b []byte) (*DynamicIndex, error) {
	body, err := verify(b, dynamicMagic)
	if err != nil {
		return nil, err
	}
	if len(body) < 2 {
		return nil, malformed("dynamic: short header")
	}
	pl := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < pl+8 {
		return nil, malformed("dynamic: short header")
	}
	d := &DynamicIndex{Params: string(body[:pl])}
	n := binary.BigEndian.Uint64(body[pl:])
	body = body[pl+8:]
	const entrySize = uint64(8 + idSize)
	if n > maxEntries || uint64(len(body)) != n*entrySize {
		return nil, malformed("dynamic: header does not match the body")
	}
	d.Entries = make([]IndexEntry, n)
	for i := range d.Entries {
		e := body[uint64(i)*entrySize:]
		d.Entries[i].End = binary.BigEndian.Uint64(e)
		copy(d.Entries[i].ID[:], e[8:])
	}
	if err := d.check(); err != nil {
		return nil, malformed(err.Error())
	}
	return d, nil
}

// verify checks magic, version and trailing digest and returns the body
// between header and digest.
func verify(b, magic []byte) ([]byte, error) {
	if len(b) < len(magic)+2+sumSize || !bytes.Equal(b[:len(magic)], magic) {
		return nil, malformed("not a " + string(magic) + " index")
	}
	content, sum := b[:len(b)-sumSize], b[len(b)-sumSize:]
	if got := sha256.Sum256(content); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("backup: index: %s: digest mismatch: %w", magic, ErrChecksum)
	}
	if v := binary.BigEndian.Uint16(b[len(magic):]); v != version {
		return nil, malformed(fmt.Sprintf("%s version %d, want %d", magic, v, version))
	}
	return content[len(magic)+2:], nil
}

func malformed(why string) error {
	return fmt.Errorf("backup: index: %s: %w", why, ErrInvalid)
}

func distinct(ids []ChunkID) []ChunkID {
	seen := make(map[ChunkID]struct{}, len(ids))
	out := make([]ChunkID, 0, len(ids))
	for _, id := range ids {
		if id.IsZero() {
			continue
		}
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}
