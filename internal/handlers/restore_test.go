package handlers_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// backedUpDisk backs up a fresh mixed qcow2 image as drive-scsi0 of a new
// snapshot and returns the snapshot name and the raw bytes of the image.
func (s *testServer) backedUpDisk(token string, vmid int, slots, tail int) (string, []byte) {
	t := s.t
	t.Helper()
	dir := t.TempDir()
	img := toQcow2(t, mixedImage(t, dir, slots, tail, uint64(vmid)), "4M")
	raw := filepath.Join(dir, "want.raw")
	runTool(t, "qemu-img", "convert", "-O", "raw", img, raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	nbd := startQemuNBD(t, img, "drive-scsi0", false)
	b := s.openBackup(token, vmid, "qemu", 1764100000)
	tv := s.waitTask(token, s.startPull(token, b.ID, map[string]any{"device": "drive-scsi0", "size": len(want),
		"bitmap_mode": "none", "source": map[string]any{"uri": nbd.uri}}))
	if tv.State != "ok" {
		t.Fatalf("pull: %+v", tv)
	}
	s.commit(token, b.ID)
	nbd.stop()
	return b.Name, want
}

func (s *testServer) getRaw(token, path, rng string) (int, http.Header, []byte, error) {
	req, _ := http.NewRequest("GET", s.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

func TestRestore_RawDownloadWithRange(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	name, want := s.backedUpDisk(bk, 110, 5, 4096)
	path := "/api/v1/snapshots/" + name + "/disks/drive-scsi0/raw"

	code, hdr, got, err := s.getRaw(bk, path, "")
	if err != nil || code != 200 || !bytes.Equal(got, want) || hdr.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("whole image: %d, %d bytes (want %d), equal %v, %v", code, len(got), len(want), bytes.Equal(got, want), err)
	}
	size := int64(len(want))
	for _, c := range []struct {
		rng        string
		off, end   int64 // [off, end)
		contentRng string
	}{
		{"bytes=100-4194403", 100, 4194404, "bytes 100-4194403/"},
		{"bytes=8388000-", 8388000, size, "bytes 8388000-"},
		{"bytes=-5000", size - 5000, size, "bytes " + itoa(size-5000) + "-"},
		{"bytes=0-0", 0, 1, "bytes 0-0/"},
		{"bytes=4194304-99999999999", 4194304, size, "bytes 4194304-"},
	} {
		code, hdr, got, err := s.getRaw(bk, path, c.rng)
		if err != nil || code != http.StatusPartialContent || !bytes.Equal(got, want[c.off:c.end]) ||
			!strings.HasPrefix(hdr.Get("Content-Range"), c.contentRng) {
			t.Fatalf("%s: %d %q, %d bytes, equal %v, %v", c.rng, code, hdr.Get("Content-Range"), len(got), bytes.Equal(got, want[c.off:c.end]), err)
		}
	}
	code, hdr, _, _ = s.getRaw(bk, path, "bytes="+itoa(size)+"-")
	if code != http.StatusRequestedRangeNotSatisfiable || hdr.Get("Content-Range") != "bytes */"+itoa(size) {
		t.Fatalf("range past the end: %d %q", code, hdr.Get("Content-Range"))
	}
	// Multi-range: served whole.
	if code, _, got, _ := s.getRaw(bk, path, "bytes=0-1,5-6"); code != 200 || len(got) != len(want) {
		t.Fatalf("multi-range: %d, %d bytes", code, len(got))
	}
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+name+"/disks/drive-nope/raw", bk, "", nil), http.StatusNotFound, "not_found")
	read := s.mustToken("read")
	wantProblem(t, s.do("GET", path, read, "", nil), http.StatusForbidden, "forbidden")
}

// TestRestore_DamagedChunkIsAnError: a chunk that cannot be read turns the
// download into an error, never into wrong bytes (invariant 4).
func TestRestore_DamagedChunkIsAnError(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	name, want := s.backedUpDisk(bk, 111, 3, 0)
	// Damage the chunk of the first slot in the file store.
	id := sha256.Sum256(want[:4<<20])
	hexID := hex.EncodeToString(id[:])
	damaged := false
	_ = filepath.WalkDir(s.storeDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == hexID {
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			damaged = os.WriteFile(p, b, 0o600) == nil
		}
		return nil
	})
	if !damaged {
		t.Fatal("did not find the chunk to damage")
	}
	code, _, got, err := s.getRaw(bk, "/api/v1/snapshots/"+name+"/disks/drive-scsi0/raw", "")
	if err == nil && code == 200 && len(got) == len(want) {
		t.Fatalf("damaged chunk served as a complete download (equal to the original: %v)", bytes.Equal(got, want))
	}
	if len(got) > 0 && !bytes.Equal(got, want[:len(got)]) {
		t.Fatal("the bytes served before the error are wrong")
	}
	// The undamaged range still reads.
	if code, _, got, err := s.getRaw(bk, "/api/v1/snapshots/"+name+"/disks/drive-scsi0/raw", "bytes=4194304-"); err != nil || code != 206 || !bytes.Equal(got, want[4<<20:]) {
		t.Fatalf("undamaged range: %d, %v", code, err)
	}
}

func TestRestore_ExportsAPI(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	name, _ := s.backedUpDisk(bk, 112, 2, 0)
	r := s.doJSON("POST", "/api/v1/snapshots/"+name+"/disks/drive-scsi0/exports", bk, map[string]any{"ttl_seconds": 600, "bind_client": true})
	wantStatus(t, r, http.StatusCreated)
	var e struct {
		ID, URI, Export, Client string
		ExpiresAt               string `json:"expires_at"`
	}
	r.json(t, &e)
	if len(e.Export) != 32 || !strings.HasSuffix(e.URI, "/"+e.Export) || e.Client != "127.0.0.1" || e.ID == e.Export {
		t.Fatalf("export %s", r.body)
	}
	list := s.do("GET", "/api/v1/exports", bk, "", nil)
	if !strings.Contains(string(list.body), e.ID) {
		t.Fatalf("list: %s", list.body)
	}
	// A token of another namespace sees nothing and cannot delete it.
	other := s.mustToken("backup", "elsewhere")
	if l := s.do("GET", "/api/v1/exports", other, "", nil); strings.Contains(string(l.body), e.ID) {
		t.Fatalf("foreign namespace lists the export: %s", l.body)
	}
	wantProblem(t, s.do("DELETE", "/api/v1/exports/"+e.ID, other, "", nil), http.StatusNotFound, "not_found")
	wantProblem(t, s.do("GET", "/api/v1/exports", s.mustToken("read"), "", nil), http.StatusForbidden, "forbidden")
	wantStatus(t, s.do("DELETE", "/api/v1/exports/"+e.ID, bk, "", nil), http.StatusNoContent)
	if l := s.do("GET", "/api/v1/exports", bk, "", nil); strings.TrimSpace(string(l.body)) != "[]" {
		t.Fatalf("after delete: %s", l.body)
	}
	wantProblem(t, s.doJSON("POST", "/api/v1/snapshots/"+name+"/disks/drive-x/exports", bk, nil), http.StatusNotFound, "not_found")
	wantProblem(t, s.doJSON("POST", "/api/v1/snapshots/"+name+"/disks/drive-scsi0/exports", bk, map[string]any{"ttl_seconds": 5}), http.StatusBadRequest, "bad_request")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
