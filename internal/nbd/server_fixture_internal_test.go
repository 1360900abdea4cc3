package nbd

// Fixtures for the server tests: an in-memory Image with injectable
// faults, an Exports that checks Lookup/release pairing, and a
// self-signed certificate. The exported aliases at the end serve the
// external tests (server_tools_test.go).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memImage serves data; a granule that is all zeroes is reported as a
// hole (StateHole|StateZero), anything else as data.
type memImage struct {
	data    []byte
	granule int64
	zero    []bool // per granule

	mu          sync.Mutex
	failOff     int64 // ReadAt overlapping [failOff, failEnd) fails
	failEnd     int64
	failExtents bool
	panicReads  bool
	readHook    func(off int64) // called at the start of ReadAt

	reads atomic.Int64 // ReadAt calls
}

var errInjected = errors.New("injected I/O error")

func newMemImage(data []byte, granule int64) *memImage {
	m := &memImage{data: data, granule: granule}
	for off := int64(0); off < int64(len(data)); off += granule {
		m.zero = append(m.zero, isZero(data[off:min(off+granule, int64(len(data)))]))
	}
	return m
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// FailReads makes every ReadAt overlapping [off, off+n) fail.
func (m *memImage) FailReads(off, n int64) {
	m.mu.Lock()
	m.failOff, m.failEnd = off, off+n
	m.mu.Unlock()
}

func (m *memImage) setReadHook(fn func(off int64)) {
	m.mu.Lock()
	m.readHook = fn
	m.mu.Unlock()
}

func (m *memImage) Size() int64 { return int64(len(m.data)) }

func (m *memImage) ReadAt(_ context.Context, p []byte, off int64) error {
	m.reads.Add(1)
	m.mu.Lock()
	fOff, fEnd, hook, panics := m.failOff, m.failEnd, m.readHook, m.panicReads
	m.mu.Unlock()
	if hook != nil {
		hook(off)
	}
	if panics {
		panic("memImage: injected panic")
	}
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return fmt.Errorf("memImage: read [%d,+%d) outside %d bytes", off, len(p), len(m.data))
	}
	if off < fEnd && off+int64(len(p)) > fOff {
		return errInjected
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memImage) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	m.mu.Lock()
	fail := m.failExtents
	m.mu.Unlock()
	if fail {
		return nil, errInjected
	}
	if off < 0 || length <= 0 || off+length > int64(len(m.data)) {
		return nil, fmt.Errorf("memImage: extents [%d,+%d) outside %d bytes", off, length, len(m.data))
	}
	var exts []Extent
	for pos, end := off, off+length; pos < end; {
		g := pos / m.granule
		n := min((g+1)*m.granule, end) - pos
		var f uint32
		if m.zero[g] {
			f = StateHole | StateZero
		}
		if k := len(exts); k > 0 && exts[k-1].Flags == f {
			exts[k-1].Length += n
		} else {
			exts = append(exts, Extent{Offset: pos, Length: n, Flags: f})
		}
		pos += n
	}
	return exts, nil
}

// memExports serves named images and counts lookups and releases.
type memExports struct {
	mu     sync.Mutex
	images map[string]Image
	noList bool

	lookups  atomic.Int64
	releases atomic.Int64
}

func newMemExports(images map[string]Image) *memExports {
	return &memExports{images: images}
}

func (e *memExports) Lookup(_ context.Context, name string, _ net.Addr) (Image, func(), error) {
	e.mu.Lock()
	img, ok := e.images[name]
	e.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("memExports: %q: %w", name, ErrUnknownExport)
	}
	e.lookups.Add(1)
	return img, func() { e.releases.Add(1) }, nil
}

func (e *memExports) List(context.Context, net.Addr) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.noList {
		return nil, nil
	}
	names := make([]string, 0, len(e.images))
	for n := range e.images {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// Lookups returns how many lookups succeeded and how many were released.
func (e *memExports) Lookups() (lookups, releases int64) {
	return e.lookups.Load(), e.releases.Load()
}

// testImageData returns size seeded random bytes with zero ranges: whole
// granules (holes) at [192K, 384K) and [1M+64K, 1M+128K), and bytes
// [2M+100, 2M+5000) inside a data granule.
func testImageData(size int64, seed uint64) []byte {
	data := make([]byte, size)
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(data); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(data) &^ 7; i < len(data); i++ {
		data[i] = byte(r.Uint32()) | 1
	}
	for _, z := range [][2]int64{{192 << 10, 384 << 10}, {1<<20 + 64<<10, 1<<20 + 128<<10}, {2<<20 + 100, 2<<20 + 5000}} {
		if z[1] <= size {
			clear(data[z[0]:z[1]])
		}
	}
	return data
}

// selfSignedTLS returns a server config with a fresh self-signed
// certificate for 127.0.0.1 and localhost, and the certificate as PEM.
func selfSignedTLS(t testing.TB) (*tls.Config, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// Exported for the external tests.
type (
	TestImage   = memImage
	TestExports = memExports
)

var (
	NewTestImage   = newMemImage
	NewTestExports = newMemExports
	TestImageData  = testImageData
	SelfSignedTLS  = selfSignedTLS
)

// SetPanicHook makes s report recovered panics to fn as well.
func (s *Server) SetPanicHook(fn func(v any)) { s.onPanic = fn }
