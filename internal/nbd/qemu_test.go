package nbd_test

// Integration tests against real qemu-nbd (and nbdinfo/nbdcopy as
// references). They skip when the tools are missing, or fail when
// BACKSTOP_TEST_REQUIRE names qemu.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/nbd"
	"github.com/backstop-pve/backstop/internal/testenv"
)

const (
	imageSize   = 64 << 20
	granularity = 64 << 10
	exportName  = "drive-scsi0"
)

// write is one qemu-io write: pattern byte (or zeroes), offset, length.
type write struct {
	zero      bool
	pattern   byte
	off, size int64
}

func (w write) cmd() string {
	if w.zero {
		return fmt.Sprintf("write -z %d %d", w.off, w.size)
	}
	return fmt.Sprintf("write -P 0x%02x %d %d", w.pattern, w.off, w.size)
}

// Writes before the bitmap exists (the "previous backup") and after (dirty).
var (
	baseWrites = []write{
		{pattern: 0xaa, off: 0, size: 8 << 20},
		{pattern: 0xbb, off: 20 << 20, size: 3 << 20},
		{pattern: 0x11, off: 63 << 20, size: 1 << 20},
	}
	dirtyWrites = []write{
		{pattern: 0xcc, off: 10 << 20, size: 100 << 10},
		{zero: true, off: 1 << 20, size: 1 << 20},
		{pattern: 0xdd, off: 32<<20 + 4096, size: 8192},
		{pattern: 0x5a, off: 40<<20 - 4096, size: 8192},
		{pattern: 0xee, off: imageSize - 512, size: 512},
	}
)

