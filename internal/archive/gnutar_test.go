package archive_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/backup"
)

func extrasTree(t *testing.T) *tree {
	return buildTree(t, treeSpec{large: []int{3 << 20, 2<<20 + 12345}, small: 300, smallMin: 1, smallMax: 20 << 10, fanout: 50, extras: true}, 1)
}

// TestIngest_GNUTar archives a tree with everything PVE's tar flags keep
// and checks the stored archive: byte-exact restore, the catalog against
// `tar -t`, extraction of the restored stream against the tree, and
// single-file reads.
func TestIngest_GNUTar(t *testing.T) {
	gnuTar(t)
	tr := extrasTree(t)
	data := pveTar(t, tr.dir)
	for name, cfg := range map[string]archive.Config{"default": archive.DefaultConfig(), "small chunks": smallConfig()} {
		t.Run(name, func(t *testing.T) {
			s := newTestStore()
			res, entries := mustIngest(t, s, data, cfg)
			t.Logf("tar %d bytes, %d entries; payload %d, meta %d, volatile %d bytes (%d holes); chunks %d/%d/%d",
				res.Size, len(entries), res.Stats.PayloadBytes, res.Stats.MetaBytes, res.Stats.VolatileBytes, res.Stats.Holes,
				len(res.Payload.Entries), len(res.Meta.Entries), len(res.Volatile.Entries))
			restored := mustRestore(t, s, res.Indexes)
			if !bytes.Equal(restored, data) {
				t.Fatalf("restored stream differs at %d (len %d, want %d)", firstDiff(restored, data), len(restored), len(data))
			}
			checkListing(t, data, entries)
			checkEntries(t, s, res, entries, tr)
			out := t.TempDir()
			pveExtract(t, restored, out)
			compareTrees(t, tr.dir, out)
		})
	}
}

// checkListing compares the entries with what `tar -t` lists.
func checkListing(t *testing.T, data []byte, entries []archive.Entry) {
	t.Helper()
	names := tarList(t, data)
	if len(names) != len(entries) {
		t.Fatalf("tar -t lists %d members, Ingest %d entries", len(names), len(entries))
	}
	for i, n := range names {
		want := "/" + strings.Trim(strings.TrimPrefix(n, "./"), "/")
		if want == "/." {
			want = "/"
		}
		if string(entries[i].Path) != want {
			t.Errorf("entry %d: %q, tar -t says %q", i, entries[i].Path, want)
		}
	}
}

