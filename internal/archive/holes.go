package archive

import (
	"bytes"
	"strconv"
)

// hole is a range of an entry's header bytes that changes between two runs
// of GNU tar over an unchanged tree. Its bytes go to the volatile stream
// (or, for zero padding, only its length), so the rest of the header bytes
// stay identical from run to run and dedup in the meta stream.
type hole struct {
	start, end int
	zeros      bool // all zero: only the length is stored
}

// Header block fields (POSIX ustar; GNU's atime and ctime).
const (
	nameOff, nameLen         = 0, 100
	sizeOff, sizeLen         = 124, 12
	chksumOff, chksumLen     = 148, 8
	typeOff                  = 156
	magicOff                 = 257
	gnuAtimeOff, gnuTimesLen = 345, 24 // atime and ctime, 12 bytes each
)

var (
	gnuMagic      = []byte("ustar  \x00")
	gnuSparseName = []byte("GNUSparseFile.")
)

// findHoles returns the volatile ranges of head, the header bytes that
// archive/tar consumed for one member (after the previous member's
// padding), in order. It walks the header blocks as tar lays them out; on
// anything unexpected it returns what it has, because holes only make
// dedup better: the restore puts back exactly the bytes cut out, whatever
// they are.
//
// What changes between two GNU tar runs (1.34, --format=posix as PVE's
// flags imply) over an unchanged tree:
//   - in every PAX 'x' header, the atime and ctime records. Their values
//     change, and so may their digit counts (GNU tar drops trailing zeros
//     of the nanoseconds), which changes the record length prefix, the PAX
//     data size, the size and checksum fields of the 'x' header block and
//     the length of the zero padding after the data. So the whole records,
//     the size and checksum fields and the padding are holes;
//   - in a sparse member's ustar header, the name "./GNUSparseFile.%p/…"
//     carries tar's process id: the name field and checksum are holes;
//   - GNU format headers carry atime and ctime only with --incremental, but
//     when they are set they are holes too.
//
// The 'x' header's own mtime field is the member's mtime, and its name
// "%d/PaxHeaders/%f" has no process id (tar 1.34; older versions used
// PaxHeaders.%p, whose digits would stay in the meta stream).
func findHoles(head []byte) []hole {
	var hs []hole
	for pos := 0; pos+blockSize <= len(head); {
		h := head[pos : pos+blockSize]
		size, ok := parseSize(h[sizeOff : sizeOff+sizeLen])
		if !ok {
			return hs
		}
		switch h[typeOff] {
		case 'x', 'g':
			data := pos + blockSize
			if size > int64(len(head)-data) {
				return hs // a 'g' header's padding belongs to the next member
			}
			end := data + int(size)
			recs := volatileRecords(head[data:end])
			pad := min(blockPadding(size), len(head)-end)
			if len(recs) > 0 {
				hs = append(hs, hole{start: pos + sizeOff, end: pos + sizeOff + sizeLen},
					hole{start: pos + chksumOff, end: pos + chksumOff + chksumLen})
				for _, r := range recs {
					hs = append(hs, hole{start: data + r[0], end: data + r[1]})
				}
				if pad > 0 && allZero(head[end:end+pad]) {
					hs = append(hs, hole{start: end, end: end + pad, zeros: true})
				}
			}
			pos = end + pad
		case 'L', 'K':
			if size > int64(len(head)) {
				return hs
			}
			pos += blockSize + int(size) + blockPadding(size)
		default:
			// The member's own header; what follows is a sparse map.
			return append(hs, memberHoles(h, pos)...)
		}
	}
	return hs
}

// memberHoles returns the volatile fields of a member's header block h at
// pos.
func memberHoles(h []byte, pos int) []hole {
	var hs []hole
	name := h[nameOff : nameOff+nameLen]
	if sparseName(name) {
		hs = append(hs, hole{start: pos + nameOff, end: pos + nameOff + nameLen})
	}
	if bytes.Equal(h[magicOff:magicOff+len(gnuMagic)], gnuMagic) &&
		!allZero(h[gnuAtimeOff:gnuAtimeOff+gnuTimesLen]) {
		hs = append(hs, hole{start: pos + gnuAtimeOff, end: pos + gnuAtimeOff + gnuTimesLen})
	}
	if len(hs) == 0 {
		return nil
	}
	// The checksum lies between name and the GNU times.
	c := hole{start: pos + chksumOff, end: pos + chksumOff + chksumLen}
	if hs[0].start == pos+nameOff {
		return append([]hole{hs[0], c}, hs[1:]...)
	}
	return append([]hole{c}, hs...)
}

// sparseName reports whether a name field holds GNU tar's
// "<dir>/GNUSparseFile.<pid>/<name>".
func sparseName(name []byte) bool {
	i := bytes.Index(name, gnuSparseName)
	if i < 0 || i > 0 && name[i-1] != '/' {
		return false
	}
	rest := name[i+len(gnuSparseName):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return n > 0 && n < len(rest) && rest[n] == '/'
}

// volatileRecords returns the [start, end) ranges of the atime and ctime
// records in PAX data ("%d %s=%s\n" each), whole records including their
// length prefix.
func volatileRecords(data []byte) [][2]int {
	var out [][2]int
	for i := 0; i < len(data); {
		sp := bytes.IndexByte(data[i:min(len(data), i+20)], ' ')
		if sp <= 0 {
			return out
		}
		n, err := strconv.Atoi(string(data[i : i+sp]))
		if err != nil || n <= sp+1 || n > len(data)-i {
			return out
		}
		kv := data[i+sp+1 : i+n]
		if bytes.HasPrefix(kv, []byte("atime=")) || bytes.HasPrefix(kv, []byte("ctime=")) {
			out = append(out, [2]int{i, i + n})
		}
		i += n
	}
	return out
}

// parseSize parses a tar numeric field: octal digits (space or NUL
// terminated, leading spaces allowed), or GNU base-256 (high bit of the
// first byte set, positive values only here).
func parseSize(b []byte) (int64, bool) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0] != 0x80 {
			return 0, false
		}
		var v int64
		for _, c := range b[1:] {
			if v>>55 != 0 {
				return 0, false
			}
			v = v<<8 | int64(c)
		}
		return v, true
	}
	b = bytes.TrimLeft(b, " ")
	if i := bytes.IndexAny(b, " \x00"); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return 0, true
	}
	v, err := strconv.ParseInt(string(b), 8, 64)
	return v, err == nil
}

func blockPadding(n int64) int { return int(-n & (blockSize - 1)) }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeHead writes head as literal runs with its holes cut out.
func (w *recordWriter) writeHead(head []byte, hs []hole) error {
	prev := 0
	for _, h := range hs {
		if h.start < prev || h.end > len(head) || h.end <= h.start {
			continue // never happens for findHoles' output; stay safe anyway
		}
		if err := w.literal(head[prev:h.start]); err != nil {
			return err
		}
		var err error
		if h.zeros {
			err = w.zeros(h.end - h.start)
		} else {
			err = w.volatile(head[h.start:h.end])
		}
		if err != nil {
			return err
		}
		prev = h.end
	}
	return w.literal(head[prev:])
}
