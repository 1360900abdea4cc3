package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

const (
	blockSize = 4 << 20 // the image's block: PVE's bitmap granularity and Backstop's chunk
	mib       = 1 << 20
	gib       = 1 << 30
)

// Block kinds of the generated image.
const (
	kindRandom byte = iota
	kindZero
	kindRepeated
)

// image is one generated disk: the raw file (what restic backs up and the
// reference for every check) and its qcow2 copy with an enabled dirty
// bitmap bm0 (what qemu-nbd serves to Backstop).
type image struct {
	raw, qcow2 string
	size       int64
	blocks     int
	kinds      []byte
	nRandom    int
	nZero      int
	nRepeated  int
	nDistinct  int   // distinct contents among the repeated blocks
	dataBytes  int64 // bytes of non-zero blocks
	sha        string
	dirty      []int // blocks rewritten by the 1% change
}

// rng returns a ChaCha8 stream for seed and a purpose, so that every input
// is reproducible and independent of the others.
func rng(seed uint64, purpose string) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:8], seed)
	copy(key[8:], purpose)
	return rand.NewChaCha8(key)
}

// genImage writes a raw image of size bytes (a multiple of 4 MiB): 40%
// random blocks, 30% zero blocks (holes), 30% repeated blocks drawn from a
// handful of distinct contents, in a seeded random order. It then converts
// it to qcow2 and adds the enabled dirty bitmap bm0 (4 MiB granularity).
func genImage(ctx context.Context, dir, name string, size int64, seed uint64) (*image, error) {
	n := int(size / blockSize)
	if n < 1 {
		return nil, fmt.Errorf("image of %d bytes: at least one 4 MiB block needed", size)
	}
	im := &image{
		raw: filepath.Join(dir, name+".raw"), qcow2: filepath.Join(dir, name+".qcow2"),
		size: int64(n) * blockSize, blocks: n,
	}
	im.nRandom = (n*40 + 50) / 100
	im.nZero = (n*30 + 50) / 100
	im.nRepeated = n - im.nRandom - im.nZero
	im.kinds = make([]byte, n)
	for i := range n {
		switch {
		case i < im.nRandom:
			im.kinds[i] = kindRandom
		case i < im.nRandom+im.nZero:
			im.kinds[i] = kindZero
		default:
			im.kinds[i] = kindRepeated
		}
	}
	src := rng(seed, "image")
	r := rand.New(src)
	r.Shuffle(n, func(i, j int) { im.kinds[i], im.kinds[j] = im.kinds[j], im.kinds[i] })

	im.nDistinct = min(4, im.nRepeated)
	repeated := make([][]byte, im.nDistinct)
	for i := range repeated {
		repeated[i] = make([]byte, blockSize)
		_, _ = src.Read(repeated[i])
	}
	f, err := os.Create(im.raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, blockSize)
	for i, k := range im.kinds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var b []byte
		switch k {
		case kindZero:
			continue // a hole
		case kindRandom:
			_, _ = src.Read(buf)
			b = buf
		case kindRepeated:
			b = repeated[r.IntN(im.nDistinct)]
		}
		if _, err := f.WriteAt(b, int64(i)*blockSize); err != nil {
			return nil, err
		}
		im.dataBytes += blockSize
	}
	if err := f.Truncate(im.size); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", im.raw, im.qcow2); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "qemu-img", "bitmap", "--add", "--enable", "-g", "4M", im.qcow2, "bm0"); err != nil {
		return nil, err
	}
	return im, nil
}

// nonZero lists the blocks that hold data.
func (im *image) nonZero() []int {
	var out []int
	for i, k := range im.kinds {
		if k != kindZero {
			out = append(out, i)
		}
	}
	return out
}

func (im *image) describe() string {
	return fmt.Sprintf("%s logical, %d × 4 MiB blocks: %d random, %d zero, %d repeated (%d distinct contents); %s of data",
		human(im.size), im.blocks, im.nRandom, im.nZero, im.nRepeated, im.nDistinct, human(im.dataBytes))
}

// currentSHA is the SHA-256 of the raw image as it is now (cached until
// the image changes).
func (im *image) currentSHA() (string, error) {
	if im.sha == "" {
		s, err := fileSHA(im.raw)
		if err != nil {
			return "", err
		}
		im.sha = s
	}
	return im.sha, nil
}

