package handlers_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"
)

func (s *testServer) queryIncremental(token, session, device string, size int64) string {
	s.t.Helper()
	r := s.doJSON("POST", "/api/v1/backups/"+session+"/incremental", token,
		map[string]any{"devices": map[string]any{device: map[string]any{"size": size}}})
	wantStatus(s.t, r, http.StatusOK)
	var a struct {
		Devices map[string]string `json:"devices"`
	}
	r.json(s.t, &a)
	return a.Devices[device]
}

func (s *testServer) commit(token, session string) {
	s.t.Helper()
	wantStatus(s.t, s.do("POST", "/api/v1/backups/"+session+"/commit", token, "", nil), http.StatusOK)
}

func (s *testServer) snapshotNewBytes(token, name string) int64 {
	s.t.Helper()
	r := s.do("GET", "/api/v1/snapshots/"+name, token, "", nil)
	wantStatus(s.t, r, http.StatusOK)
	var v struct {
		NewBytes int64 `json:"new_bytes"`
	}
	r.json(s.t, &v)
	return v.NewBytes
}

// TestVMBackup_FullAndIncremental backs up a qcow2 disk (random, zero and
// repeated blocks, size not a multiple of 4 MiB) from real qemu-nbd exports
// into a real S3 server: over a UNIX socket, over TCP and through the
// tunnel; then, after writes tracked by a 64 KiB dirty bitmap, an
// incremental that reads only the dirty bytes. Every snapshot must equal
// `qemu-img convert -O raw` of the image at its time, byte for byte.
func TestVMBackup_FullAndIncremental(t *testing.T) {
	s := newS3TestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	const slots, tail = 10, 64 << 10
	size := int64(slots*4*mib + tail)
	img := toQcow2(t, mixedImage(t, dir, slots, tail, 1), "64K")
	wantSHA := rawSHA(t, img)
	const dev = "drive-scsi0"

	unix := startQemuNBD(t, img, dev, false)
	full := func(at int64, source map[string]any, mode string) session {
		b := s.openBackup(bk, 100, "qemu", at)
		body := map[string]any{"device": dev, "size": size, "bitmap_mode": mode, "source": source}
		if mode != "none" {
			body["bitmap_name"] = "bm0"
		}
		task := s.startPull(bk, b.ID, body)
		if source["tunnel"] == true {
			s.openTunnel(bk, b.ID, dev, unix.sock)
		}
		tv := s.waitTask(bk, task)
		if tv.State != "ok" {
			t.Fatalf("pull %s: %+v", mode, tv)
		}
		s.commit(bk, b.ID)
		if got := s.snapshotSHA(b.Name, dev); got != wantSHA {
			t.Fatalf("snapshot %s (%v, %s) differs from the image: %s, want %s", b.Name, source, mode, got, wantSHA)
		}
		return b
	}

	first := s.openBackup(bk, 100, "qemu", 1764100000)
	if got := s.queryIncremental(bk, first.ID, dev, size); got != "new" {
		t.Fatalf("first backup: incremental answer %q, want new", got)
	}
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+first.ID+"/finish", bk, map[string]any{"success": false}), http.StatusOK)

	b1 := full(1764100001, map[string]any{"uri": unix.uri}, "none")
	// Zero slots are never read (base:allocation) and never stored;
	// the repeated block is stored once.
	if nb := s.snapshotNewBytes(bk, b1.Name); nb <= 0 || nb > 6*4*mib+tail+64<<10 {
		t.Fatalf("first full backup stored %d new bytes; want the 5.5 unique random blocks plus tail", nb)
	}
	tcp := startQemuNBD(t, img, dev, true)
	b2 := full(1764100002, map[string]any{"uri": tcp.uri}, "none")
	if nb := s.snapshotNewBytes(bk, b2.Name); nb != 0 {
		t.Fatalf("second full backup of the same image stored %d new bytes, want 0 (dedup)", nb)
	}
	tcp.stop()
	full(1764100003, map[string]any{"tunnel": true}, "new")
	unix.stop()

	// Change the image: writes smaller than a chunk, and one across a
	// chunk boundary; the bitmap (64 KiB granularity) tracks them.
	runTool(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0x5c 8388608 65536", // 64 KiB inside slot 2
		"-c", "write -P 0x33 12648448 4096", // 4 KiB inside slot 3 → one 64 KiB granule
		"-c", "write -P 0x71 16711680 131072", // 128 KiB across slots 3 and 4
		img)
	const dirty = 64<<10 + 64<<10 + 128<<10
	newSHA := rawSHA(t, img)
	unix = startQemuNBD(t, img, dev, false)

	inc := s.openBackup(bk, 100, "qemu", 1764100100)
	if got := s.queryIncremental(bk, inc.ID, dev, size); got != "use" {
		t.Fatalf("incremental answer %q, want use", got)
	}
	if got := s.queryIncremental(bk, inc.ID, dev, size+512); got != "new" {
		t.Fatalf("incremental answer for a resized disk %q, want new", got)
	}
	task := s.startPull(bk, inc.ID, map[string]any{"device": dev, "size": size, "bitmap_mode": "reuse",
		"bitmap_name": "bm0", "source": map[string]any{"tunnel": true}})
	s.openTunnel(bk, inc.ID, dev, unix.sock)
	tv := s.waitTask(bk, task)
	if tv.State != "ok" {
		t.Fatalf("incremental pull: %+v", tv)
	}
	if tv.Total != dirty || tv.Done != dirty {
		t.Fatalf("incremental read %d of %d bytes from NBD, want exactly the %d dirty bytes", tv.Done, tv.Total, dirty)
	}
	s.commit(bk, inc.ID)
	if got := s.snapshotSHA(inc.Name, dev); got != newSHA {
		t.Fatalf("incremental snapshot differs from the changed image")
	}
	if got := s.snapshotSHA(b1.Name, dev); got != wantSHA {
		t.Fatalf("the first snapshot changed after the incremental")
	}
	// The task log tells the story for PVE's task log.
	r := s.do("GET", "/api/v1/tasks/"+task+"/log", bk, "", nil)
	if !strings.Contains(string(r.body), "bitmap mode reuse") || !strings.Contains(string(r.body), "done") {
		t.Fatalf("task log: %s", r.body)
	}
	// The read-only export refuses TRIM: said once, and not fatal.
	if n := strings.Count(string(r.body), "does not support discard"); n != 1 {
		t.Fatalf("task log mentions the refused discard %d times, want once: %s", n, r.body)
	}
}

