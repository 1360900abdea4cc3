package sqlitecat

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/backstop-pve/backstop/internal/backup"
)

// wrapf wraps err once for this layer, naming what was being done, and
// attaches the backup error kind that err stands for, keeping err as the
// cause: "catalog: <what>: <kind>: <cause>" (the Postgres catalog's form).
func wrapf(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if kind := kindOf(err); kind != nil && !errors.Is(err, kind) {
		return fmt.Errorf("catalog: %s: %w: %w", what, kind, err)
	}
	return fmt.Errorf("catalog: %s: %w", what, err)
}

// kindOf maps a database/sql or SQLite error to a backup error kind, or nil
// when none fits. Context errors are left alone.
func kindOf(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return backup.ErrNotFound
	}
	if errors.Is(err, sql.ErrConnDone) || strings.Contains(err.Error(), "sql: database is closed") {
		return backup.ErrUnavailable
	}
	if code := sqliteCode(err); code != 0 {
		return codeKind(code)
	}
	return nil
}

// sqliteCode returns the (extended) result code of err, or 0.
func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return 0
}

// codeKind classifies result codes (https://sqlite.org/rescode.html).
func codeKind(code int) error {
	switch code {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return backup.ErrConflict
	}
	switch code & 0xff {
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE:
		return backup.ErrInvalid
	case sqlite3.SQLITE_FULL:
		return backup.ErrStorageFull
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
		sqlite3.SQLITE_READONLY, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_PROTOCOL:
		return backup.ErrUnavailable
	}
	return nil
}

// isUnique reports whether err is a uniqueness violation, and of which
// columns ("snapshots.ns, snapshots.name").
func isUnique(err error) (bool, string) {
	code := sqliteCode(err)
	if code != sqlite3.SQLITE_CONSTRAINT_UNIQUE && code != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return false, ""
	}
	_, cols, _ := strings.Cut(err.Error(), "constraint failed: ")
	return true, cols
}

func isForeignKey(err error) bool { return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY }

func isCheck(err error) bool { return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_CHECK }
