package backup

import (
	"errors"
	"fmt"
)

// Error kinds. Adapters translate their own errors into one of these at their
// edge and keep the cause (two %w verbs); callers branch with errors.Is.
var (
	ErrNotFound       = errors.New("not found")
	ErrConflict       = errors.New("conflict")
	ErrInvalid        = errors.New("invalid input")
	ErrChecksum       = errors.New("checksum mismatch")
	ErrStorageFull    = errors.New("storage full")
	ErrUnavailable    = errors.New("service unavailable")
	ErrUnauthorized   = errors.New("unauthorized")
	ErrForbidden      = errors.New("forbidden")
	ErrNotImplemented = errors.New("not implemented")
)

// Error carries a detail written for API clients next to an error kind. The
// HTTP layer shows Detail to the client; anything else stays in the logs.
type Error struct {
	Kind   error
	Detail string
}

func (e *Error) Error() string { return e.Kind.Error() + ": " + e.Detail }
func (e *Error) Unwrap() error { return e.Kind }

// Errorf returns an *Error of the given kind with a formatted client detail.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// Detail returns the client-safe detail of err, or "" when it has none.
func Detail(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Detail
	}
	return ""
}