// checkEntries compares entries with the files on disk and reads every
// regular file back with OpenFile.
func checkEntries(t *testing.T, s *testStore, res archive.Result, entries []archive.Entry, tr *tree) {
	t.Helper()
	var files, sparse, links, hard int
	for _, e := range entries {
		p := filepath.Join(tr.dir, string(e.Path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%q: %v", e.Path, err)
			continue
		}
		if e.Offset%512 != 0 || e.Mode != int64(fi.Mode().Perm()|specialBits(fi.Mode())) || !e.ModTime.Equal(fi.ModTime()) {
			t.Errorf("%q: offset %d mode %o mtime %v; file %v %v", e.Path, e.Offset, e.Mode, e.ModTime, fi.Mode(), fi.ModTime())
		}
		switch e.Type {
		case archive.TypeFile:
			files++
			if e.Sparse {
				sparse++
			}
			want, _ := os.ReadFile(p)
			if e.Size != int64(len(want)) {
				t.Errorf("%q: size %d, want %d", e.Path, e.Size, len(want))
			}
			if got := mustOpenFile(t, s, res.Indexes, e); !bytes.Equal(got, want) {
				t.Errorf("%q: OpenFile returned other bytes (%d, want %d)", e.Path, len(got), len(want))
			}
		case archive.TypeSymlink:
			links++
			if target, _ := os.Readlink(p); string(e.LinkTarget) != target {
				t.Errorf("%q: link target %q, want %q", e.Path, e.LinkTarget, target)
			}
		case archive.TypeHardlink:
			hard++
			ti, err := os.Stat(filepath.Join(tr.dir, string(e.LinkTarget)))
			if err != nil || !os.SameFile(fi, ti) {
				t.Errorf("%q: hard link to %q: %v", e.Path, e.LinkTarget, err)
			}
			if _, err := archive.OpenFile(t.Context(), res.Indexes, s, e); !errors.Is(err, backup.ErrInvalid) {
				t.Errorf("OpenFile(hard link) = %v, want ErrInvalid", err)
			}
		}
		if e.Type != archive.TypeHardlink { // GNU tar puts them on the first link only
			checkXattrs(t, e, p)
		}
	}
	t.Logf("%d files (%d sparse), %d symlinks, %d hard links", files, sparse, links, hard)
	if sparse == 0 {
		t.Errorf("no sparse member")
	}
}

// checkXattrs compares an entry's xattrs and ACLs with the file's.
func checkXattrs(t *testing.T, e archive.Entry, p string) {
	t.Helper()
	for _, name := range []string{"user.comment", "user.dir", "user.binary", "security.capability"} {
		want, err := lgetxattr(p, name)
		if got, ok := e.Xattrs[name]; ok != (err == nil) || got != string(want) {
			t.Errorf("%q: xattr %s = %q, want %q (%v)", e.Path, name, got, want, err)
		}
	}
	for _, acl := range []struct{ name, got string }{
		{"system.posix_acl_access", e.ACLAccess}, {"system.posix_acl_default", e.ACLDefault},
	} {
		// Only extended ACLs are archived; the file mode holds the rest.
		if _, err := lgetxattr(p, acl.name); (err == nil) != (acl.got != "") {
			t.Errorf("%q: ACL %q in the entry, %s: %v", e.Path, acl.got, acl.name, err)
		}
	}
}

func specialBits(m os.FileMode) os.FileMode {
	var b os.FileMode
	if m&os.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// TestIngest_GNUTarTruncated cuts a real stream at offsets inside headers,
// data, padding and the end blocks: each must fail naming an offset.
func TestIngest_GNUTarTruncated(t *testing.T) {
	gnuTar(t)
	tr := buildTree(t, treeSpec{large: []int{1 << 20}, small: 20, smallMin: 1, smallMax: 3000, fanout: 10, extras: true}, 2)
	data := pveTar(t, tr.dir)
	res, entries := mustIngest(t, newTestStore(), data, smallConfig())
	end := res.Size - res.Stats.TrailingBytes - 1024
	var big archive.Entry
	for _, e := range entries {
		if e.Size == 1<<20 {
			big = e
		}
	}
	cuts := map[string]int64{
		"first header":          100,
		"after first header":    512,
		"mid PAX header":        entries[3].Offset + 700,
		"after PAX header":      entries[3].Offset + 1024,
		"mid ustar header":      entries[3].Offset + 1024 + 300,
		"mid large data":        big.Offset + 1536 + 500_000,
		"mid last block":        big.Offset + 1536 + 1<<20 - 1,
		"before the end blocks": end,
		"after one end block":   end + 512,
		"inside the end blocks": end + 1000,
	}
	for name, cut := range cuts {
		t.Run(name, func(t *testing.T) {
			_, _, err := ingest(t, newTestStore(), bytes.NewReader(data[:cut]), smallConfig())
			var fe *archive.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("cut at %d: err = %v, want a FormatError", cut, err)
			}
			if fe.Offset > cut || !strings.Contains(fe.Reason, "truncated") {
				t.Errorf("cut at %d: %v", cut, err)
			}
		})
	}
	t.Run("after the end blocks", func(t *testing.T) {
		if _, _, err := ingest(t, newTestStore(), bytes.NewReader(data[:end+1024]), smallConfig()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad checksum", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[entries[5].Offset+1024+20] ^= 0x40 // ustar block after a one-block PAX header
		_, _, err := ingest(t, newTestStore(), bytes.NewReader(bad), smallConfig())
		var fe *archive.FormatError
		if !errors.As(err, &fe) || fe.Offset != entries[5].Offset {
			t.Fatalf("err = %v, want a FormatError at %d", err, entries[5].Offset)
		}
	})
}

// TestIngest_GNUTarFormats covers the other layouts GNU tar writes: the
// GNU format (old sparse members, 'L'/'K' long names) and the PAX sparse
// versions 0.0 and 0.1.
func TestIngest_GNUTarFormats(t *testing.T) {
	gnuTar(t)
	tr := buildTree(t, treeSpec{small: 30, smallMin: 1, smallMax: 5000, fanout: 10, extras: true}, 3)
	for _, flags := range [][]string{
		{"--format=gnu"},
		{"--format=posix", "--sparse-version=0.0"},
		{"--format=posix", "--sparse-version=0.1"},
		{"--format=posix", "--sparse-version=1.0"},
		{"--format=oldgnu"},
	} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) {
			args := append([]string{"cpf", "-", "--sparse", "--numeric-owner", "--one-file-system", "-C", tr.dir}, flags...)
			cmd := exec.Command(gnuTar(t), append(args, "./")...)
			data, err := cmd.Output()
			if err != nil {
				t.Fatalf("tar: %v", err)
			}
			s := newTestStore()
			res, entries := mustIngest(t, s, data, smallConfig())
			if got := mustRestore(t, s, res.Indexes); !bytes.Equal(got, data) {
				t.Fatalf("restored stream differs at %d", firstDiff(got, data))
			}
			checkListing(t, data, entries)
			n := 0
			for _, e := range entries {
				if e.Type != archive.TypeFile {
					continue
				}
				want, _ := os.ReadFile(filepath.Join(tr.dir, string(e.Path)))
				if got := mustOpenFile(t, s, res.Indexes, e); !bytes.Equal(got, want) {
					t.Errorf("%q: OpenFile returned other bytes (sparse %v)", e.Path, e.Sparse)
				}
				n++
			}
			t.Logf("%d bytes, %d entries, %d files read back", len(data), len(entries), n)
		})
	}
}
