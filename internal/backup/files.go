package backup

import (
	"context"
	"time"
)

// FileType is the kind of a container file catalog entry.
type FileType string

const (
	FileRegular  FileType = "file"
	FileDir      FileType = "dir"
	FileSymlink  FileType = "symlink"
	FileHardlink FileType = "hardlink" // LinkTarget names the file it shares data with
	FileCharDev  FileType = "chardev"
	FileBlockDev FileType = "blockdev"
	FileFIFO     FileType = "fifo"
)

// Valid reports whether t is a known file type.
func (t FileType) Valid() bool {
	switch t {
	case FileRegular, FileDir, FileSymlink, FileHardlink, FileCharDev, FileBlockDev, FileFIFO:
		return true
	}
	return false
}

// FileEntry is one entry of a container archive's file catalog.
type FileEntry struct {
	Archive string // archive the entry belongs to; set by ListFiles, ignored by AddFiles
	// Path is absolute and clean: "/" or "/etc/hosts", no "." or ".."
	// components, no trailing or doubled "/", no NUL. It is bytes because
	// Linux names need not be UTF-8.
	Path       []byte
	Type       FileType
	Size       int64 // content bytes (regular files)
	Mode       int64 // permission and special bits, as in the tar header
	UID, GID   int64
	ModTime    time.Time
	LinkTarget []byte // symlink target, or the path a hard link points to; nil otherwise
	// Offset is where the entry's first header block (PAX and GNU
	// long-name headers included) starts in the tar stream.
	Offset int64
	// MetaOffset, PayloadOffset and VolatileOffset locate the entry in the
	// archive's three stored streams (internal/archive).
	MetaOffset, PayloadOffset, VolatileOffset int64
}

// FileCatalog keeps the file catalogs of container archives.
type FileCatalog interface {
	// AddFiles adds entries of archive to an open session, in one round
	// trip; they may come in several calls while the archive streams. A
	// path may appear more than once (the later offset wins in listings).
	// An unclean path is ErrInvalid.
	AddFiles(ctx context.Context, snapshotID, archive string, files []FileEntry) error
	// ListFiles returns the entries directly inside dir in all archives of
	// a snapshot, one per path (the last in its archive), ordered by
	// archive and path. A missing directory is an empty list.
	ListFiles(ctx context.Context, snapshotID string, dir []byte) ([]FileEntry, error)
	// StatFile returns the entry of path in a snapshot: the last one of
	// the last archive that has it. ErrNotFound when none has.
	StatFile(ctx context.Context, snapshotID string, path []byte) (FileEntry, error)
}
