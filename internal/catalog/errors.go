package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/backstop-pve/backstop/internal/backup"
)

// wrapf wraps err once for this layer, naming what was being done, and
// attaches the backup error kind that err stands for, keeping err as the
// cause: "catalog: <what>: <kind>: <cause>".
func wrapf(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if kind := kindOf(err); kind != nil && !errors.Is(err, kind) {
		return fmt.Errorf("catalog: %s: %w: %w", what, kind, err)
	}
	return fmt.Errorf("catalog: %s: %w", what, err)
}

// kindOf maps a pgx or network error to a backup error kind, or nil when
// none fits (then the HTTP layer answers 500, or 504/nothing for context
// errors, which are left alone).
func kindOf(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return backup.ErrNotFound
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgKind(pgErr.Code)
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) || pgconn.SafeToRetry(err) {
		return backup.ErrUnavailable
	}
	return nil
}

// pgKind classifies SQLSTATE codes
// (https://www.postgresql.org/docs/current/errcodes-appendix.html).
func pgKind(code string) error {
	switch {
	case code == "23505": // unique_violation
		return backup.ErrConflict
	case code == "23503", code == "23514", code == "23502", // foreign key, check, not null
		code == "22P02", code == "22001", code == "22003", code == "22021": // bad text, too long, out of range, bad encoding
		return backup.ErrInvalid
	case strings.HasPrefix(code, "08"), // connection exception
		code == "57P01", code == "57P02", code == "57P03", // admin/crash shutdown, cannot connect now
		code == "53300": // too many connections
		return backup.ErrUnavailable
	case code == "53100": // disk full
		return backup.ErrStorageFull
	}
	return nil
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
