package archive_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// PVE's tar flags for containers (pve-integration.md §6): the backup
// provider runs `tar cpf - --totals <common flags> --directory=DIR ./`,
// and restore extracts with `tar xpf - --totals <common flags> …`.
var pveCommonFlags = []string{
	"--totals", "--one-file-system", "-p", "--sparse", "--numeric-owner", "--acls", "--xattrs",
	"--xattrs-include=user.*", "--xattrs-include=security.capability",
	"--warning=no-file-ignored", "--warning=no-xattr-write",
}

func gnuTar(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("tar")
	if err != nil {
		testenv.Missing(t, testenv.PeerQEMU, "tar not in PATH")
	}
	if out, err := exec.Command(p, "--version").Output(); err != nil || !bytes.Contains(out, []byte("GNU tar")) {
		testenv.Missing(t, testenv.PeerQEMU, "tar in PATH is not GNU tar")
	}
	return p
}

// pveTar archives dir the way PVE's container backup does.
func pveTar(t testing.TB, dir string) []byte {
	t.Helper()
	args := append([]string{"cpf", "-"}, pveCommonFlags...)
	args = append(args, "--directory="+dir, "./")
	cmd := exec.Command(gnuTar(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar create: %v: %s", err, stderr.Bytes())
	}
	return out
}

// pveExtract extracts a stream the way PVE's container restore does.
func pveExtract(t testing.TB, data []byte, dir string) {
	t.Helper()
	args := append([]string{"xpf", "-"}, pveCommonFlags...)
	args = append(args, "-C", dir, "--skip-old-files", "--anchored", "--exclude", "./dev/*")
	cmd := exec.Command(gnuTar(t), args...)
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar extract: %v: %s", err, out)
	}
}

