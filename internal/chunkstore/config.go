package chunkstore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/secret"
)

// Config configures Open. Start from DefaultConfig; Open also treats zero
// numeric fields as their defaults (on its own copy).
type Config struct {
	// URL names the repository: s3://bucket?endpoint=host:port&region=…&insecure=1
	// or file:///absolute/path (see ParseURL).
	URL string
	// AccessKey and SecretKey are the S3 credentials (required for s3://).
	AccessKey string
	SecretKey secret.String
	// EncryptionKey, when set (32 bytes, see LoadKeyFile), turns on
	// AES-256-GCM envelopes and keyed chunk ids.
	EncryptionKey Key
	// DisableCompression stores every chunk uncompressed.
	DisableCompression bool
	// MaxChunkSize is the largest plaintext Put accepts and Get decodes.
	MaxChunkSize int
	// MaxObjectSize bounds GetObject (catalog indexes).
	MaxObjectSize int64
	// MaxRetries bounds the retries of one S3 operation after its first
	// attempt; RetryBase and RetryMax shape the exponential backoff.
	MaxRetries int
	RetryBase  time.Duration
	RetryMax   time.Duration
	// Timeout bounds one S3 attempt (request and body).
	Timeout time.Duration
}

// DefaultConfig returns the defaults: compression on, no encryption, 16 MiB
// chunks, 5 retries from 100 ms up to 5 s, 2 minutes per attempt.
func DefaultConfig() Config {
	return Config{
		MaxChunkSize:  16 << 20,
		MaxObjectSize: 1 << 30,
		MaxRetries:    5,
		RetryBase:     100 * time.Millisecond,
		RetryMax:      5 * time.Second,
		Timeout:       2 * time.Minute,
	}
}

// withDefaults returns c with zero numeric fields set from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxChunkSize == 0 {
		c.MaxChunkSize = d.MaxChunkSize
	}
	if c.MaxObjectSize == 0 {
		c.MaxObjectSize = d.MaxObjectSize
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = d.MaxRetries
	}
	if c.RetryBase == 0 {
		c.RetryBase = d.RetryBase
	}
	if c.RetryMax == 0 {
		c.RetryMax = d.RetryMax
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	return c
}

// Validate reports every problem of c at once; each wraps backup.ErrInvalid.
// Zero numeric fields are valid (they mean the default).
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("chunkstore: config: %s: %w", fmt.Sprintf(format, args...), backup.ErrInvalid))
	}
	loc, err := ParseURL(c.URL)
	if err != nil {
		errs = append(errs, err)
	}
	if loc.Scheme == "s3" && (c.AccessKey == "" || c.SecretKey == "") {
		bad("s3 needs an access key and a secret key")
	}
	if n := len(c.EncryptionKey); n != 0 && n != 32 {
		bad("encryption key is %d bytes, want 32", n)
	}
	if c.MaxChunkSize < 0 || c.MaxChunkSize > hardMaxChunkSize {
		bad("max chunk size %d outside 1..%d", c.MaxChunkSize, hardMaxChunkSize)
	}
	if c.MaxObjectSize < 0 {
		bad("max object size %d is negative", c.MaxObjectSize)
	}
	if c.MaxRetries < 0 {
		bad("max retries %d is negative", c.MaxRetries)
	}
	if c.RetryBase < 0 || c.RetryMax < 0 || c.Timeout < 0 {
		bad("durations must not be negative")
	}
	return errors.Join(errs...)
}

// LogValue lists the settings without credentials or key material.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("url", c.URL),
		slog.String("access_key", c.AccessKey),
		slog.Bool("encrypted", len(c.EncryptionKey) > 0),
		slog.Bool("compression", !c.DisableCompression),
	)
}

// Location is a parsed repository URL.
type Location struct {
	Scheme   string // "s3" or "file"
	Bucket   string // s3: bucket name
	Endpoint string // s3: host:port (default s3.amazonaws.com)
	Region   string // s3: default us-east-1
	Insecure bool   // s3: plain HTTP instead of HTTPS
	Path     string // file: absolute, cleaned directory
}

// String returns the canonical URL of l.
func (l Location) String() string {
	if l.Scheme == "file" {
		return (&url.URL{Scheme: "file", Path: l.Path}).String()
	}
	q := url.Values{"endpoint": {l.Endpoint}, "region": {l.Region}}
	if l.Insecure {
		q.Set("insecure", "1")
	}
	return (&url.URL{Scheme: "s3", Host: l.Bucket, RawQuery: q.Encode()}).String()
}

