package archive

import (
	"archive/tar"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Sparse members are not read through archive/tar: its reader expands the
// holes, so a member whose sparse map claims terabytes of holes would keep
// Ingest busy for hours on a few bytes of input. Instead Ingest computes
// the member's physical data size from the raw headers, as archive/tar
// does, checks it against the data total of the sparse map (the check
// archive/tar's reader makes at the end of the member), copies that many
// raw bytes to the payload stream, and continues with a fresh tar.Reader
// after consuming the block padding itself. archive/tar keeps no state
// from one member to the next, so nothing else changes.

type sparseKind int

const (
	notSparse sparseKind = iota
	sparseOldGNU
	sparsePAX0 // GNU PAX sparse 0.0 and 0.1: the map is a PAX record
	sparsePAX1 // GNU PAX sparse 1.0: the map starts the data
)

// PAX records of GNU sparse members.
const (
	paxSparseMajor = "GNU.sparse.major"
	paxSparseMinor = "GNU.sparse.minor"
	paxSparseMap   = "GNU.sparse.map"
	paxSize        = "size"
)

// sparseKindOf decides as archive/tar's Reader does whether a member is
// sparse and how its map is stored.
func sparseKindOf(hdr *tar.Header) sparseKind {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return sparseOldGNU
	}
	major, minor := hdr.PAXRecords[paxSparseMajor], hdr.PAXRecords[paxSparseMinor]
	switch {
	case major == "0" && (minor == "0" || minor == "1"):
		return sparsePAX0
	case major == "1" && minor == "0":
		return sparsePAX1
	case major != "" || minor != "":
		return notSparse // an unknown version: archive/tar reads it as a plain file
	case hdr.PAXRecords[paxSparseMap] != "":
		return sparsePAX0
	}
	return notSparse
}

// Old GNU sparse header layout: 4 map entries in the header block, 21 in
// each extension block, each entry a 12-byte offset and a 12-byte length,
// followed by an "is extended" flag.
const (
	oldGNUSparseOff     = 386
	oldGNUSparseEntries = 4
	extSparseEntries    = 21
	sparseEntryLen      = 24
)

// sparseSizes returns the physical data size still to be read of a
// sparse member whose headers are head (as archive/tar's Next left it),
// and the data total its sparse map describes.
func sparseSizes(hdr *tar.Header, head []byte, kind sparseKind) (physical, mapped int64, err error) {
	member := memberHeader(head)
	if member < 0 {
		return 0, 0, errorf("sparse member %q: no header block", hdr.Name)
	}
	after := head[member+blockSize:]
	size, ok := parseSize(head[member+sizeOff : member+sizeOff+sizeLen])
	if s := hdr.PAXRecords[paxSize]; s != "" {
		size, err = strconv.ParseInt(s, 10, 64)
		ok = err == nil
	}
	if !ok || size < 0 {
		return 0, 0, errorf("sparse member %q: bad size field", hdr.Name)
	}
	var lengths []string
	switch kind {
	case sparseOldGNU:
		mapped, err = oldGNUMapped(head[member:member+blockSize], after)
		if err != nil {
			return 0, 0, errorf("sparse member %q: %v", hdr.Name, err)
		}
		return size, mapped, nil
	case sparsePAX0:
		if m := hdr.PAXRecords[paxSparseMap]; m != "" {
			lengths = strings.Split(m, ",")
		}
	case sparsePAX1:
		// The map blocks archive/tar read belong to the data section.
		size -= int64(len(after))
		if lengths = strings.Split(string(after), "\n"); len(lengths) > 0 {
			n, err := strconv.ParseInt(lengths[0], 10, 64)
			if err != nil || n < 0 || n > int64(len(lengths)-1)/2 {
				return 0, 0, errorf("sparse member %q: bad map", hdr.Name)
			}
			lengths = lengths[1 : 1+2*n]
		}
	}
	if len(lengths)%2 != 0 {
		return 0, 0, errorf("sparse member %q: bad map", hdr.Name)
	}
	for i := 1; i < len(lengths); i += 2 {
		n, err := strconv.ParseInt(lengths[i], 10, 64)
		if err != nil || n < 0 || mapped+n < mapped {
			return 0, 0, errorf("sparse member %q: bad map", hdr.Name)
		}
		mapped += n
	}
	return size, mapped, nil
}

// oldGNUMapped adds up the lengths of an old GNU sparse map: the entries
// in the header block h, then in the extension blocks ext.
func oldGNUMapped(h, ext []byte) (int64, error) {
	var total int64
	entries, n := h[oldGNUSparseOff:], oldGNUSparseEntries
	for {
		for i := range n {
			e := entries[i*sparseEntryLen : (i+1)*sparseEntryLen]
			if e[0] == 0 { // GNU tar's end of the list
				break
			}
			l, ok := parseSize(e[12:24])
			if !ok || total+l < total {
				return 0, errorf("bad map entry")
			}
			total += l
		}
		if entries[n*sparseEntryLen] == 0 {
			return total, nil
		}
		if len(ext) < blockSize {
			return 0, errorf("missing map extension block")
		}
		entries, n, ext = ext[:blockSize], extSparseEntries, ext[blockSize:]
	}
}

// memberHeader returns the offset in head of the member's own header
// block, after any PAX and GNU long-name headers, or -1.
func memberHeader(head []byte) int {
	for pos := 0; pos+blockSize <= len(head); {
		h := head[pos : pos+blockSize]
		switch h[typeOff] {
		case 'x', 'g', 'L', 'K':
			size, ok := parseSize(h[sizeOff : sizeOff+sizeLen])
			if !ok || size > int64(len(head)) {
				return -1
			}
			pos += blockSize + int(size) + blockPadding(size)
		default:
			return pos
		}
	}
	return -1
}

// sparseData copies a sparse member's raw data to the payload stream
// without archive/tar, and makes the next member start on a fresh reader.
func (in *ingester) sparseData(hdr *tar.Header, head []byte, kind sparseKind, off int64, path []byte) (int64, error) {
	physical, mapped, err := sparseSizes(hdr, head, kind)
	if err != nil {
		return 0, &FormatError{Offset: off, Reason: err.Error()}
	}
	if physical != mapped {
		return 0, &FormatError{Offset: off, Reason: fmt.Sprintf("sparse member %q: its map describes %d data bytes, it has %d", path, mapped, physical)}
	}
	in.rec.data(in.payload)
	defer in.rec.header()
	for left := physical; left > 0; {
		if err := in.checkCtx(); err != nil {
			return 0, err
		}
		n, err := in.rec.Read(in.drain[:min(int64(len(in.drain)), left)])
		left -= int64(n)
		if err == io.EOF && left > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return 0, in.readError(err, off, fmt.Sprintf("data of %q", path))
		}
	}
	in.tr = tar.NewReader(in.rec)
	in.fresh = true
	return physical, nil
}

// skipPadding reads the padding after a member that archive/tar did not
// finish (see sparseData) into the current header bytes.
func (in *ingester) skipPadding(start int64) error {
	in.fresh = false
	pad := blockPadding(start)
	if _, err := io.ReadFull(in.rec, in.drain[:pad]); err != nil {
		return in.readError(unexpected(err), start, "block padding")
	}
	return nil
}
