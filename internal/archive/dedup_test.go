package archive_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// scaledConfig divides every chunk size of the default configuration by
// f: a test tree f times smaller than a real container then has as many
// chunks as the container would.
func scaledConfig(f int) archive.Config {
	cfg := archive.DefaultConfig()
	scale := func(p chunker.Params) chunker.Params {
		return chunker.Params{Min: p.Min / f, Avg: p.Avg / f, Max: p.Max / f}
	}
	cfg.Payload, cfg.Meta, cfg.Volatile = scale(cfg.Payload), scale(cfg.Meta), scale(cfg.Volatile)
	return cfg
}

// modifyLarge overwrites frac of the tree's bytes in place, as one
// contiguous region in each of n large files.
func modifyLarge(t testing.TB, tr *tree, frac float64, n int, r *rand.Rand, src *rand.ChaCha8) {
	t.Helper()
	per := int64(float64(tr.bytes) * frac / float64(n))
	for _, p := range tr.large[:n] {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		b := make([]byte, per)
		fill(src, b)
		if _, err := f.WriteAt(b, r.Int64N(fi.Size()-per)); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// modifySmall rewrites whole small files, picked at random, until frac of
// the tree's bytes have changed; with clustered, it picks the files of one
// directory (in name order, which is not tar's), as a package upgrade
// would.
func modifySmall(t testing.TB, tr *tree, frac float64, clustered bool, r *rand.Rand, src *rand.ChaCha8) int {
	t.Helper()
	var done int64
	n := 0
	i := r.IntN(len(tr.small)/smallFiles.fanout) * smallFiles.fanout
	for done < int64(float64(tr.bytes)*frac) {
		if !clustered {
			i = r.IntN(len(tr.small))
		}
		p := tr.small[i%len(tr.small)]
		i++
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, fi.Size())
		fill(src, b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		done += fi.Size()
		n++
	}
	return n
}

// TestIngest_Dedup archives a tree with PVE's flags, touches every path
// (so every PAX header's atime and ctime differ in the next run), archives
// it again, changes about 1% of the data and archives it a third time. It
// measures how much of the second and third runs is new to a store that
// holds the first.
func TestIngest_Dedup(t *testing.T) {
	gnuTar(t)
	if testing.Short() {
		t.Skip("archives hundreds of MiB")
	}
	large := change{"1% of the bytes in 3 large files", func(t testing.TB, tr *tree, r *rand.Rand, src *rand.ChaCha8) string {
		modifyLarge(t, tr, 0.01, 3, r, src)
		return "1% of the bytes, in 3 large files"
	}}
	cluster := change{"1% of files, clustered", func(t testing.TB, tr *tree, r *rand.Rand, src *rand.ChaCha8) string {
		return fmt.Sprintf("%d neighbouring small files rewritten (1%% of the bytes)", modifySmall(t, tr, 0.01, true, r, src))
	}}
	scattered := change{"1% of files, scattered", func(t testing.TB, tr *tree, r *rand.Rand, src *rand.ChaCha8) string {
		return fmt.Sprintf("%d small files rewritten at random (1%% of the bytes)", modifySmall(t, tr, 0.01, false, r, src))
	}}
	tests := []struct {
		name    string
		spec    treeSpec
		cfgName string
		cfg     archive.Config
		change  change
		// new bytes / tar bytes must stay below these
		maxHeaders, maxChanged float64
	}{
		{"mixed ~200 MiB", treeSpec{large: []int{24 << 20, 20 << 20, 16 << 20, 16 << 20, 12 << 20, 12 << 20, 8 << 20, 8 << 20, 8 << 20, 8 << 20},
			small: 2000, smallMin: 1, smallMax: 64 << 10, fanout: 50, extras: true},
			"default", archive.DefaultConfig(), large, 0.01, 0.05},
		// A changed small file costs at least one payload chunk; at chunk
		// sizes / 32 the 25 MiB tree has the chunks of an 800 MiB one.
		{"3000 small files ~25 MiB", smallFiles, "chunk sizes / 32", scaledConfig(32), cluster, 0.02, 0.05},
		{"3000 small files ~25 MiB", smallFiles, "chunk sizes / 32", scaledConfig(32), scattered, 0.02, 0.12},
		{"3000 small files ~25 MiB", smallFiles, "default", archive.DefaultConfig(), cluster, 0.02, 0.30},
		// At the default chunk sizes, a tree of small files the size of a
		// small real container (10,000 files of 1–16 KiB, ~85 MiB).
		{"10000 small files ~85 MiB", manySmallFiles, "default", archive.DefaultConfig(), cluster, 0.02, 0.05},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%s", tt.name, tt.cfgName, tt.change.name), func(t *testing.T) {
			src := rand.NewChaCha8([32]byte{byte(i), 7})
			r := rand.New(src)
			tr := buildTree(t, tt.spec, uint64(i))
			run1 := pveTar(t, tr.dir)
			time.Sleep(1100 * time.Millisecond)
			touchAll(t, tr.dir)
			run2 := pveTar(t, tr.dir)
			what := tt.change.do(t, tr, r, src)
			run3 := pveTar(t, tr.dir)
			if bytes.Equal(run1, run2) {
				t.Fatal("the first two runs are identical")
			}
			t.Logf("%s, chunk sizes payload %s, meta %s", tt.name, tt.cfg.Payload, tt.cfg.Meta)

			s := newTestStore()
			res1, _ := mustIngest(t, s, run1, tt.cfg)
			s.reset()
			res2, counts := s.probe(t, run2, tt.cfg)
			pct := reportNew(t, "headers only (atime/ctime changed everywhere)", len(run2), res2, counts)
			t.Logf("  plain CDC over the tar stream would make %.2f%% new", 100*plainCDCNew(t, run1, run2, tt.cfg.Payload))
			if pct >= 100*tt.maxHeaders {
				t.Errorf("headers only: %.2f%% new, want < %.0f%%", pct, 100*tt.maxHeaders)
			}
			res3, _ := mustIngest(t, s, run3, tt.cfg)
			pct = reportNew(t, what, len(run3), res3, s.reset())
			if pct >= 100*tt.maxChanged {
				t.Errorf("%s: %.2f%% new, want < %.0f%%", what, pct, 100*tt.maxChanged)
			}
			for _, c := range []struct {
				res  archive.Result
				data []byte
			}{{res1, run1}, {res3, run3}} {
				if got := mustRestore(t, s, c.res.Indexes); !bytes.Equal(got, c.data) {
					t.Fatalf("restored stream differs at %d", firstDiff(got, c.data))
				}
			}
		})
	}
}

