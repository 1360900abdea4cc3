package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/telemetry"
)

// Config is the whole server configuration. Every field has an environment
// variable BACKSTOP_<NAME> and a flag --<name> (the flag wins).
type Config struct {
	Listen            string        // BACKSTOP_LISTEN: HTTP address
	NBDListen         string        // BACKSTOP_NBD_LISTEN: NBD restore exports
	NBDAdvertise      string        // BACKSTOP_NBD_ADVERTISE: host:port put in export URIs
	DatabaseURL       secret.String // BACKSTOP_DATABASE_URL: Postgres DSN; unset: embedded catalog in DataDir
	Store             string        // BACKSTOP_STORE: s3://bucket?endpoint=… or file:///path; unset: DataDir/chunks
	S3AccessKey       string        // BACKSTOP_S3_ACCESS_KEY
	S3SecretKey       secret.String // BACKSTOP_S3_SECRET_KEY
	AdminToken        secret.String // BACKSTOP_ADMIN_TOKEN: bootstrap admin bearer token; unset: generated in DataDir (when DataDir is in use)
	DataDir           string        // BACKSTOP_DATA_DIR: local state when the catalog or the store is not configured
	TLS               string        // BACKSTOP_TLS: auto (self-signed certificate in DataDir when it is in use) or off
	TLSCert           string        // BACKSTOP_TLS_CERT
	TLSKey            string        // BACKSTOP_TLS_KEY
	EncryptionKeyFile string        // BACKSTOP_ENCRYPTION_KEY_FILE
	LogFormat         string        // BACKSTOP_LOG_FORMAT: text or json
	LogLevel          string        // BACKSTOP_LOG_LEVEL: debug, info, warn, error

	// Maintenance (durations in Go notation: 90m, 24h). Schedules are off
	// when unset; each runs on one replica at a time.
	GCGrace             string // BACKSTOP_GC_GRACE: keep unreferenced chunks touched this recently
	SessionTimeout      string // BACKSTOP_SESSION_TIMEOUT: GC discards idle open sessions this old
	GCInterval          string // BACKSTOP_GC_INTERVAL
	VerifyInterval      string // BACKSTOP_VERIFY_INTERVAL
	VerifyOlderThanDays string // BACKSTOP_VERIFY_OLDER_THAN_DAYS: scheduled verify skips snapshots verified more recently
	PruneInterval       string // BACKSTOP_PRUNE_INTERVAL
	PruneKeep           string // BACKSTOP_PRUNE_KEEP: e.g. keep-last=3,keep-daily=7,keep-weekly=4

	OTel telemetry.Config // the standard OTEL_* variables (telemetry.go)
}

// DefaultConfig returns the defaults of architecture.md.
func DefaultConfig() Config {
	return Config{
		Listen:    ":8280",
		NBDListen: ":10809",
		DataDir:   "./backstop-data",
		TLS:       "auto",
		LogFormat: "text",
		LogLevel:  "info",

		GCGrace:        "24h",
		SessionTimeout: "36h",
	}
}

type setting struct {
	name  string // flag name; env is BACKSTOP_ + upper snake case
	usage string
	str   *string
	sec   *secret.String
}

func (c *Config) settings() []setting {
	return []setting{
		{name: "listen", usage: "HTTP listen address", str: &c.Listen},
		{name: "nbd-listen", usage: "NBD listen address for restore exports", str: &c.NBDListen},
		{name: "nbd-advertise", usage: "host:port written into export URIs", str: &c.NBDAdvertise},
		{name: "database-url", usage: "Postgres DSN of the catalog (default: embedded catalog in the data dir)", sec: &c.DatabaseURL},
		{name: "store", usage: "chunk store: s3://bucket?endpoint=host:port&region=…&insecure=1 or file:///path (default: chunks in the data dir)", str: &c.Store},
		{name: "s3-access-key", usage: "S3 access key", str: &c.S3AccessKey},
		{name: "s3-secret-key", usage: "S3 secret key", sec: &c.S3SecretKey},
		{name: "admin-token", usage: "bootstrap admin bearer token, at least 16 characters (default: generated into the data dir when it is in use)", sec: &c.AdminToken},
		{name: "data-dir", usage: "directory for the embedded catalog, chunks, admin token and lock when those are not configured", str: &c.DataDir},
		{name: "tls", usage: "auto: HTTPS with --tls-cert, else with a self-signed certificate generated into the data dir when it is in use; off: plain HTTP (behind a TLS-terminating proxy)", str: &c.TLS},
		{name: "tls-cert", usage: "TLS certificate file (HTTPS and NBD STARTTLS)", str: &c.TLSCert},
		{name: "tls-key", usage: "TLS key file", str: &c.TLSKey},
		{name: "encryption-key-file", usage: "file with a 32-byte key (raw or 64 hex digits) for AES-256-GCM chunks", str: &c.EncryptionKeyFile},
		{name: "log-format", usage: "log format: text or json", str: &c.LogFormat},
		{name: "log-level", usage: "log level: debug, info, warn or error", str: &c.LogLevel},
		{name: "gc-grace", usage: "GC keeps unreferenced chunks touched this recently (e.g. 24h)", str: &c.GCGrace},
		{name: "session-timeout", usage: "GC discards open backup sessions idle this long (e.g. 36h)", str: &c.SessionTimeout},
		{name: "gc-interval", usage: "run GC this often (off when empty)", str: &c.GCInterval},
		{name: "verify-interval", usage: "run a verify this often (off when empty)", str: &c.VerifyInterval},
		{name: "verify-older-than-days", usage: "scheduled verify: only snapshots not verified for this many days (0: all)", str: &c.VerifyOlderThanDays},
		{name: "prune-interval", usage: "prune every namespace this often with --prune-keep (off when empty)", str: &c.PruneInterval},
		{name: "prune-keep", usage: "scheduled prune: keep-last=N,keep-hourly=N,keep-daily=N,keep-weekly=N,keep-monthly=N,keep-yearly=N", str: &c.PruneKeep},
	}
}