// ParseURL parses a repository URL:
//
//	s3://bucket?endpoint=host:port&region=eu-west-1&insecure=1
//	file:///var/lib/backstop/chunks
//
// For s3, endpoint defaults to s3.amazonaws.com, region to us-east-1 and
// insecure (plain HTTP; 1/true/0/false) to false; buckets are addressed
// path-style. Anything else, including unknown parameters, is an error
// wrapping backup.ErrInvalid.
func ParseURL(raw string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("chunkstore: store URL %q: %s: %w", raw, fmt.Sprintf(format, args...), backup.ErrInvalid)
	}
	if raw == "" {
		return bad("empty; want s3://bucket?endpoint=host:port or file:///path")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("%v", err)
	}
	if u.User != nil {
		return bad("credentials do not belong in the URL; use the access and secret key settings")
	}
	if u.Fragment != "" {
		return bad("unexpected fragment")
	}
	switch u.Scheme {
	case "s3":
		return parseS3URL(u, bad)
	case "file":
		if u.Host != "" || u.Opaque != "" {
			return bad("want file:///absolute/path (three slashes)")
		}
		if u.RawQuery != "" {
			return bad("file URLs take no parameters")
		}
		if !path.IsAbs(u.Path) || u.Path == "/" {
			return bad("want an absolute directory other than /")
		}
		return Location{Scheme: "file", Path: path.Clean(u.Path)}, nil
	default:
		return bad("unsupported scheme %q; want s3 or file", u.Scheme)
	}
}

func parseS3URL(u *url.URL, bad func(string, ...any) (Location, error)) (Location, error) {
	loc := Location{Scheme: "s3", Bucket: u.Host, Endpoint: "s3.amazonaws.com", Region: "us-east-1"}
	if err := checkBucketName(u.Host); err != nil {
		return bad("%v", err)
	}
	if u.Path != "" && u.Path != "/" {
		return bad("s3 URLs take no path; want s3://bucket?endpoint=host:port")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	for k, v := range q {
		if len(v) != 1 {
			return bad("parameter %q given %d times", k, len(v))
		}
		switch val := v[0]; k {
		case "endpoint":
			if val == "" || strings.ContainsAny(val, "/?#@ ") {
				return bad("endpoint %q: want host or host:port, no scheme or path", val)
			}
			loc.Endpoint = val
		case "region":
			if val == "" {
				return bad("empty region")
			}
			loc.Region = val
		case "insecure":
			switch val {
			case "1", "true":
				loc.Insecure = true
			case "0", "false":
				loc.Insecure = false
			default:
				return bad("insecure=%q: want 1, true, 0 or false", val)
			}
		default:
			return bad("unknown parameter %q (known: endpoint, region, insecure)", k)
		}
	}
	return loc, nil
}

// checkBucketName applies S3's naming rules: 3–63 characters of lowercase
// letters, digits, '-' and '.', starting and ending with a letter or digit.
func checkBucketName(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket name %q: want 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' || !alnum && (i == 0 || i == len(b)-1) {
			return fmt.Errorf("bucket name %q: want lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", b)
		}
	}
	if strings.Contains(b, "..") {
		return fmt.Errorf("bucket name %q: no consecutive dots", b)
	}
	return nil
}

const redacted = "[redacted]"

// Key is key material that never shows in logs or formatted output (%v, %x,
// %#v, slog, JSON). A []byte converts to it implicitly.
type Key []byte

// String returns "[redacted]", or "" for an empty key.
func (k Key) String() string {
	if len(k) == 0 {
		return ""
	}
	return redacted
}

// Format prints String for every verb (%d, %x, %#v included).
func (k Key) Format(f fmt.State, verb rune) { io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText keeps JSON and similar encodings redacted.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// LoadKeyFile reads an encryption key file: exactly 32 raw bytes, or 64 hex
// digits optionally followed by a newline. Generate one with
// `head -c 32 /dev/urandom > key` or `openssl rand -hex 32 > key`.
func LoadKeyFile(name string) (Key, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: key file: %w", err)
	}
	if len(b) == 32 {
		return Key(b), nil
	}
	t := bytes.TrimRight(b, " \t\r\n")
	if len(t) == 64 {
		k := make([]byte, 32)
		if _, err := hex.Decode(k, t); err == nil {
			return Key(k), nil
		}
	}
	return nil, fmt.Errorf("chunkstore: key file %s: want 32 raw bytes or 64 hex digits, got %d bytes: %w", name, len(b), backup.ErrInvalid)
}
