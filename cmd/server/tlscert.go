package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The self-signed certificate of zero-config mode lives in the data
// directory, so that its fingerprint (which PVE pins) survives restarts.
const (
	tlsDir       = "tls"
	certFile     = "cert.pem"
	keyFile      = "key.pem"
	certValidity = 10 * 365 * 24 * time.Hour
)

// tlsMode says how the server serves its API and NBD exports: with the
// configured certificate, with a self-signed one kept in the data
// directory, or in plain text.
type tlsMode int

const (
	tlsPlain      tlsMode = iota // BACKSTOP_TLS=off, or no data dir and no certificate
	tlsConfigured                // BACKSTOP_TLS_CERT and BACKSTOP_TLS_KEY
	tlsGenerated                 // the data directory's self-signed certificate
)

func (c Config) tlsMode() tlsMode {
	switch {
	case c.TLS == "off":
		return tlsPlain
	case c.TLSCert != "":
		return tlsConfigured
	case c.usesDataDir():
		return tlsGenerated
	}
	return tlsPlain
}

// selfSignedCert returns the paths of the data directory's certificate and
// key, generating them when the certificate is missing. listen is the
// API's listen address; a specific IP in it goes into the certificate.
// created tells the caller to say so.
//
// The key is written before the certificate, so a present certificate
// means a complete pair. A key without a certificate is what a crash
// between the two leaves; it was never served and is replaced. A
// certificate without its key is an error: regenerating would change the
// fingerprint that PVE nodes pinned.
func (d *dataDir) selfSignedCert(listen string) (cert, key string, created bool, err error) {
	dir := filepath.Join(d.path, tlsDir)
	cert, key = filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	_, cerr := os.Stat(cert)
	switch {
	case cerr == nil:
		fi, kerr := os.Stat(key)
		if errors.Is(kerr, os.ErrNotExist) {
			return "", "", false, fmt.Errorf("%s has no key %s: restore the key, or delete the certificate to generate a new pair (PVE nodes must then pin the new fingerprint)", cert, key)
		}
		if kerr != nil {
			return "", "", false, kerr
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", "", false, fmt.Errorf("%s is readable by others (mode %04o): chmod 600 it, and replace the certificate if others may have read it", key, fi.Mode().Perm())
		}
		return cert, key, false, nil
	case !errors.Is(cerr, os.ErrNotExist):
		return "", "", false, cerr
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", false, err
	}
	certPEM, keyPEM, err := newSelfSigned(certHosts(listen), time.Now())
	if err != nil {
		return "", "", false, err
	}
	if err := writeFileAtomic(key, keyPEM, 0o600); err != nil {
		return "", "", false, err
	}
	if err := writeFileAtomic(cert, certPEM, 0o644); err != nil {
		return "", "", false, err
	}
	return cert, key, true, nil
}

// certHosts are the names and addresses the generated certificate is for:
// this host's name, localhost, the loopback addresses and the listen
// address's IP when it names one. Pinning clients ignore them; the rest
// of the world can at least match the name.
func certHosts(listen string) []string {
	hosts := []string{}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		hosts = append(hosts, h)
	}
	hosts = append(hosts, "localhost", "127.0.0.1", "::1")
	if h, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			hosts = append(hosts, ip.String())
		}
	}
	return hosts
}

// newSelfSigned makes a self-signed ECDSA P-256 server certificate (its
// own CA) for hosts, valid from an hour before now for certValidity, and returns it
// and its PKCS #8 key in PEM.
func newSelfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)), // positive, never 0
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"Backstop self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		// Its own CA, as `openssl req -x509` makes it: clients that
		// take it as a trust anchor (qemu's tls-creds-x509 dir, curl
		// --cacert) insist on a CA certificate. No path below it.
		IsCA:           true,
		MaxPathLenZero: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// loadTLS loads a certificate and key into the server's TLS settings.
func loadTLS(cert, key string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// fingerprint is the SHA-256 of a DER certificate as PVE shows and pins
// it: uppercase hex pairs joined by colons.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	var b strings.Builder
	for i, c := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", c)
	}
	return b.String()
}

// writeFileAtomic writes name through a temporary file in the same
// directory (mode, data, fsync, rename, fsync of the directory), so a crash
// leaves either the old file or the complete new one.
func writeFileAtomic(name string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
