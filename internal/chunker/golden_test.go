package chunker_test

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/chunker"
)

var update = flag.Bool("update", false, "rewrite "+goldenFile+" from the current code")

// goldenFile holds one block per case:
//
//	case <name> <min>/<avg>/<max> <input size> <input sha256>
//	<offset> <length> <chunk sha256>
//	...
const goldenFile = "testdata/cdc_golden.txt"

// goldenCase is one input of the golden vectors. The input is generated, so
// only its digest is stored, to tell a changed generator from changed cuts.
type goldenCase struct {
	Name        string
	Params      chunker.Params
	InputSize   int
	InputSHA256 string
	Chunks      []cut
}

type goldenInput struct {
	name string
	p    chunker.Params
	data func() []byte
}

func goldenInputs() []goldenInput {
	return []goldenInput{
		{"default-random-24MiB", chunker.DefaultParams, func() []byte { return randomData("golden 1", 24<<20) }},
		{"default-text-6MiB", chunker.DefaultParams, func() []byte { return textData("golden 2", 6<<20) }},
		{"default-short", chunker.DefaultParams, func() []byte { return randomData("golden 3", 100<<10) }},
		{"small-random-1MiB", smallParams, func() []byte { return randomData("golden 4", 1<<20) }},
		{"small-text-512KiB", smallParams, func() []byte { return textData("golden 5", 512<<10) }},
		{"small-zeros", smallParams, func() []byte { return make([]byte, 200000) }},
		{"tiny-random", chunker.Params{Min: 64, Avg: 256, Max: 1024}, func() []byte { return randomData("golden 6", 64<<10) }},
	}
}

// TestCDC_Golden pins the cut points and chunk digests of DefaultParams and
// a few others. A failure here means the on-disk format changed: existing
// dynamic indexes would no longer dedup against new backups. Run with
// -update only when introducing a new, versioned algorithm.
func TestCDC_Golden(t *testing.T) {
	inputs := goldenInputs()
	var got []goldenCase
	for _, in := range inputs {
		data := in.data()
		got = append(got, goldenCase{in.name, in.p, len(data), digest(data), cdcChunks(t, data, in.p)})
	}
	if *update {
		if err := os.MkdirAll(filepath.Dir(goldenFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenFile, formatGolden(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", goldenFile)
	}
	want := mustReadGolden(t)
	if len(want) != len(got) {
		t.Fatalf("%s has %d cases, the test generates %d", goldenFile, len(want), len(got))
	}
	for i, g := range got {
		t.Run(g.Name, func(t *testing.T) {
			w := want[i]
			if w.Name != g.Name || w.Params != g.Params {
				t.Fatalf("golden case %d is %q %v, want %q %v", i, w.Name, w.Params, g.Name, g.Params)
			}
			if w.InputSize != g.InputSize || w.InputSHA256 != g.InputSHA256 {
				t.Fatalf("generated input changed (%d bytes %s, golden %d bytes %s): fix the generator, not the vectors",
					g.InputSize, g.InputSHA256, w.InputSize, w.InputSHA256)
			}
			if len(w.Chunks) == 0 {
				t.Fatal("golden case has no chunks")
			}
			equalCuts(t, "Next", g.Chunks, w.Chunks)
			data := inputs[i].data()
			equalCuts(t, "Cut", cutterChunks(t, mustCutter(t, g.Params), data), w.Chunks)
		})
	}
}

func formatGolden(cases []goldenCase) []byte {
	var b bytes.Buffer
	b.WriteString("# CDC golden vectors, written by go test -run TestCDC_Golden -update. Do not edit.\n")
	for _, c := range cases {
		fmt.Fprintf(&b, "case %s %v %d %s\n", c.Name, c.Params, c.InputSize, c.InputSHA256)
		for _, ch := range c.Chunks {
			fmt.Fprintf(&b, "%d %d %s\n", ch.Offset, ch.Length, ch.SHA256)
		}
	}
	return b.Bytes()
}

func mustReadGolden(t *testing.T) []goldenCase {
	t.Helper()
	f, err := os.Open(goldenFile)
	if err != nil {
		t.Fatalf("open golden vectors (regenerate with -update): %v", err)
	}
	defer f.Close()
	var cases []goldenCase
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		switch {
		case text == "" || strings.HasPrefix(text, "#"):
		case strings.HasPrefix(text, "case "):
			var c goldenCase
			_, err = fmt.Sscanf(text, "case %s %d/%d/%d %d %s",
				&c.Name, &c.Params.Min, &c.Params.Avg, &c.Params.Max, &c.InputSize, &c.InputSHA256)
			cases = append(cases, c)
		case len(cases) == 0:
			err = errors.New("chunk before the first case")
		default:
			var ch cut
			_, err = fmt.Sscanf(text, "%d %d %s", &ch.Offset, &ch.Length, &ch.SHA256)
			cases[len(cases)-1].Chunks = append(cases[len(cases)-1].Chunks, ch)
		}
		if err != nil {
			t.Fatalf("%s:%d: %v", goldenFile, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", goldenFile, err)
	}
	return cases
}