var (
	smallFiles     = treeSpec{small: 3000, smallMin: 1 << 10, smallMax: 16 << 10, fanout: 100}
	manySmallFiles = treeSpec{small: 10000, smallMin: 1 << 10, smallMax: 16 << 10, fanout: 100}
)

type change struct {
	name string
	do   func(t testing.TB, tr *tree, r *rand.Rand, src *rand.ChaCha8) string
}

// reportNew logs what a run added to the store and returns it in percent
// of the tar size.
func reportNew(t *testing.T, what string, size int, res archive.Result, counts map[string]*streamCount) float64 {
	t.Helper()
	var n int64
	for _, c := range counts {
		n += c.NewBytes
	}
	pct := 100 * float64(n) / float64(size)
	get := func(s string) *streamCount {
		if c := counts[s]; c != nil {
			return c
		}
		return &streamCount{}
	}
	t.Logf("  %s: tar %d bytes, %d holes; new %d bytes = %.2f%% (payload %d of %d, meta %d of %d, volatile %d of %d)",
		what, size, res.Stats.Holes, n, pct, get("payload").NewBytes, get("payload").Bytes,
		get("meta").NewBytes, get("meta").Bytes, get("volatile").NewBytes, get("volatile").Bytes)
	return pct
}

// plainCDCNew returns the fraction of b's bytes in chunks that a does not
// have, when both are cut as one stream.
func plainCDCNew(t testing.TB, a, b []byte, p chunker.Params) float64 {
	t.Helper()
	cut, err := chunker.NewCutter(p)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[32]byte]bool{}
	for d := a; len(d) > 0; {
		n := cut.Cut(d, true)
		seen[sha256.Sum256(d[:n])] = true
		d = d[n:]
	}
	var fresh int
	for d := b; len(d) > 0; {
		n := cut.Cut(d, true)
		if !seen[sha256.Sum256(d[:n])] {
			fresh += n
		}
		d = d[n:]
	}
	return float64(fresh) / float64(len(b))
}
