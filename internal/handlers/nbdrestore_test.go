package handlers_test

import (
	"bufio"
	"fmt"
	"io"
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

	"github.com/backstop-pve/backstop/internal/testenv"
)

type exportView struct {
	ID, URI, Export, Tunnel string
}

func (s *testServer) createExport(token, name string, body map[string]any) exportView {
	s.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	r := s.doJSON("POST", "/api/v1/snapshots/"+name+"/disks/drive-scsi0/exports", token, body)
	wantStatus(s.t, r, http.StatusCreated)
	var e exportView
	r.json(s.t, &e)
	return e
}

// toolOutput runs a command-line peer and returns its output and error.
func toolOutput(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path := testenv.Tool(t, testenv.PeerQEMU, name)
	cmd := exec.Command(path, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// nbdfuseFile mounts an NBD URI as a plain file the way the PVE plugin
// does and returns its path; it is unmounted and nbdfuse stopped by PID
// when the test ends.
func nbdfuseFile(t *testing.T, uri string) string {
	t.Helper()
	mnt := t.TempDir()
	file := filepath.Join(mnt, "disk.raw")
	cmd := exec.Command(testenv.Tool(t, testenv.PeerQEMU, "nbdfuse"), "--readonly", file, uri)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("fusermount3", "-u", mnt).Run()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
	})
	for range 200 {
		if st, err := os.Stat(file); err == nil && st.Size() > 0 {
			return file
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("nbdfuse did not mount %s: %s", uri, stderr.String())
	return ""
}

// pveRestore does what qmrestore does with qemu-img-path: convert the raw
// file into an existing target.
func pveRestore(t *testing.T, src string, size int64) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "target.raw")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, size); err != nil {
		t.Fatal(err)
	}
	runTool(t, "qemu-img", "convert", "-p", "-n", "-f", "raw", src, "-O", "raw", target)
	return fileSHA(t, target)
}

// TestRestore_NBDExport restores a full and an incremental snapshot with
// real NBD clients: qemu-img from the export, the PVE path (nbdfuse file,
// then qemu-img convert -n), nbdcopy with several connections, and
// through the HTTPS upgrade tunnel; nbdinfo sees zero chunks as holes and
// lists bound exports; writes and unknown names are refused.
func TestRestore_NBDExport(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	const slots = 6
	size := int64(slots * 4 * mib)
	img := toQcow2(t, mixedImage(t, dir, slots, 0, 21), "64K")
	fullSHA := rawSHA(t, img)
	src := startQemuNBD(t, img, "drive-scsi0", false)
	full := s.openBackup(bk, 130, "qemu", 1764100000)
	if tv := s.waitTask(bk, s.startPull(bk, full.ID, map[string]any{"device": "drive-scsi0", "size": size,
		"bitmap_mode": "none", "source": map[string]any{"uri": src.uri}})); tv.State != "ok" {
		t.Fatalf("full: %+v", tv)
	}
	s.commit(bk, full.ID)
	src.stop()
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x42 4259840 65536", img) // inside the zero slot 1
	incSHA := rawSHA(t, img)
	src = startQemuNBD(t, img, "drive-scsi0", false)
	inc := s.openBackup(bk, 130, "qemu", 1764100100)
	if tv := s.waitTask(bk, s.startPull(bk, inc.ID, map[string]any{"device": "drive-scsi0", "size": size,
		"bitmap_mode": "reuse", "bitmap_name": "bm0", "source": map[string]any{"uri": src.uri}})); tv.State != "ok" {
		t.Fatalf("incremental: %+v", tv)
	}
	s.commit(bk, inc.ID)
	src.stop()

	for _, c := range []struct {
		name, sha string
	}{{full.Name, fullSHA}, {inc.Name, incSHA}} {
		e := s.createExport(bk, c.name, nil)
		out := filepath.Join(t.TempDir(), "out.raw")
		runTool(t, "qemu-img", "convert", "-f", "raw", e.URI, out)
		if fileSHA(t, out) != c.sha {
			t.Fatalf("%s: qemu-img convert from the export differs from the image", c.name)
		}
		if got := pveRestore(t, nbdfuseFile(t, e.URI), size); got != c.sha {
			t.Fatalf("%s: the nbdfuse path differs from the image", c.name)
		}
		out2 := filepath.Join(t.TempDir(), "copy.raw")
		runTool(t, "nbdcopy", "--connections=4", e.URI, out2)
		if fileSHA(t, out2) != c.sha {
			t.Fatalf("%s: nbdcopy differs", c.name)
		}
	}

	// Zero chunks are holes: slot 1 of the full snapshot is zeros.
	e := s.createExport(bk, full.Name, nil)
	m, err := toolOutput(t, "nbdinfo", "--map", e.URI)
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, m)
	}
	if !strings.Contains(m, fmt.Sprintf("%d  %d    3  hole,zero", 4*mib, 4*mib)) &&
		!regexpHoleAt(m, 4*mib) {
		t.Fatalf("nbdinfo --map does not show the zero slot as a hole:\n%s", m)
	}
	// Writes are refused.
	if out, err := toolOutput(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 512", e.URI); err == nil && !strings.Contains(out, "failed") {
		t.Fatalf("a write to the export succeeded: %s", out)
	}
	// An unknown name is refused.
	bad := strings.TrimSuffix(e.URI, e.Export) + strings.Repeat("0", 32)
	if out, err := toolOutput(t, "qemu-img", "info", bad); err == nil {
		t.Fatalf("unknown export opened: %s", out)
	}
	// Listing shows the exports bound to this client, and only those.
	bound := s.createExport(bk, full.Name, map[string]any{"bind_client": true})
	list, err := toolOutput(t, "nbdinfo", "--list", "--json", strings.TrimSuffix(e.URI, "/"+e.Export))
	if err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, list)
	}
	if !strings.Contains(list, bound.Export) || strings.Contains(list, e.Export) {
		t.Fatalf("nbdinfo --list shows %s; want the bound export %s and not the unbound %s", list, bound.Export, e.Export)
	}
	// A deleted export is gone for new connections.
	wantStatus(t, s.do("DELETE", "/api/v1/exports/"+e.ID, bk, "", nil), http.StatusNoContent)
	if out, err := toolOutput(t, "qemu-img", "info", e.URI); err == nil {
		t.Fatalf("deleted export opened: %s", out)
	}

	// Through the HTTPS upgrade tunnel, relayed to a local socket.
	sock := s.exportTunnelSocket(bk, bound.ID)
	out := filepath.Join(t.TempDir(), "tunnel.raw")
	runTool(t, "qemu-img", "convert", "-f", "raw", "nbd+unix:///"+bound.Export+"?socket="+sock, out)
	if fileSHA(t, out) != fullSHA {
		t.Fatal("restore through the tunnel differs from the image")
	}
}