// changeOnePercent rewrites 1% of the blocks (at least one), spread over
// the disk, with new seeded random data: in the qcow2 through qemu-io, so
// that the dirty bitmap bm0 records it, and in the raw file at the same
// offsets. qemu-nbd must not be serving the image. It checks that both
// still hold the same bytes and returns the dirty byte count.
func (im *image) changeOnePercent(ctx context.Context, dir string, seed uint64) (int64, error) {
	k := max(1, (im.blocks+50)/100)
	stride := im.blocks / k
	src := rng(seed, "change")
	r := rand.New(src)
	raw, err := os.OpenFile(im.raw, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	args := []string{"-f", "qcow2"}
	buf := make([]byte, blockSize)
	im.dirty = im.dirty[:0]
	for j := range k {
		idx := j*stride + r.IntN(stride)
		_, _ = src.Read(buf)
		p := filepath.Join(dir, fmt.Sprintf("change-%04d.bin", j))
		if err := os.WriteFile(p, buf, 0o600); err != nil {
			return 0, err
		}
		defer os.Remove(p)
		off := int64(idx) * blockSize
		if _, err := raw.WriteAt(buf, off); err != nil {
			return 0, err
		}
		args = append(args, "-c", fmt.Sprintf("write -q -s %s %d %d", p, off, blockSize))
		im.dirty = append(im.dirty, idx)
		if im.kinds[idx] == kindZero {
			im.dataBytes += blockSize
		}
		im.kinds[idx] = kindRandom
	}
	if err := raw.Close(); err != nil {
		return 0, err
	}
	im.sha = ""
	if _, err := run(ctx, "qemu-io", append(args, im.qcow2)...); err != nil {
		return 0, err
	}
	// Both copies must still be the same disk, or every check after this
	// would compare against the wrong bytes.
	if _, err := run(ctx, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", im.qcow2, im.raw); err != nil {
		return 0, fmt.Errorf("after the 1%% change the qcow2 and raw images differ: %w", err)
	}
	return int64(k) * blockSize, nil
}

// tree is the container input: a directory of mixed small and large files
// and its tar, made as vzdump makes an LXC archive.
type tree struct {
	dir, tar   string
	files      int
	bytes      int64 // bytes of file contents (apparent sizes)
	tarSize    int64
	tarSHA     string
	smallFiles int
	largeFiles int
}

var words = strings.Fields(`the quick brown fox jumps over lazy dog backup restore chunk index snapshot
disk image bitmap qemu proxmox container archive config firewall log namespace token export
server client stream block zero random repeated storage bucket object catalog commit`)

// genTree writes about total bytes of files: 40% in small files (up to
// 64 KiB; text-like and random, one in ten a duplicate), 60% in large files
// (random, one duplicate, one sparse), plus symlinks and a hard link, then
// tars it with the flags vzdump uses.
func genTree(ctx context.Context, dir string, total int64, seed uint64) (*tree, error) {
	t := &tree{dir: filepath.Join(dir, "tree"), tar: filepath.Join(dir, "tree.tar")}
	src := rng(seed, "tree")
	r := rand.New(src)
	write := func(p string, b []byte) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		t.files++
		t.bytes += int64(len(b))
		return nil
	}
	// Small files.
	var prev [][]byte
	smallBudget := total * 4 / 10
	for i := 0; smallBudget > 0; i++ {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		var b []byte
		switch {
		case i%10 == 9 && len(prev) > 0:
			b = prev[r.IntN(len(prev))]
		case i%2 == 0:
			n := 1 + r.IntN(64<<10)
			if r.IntN(3) > 0 {
				n = 1 + r.IntN(4<<10)
			}
			var sb strings.Builder
			for sb.Len() < n {
				sb.WriteString(words[r.IntN(len(words))])
				if r.IntN(12) == 0 {
					sb.WriteByte('\n')
				} else {
					sb.WriteByte(' ')
				}
			}
			b = []byte(sb.String()[:n])
		default:
			b = make([]byte, 1+r.IntN(64<<10))
			_, _ = src.Read(b)
		}
		if len(prev) < 64 {
			prev = append(prev, b)
		}
		p := filepath.Join(t.dir, "usr", fmt.Sprintf("d%02d", i%48), fmt.Sprintf("s%02d", (i/48)%16), fmt.Sprintf("f%06d", i))
		if err := write(p, b); err != nil {
			return nil, err
		}
		t.smallFiles++
		smallBudget -= int64(len(b))
	}
	// Large files: 32 MiB each (less for small trees).
	largeSize := min(int64(32*mib), max(total/16, mib))
	largeBudget := total - total*4/10
	var first []byte
	for i := 0; largeBudget > 0; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := filepath.Join(t.dir, "var", "lib", fmt.Sprintf("large%02d.bin", i))
		switch i {
		case 1: // a copy of the first: dedup across files
			if err := write(p, first); err != nil {
				return nil, err
			}
		case 2: // sparse: data at both ends, a hole between
			f, err := os.Create(p)
			if err != nil {
				return nil, err
			}
			b := make([]byte, largeSize/8)
			_, _ = src.Read(b)
			_, err1 := f.WriteAt(b, 0)
			_, err2 := f.WriteAt(b, largeSize-int64(len(b)))
			err3 := f.Close()
			if err := firstErr(err1, err2, err3); err != nil {
				return nil, err
			}
			t.files++
			t.bytes += largeSize
		default:
			b := make([]byte, largeSize)
			_, _ = src.Read(b)
			if i == 0 {
				first = b
			}
			if err := write(p, b); err != nil {
				return nil, err
			}
		}
		t.largeFiles++
		largeBudget -= largeSize
	}
	// Links.
	for i := range 8 {
		if err := os.Symlink(fmt.Sprintf("../usr/d%02d/s00/f%06d", i, i), filepath.Join(t.dir, "var", fmt.Sprintf("link%d", i))); err != nil {
			return nil, err
		}
	}
	if err := os.Link(filepath.Join(t.dir, "var", "lib", "large00.bin"), filepath.Join(t.dir, "var", "hardlink.bin")); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "tar", "--create", "--sparse", "--numeric-owner", "--acls", "--xattrs",
		"--file", t.tar, "-C", t.dir, "./"); err != nil {
		return nil, err
	}
	st, err := os.Stat(t.tar)
	if err != nil {
		return nil, err
	}
	t.tarSize = st.Size()
	if t.tarSHA, err = fileSHA(t.tar); err != nil {
		return nil, err
	}
	return t, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func fileSHA(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, mib)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
