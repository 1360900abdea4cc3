package chunkstore_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunkstore"
)

func TestParseURL(t *testing.T) {
	valid := []struct {
		in   string
		want chunkstore.Location
	}{
		{"s3://backups?endpoint=127.0.0.1:9000&region=eu-west-1&insecure=1",
			chunkstore.Location{Scheme: "s3", Bucket: "backups", Endpoint: "127.0.0.1:9000", Region: "eu-west-1", Insecure: true}},
		{"s3://my.bucket-1",
			chunkstore.Location{Scheme: "s3", Bucket: "my.bucket-1", Endpoint: "s3.amazonaws.com", Region: "us-east-1"}},
		{"s3://abc/?endpoint=minio.lan&insecure=false",
			chunkstore.Location{Scheme: "s3", Bucket: "abc", Endpoint: "minio.lan", Region: "us-east-1"}},
		{"file:///var/lib/backstop/chunks", chunkstore.Location{Scheme: "file", Path: "/var/lib/backstop/chunks"}},
		{"file:///srv//x/../y/", chunkstore.Location{Scheme: "file", Path: "/srv/y"}},
	}
	for _, tt := range valid {
		got, err := chunkstore.ParseURL(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		// The canonical form parses back to the same location.
		if again, err := chunkstore.ParseURL(got.String()); err != nil || again != got {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", got.String(), again, err, got)
		}
	}
	invalid := []struct{ in, wantMsg string }{
		{"", "empty"},
		{"/var/lib/backstop", "unsupported scheme"},
		{"http://bucket", "unsupported scheme"},
		{"s3://", "bucket name"},
		{"s3://ab", "bucket name"},
		{"s3://Bucket", "bucket name"},
		{"s3://-bucket", "bucket name"},
		{"s3://bucket_x", "bucket name"},
		{"s3://a..b", "consecutive dots"},
		{"s3://bucket/prefix", "no path"},
		{"s3://bucket?endpoint=http://host:9000", "no scheme"},
		{"s3://bucket?endpoint=", "endpoint"},
		{"s3://bucket?insecure=yes", "insecure"},
		{"s3://bucket?secure=1", "unknown parameter"},
		{"s3://bucket?region=a&region=b", "2 times"},
		{"s3://key:secret@bucket", "credentials"},
		{"s3://bucket#x", "fragment"},
		{"file://relative/path", "three slashes"},
		{"file:relative", "three slashes"},
		{"file:///", "absolute directory"},
		{"file:///x?y=1", "no parameters"},
		{"s3://bu%zzcket", "invalid URL escape"},
	}
	for _, tt := range invalid {
		_, err := chunkstore.ParseURL(tt.in)
		if !errors.Is(err, backup.ErrInvalid) || !strings.Contains(err.Error(), tt.wantMsg) {
			t.Errorf("ParseURL(%q) = %v; want ErrInvalid mentioning %q", tt.in, err, tt.wantMsg)
		}
	}
}

func TestConfig_Validate(t *testing.T) {
	cfg := chunkstore.DefaultConfig()
	cfg.URL = "file:///srv/backstop"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	// Zero numeric fields mean the defaults.
	if err := (chunkstore.Config{URL: "file:///srv/backstop"}).Validate(); err != nil {
		t.Fatalf("zero config with URL: %v", err)
	}
	bad := chunkstore.Config{URL: "s3://bucket", EncryptionKey: make([]byte, 16), MaxChunkSize: -1, MaxRetries: -1}
	err := bad.Validate()
	if !errors.Is(err, backup.ErrInvalid) {
		t.Fatalf("Validate = %v; want ErrInvalid", err)
	}
	for _, want := range []string{"access key", "encryption key is 16 bytes", "max chunk size", "max retries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q: %v", want, err)
		}
	}
}

// Secrets and keys stay out of every formatting path.
func TestSecretsRedacted(t *testing.T) {
	const secret = "sup3r-s3cret-value"
	key := chunkstore.Key(bytes.Repeat([]byte{0xAB}, 32))
	cfg := chunkstore.Config{URL: "s3://bucket", AccessKey: "AKID", SecretKey: secret, EncryptionKey: key}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%X"} {
		fmt.Fprintf(&out, verb+"\n", cfg.SecretKey)
		fmt.Fprintf(&out, verb+"\n", cfg.EncryptionKey)
	}
	fmt.Fprintf(&out, "%v %+v %#v\n", cfg, cfg, cfg)
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(j)
	logger := slog.New(slog.NewJSONHandler(&out, nil))
	logger.Info("x", "cfg", cfg, "secret", cfg.SecretKey, "key", cfg.EncryptionKey)
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "cfg", cfg, "secret", cfg.SecretKey)
	for _, leak := range []string{secret, "abab", "ABAB", "171,171", "\xab"} {
		if strings.Contains(out.String(), leak) {
			t.Fatalf("output contains %q:\n%s", leak, out.String())
		}
	}
	if !strings.Contains(out.String(), "[redacted]") || !strings.Contains(out.String(), "AKID") {
		t.Fatalf("output should show [redacted] and the access key:\n%s", out.String())
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	raw := bytes.Repeat([]byte{0x0A}, 32) // 32 newlines: raw bytes are taken as is
	hexKey := strings.Repeat("0a", 32)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, content := range map[string][]byte{
		"raw": raw, "hex": []byte(hexKey), "hex-newline": []byte(hexKey + "\n"), "hex-upper": []byte(strings.ToUpper(hexKey) + "\r\n"),
	} {
		k, err := chunkstore.LoadKeyFile(write(name, content))
		if err != nil || !bytes.Equal(k, raw) {
			t.Errorf("LoadKeyFile(%s) = %x, %v", name, []byte(k), err)
		}
	}
	for name, content := range map[string][]byte{
		"short": raw[:31], "long": append(bytes.Clone(raw), 1, 2), "bad-hex": []byte(strings.Repeat("zz", 32)),
		"hex-short": []byte(hexKey[:62]), "empty": nil,
	} {
		if _, err := chunkstore.LoadKeyFile(write(name, content)); !errors.Is(err, backup.ErrInvalid) {
			t.Errorf("LoadKeyFile(%s) = %v; want ErrInvalid", name, err)
		}
	}
	if _, err := chunkstore.LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadKeyFile(missing) = %v; want ErrNotExist", err)
	}
}

func TestCheckObjectKey(t *testing.T) {
	for _, ok := range []string{"indexes/qemu-100/2026_11_25-22_00_00.fidx", "a", "catalog/x.Y_z-1", "chunksX/a"} {
		if err := chunkstore.CheckObjectKey(ok); err != nil {
			t.Errorf("CheckObjectKey(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "/abs", "trailing/", "a//b", "../x", "a/./b", "a/../b", ".hidden", "a/.tmp-x", "sp ace", "a\\b",
		"ünï", "a\x00b", "chunks", "chunks/", "chunks/abcd/x", "backstop-repository", strings.Repeat("a", 513),
	} {
		if err := chunkstore.CheckObjectKey(bad); !errors.Is(err, backup.ErrInvalid) {
			t.Errorf("CheckObjectKey(%q) = %v; want ErrInvalid", bad, err)
		}
	}
}