func envName(flagName string) string {
	return "BACKSTOP_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// loadConfig starts from DefaultConfig, applies the environment, then the
// flags in args, and validates the result. It returns the remaining
// arguments.
func loadConfig(name string, getenv func(string) string, args []string, out io.Writer) (Config, []string, error) {
	c := DefaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	for _, s := range c.settings() {
		if v := getenv(envName(s.name)); v != "" {
			if s.str != nil {
				*s.str = v
			} else {
				*s.sec = secret.String(v)
			}
		}
		usage := s.usage + " (env " + envName(s.name) + ")"
		if s.str != nil {
			fs.StringVar(s.str, s.name, *s.str, usage)
		} else {
			fs.Func(s.name, usage, func(v string) error { *s.sec = secret.String(v); return nil })
		}
	}
	if err := fs.Parse(args); err != nil {
		return c, nil, err
	}
	c.OTel = otelConfig(getenv)
	return c, fs.Args(), c.Validate()
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, a := range []struct{ env, v string }{{"BACKSTOP_LISTEN", c.Listen}, {"BACKSTOP_NBD_LISTEN", c.NBDListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			bad("%s %q: want host:port", a.env, a.v)
		}
	}
	if c.NBDAdvertise != "" {
		if _, _, err := net.SplitHostPort(c.NBDAdvertise); err != nil {
			bad("BACKSTOP_NBD_ADVERTISE %q: want host:port", c.NBDAdvertise)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("BACKSTOP_TLS_CERT and BACKSTOP_TLS_KEY go together")
	}
	switch c.TLS {
	case "auto":
	case "off":
		if c.TLSCert != "" || c.TLSKey != "" {
			bad("BACKSTOP_TLS=off turns TLS off, but BACKSTOP_TLS_CERT/BACKSTOP_TLS_KEY are set: drop one or the other")
		}
	default:
		bad("BACKSTOP_TLS %q: want auto or off", c.TLS)
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		bad("BACKSTOP_ADMIN_TOKEN must be at least 16 characters")
	}
	if c.usesDataDir() && c.DataDir == "" {
		bad("BACKSTOP_DATA_DIR is empty: it holds the embedded catalog (no BACKSTOP_DATABASE_URL) and the chunks (no BACKSTOP_STORE)")
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("BACKSTOP_LOG_FORMAT %q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := c.maintenance(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.OTel.Validate())
	return errors.Join(errs...)
}

// maintenance returns the GC settings and the maintenance schedule.
func (c Config) maintenance() (backup.GCConfig, backup.Schedule, error) {
	var errs []error
	// dur parses a duration; "" is 0 (off) unless the setting is required.
	dur := func(env, v string, required bool) time.Duration {
		if v == "" && !required {
			return 0
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s %q: want a duration such as 90m or 24h", env, v))
		}
		return d
	}
	gc := backup.DefaultGCConfig()
	gc.Grace = dur("BACKSTOP_GC_GRACE", c.GCGrace, true)
	gc.SessionTimeout = dur("BACKSTOP_SESSION_TIMEOUT", c.SessionTimeout, true)
	if c.SessionTimeout != "" && gc.SessionTimeout == 0 {
		errs = append(errs, errors.New("BACKSTOP_SESSION_TIMEOUT must be positive"))
	}
	sch := backup.Schedule{
		GCInterval:     dur("BACKSTOP_GC_INTERVAL", c.GCInterval, false),
		VerifyInterval: dur("BACKSTOP_VERIFY_INTERVAL", c.VerifyInterval, false),
		PruneInterval:  dur("BACKSTOP_PRUNE_INTERVAL", c.PruneInterval, false),
		Location:       time.Local,
	}
	if c.VerifyOlderThanDays != "" {
		n, err := strconv.Atoi(c.VerifyOlderThanDays)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("BACKSTOP_VERIFY_OLDER_THAN_DAYS %q: want a number of days", c.VerifyOlderThanDays))
		}
		sch.VerifyOlderThan = time.Duration(n) * 24 * time.Hour
	}
	switch {
	case c.PruneKeep != "":
		keep, err := backup.ParseKeepOptions(c.PruneKeep)
		if err != nil {
			errs = append(errs, fmt.Errorf("BACKSTOP_PRUNE_KEEP: %s", backup.Detail(err)))
		}
		sch.PruneKeep = keep
	case sch.PruneInterval > 0:
		errs = append(errs, errors.New("BACKSTOP_PRUNE_INTERVAL needs BACKSTOP_PRUNE_KEEP"))
	}
	return gc, sch, errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("BACKSTOP_LOG_LEVEL %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
