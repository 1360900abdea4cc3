package catalog

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backstop-pve/backstop/internal/backup"
)

// AddFiles adds catalog entries of archive to an open session, in one COPY.
// Entries may come in several calls while the archive streams, before the
// archive itself is added. A path may be listed more than once; two
// entries at the same stream offset are ErrConflict, an unclean path is
// ErrInvalid.
func (s *Store) AddFiles(ctx context.Context, snapshotID, archive string, files []backup.FileEntry) error {
	uid, ok := parseID(snapshotID)
	if !ok {
		return wrapf(notFoundSession(snapshotID), "add files to snapshot %s", snapshotID)
	}
	if archive == "" {
		return wrapf(invalid("archive name is empty"), "add files to snapshot %s", snapshotID)
	}
	for i := range files {
		if err := backup.CheckFileEntry(&files[i]); err != nil {
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
				"mtime", "mtime_nsec", "link_target", "stream_offset", "meta_offset", "payload_offset", "volatile_offset"},
			pgx.CopyFromSlice(len(files), func(i int) ([]any, error) {
				f := &files[i]
				return []any{uid, archive, f.Path, backup.FileParentDir(f.Path), string(f.Type), f.Size, f.Mode,
					f.UID, f.GID, f.ModTime.Unix(), int32(f.ModTime.Nanosecond()), f.LinkTarget, f.Offset,
					f.MetaOffset, f.PayloadOffset, f.VolatileOffset}, nil
			}))
		return err
	})
	if pgCode(err) == "23505" {
		err = because(conflict("archive %s of snapshot %s has two entries at one stream offset", archive, snapshotID), err)
	}
	if err != nil {
		return wrapf(err, "add %d files to snapshot %s", len(files), snapshotID)
	}
	return nil
}

const fileCols = `archive, path, type, size, mode, uid, gid, mtime, mtime_nsec, link_target, stream_offset,
	meta_offset, payload_offset, volatile_offset`

// ListFiles returns the entries directly inside dir (a clean absolute
// path) in all archives of a snapshot, one per path (the one latest in its
// archive's stream, as tar extraction keeps), ordered by archive and path.
// A missing snapshot is ErrNotFound; a missing directory is an empty list.
func (s *Store) ListFiles(ctx context.Context, snapshotID string, dir []byte) ([]backup.FileEntry, error) {
	if !backup.CleanFilePath(dir) {
		return nil, wrapf(invalid("directory %q: want an absolute path without ., .. or empty components", dir),
			"list files of snapshot %s", snapshotID)
	}
	return listAttached(ctx, s, snapshotID, "files", `SELECT DISTINCT ON (archive, path) `+fileCols+` FROM files
		WHERE snapshot_id = $1 AND parent = $2 ORDER BY archive, path, stream_offset DESC`, scanFile, dir)
}

// StatFile returns the entry of path in a snapshot: the latest one in the
// last archive (by name) that has it.
func (s *Store) StatFile(ctx context.Context, snapshotID string, path []byte) (backup.FileEntry, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return backup.FileEntry{}, wrapf(notFoundSession(snapshotID), "stat file in snapshot %s", snapshotID)
	}
	rows, _ := s.pool.Query(ctx, `SELECT `+fileCols+` FROM files
		WHERE snapshot_id = $1 AND path = $2 ORDER BY archive DESC, stream_offset DESC LIMIT 1`, uid, path)
	f, err := pgx.CollectExactlyOneRow(rows, scanFile)
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("file %q not found in snapshot %s", path, snapshotID), err)
	}
	if err != nil {
		return backup.FileEntry{}, wrapf(err, "stat file in snapshot %s", snapshotID)
	}
	return f, nil
}

func scanFile(r pgx.CollectableRow) (backup.FileEntry, error) {
	var f backup.FileEntry
	var typ string
	var sec int64
	var nsec int32
	err := r.Scan(&f.Archive, &f.Path, &typ, &f.Size, &f.Mode, &f.UID, &f.GID, &sec, &nsec, &f.LinkTarget, &f.Offset,
		&f.MetaOffset, &f.PayloadOffset, &f.VolatileOffset)
	f.Type = backup.FileType(typ)
	f.ModTime = time.Unix(sec, int64(nsec)).UTC()
	return f, err
}