// tarList returns the member names `tar -t` prints.
func tarList(t testing.TB, data []byte) []string {
	t.Helper()
	cmd := exec.Command(gnuTar(t), "-tf", "-", "--quoting-style=literal")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar list: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// treeSpec describes a test tree.
type treeSpec struct {
	large              []int // sizes of large files
	small              int   // number of small files
	smallMin, smallMax int
	fanout             int  // small files per directory
	extras             bool // links, sparse, long and non-UTF-8 names, fifo, devices, xattrs, ACLs
}

type tree struct {
	dir   string
	large []string // paths of the large files
	small []string
	bytes int64 // regular file bytes written
}

func buildTree(t testing.TB, spec treeSpec, seed uint64) *tree {
	t.Helper()
	tr := &tree{dir: t.TempDir()}
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r := rand.New(src)
	write := func(rel string, n int) string {
		p := filepath.Join(tr.dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		fill(src, b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		tr.bytes += int64(n)
		return p
	}
	for i, n := range spec.large {
		tr.large = append(tr.large, write(fmt.Sprintf("var/lib/big%d.img", i), n))
	}
	for i := range spec.small {
		n := spec.smallMin + r.IntN(spec.smallMax-spec.smallMin+1)
		tr.small = append(tr.small, write(fmt.Sprintf("usr/share/d%03d/f%05d.txt", i/spec.fanout, i), n))
	}
	if spec.extras {
		addExtras(t, tr, src)
	}
	return tr
}

// fill writes random bytes.
func fill(src *rand.ChaCha8, b []byte) {
	_, _ = src.Read(b)
}

func addExtras(t testing.TB, tr *tree, src *rand.ChaCha8) {
	t.Helper()
	d := tr.dir
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"etc", "tmp", "empty/nested/deeper", "var/empty"} {
		must(os.MkdirAll(filepath.Join(d, p), 0o755))
	}
	must(os.Chmod(filepath.Join(d, "tmp"), 0o1777))
	must(os.WriteFile(filepath.Join(d, "etc/hosts"), []byte("127.0.0.1 localhost\n"), 0o644))
	must(os.WriteFile(filepath.Join(d, "etc/shadow"), []byte("root:*:19000:0:99999:7:::\n"), 0o640))
	must(os.WriteFile(filepath.Join(d, "etc/suid"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(d, "etc/suid"), 0o4755))
	must(os.WriteFile(filepath.Join(d, "etc/zero"), nil, 0o600))
	// Symlinks: relative, absolute, dangling, long target.
	must(os.Symlink("hosts", filepath.Join(d, "etc/hosts.link")))
	must(os.Symlink("/etc/hosts", filepath.Join(d, "etc/abs.link")))
	must(os.Symlink("../nowhere", filepath.Join(d, "etc/dangling")))
	// Long names: a path over 255 bytes, a 200-byte file name, a long
	// symlink target, hard links with long names.
	long := filepath.Join("long", strings.Repeat("L", 200), strings.Repeat("M", 200))
	must(os.MkdirAll(filepath.Join(d, long), 0o755))
	longFile := filepath.Join(long, strings.Repeat("n", 200))
	must(os.WriteFile(filepath.Join(d, longFile), []byte("long name\n"), 0o644))
	must(os.Symlink(longFile, filepath.Join(d, "long/target.link")))
	must(os.Link(filepath.Join(d, longFile), filepath.Join(d, "long/"+strings.Repeat("h", 150))))
	// Hard links.
	must(os.WriteFile(filepath.Join(d, "etc/data"), []byte("shared data\n"), 0o644))
	must(os.Link(filepath.Join(d, "etc/data"), filepath.Join(d, "etc/data.hard")))
	must(os.Link(filepath.Join(d, "etc/data"), filepath.Join(d, "var/data.hard2")))
	// Non-UTF-8 names.
	must(os.MkdirAll(filepath.Join(d, "bad\xff\xfedir"), 0o755))
	must(os.WriteFile(filepath.Join(d, "bad\xff\xfedir", "f\xc3\x28"), []byte("latin1\n"), 0o644))
	must(os.WriteFile(filepath.Join(d, "caf\xe9"), []byte("cafe\n"), 0o644))
	// A FIFO and, as root, device nodes.
	must(syscall.Mkfifo(filepath.Join(d, "fifo"), 0o600))
	if err := unix.Mknod(filepath.Join(d, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Logf("no device nodes: %v", err)
	} else {
		must(unix.Mknod(filepath.Join(d, "loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	}
	// Zeros written as data, not holes: all-zero payload chunks.
	must(os.WriteFile(filepath.Join(d, "var/zeros.img"), make([]byte, 3<<20), 0o644))
	addSparse(t, tr, src)
	addOwnersAndXattrs(t, tr)
}

// addSparse writes a 64 MiB file with 3 data regions and a hole at the end.
func addSparse(t testing.TB, tr *tree, src *rand.ChaCha8) {
	t.Helper()
	p := filepath.Join(tr.dir, "var/lib/sparse.db")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 10 << 20, 40<<20 + 1234} {
		b := make([]byte, 8192)
		fill(src, b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Blocks*512 >= 64<<20 {
		t.Logf("file system does not keep holes: %s is not sparse", p)
	}
}

// addOwnersAndXattrs sets owners (as root), user and capability xattrs,
// and ACLs (with setfacl from package acl).
func addOwnersAndXattrs(t testing.TB, tr *tree) {
	t.Helper()
	d := tr.dir
	if err := os.Lchown(filepath.Join(d, "etc/shadow"), 1234, 5678); err != nil {
		t.Logf("no owners: %v", err)
	} else {
		_ = os.Lchown(filepath.Join(d, "etc/hosts.link"), 100000, 100000)
		_ = os.Chown(filepath.Join(d, "var/empty"), 33, 33)
	}
	if err := unix.Lsetxattr(filepath.Join(d, "etc/hosts"), "user.comment", []byte("set by the test"), 0); err != nil {
		t.Logf("no user xattrs: %v", err)
	} else {
		_ = unix.Lsetxattr(filepath.Join(d, "etc"), "user.dir", []byte("on a directory"), 0)
		_ = unix.Lsetxattr(filepath.Join(d, "etc/data"), "user.binary", []byte{0, 1, 2, 0xff, '\n', '='}, 0)
	}
	// VFS_CAP_REVISION_2 | effective, permitted CAP_NET_BIND_SERVICE.
	caps := binary.LittleEndian.AppendUint32(nil, 0x02000001)
	caps = binary.LittleEndian.AppendUint32(caps, 1<<10)
	caps = append(caps, make([]byte, 12)...)
	if err := unix.Lsetxattr(filepath.Join(d, "etc/suid"), "security.capability", caps, 0); err != nil {
		t.Logf("no file capabilities: %v", err)
	}
	setfacl, err := exec.LookPath("setfacl")
	if err != nil {
		t.Logf("no ACLs: setfacl not in PATH (install package acl)")
		return
	}
	for _, args := range [][]string{
		{"-m", "u:1000:r,g:2000:rw", filepath.Join(d, "etc/hosts")},
		{"-m", "u:1001:rwx", "-d", "-m", "u:1001:rx", filepath.Join(d, "var/empty")},
	} {
		if out, err := exec.Command(setfacl, args...).CombinedOutput(); err != nil {
			t.Logf("no ACLs: setfacl %v: %v: %s", args, err, out)
			return
		}
	}
}

// touchAll sets every path's atime to now, which also moves its ctime:
// what happens to a live container between two backups, and what makes
// every PAX header of the next tar run differ.
func touchAll(t testing.TB, dir string) {
	t.Helper()
	now := unix.NsecToTimespec(time.Now().UnixNano())
	ts := []unix.Timespec{now, {Nsec: unix.UTIME_OMIT}}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// compareTrees checks that got reproduces want: types, modes, owners,
// mtimes, contents, symlink targets, hard link groups, xattrs and ACLs.
func compareTrees(t *testing.T, want, got string) {
	t.Helper()
	wantLinks, gotLinks := map[uint64]string{}, map[uint64]string{}
	n := 0
	err := filepath.WalkDir(want, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		n++
		var ws, gs unix.Stat_t
		if err := unix.Lstat(p, &ws); err != nil {
			return err
		}
		if err := unix.Lstat(q, &gs); err != nil {
			t.Errorf("%q: %v", rel, err)
			return nil
		}
		if ws.Mode != gs.Mode || ws.Uid != gs.Uid || ws.Gid != gs.Gid {
			t.Errorf("%q: mode %o uid %d gid %d, want %o %d %d", rel, gs.Mode, gs.Uid, gs.Gid, ws.Mode, ws.Uid, ws.Gid)
		}
		switch ws.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if ws.Mtim != gs.Mtim {
				t.Errorf("%q: mtime %v, want %v", rel, gs.Mtim, ws.Mtim)
			}
			a, _ := os.ReadFile(p)
			b, _ := os.ReadFile(q)
			if !bytes.Equal(a, b) {
				t.Errorf("%q: content differs", rel)
			}
			if ws.Nlink > 1 {
				if first, ok := wantLinks[ws.Ino]; ok {
					if gotLinks[gs.Ino] != first {
						t.Errorf("%q: not hard linked to %q", rel, first)
					}
				} else {
					wantLinks[ws.Ino], gotLinks[gs.Ino] = rel, rel
				}
			}
		case unix.S_IFLNK:
			a, _ := os.Readlink(p)
			b, _ := os.Readlink(q)
			if a != b {
				t.Errorf("%q: link %q, want %q", rel, b, a)
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			if ws.Rdev != gs.Rdev {
				t.Errorf("%q: device %x, want %x", rel, gs.Rdev, ws.Rdev)
			}
		}
		for _, name := range []string{"user.comment", "user.dir", "user.binary", "security.capability",
			"system.posix_acl_access", "system.posix_acl_default"} {
			a, aerr := lgetxattr(p, name)
			b, berr := lgetxattr(q, name)
			if !bytes.Equal(a, b) || (aerr == nil) != (berr == nil) {
				t.Errorf("%q: xattr %s = %q (%v), want %q (%v)", rel, name, b, berr, a, aerr)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compared %d paths", n)
}

func lgetxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(path, name, buf)
	if errors.Is(err, unix.ENODATA) {
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