type testImage struct {
	dir  string
	path string // qcow2
	raw  []byte // its contents, from qemu-img convert
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func qemuIO(t testing.TB, format, img string, ws []write) {
	t.Helper()
	args := []string{"-f", format}
	for _, w := range ws {
		args = append(args, "-c", w.cmd())
	}
	run(t, testenv.Tool(t, testenv.PeerQEMU, "qemu-io"), append(args, img)...)
}

// newTestImage builds the qcow2 image of test-environment.md: base data,
// a 64 KiB dirty bitmap bm0, then dirty writes.
func newTestImage(t testing.TB) *testImage {
	t.Helper()
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	dir := t.TempDir()
	img := &testImage{dir: dir, path: filepath.Join(dir, "img.qcow2")}
	run(t, qemuImg, "create", "-q", "-f", "qcow2", img.path, strconv.Itoa(imageSize))
	qemuIO(t, "qcow2", img.path, baseWrites)
	run(t, qemuImg, "bitmap", "--add", "--enable", "-g", strconv.Itoa(granularity), img.path, "bm0")
	qemuIO(t, "qcow2", img.path, dirtyWrites)
	rawPath := filepath.Join(dir, "img.raw")
	run(t, qemuImg, "convert", "-f", "qcow2", "-O", "raw", img.path, rawPath)
	raw, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	img.raw = raw
	return img
}

// qemuNBD starts a forked qemu-nbd with args and stops it by PID when the
// test ends. qemu-nbd --fork returns once the server accepts connections.
func qemuNBD(t testing.TB, dir string, args ...string) {
	t.Helper()
	bin := testenv.Tool(t, testenv.PeerQEMU, "qemu-nbd")
	pidFile := filepath.Join(dir, fmt.Sprintf("qemu-nbd-%d.pid", time.Now().UnixNano()))
	run(t, bin, append([]string{"--fork", "--pid-file=" + pidFile, "--persistent", "--shared=8"}, args...)...)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("qemu-nbd pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("qemu-nbd pid file %q: %v", b, err)
	}
	t.Cleanup(func() { stopPID(t, pid) })
}

// stopPID terminates a daemon that is not our child, and waits until it
// has gone.
func stopPID(t testing.TB, pid int) {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return
	}
	for i := 0; i < 500; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("qemu-nbd %d ignored SIGTERM; killing it", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// serveUnix exports img over a UNIX socket and returns its URI.
func serveUnix(t testing.TB, dir, img, format string, extra ...string) string {
	t.Helper()
	sock := filepath.Join(dir, fmt.Sprintf("nbd-%d.sock", time.Now().UnixNano()))
	qemuNBD(t, dir, append(extra, "-f", format, "-x", exportName, "-k", sock, img)...)
	return "nbd+unix:///" + exportName + "?socket=" + sock
}

// serveTCP exports img on 127.0.0.1 and a free port and returns its URI.
func serveTCP(t testing.TB, dir, img, format string, extra ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	qemuNBD(t, dir, append(extra, "-f", format, "-x", exportName, "-b", "127.0.0.1", "-p", strconv.Itoa(port), img)...)
	return fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, exportName)
}

func dial(t testing.TB, uri string, opts nbd.Options) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, uri, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", uri, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// readAll reads the whole export with requests of up to reqSize bytes,
// inFlight at a time.
func readAll(ctx context.Context, c *nbd.Client, reqSize int64, inFlight int) ([]byte, error) {
	buf := make([]byte, c.Size())
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(inFlight)
	for off := int64(0); off < c.Size(); off += reqSize {
		n := min(reqSize, c.Size()-off)
		g.Go(func() error { return c.ReadAt(ctx, buf[off:off+n], off) })
	}
	return buf, g.Wait()
}

func TestQEMU_ReadWholeImage(t *testing.T) {
	img := newTestImage(t)
	ro := []string{"--read-only", "-B", "bm0"}
	uris := map[string]string{
		"unix": serveUnix(t, img.dir, img.path, "qcow2", ro...),
		"tcp":  serveTCP(t, img.dir, img.path, "qcow2", ro...),
	}
	for _, tt := range []struct {
		name    string
		opts    nbd.Options
		reqSize int64
	}{
		{"structured", nbd.Options{}, 256 << 10},
		{"structured odd sizes", nbd.Options{}, 1<<20 + 4097},
		{"structured max", nbd.Options{}, 32 << 20},
		{"simple replies", nbd.Options{NoStructuredReplies: true}, 192 << 10},
	} {
		for _, transport := range []string{"unix", "tcp"} {
			t.Run(tt.name+"/"+transport, func(t *testing.T) {
				c := dial(t, uris[transport], tt.opts)
				ex := c.Export()
				if ex.Size != imageSize || !ex.Flags.ReadOnly() || ex.Flags.CanTrim() || ex.StructuredReplies == tt.opts.NoStructuredReplies {
					t.Fatalf("export = %+v", ex)
				}
				got, err := readAll(t.Context(), c, tt.reqSize, 32)
				if err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(got, img.raw); i >= 0 {
					t.Fatalf("byte %d: got %#x, want %#x", i, got[i], img.raw[i])
				}
			})
		}
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// nbdinfoMap returns nbdinfo's --map of ctx as extents.
func nbdinfoMap(t testing.TB, uri, ctx string) []nbd.Extent {
	t.Helper()
	out := run(t, testenv.Tool(t, testenv.PeerQEMU, "nbdinfo"), "--json", "--map="+ctx, uri)
	var rows []struct {
		Offset, Length int64
		Type           uint32
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("nbdinfo output: %v\n%s", err, out)
	}
	var exts []nbd.Extent
	for _, r := range rows {
		if n := len(exts); n > 0 && exts[n-1].Flags == r.Type {
			exts[n-1].Length += r.Length
			continue
		}
		exts = append(exts, nbd.Extent{Offset: r.Offset, Length: r.Length, Flags: r.Type})
	}
	return exts
}

func TestQEMU_BaseAllocation(t *testing.T) {
	img := newTestImage(t)
	uri := serveUnix(t, img.dir, img.path, "qcow2", "--read-only")
	c := dial(t, uri, nbd.Options{MetaContexts: []string{nbd.ContextBaseAllocation}})
	id, ok := c.MetaContextID(nbd.ContextBaseAllocation)
	if !ok {
		t.Fatal("base:allocation not selected")
	}
	got, err := nbd.Extents(t.Context(), c, id, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	if want := nbdinfoMap(t, uri, nbd.ContextBaseAllocation); !equalExtents(got, want) {
		t.Errorf("extents differ from nbdinfo --map:\ngot  %v\nwant %v", got, want)
	}
	for _, e := range got {
		if e.Flags&nbd.StateZero != 0 && !allZero(img.raw[e.Offset:e.Offset+e.Length]) {
			t.Errorf("extent %+v flagged zero but has data", e)
		}
	}
	// Never written: a hole that reads as zeroes. Written data: neither.
	for off, want := range map[int64]uint32{50 << 20: nbd.StateHole | nbd.StateZero, 1 << 20: nbd.StateZero, 20 << 20: 0, 63 << 20: 0} {
		if f := flagsAt(got, off); f&want != want || (want == 0 && f != 0) {
			t.Errorf("flags at %d = %d, want %d", off, f, want)
		}
	}
	// A partial request, and the end of the disk.
	exts, err := c.BlockStatus(t.Context(), id, imageSize-4096, 4096)
	if err != nil || len(exts) == 0 || exts[len(exts)-1].Offset+exts[len(exts)-1].Length != imageSize {
		t.Fatalf("BlockStatus at the end = %v, %v", exts, err)
	}
}

func flagsAt(exts []nbd.Extent, off int64) uint32 {
	for _, e := range exts {
		if off >= e.Offset && off < e.Offset+e.Length {
			return e.Flags
		}
	}
	return 1 << 31
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

func equalExtents(a, b []nbd.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// wantDirty is the dirty map implied by dirtyWrites: each write rounded
// out to the bitmap granularity, merged, with clean runs in between.
func wantDirty() []nbd.Extent {
	dirty := make([]bool, imageSize/granularity)
	for _, w := range dirtyWrites {
		for g := w.off / granularity; g*granularity < w.off+w.size; g++ {
			dirty[g] = true
		}
	}
	var exts []nbd.Extent
	for g, d := range dirty {
		f := uint32(0)
		if d {
			f = nbd.StateDirty
		}
		if n := len(exts); n > 0 && exts[n-1].Flags == f {
			exts[n-1].Length += granularity
			continue
		}
		exts = append(exts, nbd.Extent{Offset: int64(g) * granularity, Length: granularity, Flags: f})
	}
	return exts
}

func TestQEMU_DirtyBitmap(t *testing.T) {
	img := newTestImage(t)
	uri := serveUnix(t, img.dir, img.path, "qcow2", "--read-only", "-B", "bm0")
	bm := nbd.DirtyBitmapContext("bm0")
	c := dial(t, uri, nbd.Options{MetaContexts: []string{bm}})
	id, ok := c.MetaContextID(bm)
	if !ok {
		t.Fatal("dirty bitmap context not selected")
	}
	got, err := nbd.Extents(t.Context(), c, id, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := wantDirty()
	if !equalExtents(got, want) {
		t.Fatalf("dirty map:\ngot  %v\nwant %v", got, want)
	}
	if ref := nbdinfoMap(t, uri, bm); !equalExtents(got, ref) {
		t.Errorf("dirty map differs from nbdinfo --map:\ngot  %v\nwant %v", got, ref)
	}
	// Read exactly the dirty extents, as a backup would.
	for _, e := range got {
		if e.Flags&nbd.StateDirty == 0 {
			continue
		}
		p := make([]byte, e.Length)
		if err := c.ReadAt(t.Context(), p, e.Offset); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, img.raw[e.Offset:e.Offset+e.Length]) {
			t.Fatalf("dirty extent %+v differs", e)
		}
	}
	// A bitmap the server does not have is reported missing, not empty.
	c2 := dial(t, uri, nbd.Options{MetaContexts: []string{nbd.DirtyBitmapContext("nope")}})
	if _, ok := c2.MetaContextID(nbd.DirtyBitmapContext("nope")); ok {
		t.Fatal("missing bitmap reported as selected")
	}
}

func TestQEMU_Trim(t *testing.T) {
	img := newTestImage(t)
	t.Run("read-only", func(t *testing.T) {
		c := dial(t, serveUnix(t, img.dir, img.path, "qcow2", "--read-only"), nbd.Options{})
		if err := c.Trim(t.Context(), 0, 1<<20); !errors.Is(err, nbd.ErrTrimUnsupported) {
			t.Fatalf("Trim on a read-only export: %v, want ErrTrimUnsupported", err)
		}
	})
	t.Run("writable", func(t *testing.T) {
		cp := filepath.Join(img.dir, "copy.qcow2")
		data, err := os.ReadFile(img.path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c := dial(t, serveUnix(t, img.dir, cp, "qcow2", "--discard=unmap"), nbd.Options{MetaContexts: []string{nbd.ContextBaseAllocation}})
		if !c.Flags().CanTrim() {
			t.Fatalf("flags %#x: no TRIM on a writable export", c.Flags())
		}
		const off, n = 2 << 20, 2 << 20 // inside the 0xaa data, cluster-aligned
		if err := c.Trim(t.Context(), off, n); err != nil {
			t.Fatal(err)
		}
		p := make([]byte, n)
		if err := c.ReadAt(t.Context(), p, off); err != nil {
			t.Fatal(err)
		}
		if !allZero(p) {
			t.Fatal("trimmed range still has data")
		}
		id, _ := c.MetaContextID(nbd.ContextBaseAllocation)
		exts, err := c.BlockStatus(t.Context(), id, off, n)
		if err != nil || exts[0].Flags&nbd.StateZero == 0 || exts[0].Length != n {
			t.Fatalf("block status after trim = %v, %v", exts, err)
		}
		// Data next to it is untouched.
		q := make([]byte, 4096)
		if err := c.ReadAt(t.Context(), q, off+n); err != nil || !bytes.Equal(q, img.raw[off+n:off+n+4096]) {
			t.Fatalf("neighbouring data after trim: %v", err)
		}
	})
}

func TestQEMU_Errors(t *testing.T) {
	img := newTestImage(t)
	uri := serveUnix(t, img.dir, img.path, "qcow2", "--read-only", "-B", "bm0")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := nbd.Dial(ctx, strings.Replace(uri, exportName, "nope", 1), nbd.Options{})
	if !errors.Is(err, nbd.ErrUnknownExport) {
		t.Fatalf("unknown export: %v", err)
	}
	c := dial(t, uri, nbd.Options{})
	if err := c.ReadAt(ctx, make([]byte, 4096), imageSize-2048); !errors.Is(err, nbd.ErrInvalidRequest) {
		t.Fatalf("read past the end: %v", err)
	}
	// The connection still works after refused calls.
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkReadAt_QEMU reads a 256 MiB raw image exported by qemu-nbd over
// a UNIX socket, 16 requests in flight per connection. For the reference,
// BenchmarkNbdcopy_QEMU copies the same export to null: with nbdcopy.
//
//	go test -run '^$' -bench 'QEMU' -count 5 ./internal/nbd/
func BenchmarkReadAt_QEMU(b *testing.B) {
	uri, size := benchExport(b)
	for _, bc := range []struct {
		conns   int
		reqSize int64
	}{{1, 256 << 10}, {1, 1 << 20}, {1, 4 << 20}, {4, 1 << 20}} {
		b.Run(fmt.Sprintf("conns=%d/req=%dK", bc.conns, bc.reqSize>>10), func(b *testing.B) {
			clients := make([]*nbd.Client, bc.conns)
			for i := range clients {
				clients[i] = dial(b, uri, nbd.Options{})
			}
			bufs := make([][]byte, 16*bc.conns)
			for i := range bufs {
				bufs[i] = make([]byte, bc.reqSize)
			}
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := benchRead(b.Context(), clients, bufs, size, bc.reqSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchRead reads size bytes spread over clients with one buffer per
// request slot, so no data-sized allocation happens per request.
func benchRead(ctx context.Context, clients []*nbd.Client, bufs [][]byte, size, reqSize int64) error {
	g, ctx := errgroup.WithContext(ctx)
	slots := make(chan []byte, len(bufs))
	for _, b := range bufs {
		slots <- b
	}
	i := 0
	for off := int64(0); off < size; off += reqSize {
		c := clients[i%len(clients)]
		i++
		buf := <-slots
		g.Go(func() error {
			defer func() { slots <- buf }()
			return c.ReadAt(ctx, buf[:min(reqSize, size-off)], off)
		})
	}
	return g.Wait()
}

func BenchmarkNbdcopy_QEMU(b *testing.B) {
	uri, size := benchExport(b)
	nbdcopy := testenv.Tool(b, testenv.PeerQEMU, "nbdcopy")
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		run(b, nbdcopy, uri, "null:")
	}
}

func benchExport(b *testing.B) (uri string, size int64) {
	b.Helper()
	size = 256 << 20
	dir := b.TempDir()
	img := filepath.Join(dir, "bench.raw")
	run(b, testenv.Tool(b, testenv.PeerQEMU, "qemu-img"), "create", "-q", "-f", "raw", img, strconv.FormatInt(size, 10))
	qemuIO(b, "raw", img, []write{{pattern: 0x3c, off: 0, size: size}})
	return serveUnix(b, dir, img, "raw", "--read-only"), size
}
