package nbd_test

// The server against real NBD clients: qemu-img, qemu-io, nbdinfo,
// nbdcopy and nbdfuse (as PVE reads a restore export). They skip when the
// tools are missing, or fail when BACKSTOP_TEST_REQUIRE names qemu. The
// server listens on 127.0.0.1 only; every process started here is
// waited for, or stopped by PID.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/nbd"
	"github.com/backstop-pve/backstop/internal/testenv"
)

const (
	toolImageSize = 64<<20 + 4608 // a multiple of 512 (as disks are), not of the granule
	// oddImageSize is not even a multiple of 512. qemu-img then pads its
	// copy with zeroes to the next 512 bytes (it counts in sectors).
	oddImageSize = 64<<20 + 4096 + 123
	toolGranule  = 64 << 10
	toolExport   = "restore-disk0"
	toolTimeout  = 2 * time.Minute
)

// newToolImage returns toolImageSize bytes of random data with zero
// ranges (holes), zero bytes inside data granules and a tail shorter than
// a granule.
func newToolImage() *nbd.TestImage { return newToolImageSize(toolImageSize) }

func newToolImageSize(size int64) *nbd.TestImage {
	data := nbd.TestImageData(size, 3)
	clear(data[10<<20 : 20<<20])
	clear(data[40<<20+64<<10 : 41<<20])
	clear(data[50<<20+17 : 50<<20+70000])
	return nbd.NewTestImage(data, toolGranule)
}

// startServer serves exports on 127.0.0.1 and a free port, and shuts the
// server down when the test ends.
func startServer(t testing.TB, exports nbd.Exports, opts nbd.ServerOptions) (*nbd.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(exports, opts)
	srv.SetPanicHook(func(v any) { t.Errorf("server panicked: %v", v) })
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, l.Addr().String()
}

// serveToolImage serves img as toolExport and returns the exports and its URI.
func serveToolImage(t testing.TB, img nbd.Image, opts nbd.ServerOptions) (*nbd.TestExports, string) {
	t.Helper()
	exports := nbd.NewTestExports(map[string]nbd.Image{toolExport: img, "second": nbd.NewTestImage(make([]byte, 1<<20), toolGranule)})
	_, addr := startServer(t, exports, opts)
	return exports, "nbd://" + addr + "/" + toolExport
}

// runTool runs a command to completion (killed after toolTimeout) and
// returns its combined output.
func runTool(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: timed out\n%s", name, strings.Join(args, " "), out)
	}
	return string(out), err
}

func mustRunTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runTool(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func fileSHA256(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func imageSHA256(t testing.TB, img nbd.Image) [32]byte {
	t.Helper()
	return sha256.Sum256(imageBytes(t, img))
}

func TestServerTools_QEMUImgConvert(t *testing.T) {
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	img := newToolImage()
	_, uri := serveToolImage(t, img, nbd.ServerOptions{})
	out := filepath.Join(t.TempDir(), "out.raw")
	mustRunTool(t, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, out)
	checkCopy(t, out, img)
	info := mustRunTool(t, qemuImg, "info", "--output=json", uri)
	var v struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil || v.VirtualSize != toolImageSize {
		t.Fatalf("qemu-img info: %v\n%s", err, info)
	}
	t.Run("odd size", func(t *testing.T) {
		img := newToolImageSize(oddImageSize)
		_, uri := serveToolImage(t, img, nbd.ServerOptions{})
		out := filepath.Join(t.TempDir(), "out.raw")
		mustRunTool(t, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, out)
		checkCopy(t, out, img)
	})
}

// checkCopy compares a tool's copy with the image by SHA-256. A copy by
// qemu-img of an image whose size is not a multiple of 512 may carry up
// to 511 bytes of zero padding.
func checkCopy(t testing.TB, path string, img nbd.Image) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := img.Size()
	if pad := int64(len(got)) - size; pad != 0 {
		if size%512 == 0 || pad < 0 || pad >= 512 || !allZero(got[size:]) {
			t.Fatalf("copy has %d bytes, the image %d", len(got), size)
		}
		got = got[:size]
	}
	if sha256.Sum256(got) != imageSHA256(t, img) {
		t.Fatalf("copy differs from the image (first difference at byte %d)", firstDiff(got, imageBytes(t, img)))
	}
}

func imageBytes(t testing.TB, img nbd.Image) []byte {
	t.Helper()
	p := make([]byte, img.Size())
	if err := img.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServerTools_NbdinfoMap(t *testing.T) {
	testenv.Tool(t, testenv.PeerQEMU, "nbdinfo")
	img := newToolImage()
	_, uri := serveToolImage(t, img, nbd.ServerOptions{})
	got := nbdinfoMap(t, uri, nbd.ContextBaseAllocation)
	want, err := img.Extents(context.Background(), 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if !equalExtents(got, want) {
		t.Fatalf("nbdinfo --map:\ngot  %v\nwant %v", got, want)
	}
	var zero int64
	for _, e := range got {
		if e.Flags == nbd.StateHole|nbd.StateZero {
			zero += e.Length
		}
	}
	if want := int64(192<<10 + 64<<10 + 10<<20 + 1<<20 - 64<<10); zero != want {
		t.Fatalf("%d bytes mapped as holes, want %d", zero, want)
	}
}

func TestServerTools_NbdinfoList(t *testing.T) {
	nbdinfo := testenv.Tool(t, testenv.PeerQEMU, "nbdinfo")
	_, uri := serveToolImage(t, newToolImage(), nbd.ServerOptions{})
	out := mustRunTool(t, nbdinfo, "--list", "--json", strings.TrimSuffix(uri, toolExport))
	var v struct {
		Exports []struct {
			Name       string   `json:"export-name"`
			Size       int64    `json:"export-size"`
			ReadOnly   bool     `json:"is_read_only"`
			MultiConn  bool     `json:"can_multi_conn"`
			Contexts   []string `json:"contexts"`
			MinBlock   int64    `json:"block_size_minimum"`
			MaxPayload int64    `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	if len(v.Exports) != 2 {
		t.Fatalf("nbdinfo --list shows %d exports:\n%s", len(v.Exports), out)
	}
	e := v.Exports[0]
	if e.Name != toolExport || e.Size != toolImageSize || !e.ReadOnly || !e.MultiConn || e.MinBlock != 1 ||
		e.MaxPayload != 32<<20 || len(e.Contexts) != 1 || e.Contexts[0] != nbd.ContextBaseAllocation || v.Exports[1].Name != "second" {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}
}

func TestServerTools_Nbdcopy(t *testing.T) {
	nbdcopy := testenv.Tool(t, testenv.PeerQEMU, "nbdcopy")
	img := newToolImage()
	exports, uri := serveToolImage(t, img, nbd.ServerOptions{})
	out := filepath.Join(t.TempDir(), "out.raw")
	mustRunTool(t, nbdcopy, "--connections=4", uri, out)
	checkCopy(t, out, img)
	if l, _ := exports.Lookups(); l < 4 {
		t.Fatalf("%d export lookups; nbdcopy should have used 4 connections (CAN_MULTI_CONN)", l)
	}
}

// TestServerTools_Nbdfuse reads the export as PVE restores it: nbdfuse
// makes it a file, qemu-img convert copies that into an existing target.
func TestServerTools_Nbdfuse(t *testing.T) {
	nbdfuse := testenv.Tool(t, testenv.PeerQEMU, "nbdfuse")
	fusermount := testenv.Tool(t, testenv.PeerQEMU, "fusermount3")
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Missing(t, testenv.PeerQEMU, "/dev/fuse: "+err.Error())
	}
	img := newToolImage()
	_, uri := serveToolImage(t, img, nbd.ServerOptions{})
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(mnt, "disk.raw")
	mountFuse(t, nbdfuse, fusermount, mnt, disk, uri)
	target := filepath.Join(dir, "target.raw")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, toolImageSize); err != nil {
		t.Fatal(err)
	}
	mustRunTool(t, qemuImg, "convert", "-p", "-n", "-f", "raw", disk, "-O", "raw", target)
	checkCopy(t, target, img)
	if err := os.WriteFile(disk, []byte("x"), 0); err == nil {
		t.Fatal("writing the read-only nbdfuse file succeeded")
	}
}

// mountFuse starts nbdfuse in the background, waits for file to appear,
// and unmounts and stops it (by PID) when the test ends.
func mountFuse(t *testing.T, nbdfuse, fusermount, mnt, file, uri string) {
	t.Helper()
	pidFile := filepath.Join(filepath.Dir(mnt), "nbdfuse.pid")
	cmd := exec.Command(nbdfuse, "--readonly", "-P", pidFile, file, uri)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if out, err := runTool(t, fusermount, "-u", mnt); err != nil {
			t.Logf("fusermount3 -u: %v %s", err, out)
		}
		select {
		case <-exited:
			return
		case <-time.After(5 * time.Second):
		}
		t.Logf("nbdfuse %d still running after unmount; killing it", cmd.Process.Pid)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(file); err == nil && fi.Size() == toolImageSize {
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("nbdfuse exited: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse: %s did not appear\n%s", file, stderr.String())
		}
	}
}

func TestServerTools_WriteRefused(t *testing.T) {
	qemuIO := testenv.Tool(t, testenv.PeerQEMU, "qemu-io")
	img := newToolImage()
	_, uri := serveToolImage(t, img, nbd.ServerOptions{})
	before := imageSHA256(t, img)
	out, err := runTool(t, qemuIO, "-f", "raw", "-c", "write -P 0x55 0 512", uri)
	if err == nil {
		t.Fatalf("qemu-io write succeeded:\n%s", out)
	}
	if !strings.Contains(out, "ermission denied") && !strings.Contains(out, "read-only") && !strings.Contains(out, "read only") {
		t.Fatalf("qemu-io write failed for another reason: %v\n%s", err, out)
	}
	if imageSHA256(t, img) != before {
		t.Fatal("image changed")
	}
}

func TestServerTools_ReadErrorFailsConvert(t *testing.T) {
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	img := newToolImage()
	img.FailReads(30<<20+12345, 1)
	_, uri := serveToolImage(t, img, nbd.ServerOptions{})
	out, err := runTool(t, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, filepath.Join(t.TempDir(), "out.raw"))
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("qemu-img convert over a failing read: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Input/output error") {
		t.Fatalf("qemu-img convert failed without an I/O error:\n%s", out)
	}
}

func TestServerTools_UnknownExport(t *testing.T) {
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	nbdinfo := testenv.Tool(t, testenv.PeerQEMU, "nbdinfo")
	_, uri := serveToolImage(t, newToolImage(), nbd.ServerOptions{})
	bad := strings.TrimSuffix(uri, toolExport) + "nope"
	if out, err := runTool(t, qemuImg, "info", bad); err == nil {
		t.Fatalf("qemu-img info of an unknown export succeeded:\n%s", out)
	}
	if out, err := runTool(t, nbdinfo, bad); err == nil || !strings.Contains(strings.ToLower(out), "export") {
		t.Fatalf("nbdinfo of an unknown export: %v\n%s", err, out)
	}
}

// TestServerTools_TLS: nbdinfo and qemu-img over STARTTLS with a
// self-signed certificate; a plain client is refused by RequireTLS.
func TestServerTools_TLS(t *testing.T) {
	nbdinfo := testenv.Tool(t, testenv.PeerQEMU, "nbdinfo")
	qemuImg := testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	cfg, certPEM := nbd.SelfSignedTLS(t)
	certDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(certDir, "ca-cert.pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	img := newToolImage()
	_, uri := serveToolImage(t, img, nbd.ServerOptions{TLSConfig: cfg, RequireTLS: true})
	addr := strings.TrimSuffix(strings.TrimPrefix(uri, "nbd://"), "/"+toolExport)
	tlsURI := "nbds://" + addr + "/" + toolExport + "?tls-certificates=" + certDir
	out := mustRunTool(t, nbdinfo, "--json", tlsURI)
	var v struct {
		TLS     bool `json:"TLS"`
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || !v.TLS || len(v.Exports) != 1 || v.Exports[0].Size != toolImageSize {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	if out, err := runTool(t, nbdinfo, uri); err == nil {
		t.Fatalf("nbdinfo without TLS succeeded:\n%s", out)
	}
	host, port, _ := net.SplitHostPort(addr)
	target := filepath.Join(t.TempDir(), "out.raw")
	mustRunTool(t, qemuImg, "convert",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certDir,
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", host, port, toolExport),
		"-O", "raw", target)
	checkCopy(t, target, img)
}

// fileImage serves a file, all of it as data.
type fileImage struct {
	f    *os.File
	size int64
}

func (fi *fileImage) Size() int64 { return fi.size }

func (fi *fileImage) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := fi.f.ReadAt(p, off)
	return err
}

func (fi *fileImage) Extents(_ context.Context, off, length int64) ([]nbd.Extent, error) {
	return []nbd.Extent{{Offset: off, Length: length}}, nil
}

// BenchmarkServer_QEMUImgConvert copies a 256 MiB raw image of random
// data with qemu-img convert, from our server and from qemu-nbd serving
// the same file, both over TCP on 127.0.0.1, into /dev/shm. It reports
// the seconds per copy of each and their ratio (ours / qemu-nbd; lower is
// better). Runs alternate to spread the noise of a shared machine.
//
//	go test -run '^$' -bench ServerQEMUImgConvert -benchtime 5x ./internal/nbd/
func BenchmarkServer_QEMUImgConvert(b *testing.B) {
	qemuImg := testenv.Tool(b, testenv.PeerQEMU, "qemu-img")
	const size = 256 << 20
	dir := b.TempDir()
	path := filepath.Join(dir, "bench.raw")
	if err := os.WriteFile(path, nbd.TestImageData(size, 9), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	_, ours := serveToolImage(b, &fileImage{f: f, size: size}, nbd.ServerOptions{})
	theirs := serveTCP(b, dir, path, "raw", "--read-only")
	outDir := dir
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		outDir = b.TempDir()
		if shm, err := os.MkdirTemp("/dev/shm", "backstop-bench-"); err == nil {
			outDir = shm
			b.Cleanup(func() { os.RemoveAll(shm) })
		}
	}
	out := filepath.Join(outDir, "out.raw")
	convert := func(uri string) time.Duration {
		os.Remove(out)
		start := time.Now()
		mustRunTool(b, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, out)
		return time.Since(start)
	}
	convert(ours) // warm the page cache
	convert(theirs)
	var tOurs, tTheirs time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			tOurs += convert(ours)
			tTheirs += convert(theirs)
		} else {
			tTheirs += convert(theirs)
			tOurs += convert(ours)
		}
	}
	b.StopTimer()
	b.ReportMetric(tOurs.Seconds()/float64(b.N), "backstop-s/copy")
	b.ReportMetric(tTheirs.Seconds()/float64(b.N), "qemu-nbd-s/copy")
	b.ReportMetric(float64(tOurs)/float64(tTheirs), "ratio")
	b.ReportMetric(float64(size*b.N)/tOurs.Seconds()/1e6, "backstop-MB/s")
	b.ReportMetric(float64(size*b.N)/tTheirs.Seconds()/1e6, "qemu-nbd-MB/s")
	b.Logf("qemu-img convert of %d MiB: backstop %v, qemu-nbd %v per copy, ratio %.2f (%d runs)", size>>20,
		tOurs/time.Duration(b.N), tTheirs/time.Duration(b.N), float64(tOurs)/float64(tTheirs), b.N)
}