func regexpHoleAt(m string, off int64) bool {
	for _, line := range strings.Split(m, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == strconv.FormatInt(off, 10) && strings.Contains(f[3], "hole") && strings.Contains(f[3], "zero") {
			return true
		}
	}
	return false
}

// exportTunnelSocket listens on a local UNIX socket and, for each client,
// opens the export's upgrade tunnel and relays, as the plugin does for a
// node without a route to the NBD port.
func (s *testServer) exportTunnelSocket(token, id string) string {
	t := s.t
	t.Helper()
	sock := filepath.Join(t.TempDir(), "export.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			local, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer local.Close()
				conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
				if err != nil {
					return
				}
				defer conn.Close()
				fmt.Fprintf(conn, "GET /api/v1/exports/%s/tunnel HTTP/1.1\r\nHost: backstop\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: nbd\r\n\r\n", id, token)
				br := bufio.NewReader(conn)
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					return
				}
				go func() { _, _ = io.Copy(conn, local); conn.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(local, br)
			}()
		}
	}()
	return sock
}

// TestRestore_NBDDamagedChunk: a chunk that cannot be read gives the NBD
// client an I/O error, never wrong bytes.
func TestRestore_NBDDamagedChunk(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	name, want := s.backedUpDisk(bk, 131, 3, 0)
	// Delete the object of the first chunk from the store directory.
	var removed bool
	_ = filepath.WalkDir(s.storeDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(p, filepath.Join(s.storeDir, "chunks")) && !removed {
			if b, _ := os.ReadFile(p); len(b) > 0 {
				removed = os.Remove(p) == nil
			}
		}
		return nil
	})
	if !removed {
		t.Fatal("no chunk object to remove")
	}
	e := s.createExport(bk, name, nil)
	out := filepath.Join(t.TempDir(), "out.raw")
	res, err := toolOutput(t, "qemu-img", "convert", "-f", "raw", e.URI, out)
	if err == nil {
		if b, _ := os.ReadFile(out); string(b) == string(want) {
			t.Fatal("restore succeeded although a chunk was removed (was the chunk in use?)")
		}
		t.Fatalf("qemu-img convert succeeded with a missing chunk and produced wrong bytes:\n%s", res)
	}
	if !strings.Contains(strings.ToLower(res), "input/output error") && !strings.Contains(strings.ToLower(res), "error") {
		t.Fatalf("qemu-img failed without an I/O error: %s", res)
	}
}
