package handlers_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/testenv"
)

const mib = 1 << 20

// mixedImage writes a raw disk image of random, zero and repeated 4 MiB
// blocks (and a short random tail) and returns its path.
func mixedImage(t *testing.T, dir string, slots int, tail int, seed uint64) string {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), 1, 2, 3}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	repeated := random(4 * mib)
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("disk-%d.raw", seed)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range slots {
		var b []byte
		switch i % 5 {
		case 0, 3:
			b = random(4 * mib)
		case 1:
			b = make([]byte, 4*mib)
		case 2:
			b = repeated
		case 4:
			b = append(random(2*mib), make([]byte, 2*mib)...)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Write(random(tail)); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	path := testenv.Tool(t, testenv.PeerQEMU, name)
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// toQcow2 converts a raw image to qcow2 (zero blocks become unallocated)
// and adds an enabled dirty bitmap bm0 of the given granularity.
func toQcow2(t *testing.T, raw string, granularity string) string {
	t.Helper()
	q := strings.TrimSuffix(raw, ".raw") + ".qcow2"
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q)
	runTool(t, "qemu-img", "bitmap", "--add", "--enable", "-g", granularity, q, "bm0")
	return q
}

// rawSHA is the SHA-256 of `qemu-img convert -O raw` of an image.
func rawSHA(t *testing.T, img string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	runTool(t, "qemu-img", "convert", "-O", "raw", img, out)
	return fileSHA(t, out)
}

func fileSHA(t *testing.T, path string) string {
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
	return hex.EncodeToString(h.Sum(nil))
}

// qemuNBD serves img read-only as export drive-scsi0 (or name) with the
// dirty bitmap bm0, on a UNIX socket, or on 127.0.0.1 when tcp is set. It
// is stopped by PID when the test ends or stop is called.
type qemuNBD struct {
	uri  string
	sock string
	stop func()
}

func startQemuNBD(t *testing.T, img, export string, tcp bool) *qemuNBD {
	t.Helper()
	return startQemuNBDArgs(t, img, export, tcp, "--read-only")
}

// startWritableQemuNBD exports img writable with discards passed down, as
// PVE's fleecing export takes TRIM.
func startWritableQemuNBD(t *testing.T, img, export string) *qemuNBD {
	t.Helper()
	return startQemuNBDArgs(t, img, export, false, "--discard=unmap")
}

func startQemuNBDArgs(t *testing.T, img, export string, tcp bool, extra ...string) *qemuNBD {
	t.Helper()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "nbd.pid")
	args := append([]string{"--fork", "--pid-file=" + pidFile, "--persistent", "--shared=8",
		"-f", "qcow2", "-B", "bm0", "-x", export}, extra...)
	q := &qemuNBD{}
	if tcp {
		port := freePort(t)
		args = append(args, "-b", "127.0.0.1", "-p", strconv.Itoa(port))
		q.uri = fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, export)
	} else {
		q.sock = filepath.Join(dir, "nbd.sock")
		args = append(args, "-k", q.sock)
		q.uri = "nbd+unix:///" + export + "?socket=" + q.sock
	}
	runTool(t, "qemu-nbd", append(args, img)...)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("qemu-nbd pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("qemu-nbd pid %q", b)
	}
	stopped := false
	q.stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for range 100 { // wait until it has released the image
			if syscall.Kill(pid, 0) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	t.Cleanup(q.stop)
	return q
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type taskView struct {
	State string `json:"state"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	Error string `json:"error"`
}

// waitTask polls a task until it is no longer running.
func (s *testServer) waitTask(token, id string) taskView {
	s.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		r := s.do("GET", "/api/v1/tasks/"+id, token, "", nil)
		wantStatus(s.t, r, http.StatusOK)
		var tv taskView
		r.json(s.t, &tv)
		if tv.State != "running" {
			return tv
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("task %s still running after 2 minutes", id)
	return taskView{}
}

// startPull starts a disk pull and returns its task id.
func (s *testServer) startPull(token, session string, body map[string]any) string {
	s.t.Helper()
	r := s.doJSON("POST", "/api/v1/backups/"+session+"/disks", token, body)
	wantStatus(s.t, r, http.StatusAccepted)
	var tr struct {
		TaskID string `json:"task_id"`
	}
	r.json(s.t, &tr)
	return tr.TaskID
}

// openTunnel does what the plugin does: upgrade a connection on the disk's
// tunnel route and relay it to the local NBD socket until either side ends.
func (s *testServer) openTunnel(token, session, device, sock string) {
	s.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		s.t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /api/v1/backups/%s/disks/%s/tunnel HTTP/1.1\r\nHost: backstop\r\nAuthorization: Bearer %s\r\n"+
		"Connection: Upgrade\r\nUpgrade: nbd\r\n\r\n", session, device, token)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		s.t.Fatalf("tunnel: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		conn.Close()
		s.t.Fatalf("tunnel: %d %s", resp.StatusCode, b)
	}
	local, err := net.Dial("unix", sock)
	if err != nil {
		conn.Close()
		s.t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(local, br); local.(*net.UnixConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, local); conn.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	s.t.Cleanup(func() {
		conn.Close()
		local.Close()
		<-done
		<-done
	})
}

// snapshotSHA reads a disk of a committed snapshot back through the chunk
// store and hashes it.
func (s *testServer) snapshotSHA(name, device string) string {
	s.t.Helper()
	ctx := context.Background()
	snap, err := s.catalog.SnapshotByName(ctx, backup.DefaultNamespace, name)
	if err != nil {
		s.t.Fatal(err)
	}
	im, err := s.backups.OpenImage(ctx, snap, device)
	if err != nil {
		s.t.Fatal(err)
	}
	h := sha256.New()
	if _, err := im.WriteTo(ctx, h); err != nil {
		s.t.Fatalf("read snapshot %s %s: %v", name, device, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