// TestVMBackup_TwoDisksOddSizes pulls two disks of one VM at once, one of a
// size that is not a multiple of 4 MiB nor of the bitmap granularity.
func TestVMBackup_TwoDisksOddSizes(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	imgA := toQcow2(t, mixedImage(t, dir, 3, 1536, 7), "4M")
	imgB := toQcow2(t, mixedImage(t, dir, 2, 0, 8), "4M")
	a := startQemuNBD(t, imgA, "drive-scsi0", false)
	b := startQemuNBD(t, imgB, "drive-virtio1", true)
	sess := s.openBackup(bk, 101, "qemu", 1764100000)
	ta := s.startPull(bk, sess.ID, map[string]any{"device": "drive-scsi0", "size": 3*4*mib + 1536, "bitmap_mode": "none", "source": map[string]any{"uri": a.uri}})
	tb := s.startPull(bk, sess.ID, map[string]any{"device": "drive-virtio1", "size": 2 * 4 * mib, "bitmap_mode": "new", "bitmap_name": "bm0", "source": map[string]any{"uri": b.uri}})
	// The same device twice is refused while it runs.
	r := s.doJSON("POST", "/api/v1/backups/"+sess.ID+"/disks", bk, map[string]any{"device": "drive-scsi0", "size": 3*4*mib + 1536, "bitmap_mode": "none", "source": map[string]any{"uri": a.uri}})
	if r.status != http.StatusConflict {
		t.Fatalf("second pull of the same device: %d %s", r.status, r.body)
	}
	for _, id := range []string{ta, tb} {
		if tv := s.waitTask(bk, id); tv.State != "ok" {
			t.Fatalf("pull: %+v", tv)
		}
	}
	s.commit(bk, sess.ID)
	if s.snapshotSHA(sess.Name, "drive-scsi0") != rawSHA(t, imgA) || s.snapshotSHA(sess.Name, "drive-virtio1") != rawSHA(t, imgB) {
		t.Fatal("a disk differs from its image")
	}
	r = s.do("GET", "/api/v1/snapshots/"+sess.Name+"/disks", bk, "", nil)
	wantStatus(t, r, http.StatusOK)
	if !strings.Contains(string(r.body), `"size":12584448`) || !strings.Contains(string(r.body), `"device":"drive-virtio1"`) {
		t.Fatalf("disks: %s", r.body)
	}
}

// TestVMBackup_TrimsWhatIsStored: on an export that takes TRIM (PVE's
// fleecing image), every region read is discarded once its chunks are
// durable, so the image ends up empty while the snapshot holds the data.
func TestVMBackup_TrimsWhatIsStored(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	img := toQcow2(t, mixedImage(t, dir, 4, 0, 3), "4M")
	want := rawSHA(t, img)
	nbd := startWritableQemuNBD(t, img, "drive-scsi0")
	b := s.openBackup(bk, 102, "qemu", 1764100000)
	tv := s.waitTask(bk, s.startPull(bk, b.ID, map[string]any{"device": "drive-scsi0", "size": 16 * mib,
		"bitmap_mode": "none", "source": map[string]any{"uri": nbd.uri}}))
	if tv.State != "ok" {
		t.Fatalf("pull: %+v", tv)
	}
	s.commit(bk, b.ID)
	if s.snapshotSHA(b.Name, "drive-scsi0") != want {
		t.Fatal("snapshot differs from the image")
	}
	nbd.stop()
	if got := rawSHA(t, img); got != zeroSHA(16*mib) {
		t.Fatal("the export still holds data after the backup: regions were not trimmed")
	}
}

func zeroSHA(n int) string {
	h := sha256.New()
	h.Write(make([]byte, n))
	return hex.EncodeToString(h.Sum(nil))
}

// TestVMBackup_BandwidthLimit: a pull with bandwidth_limit reads no faster
// than the limit (after one chunk of burst).
func TestVMBackup_BandwidthLimit(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	img := toQcow2(t, mixedImage(t, t.TempDir(), 3, 0, 4), "4M") // 12 MiB, 8 MiB of it data
	nbd := startQemuNBD(t, img, "drive-scsi0", false)
	b := s.openBackup(bk, 103, "qemu", 1764100000)
	start := time.Now()
	tv := s.waitTask(bk, s.startPull(bk, b.ID, map[string]any{"device": "drive-scsi0", "size": 12 * mib,
		"bitmap_mode": "new", "bitmap_name": "bm0", "bandwidth_limit": 4 * mib, "source": map[string]any{"uri": nbd.uri}}))
	elapsed := time.Since(start)
	if tv.State != "ok" || tv.Done != 12*mib {
		t.Fatalf("pull: %+v", tv)
	}
	// 12 MiB at 4 MiB/s with a 4 MiB burst: at least 2 s.
	if elapsed < 1900*time.Millisecond {
		t.Fatalf("12 MiB pulled in %s at a 4 MiB/s limit", elapsed)
	}
}
