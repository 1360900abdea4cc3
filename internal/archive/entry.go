package archive

import (
	"archive/tar"
	"bytes"
	"strings"
	"time"
)

// FileType is the kind of a catalog entry. The values are those of
// catalog.FileType, so the HTTP layer converts with a plain type conversion.
type FileType string

// File types, as in catalog.FileType.
const (
	TypeFile     FileType = "file"
	TypeDir      FileType = "dir"
	TypeSymlink  FileType = "symlink"
	TypeHardlink FileType = "hardlink"
	TypeCharDev  FileType = "chardev"
	TypeBlockDev FileType = "blockdev"
	TypeFIFO     FileType = "fifo"
)

// Entry is one member of a container archive, as parsed from its tar
// headers while the stream passes, with the positions OpenFile needs to
// fetch it again.
//
// A path may appear twice in one archive: PVE archives `./` and then each
// mount point, so a mount point's directory is listed by both runs (tar
// extraction lets the later one win).
type Entry struct {
	// Path is absolute and clean: "/" or "/etc/hosts", no ".", ".." or
	// empty components, no NUL. Bytes, because Linux names need not be
	// UTF-8.
	Path []byte
	Type FileType
	// Size is the logical content size of a regular file (a sparse file's
	// holes included); 0 for other types.
	Size     int64
	Mode     int64 // permission and special bits, as in the tar header
	UID, GID int64
	ModTime  time.Time
	// LinkTarget is a symlink's target as stored (it may be relative), or
	// the clean absolute path of the file a hard link shares data with.
	LinkTarget []byte
	// DevMajor and DevMinor are set for device nodes.
	DevMajor, DevMinor int64
	// Xattrs maps extended attribute names ("user.foo",
	// "security.capability") to their values, from SCHILY.xattr.* PAX
	// records; nil when there are none.
	Xattrs map[string]string
	// ACLAccess and ACLDefault are the POSIX ACLs in GNU tar's text form
	// (SCHILY.acl.access and SCHILY.acl.default PAX records).
	ACLAccess, ACLDefault string
	// Sparse is true for a regular file stored as a GNU sparse member.
	Sparse bool

	// Offset is where the entry's first header block (PAX and GNU
	// long-name headers included) starts in the tar stream; it is a
	// multiple of 512.
	Offset int64
	// MetaOffset, PayloadOffset and VolatileOffset locate the entry's
	// record in the three stored streams (see the package documentation);
	// OpenFile needs all three.
	MetaOffset, PayloadOffset, VolatileOffset int64
}

// PAX record keys and prefixes that Entry reads (GNU tar, star).
const (
	paxXattrPrefix = "SCHILY.xattr."
	paxACLAccess   = "SCHILY.acl.access"
	paxACLDefault  = "SCHILY.acl.default"
)

// fileType maps a tar type flag to a catalog type. ok is false for members
// that are not files (a global PAX header, a GNU volume label).
func fileType(flag byte) (t FileType, ok bool) {
	switch flag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		return TypeFile, true
	case tar.TypeLink:
		return TypeHardlink, true
	case tar.TypeSymlink:
		return TypeSymlink, true
	case tar.TypeChar:
		return TypeCharDev, true
	case tar.TypeBlock:
		return TypeBlockDev, true
	case tar.TypeDir, 'D': // 'D': GNU dumpdir, a directory with a listing
		return TypeDir, true
	case tar.TypeFifo:
		return TypeFIFO, true
	case tar.TypeXGlobalHeader, 'V': // 'V': GNU volume label
		return "", false
	}
	// POSIX: "a reader shall treat an unrecognized typeflag as a regular
	// file", and so does GNU tar on extraction.
	return TypeFile, true
}

// newEntry builds the catalog entry of hdr. ok is false for members that
// are not files. A path that is empty, contains NUL or has a ".."
// component is an error: GNU tar never writes one, and the catalog and
// extraction must never see one.
func newEntry(hdr *tar.Header) (e Entry, ok bool, err error) {
	t, ok := fileType(hdr.Typeflag)
	if !ok {
		return Entry{}, false, nil
	}
	p, err := cleanPath(hdr.Name)
	if err != nil {
		return Entry{}, false, err
	}
	e = Entry{
		Path:     p,
		Type:     t,
		Mode:     hdr.Mode,
		UID:      int64(hdr.Uid),
		GID:      int64(hdr.Gid),
		ModTime:  hdr.ModTime,
		DevMajor: hdr.Devmajor,
		DevMinor: hdr.Devminor,
	}
	switch t {
	case TypeFile:
		e.Size = hdr.Size
		e.Sparse = sparseKindOf(hdr) != notSparse
	case TypeSymlink:
		e.LinkTarget = []byte(hdr.Linkname)
	case TypeHardlink:
		if e.LinkTarget, err = cleanPath(hdr.Linkname); err != nil {
			return Entry{}, false, errorf("hard link %q: target: %v", hdr.Name, err)
		}
	}
	for k, v := range hdr.PAXRecords {
		switch {
		case strings.HasPrefix(k, paxXattrPrefix):
			if e.Xattrs == nil {
				e.Xattrs = make(map[string]string)
			}
			e.Xattrs[k[len(paxXattrPrefix):]] = v
		case k == paxACLAccess:
			e.ACLAccess = v
		case k == paxACLDefault:
			e.ACLDefault = v
		}
	}
	return e, true, nil
}

// cleanPath turns a member name ("./", "./etc/hosts", "etc/", "/etc") into
// a clean absolute path ("/", "/etc/hosts", "/etc"). "." components and
// repeated or trailing slashes go; "..", NUL and an empty name are errors.
func cleanPath(name string) ([]byte, error) {
	if name == "" {
		return nil, errorf("empty path")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return nil, errorf("path %q contains NUL", name)
	}
	out := make([]byte, 0, len(name)+1)
	for c := range strings.SplitSeq(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, errorf("path %q has a \"..\" component", name)
		}
		out = append(out, '/')
		out = append(out, c...)
	}
	if len(out) == 0 {
		out = append(out, '/')
	}
	return out, nil
}

// samePath reports whether a header name cleans to p.
func samePath(name string, p []byte) bool {
	q, err := cleanPath(name)
	return err == nil && bytes.Equal(q, p)
}
