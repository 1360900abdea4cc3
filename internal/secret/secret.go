// Package secret holds the one type for configuration values that must
// never be printed or logged: DSNs with passwords, S3 secret keys, bearer
// tokens.
package secret

import (
	"fmt"
	"io"
	"log/slog"
)

const redacted = "[redacted]"

// String is a secret string. Every way of printing it (fmt verbs, slog,
// text marshalling) shows "[redacted]", or "" when it is empty, so a
// forgotten log attribute leaks nothing. Convert with string(s) where the
// value is really needed.
type String string

func (s String) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString redacts %#v.
func (s String) GoString() string { return s.String() }

// Format redacts every fmt verb.
func (s String) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue implements slog.LogValuer.
func (s String) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText redacts JSON and other text encodings.
func (s String) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
