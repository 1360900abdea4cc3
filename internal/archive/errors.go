package archive

import (
	"fmt"

	"github.com/backstop-pve/backstop/internal/backup"
)

// FormatError reports a tar stream that Ingest refuses: malformed (as
// archive/tar sees it), truncated, or with a member the catalog cannot
// take (a path with "..", NUL, or none). errors.Is(err, backup.ErrInvalid)
// holds, and backup.Detail(err) is the client-safe message.
type FormatError struct {
	Offset int64  // position in the tar stream where the problem was found
	Reason string // what is wrong, for the client
	Err    error  // the cause (tar.ErrHeader, io.ErrUnexpectedEOF, …), or nil
}

func (e *FormatError) Error() string { return "archive: " + e.detail() }

// Unwrap returns the error kind, with the client detail, and the cause.
func (e *FormatError) Unwrap() []error {
	errs := []error{&backup.Error{Kind: backup.ErrInvalid, Detail: e.detail()}}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

func (e *FormatError) detail() string {
	s := fmt.Sprintf("tar stream at offset %d: %s", e.Offset, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// errorf formats a reason; Ingest turns it into a FormatError with the
// offset of the member it concerns.
func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// corruptf reports stored streams that do not decode: damage, or indexes
// that do not belong together. It is not a client error.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("archive: stored streams do not decode: "+format, args...)
}
