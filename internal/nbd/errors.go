package nbd

import (
	"errors"
	"fmt"
)

var (
	// ErrProtocol is wrapped by every error caused by a peer that broke
	// the protocol. After one, the client's connection is closed and every
	// pending and later call fails with the same error.
	ErrProtocol = errors.New("nbd: protocol error")
	// ErrClosed is returned by calls on a client after Close.
	ErrClosed = errors.New("nbd: client closed")
	// ErrUnknownExport is wrapped when the server does not know the export.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrTrimUnsupported is returned by Trim when the export does not
	// accept TRIM (read-only, or SEND_TRIM not advertised).
	ErrTrimUnsupported = errors.New("nbd: export does not support trim")
	// ErrNoMetaContext is returned by BlockStatus when the meta context id
	// was not negotiated (or structured replies are off).
	ErrNoMetaContext = errors.New("nbd: meta context not negotiated")
	// ErrInvalidRequest is wrapped when a call's arguments break the
	// export's constraints (bounds, alignment, maximum length); nothing
	// was sent.
	ErrInvalidRequest = errors.New("nbd: invalid request")
)

// protocolError returns an error wrapping ErrProtocol.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

func invalidRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// ServerError is a request the server answered with an error. The
// connection stays usable.
type ServerError struct {
	Command string // READ, TRIM, BLOCK_STATUS
	Errno   Errno
	Message string // from a structured error chunk; may be empty
	// Offset is where the error happened (ERROR_OFFSET chunks), or -1.
	Offset int64
}

func (e *ServerError) Error() string {
	s := fmt.Sprintf("nbd: %s: server error %s", e.Command, e.Errno)
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// OptionError is an error reply to a handshake option.
type OptionError struct {
	Option  string // GO, SET_META_CONTEXT, ...
	Reply   string // ERR_UNKNOWN, ERR_POLICY, ...
	Message string // the server's text, may be empty
	code    uint32
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: option %s refused: %s", e.Option, e.Reply)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap lets errors.Is find ErrUnknownExport.
func (e *OptionError) Unwrap() error {
	if e.code == repErrUnknown {
		return ErrUnknownExport
	}
	return nil
}
