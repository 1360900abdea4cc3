package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func parsePEMCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("no PEM certificate in %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The generated certificate: ECDSA P-256, self-signed, for the host's
// names and addresses, a random positive serial, about ten years.
func TestNewSelfSigned(t *testing.T) {
	hosts := certHosts("192.0.2.7:8280")
	for _, want := range []string{"localhost", "127.0.0.1", "::1", "192.0.2.7"} {
		if !slices.Contains(hosts, want) {
			t.Errorf("certHosts lacks %s: %v", want, hosts)
		}
	}
	if h, err := os.Hostname(); err == nil && !slices.Contains(hosts, h) {
		t.Errorf("certHosts lacks the host name %s: %v", h, hosts)
	}
	if got := certHosts(":8280"); slices.Contains(got, "::") || slices.Contains(got, "0.0.0.0") || len(got) > len(hosts)-1 {
		t.Errorf("a wildcard listen address added an IP: %v", got)
	}

	now := time.Now()
	certPEM, keyPEM, err := newSelfSigned(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	c := parsePEMCert(t, certPEM)
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("certificate and key do not match: %v", err)
	}
	if c.Subject.String() != c.Issuer.String() {
		t.Errorf("issuer %s, subject %s", c.Issuer, c.Subject)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %v is not a large positive random number", c.SerialNumber)
	}
	if c.NotBefore.After(now) || c.NotAfter.Before(now.AddDate(9, 11, 0)) || c.NotAfter.After(now.AddDate(10, 1, 0)) {
		t.Errorf("valid %v to %v, want from now for about ten years", c.NotBefore, c.NotAfter)
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("no server auth usage: %v", c.ExtKeyUsage)
	}
	// Its own trust anchor (qemu-img, curl --cacert), for each name.
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("IsCA %v, MaxPathLen %d (zero %v): want a CA with no path below it", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c)
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "192.0.2.7"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: now}); err != nil {
			t.Errorf("certificate does not verify for %s against itself: %v", name, err)
		}
	}
	second, _, err := newSelfSigned(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	if parsePEMCert(t, second).SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("two certificates got the same serial")
	}
	if got, want := fingerprint(c.Raw), sha256Colons(c.Raw); got != want {
		t.Errorf("fingerprint %s, want %s", got, want)
	}
}

// The data directory's pair: generated once (key 0600), then reused; a
// lone key (a crash between the two writes) is replaced; a certificate
// without its key, or a key others can read, stops the start.
func TestSelfSignedCert_Files(t *testing.T) {
	dd, err := lockDataDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Close()
	cert, key, created, err := dd.selfSignedCert("127.0.0.1:8280")
	if err != nil || !created {
		t.Fatalf("first start: created=%v %v", created, err)
	}
	if cert != filepath.Join(dd.path, "tls", "cert.pem") || key != filepath.Join(dd.path, "tls", "key.pem") {
		t.Errorf("paths %s %s", cert, key)
	}
	wantMode(t, key, 0o600)
	wantMode(t, filepath.Join(dd.path, "tls"), 0o700)
	if leftovers, _ := filepath.Glob(filepath.Join(dd.path, "tls", ".*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	first := pemFingerprint(t, cert)
	if _, _, created, err := dd.selfSignedCert("127.0.0.1:8280"); err != nil || created || pemFingerprint(t, cert) != first {
		t.Fatalf("second start: created=%v %v; the certificate must be reused", created, err)
	}

	if err := os.Remove(cert); err != nil {
		t.Fatal(err)
	}
	if _, _, created, err := dd.selfSignedCert("127.0.0.1:8280"); err != nil || !created || pemFingerprint(t, cert) == first {
		t.Fatalf("lone key: created=%v %v; want a new pair", created, err)
	}
	if _, err := loadTLS(cert, key); err != nil {
		t.Fatalf("the new pair does not load: %v", err)
	}

	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := dd.selfSignedCert("127.0.0.1:8280"); err == nil || !strings.Contains(err.Error(), key) {
		t.Errorf("a key others can read was accepted: %v", err)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := dd.selfSignedCert("127.0.0.1:8280"); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Errorf("a certificate without its key was accepted: %v", err)
	}
}

// BACKSTOP_TLS: auto serves HTTPS whenever it can (given certificate, or
// the data directory's), off never does and conflicts with a certificate.
func TestConfig_TLS(t *testing.T) {
	load := func(env map[string]string, args ...string) (Config, error) {
		c, _, err := loadConfig("t", func(k string) string { return env[k] }, args, io.Discard)
		return c, err
	}
	pgS3 := map[string]string{"BACKSTOP_DATABASE_URL": "postgres://x", "BACKSTOP_STORE": "file:///x", "BACKSTOP_ADMIN_TOKEN": "0123456789abcdef"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want tlsMode
	}{
		{"zero-config", nil, nil, tlsGenerated},
		{"zero-config, off by flag", nil, []string{"--tls=off"}, tlsPlain},
		{"zero-config, off by env", map[string]string{"BACKSTOP_TLS": "off"}, nil, tlsPlain},
		{"own certificate", map[string]string{"BACKSTOP_TLS_CERT": "c", "BACKSTOP_TLS_KEY": "k"}, nil, tlsConfigured},
		{"postgres and s3", pgS3, nil, tlsPlain},
	} {
		c, err := load(tc.env, tc.args...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := c.tlsMode(); got != tc.want {
			t.Errorf("%s: tls mode %d, want %d", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"BACKSTOP_TLS": "on"}, `BACKSTOP_TLS "on"`},
		{map[string]string{"BACKSTOP_TLS": "off", "BACKSTOP_TLS_CERT": "c", "BACKSTOP_TLS_KEY": "k"}, "BACKSTOP_TLS=off"},
		{map[string]string{"BACKSTOP_TLS_KEY": "k"}, "BACKSTOP_TLS_CERT and BACKSTOP_TLS_KEY go together"},
	} {
		if _, err := load(tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.env, err, tc.want)
		}
	}
}

// Without --url, healthcheck probes the server its environment configures.
func TestLocalReadyURL(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "https://127.0.0.1:8280/readyz"},
		{map[string]string{"BACKSTOP_TLS": "off", "BACKSTOP_LISTEN": "[::]:9000"}, "http://127.0.0.1:9000/readyz"},
		{map[string]string{"BACKSTOP_LISTEN": "192.0.2.7:8281"}, "https://192.0.2.7:8281/readyz"},
		{map[string]string{"BACKSTOP_DATABASE_URL": "postgres://x", "BACKSTOP_STORE": "file:///x"}, "http://127.0.0.1:8280/readyz"},
	} {
		got, err := localReadyURL(func(k string) string { return tc.env[k] })
		if err != nil || got != tc.want {
			t.Errorf("%v: %q %v, want %q", tc.env, got, err, tc.want)
		}
	}
	if !isLoopbackHost("localhost") || !isLoopbackHost("::1") || !isLoopbackHost("127.0.0.2") || isLoopbackHost("192.0.2.7") || isLoopbackHost("example.com") {
		t.Error("isLoopbackHost is wrong")
	}
}
