package catalog

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// FileType is the kind of a file catalog entry, from its tar header.
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
//
// TODO: move to internal/backup (as backup.FileEntry) once the tar parser
// and handlers use it.
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
	// long-name headers included) starts in the archive stream: a tar
	// reader started there yields this entry.
	Offset int64
}

// AddFiles adds catalog entries of archive to an open session, in one COPY.
// Entries may come in several calls while the archive streams, before the
// archive itself is added. A path listed twice in an archive is
// ErrConflict; an unclean path is ErrInvalid.
func (s *Store) AddFiles(ctx context.Context, snapshotID, archive string, files []FileEntry) error {
	uid, ok := parseID(snapshotID)
	if !ok {
		return wrapf(notFoundSession(snapshotID), "add files to snapshot %s", snapshotID)
	}
	if archive == "" {
		return wrapf(invalid("archive name is empty"), "add files to snapshot %s", snapshotID)
	}
	for i := range files {
		if err := checkFile(&files[i]); err != nil {
			return wrapf(err, "add files to snapshot %s", snapshotID)
		}
	}
	if len(files) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM snapshots WHERE id = $1 FOR SHARE`, uid).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return because(notFoundSession(snapshotID), err)
		}
		if err != nil {
			return err
		}
		if state != string(backup.SnapshotOpen) {
			return conflict("snapshot %s is already committed", snapshotID)
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"files"},
			[]string{"snapshot_id", "archive", "path", "parent", "type", "size", "mode", "uid", "gid",
				"mtime", "mtime_nsec", "link_target", "stream_offset"},
			pgx.CopyFromSlice(len(files), func(i int) ([]any, error) {
				f := &files[i]
				return []any{uid, archive, f.Path, parentDir(f.Path), string(f.Type), f.Size, f.Mode,
					f.UID, f.GID, f.ModTime.Unix(), int32(f.ModTime.Nanosecond()), f.LinkTarget, f.Offset}, nil
			}))
		return err
	})
	if pgCode(err) == "23505" {
		err = because(conflict("archive %s of snapshot %s lists a path twice", archive, snapshotID), err)
	}
	if err != nil {
		return wrapf(err, "add %d files to snapshot %s", len(files), snapshotID)
	}
	return nil
}

func checkFile(f *FileEntry) error {
	switch {
	case !cleanPath(f.Path):
		return invalid("file path %q: want an absolute path without ., .., empty components or NUL", f.Path)
	case !f.Type.Valid():
		return invalid("file %q: unknown type %q", f.Path, f.Type)
	case f.Size < 0 || f.Offset < 0:
		return invalid("file %q: negative size or offset", f.Path)
	}
	return nil
}

// cleanPath reports whether p is "/" or "/a/b" with no empty, "." or ".."
// component and no NUL.
func cleanPath(p []byte) bool {
	if len(p) == 0 || p[0] != '/' || bytes.IndexByte(p, 0) >= 0 {
		return false
	}
	if len(p) == 1 {
		return true
	}
	for _, c := range bytes.Split(p[1:], []byte{'/'}) {
		if len(c) == 0 || string(c) == "." || string(c) == ".." {
			return false
		}
	}
	return true
}

// parentDir returns the directory a clean path is listed in; "" for "/".
func parentDir(p []byte) []byte {
	if len(p) <= 1 {
		return []byte{}
	}
	i := bytes.LastIndexByte(p, '/')
	if i == 0 {
		return []byte{'/'}
	}
	return p[:i]
}

const fileCols = `archive, path, type, size, mode, uid, gid, mtime, mtime_nsec, link_target, stream_offset`

// ListFiles returns the entries directly inside dir (a clean absolute
// path) in all archives of a snapshot, ordered by archive and path. A
// missing snapshot is ErrNotFound; a missing directory is an empty list.
func (s *Store) ListFiles(ctx context.Context, snapshotID string, dir []byte) ([]FileEntry, error) {
	if !cleanPath(dir) {
		return nil, wrapf(invalid("directory %q: want an absolute path without ., .. or empty components", dir),
			"list files of snapshot %s", snapshotID)
	}
	return listAttached(ctx, s, snapshotID, "files", `SELECT `+fileCols+` FROM files
		WHERE snapshot_id = $1 AND parent = $2 ORDER BY archive, path`, scanFile, dir)
}

// StatFile returns the entry for path in archive of a snapshot.
func (s *Store) StatFile(ctx context.Context, snapshotID, archive string, path []byte) (FileEntry, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return FileEntry{}, wrapf(notFoundSession(snapshotID), "stat file in snapshot %s", snapshotID)
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+fileCols+` FROM files
		WHERE snapshot_id = $1 AND archive = $2 AND path = $3`, uid, archive, path)
	f, err := pgx.CollectExactlyOneRow(rows, scanFile)
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("file %q not found in snapshot %s", path, snapshotID), err)
	}
	if err != nil {
		return FileEntry{}, wrapf(err, "stat file in snapshot %s", snapshotID)
	}
	return f, nil
}

func scanFile(r pgx.CollectableRow) (FileEntry, error) {
	var f FileEntry
	var typ string
	var sec int64
	var nsec int32
	err := r.Scan(&f.Archive, &f.Path, &typ, &f.Size, &f.Mode, &f.UID, &f.GID, &sec, &nsec, &f.LinkTarget, &f.Offset)
	f.Type = FileType(typ)
	f.ModTime = time.Unix(sec, int64(nsec)).UTC()
	return f, err
}
