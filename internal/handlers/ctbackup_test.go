package handlers_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// pveTar runs GNU tar over dir with PVE's flags for containers (LXC.pm:
// --sparse --numeric-owner --acls --xattrs …) and returns the stream.
func pveTar(t *testing.T, dir string) []byte {
	t.Helper()
	tarPath := testenv.Tool(t, testenv.PeerQEMU, "tar")
	cmd := exec.Command(tarPath, "cpf", "-", "--totals", "--one-file-system", "-p", "--sparse", "--numeric-owner",
		"--acls", "--xattrs", "--xattrs-include=user.*", "--xattrs-include=security.capability",
		"--warning=no-file-ignored", "--warning=no-xattr-write", "-C", dir, "./")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tar: %v\n%s", err, stderr.String())
	}
	return out.Bytes()
}

// buildTree makes a container-like tree: large and small files, a sparse
// file, symlinks, a hard link, empty directories, long and non-UTF-8 names.
func buildTree(t *testing.T, dir string, seed uint64) {
	t.Helper()
	buildTreeN(t, dir, seed, 0)
}

// buildTreeN is buildTree plus n more 4 MiB files of random data.
func buildTreeN(t *testing.T, dir string, seed uint64, n int) {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), 9}))
	write := func(rel string, n int) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("usr/lib/big.bin", 3<<20)
	for i := range n {
		write(filepath.Join("opt", "data", "blob-"+string(rune('a'+i%26))+strings.Repeat("z", i/26)+".bin"), 4<<20)
	}
	write("var/lib/db/data.bin", 5<<20+123)
	for i := range 200 {
		write(filepath.Join("etc", "conf.d", strings.Repeat("x", i%40)+string(rune('a'+i%26))+".conf"), 100+rng.IntN(6000))
	}
	write(filepath.Join("home", strings.Repeat("long-directory-name-", 8), "file-with-a-long-name-"+strings.Repeat("y", 120)), 5000)
	write("srv/caf\xe9-latin1.txt", 777)
	if err := os.MkdirAll(filepath.Join(dir, "empty", "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../usr/lib/big.bin", filepath.Join(dir, "etc", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "usr/lib/big.bin"), filepath.Join(dir, "usr/lib/hard.bin")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "var", "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 8 << 20, 20 << 20} {
		if _, err := f.WriteAt(bytes.Repeat([]byte("sparse!"), 1000), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(24 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func (s *testServer) putArchive(token, session string, body io.Reader) response {
	s.t.Helper()
	return s.do("PUT", "/api/v1/backups/"+session+"/archive", token, "application/x-tar", body)
}

func (s *testServer) containerBackup(token string, vmid int, at int64, tarStream []byte) (session, map[string]int64) {
	s.t.Helper()
	b := s.openBackup(token, vmid, "lxc", at)
	r := s.putArchive(token, b.ID, bytes.NewReader(tarStream))
	wantStatus(s.t, r, http.StatusCreated)
	var res map[string]int64
	r.json(s.t, &res)
	s.commit(token, b.ID)
	return b, res
}

// TestContainer_RoundTripAndFiles backs up a tree archived with PVE's tar
// flags, and checks: the restored stream is byte-identical (plain and
// zstd), the file listing matches tar -t, single files come back exact
// (a sparse one expanded, a hard link's content through its target), and
// path tricks are refused.
func TestContainer_RoundTripAndFiles(t *testing.T) {
	s := newS3TestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	buildTree(t, dir, 1)
	stream := pveTar(t, dir)
	b, res := s.containerBackup(bk, 200, 1764100000, stream)
	if res["size"] != int64(len(stream)) || res["files"] < 200 {
		t.Fatalf("archive result %v for a %d-byte stream", res, len(stream))
	}

	get := func(q string) []byte {
		code, _, body, err := s.getRaw(bk, "/api/v1/snapshots/"+b.Name+"/archive"+q, "")
		if err != nil || code != 200 {
			t.Fatalf("GET archive%s: %d %v", q, code, err)
		}
		return body
	}
	if got := get(""); !bytes.Equal(got, stream) {
		t.Fatalf("restored archive differs (%d bytes, want %d)", len(got), len(stream))
	}
	dec, _ := zstd.NewReader(bytes.NewReader(get("?compress=zstd")))
	unz, err := io.ReadAll(dec)
	if err != nil || !bytes.Equal(unz, stream) {
		t.Fatalf("zstd archive differs: %v", err)
	}

	// Listing matches tar -t for a directory.
	r := s.do("GET", "/api/v1/snapshots/"+b.Name+"/files?path=/usr/lib", bk, "", nil)
	wantStatus(t, r, http.StatusOK)
	var list []struct {
		Name, Path, Type string
		Size             int64
		RawPath          string `json:"raw_path"`
		LinkTarget       string `json:"link_target"`
	}
	r.json(t, &list)
	var names []string
	for _, f := range list {
		names = append(names, f.Name+":"+f.Type)
	}
	sort.Strings(names)
	// tar stores the first of two hard links as the file and the other as
	// a link to it; which comes first is the directory's order.
	if j := strings.Join(names, ","); j != "big.bin:file,hard.bin:hardlink" && j != "big.bin:hardlink,hard.bin:file" {
		t.Fatalf("/usr/lib lists %v", names)
	}
	cmd := exec.Command("tar", "-t")
	cmd.Stdin = bytes.NewReader(stream)
	tl, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var etc []string
	for _, l := range strings.Split(string(tl), "\n") {
		if strings.HasPrefix(l, "./etc/conf.d/") && len(l) > len("./etc/conf.d/") {
			etc = append(etc, strings.TrimPrefix(l, "./etc/conf.d/"))
		}
	}
	r = s.do("GET", "/api/v1/snapshots/"+b.Name+"/files?path=/etc/conf.d/", bk, "", nil)
	r.json(t, &list)
	var got []string
	for _, f := range list {
		got = append(got, f.Name)
	}
	sort.Strings(etc)
	sort.Strings(got)
	if strings.Join(got, "/") != strings.Join(etc, "/") || len(got) < 150 {
		t.Fatalf("listing of /etc/conf.d (%d) differs from tar -t (%d)", len(got), len(etc))
	}

	content := func(p string) (int, []byte) {
		code, _, body, err := s.getRaw(bk, "/api/v1/snapshots/"+b.Name+"/files/content?path="+url.QueryEscape(p), "")
		if err != nil {
			t.Fatal(err)
		}
		return code, body
	}
	for _, p := range []string{"/usr/lib/big.bin", "/var/lib/db/data.bin", "/var/sparse.img", "/srv/caf\xe9-latin1.txt", "/usr/lib/hard.bin"} {
		want, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		code, body := content(p)
		if code != 200 || !bytes.Equal(body, want) {
			t.Fatalf("content of %q: %d, %d bytes, want %d", p, code, len(body), len(want))
		}
	}
	for _, bad := range []string{"../etc/passwd", "/../etc/passwd", "/etc/../../x", "etc/hosts"} {
		code, body := content(bad)
		if code != http.StatusBadRequest {
			t.Fatalf("path %q: %d %s", bad, code, body)
		}
	}
	if code, _ := content("/etc"); code != http.StatusBadRequest {
		t.Fatalf("content of a directory: %d", code)
	}
	if code, _ := content("/nope"); code != http.StatusNotFound {
		t.Fatalf("content of a missing file: %d", code)
	}
	// tar -x of the restored stream reproduces the tree.
	out := t.TempDir()
	x := exec.Command("tar", "-x", "--numeric-owner", "-p", "--sparse", "--acls", "--xattrs", "-C", out)
	x.Stdin = bytes.NewReader(get(""))
	if msg, err := x.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v %s", err, msg)
	}
	if msg, err := exec.Command("diff", "-r", "--no-dereference", dir, out).CombinedOutput(); err != nil {
		t.Fatalf("extracted tree differs: %s", msg)
	}
}

// TestContainer_DedupDespiteHeaderChurn: a second archive of the tree with
// 1% of the data changed, made later with the same flags (so every PAX
// header's atime/ctime differs), stores under 5% new bytes.
func TestContainer_DedupDespiteHeaderChurn(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	buildTreeN(t, dir, 2, 30) // about 130 MiB
	first := pveTar(t, dir)
	_, r1 := s.containerBackup(bk, 201, 1764100000, first)
	// Change 1% of the bytes, in four files.
	for _, p := range []string{"usr/lib/big.bin", "opt/data/blob-c.bin", "opt/data/blob-q.bin", "var/lib/db/data.bin"} {
		f, err := os.OpenFile(filepath.Join(dir, p), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, len(first)/400), 1<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	second := pveTar(t, dir)
	if bytes.Equal(first, second) {
		t.Fatal("the second archive equals the first; the test proves nothing")
	}
	_, r2 := s.containerBackup(bk, 201, 1764100100, second)
	ratio := float64(r2["new_bytes"]) / float64(len(second))
	t.Logf("first archive: %d bytes, %d new; second: %d bytes, %d new (%.2f%%)", len(first), r1["new_bytes"], len(second), r2["new_bytes"], 100*ratio)
	if ratio >= 0.05 {
		t.Fatalf("second backup stored %.1f%% new bytes, want < 5%%", 100*ratio)
	}
}

// TestContainer_BadStreams: a truncated or malformed tar fails the upload
// with a clear reason and leaves nothing behind.
func TestContainer_BadStreams(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	dir := t.TempDir()
	buildTree(t, dir, 3)
	stream := pveTar(t, dir)
	corrupt := append([]byte(nil), stream...)
	corrupt[148] ^= 0x5a // first header's checksum
	for i, c := range []struct {
		name string
		body []byte
	}{
		{"truncated mid-data", stream[:len(stream)/2+7]},
		{"truncated at a block", stream[:(len(stream)/2)&^511]},
		{"bad checksum", corrupt},
		{"not a tar", bytes.Repeat([]byte("hello "), 1000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := s.openBackup(bk, 210+i, "lxc", 1764100000)
			r := s.putArchive(bk, b.ID, bytes.NewReader(c.body))
			wantProblem(t, r, http.StatusBadRequest, "bad_request")
			if !strings.Contains(string(r.body), "tar") && !strings.Contains(string(r.body), "upload ended") {
				t.Fatalf("reason does not say what is wrong: %s", r.body)
			}
			wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+b.ID+"/finish", bk, map[string]any{"success": false}), http.StatusOK)
			wantProblem(t, s.do("GET", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNotFound, "not_found")
		})
	}
	// A VM session takes no archive.
	vm := s.openBackup(bk, 220, "qemu", 1764100000)
	wantProblem(t, s.putArchive(bk, vm.ID, bytes.NewReader(stream)), http.StatusBadRequest, "bad_request")
}
