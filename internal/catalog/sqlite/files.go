package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// AddFiles adds catalog entries of archive to an open session, in one write
// transaction. Entries may come in several calls while the archive
// streams, before the archive itself is added. Two entries at the same
// stream offset are ErrConflict, an unclean path is ErrInvalid.
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
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM snapshots WHERE id = ?`, uid).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return because(notFoundSession(snapshotID), err)
		}
		if err != nil {
			return err
		}
		if state != string(backup.SnapshotOpen) {
			return conflict("snapshot %s is already committed", snapshotID)
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO files (snapshot_id, archive, path, parent, type, size,
			mode, uid, gid, mtime, mtime_nsec, link_target, stream_offset, meta_offset, payload_offset, volatile_offset)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i := range files {
			f := &files[i]
			var link any
			if f.LinkTarget != nil {
				link = f.LinkTarget
			}
			if _, err := stmt.ExecContext(ctx, uid, archive, f.Path, backup.FileParentDir(f.Path), string(f.Type), f.Size, f.Mode,
				f.UID, f.GID, f.ModTime.Unix(), f.ModTime.Nanosecond(), link, f.Offset,
				f.MetaOffset, f.PayloadOffset, f.VolatileOffset); err != nil {
				return err
			}
		}
		return nil
	})
	if isUniqueErr(err) {
		err = because(conflict("archive %s of snapshot %s has two entries at one stream offset", archive, snapshotID), err)
	}
	if err != nil {
		return wrapf(err, "add %d files to snapshot %s", len(files), snapshotID)
	}
	return nil
}

const fileCols = `archive, path, type, size, mode, uid, gid, mtime, mtime_nsec, link_target, stream_offset,
	meta_offset, payload_offset, volatile_offset`

// ListFiles returns the entries directly inside dir in all archives of a
// snapshot, one per path (the one latest in its archive's stream, as tar
// extraction keeps), ordered by archive and path.
func (s *Store) ListFiles(ctx context.Context, snapshotID string, dir []byte) ([]backup.FileEntry, error) {
	if !backup.CleanFilePath(dir) {
		return nil, wrapf(invalid("directory %q: want an absolute path without ., .. or empty components", dir),
			"list files of snapshot %s", snapshotID)
	}
	return listAttached(ctx, s, snapshotID, "files", `SELECT `+fileCols+` FROM (
		SELECT `+fileCols+`, row_number() OVER (PARTITION BY archive, path ORDER BY stream_offset DESC) AS n
		FROM files WHERE snapshot_id = ? AND parent = ?) WHERE n = 1 ORDER BY archive, path`, scanFile, dir)
}

// StatFile returns the entry of path in a snapshot: the latest one in the
// last archive (by name) that has it.
func (s *Store) StatFile(ctx context.Context, snapshotID string, path []byte) (backup.FileEntry, error) {
	uid, ok := parseID(snapshotID)
	if !ok {
		return backup.FileEntry{}, wrapf(notFoundSession(snapshotID), "stat file in snapshot %s", snapshotID)
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+fileCols+` FROM files
		WHERE snapshot_id = ? AND path = ? ORDER BY archive DESC, stream_offset DESC LIMIT 1`, uid, path)
	var f backup.FileEntry
	found := false
	if err == nil {
		err = eachRow(rows, func(r *sql.Rows) error {
			var err error
			f, err = scanFile(r)
			found = true
			return err
		})
	}
	if err == nil && !found {
		err = notFound("file %q not found in snapshot %s", path, snapshotID)
	}
	if err != nil {
		return backup.FileEntry{}, wrapf(err, "stat file in snapshot %s", snapshotID)
	}
	return f, nil
}

func scanFile(r *sql.Rows) (backup.FileEntry, error) {
	var f backup.FileEntry
	var typ string
	var sec, nsec int64
	err := r.Scan(&f.Archive, &f.Path, &typ, &f.Size, &f.Mode, &f.UID, &f.GID, &sec, &nsec, &f.LinkTarget, &f.Offset,
		&f.MetaOffset, &f.PayloadOffset, &f.VolatileOffset)
	f.Type = backup.FileType(typ)
	f.ModTime = time.Unix(sec, nsec).UTC()
	return f, err
}
