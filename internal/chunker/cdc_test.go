package chunker_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/backstop-pve/backstop/internal/chunker"
)

func TestParams_Validate(t *testing.T) {
	tests := []struct {
		name string
		p    chunker.Params
		ok   bool
	}{
		{"default", chunker.DefaultParams, true},
		{"small", smallParams, true},
		{"tightest", chunker.Params{Min: 64, Avg: 128, Max: 129}, true},
		{"largest", chunker.Params{Min: 1 << 20, Avg: 16 << 20, Max: chunker.MaxSize}, true},
		{"zero", chunker.Params{}, false},
		{"min below window", chunker.Params{Min: 63, Avg: 128, Max: 256}, false},
		{"avg not power of two", chunker.Params{Min: 512, Avg: 1000, Max: 4096}, false},
		{"avg equals min", chunker.Params{Min: 1024, Avg: 1024, Max: 4096}, false},
		{"avg below min", chunker.Params{Min: 4096, Avg: 1024, Max: 8192}, false},
		{"max equals avg", chunker.Params{Min: 512, Avg: 1024, Max: 1024}, false},
		{"max too large", chunker.Params{Min: 1 << 20, Avg: 16 << 20, Max: chunker.MaxSize + 1}, false},
		{"negative", chunker.Params{Min: -1, Avg: -2, Max: -3}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if got := err == nil; got != tt.ok {
				t.Fatalf("Validate(%v) = %v, want ok=%v", tt.p, err, tt.ok)
			}
			if err != nil && !errors.Is(err, chunker.ErrInvalidParams) {
				t.Fatalf("Validate(%v) = %v, want it to wrap ErrInvalidParams", tt.p, err)
			}
			_, cerr := chunker.NewCDC(bytes.NewReader(nil), tt.p)
			_, uerr := chunker.NewCutter(tt.p)
			if (cerr == nil) != tt.ok || (uerr == nil) != tt.ok {
				t.Fatalf("NewCDC = %v, NewCutter = %v, want ok=%v", cerr, uerr, tt.ok)
			}
		})
	}
}

// TestCDC_Stability is kopia's property: the same data fed whole, byte by
// byte, in random slices, or through Cutter.Cut (at once or incrementally)
// gives identical cuts.
func TestCDC_Stability(t *testing.T) {
	inputs := []struct {
		name string
		data []byte
	}{
		{"random", randomData("stability random", 600<<10)},
		{"text", textData("stability text", 300<<10)},
		{"zeros", make([]byte, 100<<10+17)},
		{"short", randomData("stability short", 1000)},
	}
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			data := in.data
			want := cdcChunks(t, data, smallParams)
			readers := map[string]io.Reader{
				"OneByteReader": iotest.OneByteReader(bytes.NewReader(data)),
				"HalfReader":    iotest.HalfReader(bytes.NewReader(data)),
				"DataErrReader": iotest.DataErrReader(bytes.NewReader(data)),
				"random slices": &randomReader{data, rand.New(rand.NewPCG(1, 2)), 40 << 10},
				"tiny slices":   &randomReader{data, rand.New(rand.NewPCG(3, 4)), 100},
			}
			for name, r := range readers {
				got := mustChunks(t, mustCDC(t, r, smallParams), data)
				equalCuts(t, name, got, want)
			}
			c := mustCutter(t, smallParams)
			equalCuts(t, "Cut whole", cutterChunks(t, c, data), want)
			equalCuts(t, "Cut incremental", incrementalCuts(t, c, data), want)
		})
	}
}

// incrementalCuts calls Cut as a streaming caller would: with a growing
// window of data and atEOF false until the data is exhausted.
func incrementalCuts(t *testing.T, c *chunker.Cutter, data []byte) []cut {
	t.Helper()
	rng := rand.New(rand.NewPCG(5, 6))
	var cuts []cut
	start, avail := 0, 0
	for start < len(data) {
		avail = min(len(data), avail+1+rng.IntN(5000))
		atEOF := avail == len(data)
		for start < avail {
			n := c.Cut(data[start:avail], atEOF)
			if n == 0 {
				if atEOF || avail-start >= smallParams.Max {
					t.Fatalf("Cut(%d bytes, atEOF=%v) = 0", avail-start, atEOF)
				}
				break
			}
			cuts = append(cuts, cut{int64(start), n, digest(data[start : start+n])})
			start += n
		}
	}
	return cuts
}

func TestCDC_MinMax(t *testing.T) {
	inputs := []struct {
		name string
		data []byte
	}{
		{"random", randomData("minmax random", 2<<20)},
		{"text", textData("minmax text", 1<<20)},
		{"zeros", make([]byte, 1<<20)},
		{"one byte repeated", bytes.Repeat([]byte{0xa5}, 1<<20)},
	}
	p := smallParams
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			cuts := cdcChunks(t, in.data, p)
			for i, c := range cuts {
				last := i == len(cuts)-1
				if c.Length > p.Max || (!last && c.Length < p.Min) {
					t.Fatalf("chunk %d of %d: length %d outside [%d, %d]", i, len(cuts), c.Length, p.Min, p.Max)
				}
			}
		})
	}
	// Without content to cut on, every chunk but the last is exactly Max.
	cuts := cdcChunks(t, make([]byte, 3*p.Max+5), p)
	want := []int{p.Max, p.Max, p.Max, 5}
	if len(cuts) != len(want) {
		t.Fatalf("zeros: got %d chunks, want %d", len(cuts), len(want))
	}
	for i, c := range cuts {
		if c.Length != want[i] {
			t.Fatalf("zeros: chunk %d length %d, want %d", i, c.Length, want[i])
		}
	}
}

// TestCDC_SizeDistribution checks the masks: on random data the mean chunk
// size is about 1.14 × Avg with Min = Avg/4 (1.19 × with Min = Avg/2), and both
// the strict and the loose region produce cuts.
func TestCDC_SizeDistribution(t *testing.T) {
	p := smallParams
	cuts := cdcChunks(t, randomData("distribution", 16<<20), p)
	var below, forced int
	for _, c := range cuts[:len(cuts)-1] {
		if c.Length < p.Avg {
			below++
		}
		if c.Length == p.Max {
			forced++
		}
	}
	mean := float64(16<<20) / float64(len(cuts))
	t.Logf("%d chunks, mean %.0f bytes (%.2f × avg), %d below avg, %d forced", len(cuts), mean, mean/float64(p.Avg), below, forced)
	if mean < 1.0*float64(p.Avg) || mean > 1.3*float64(p.Avg) {
		t.Errorf("mean chunk size %.0f, want within [1.0, 1.3] × %d", mean, p.Avg)
	}
	// P(cut in the strict region) = 1-exp(-(Avg-Min)/(4·Avg)) ≈ 17%.
	if frac := float64(below) / float64(len(cuts)); frac < 0.10 || frac > 0.25 {
		t.Errorf("%.1f%% of chunks below avg, want 10–25%%", 100*frac)
	}
	// P(no cut in [Avg, Max)) = exp(-3·4) ≈ 6e-6: forced cuts are rare.
	if forced > 2 {
		t.Errorf("%d forced cuts at max on random data, want at most 2", forced)
	}
}

func TestCutter_Cut(t *testing.T) {
	p := smallParams
	c := mustCutter(t, p)
	zeros := make([]byte, 2*p.Max)
	random := randomData("cut", 2*p.Max)
	firstCut := c.Cut(random, true)
	tests := []struct {
		name  string
		data  []byte
		atEOF bool
		want  int
	}{
		{"nil", nil, false, 0},
		{"nil at EOF", nil, true, 0},
		{"below min", zeros[:p.Min-1], false, 0},
		{"below min at EOF", zeros[:p.Min-1], true, p.Min - 1},
		{"no cut, needs more", zeros[:p.Max-1], false, 0},
		{"no cut at EOF", zeros[:p.Max-1], true, p.Max - 1},
		{"forced at max", zeros[:p.Max], false, p.Max},
		{"forced at max, more data", zeros, false, p.Max},
		{"forced at max, more data, EOF", zeros, true, p.Max},
		{"cut found before EOF", random[:firstCut], false, firstCut},
		{"cut found, more data", random, false, firstCut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.Cut(tt.data, tt.atEOF); got != tt.want {
				t.Fatalf("Cut(%d bytes, atEOF=%v) = %d, want %d", len(tt.data), tt.atEOF, got, tt.want)
			}
		})
	}
	if firstCut < p.Min || firstCut >= p.Max {
		t.Fatalf("first cut of random data at %d, want a content-defined cut in [%d, %d)", firstCut, p.Min, p.Max)
	}
	// One byte short of the cut it is not a cut yet.
	if got := c.Cut(random[:firstCut-1], false); got != 0 {
		t.Fatalf("Cut(first cut - 1 bytes) = %d, want 0", got)
	}
}

// TestCDC_InsertionDedup is the point of CDC: an edit in the middle changes
// only the chunks around it. The same edit under fixed-size chunking loses
// every chunk after it, which shows the assertion can fail.
func TestCDC_InsertionDedup(t *testing.T) {
	tests := []struct {
		name string
		p    chunker.Params
		size int
	}{
		{"small", smallParams, 8 << 20},
		{"default", chunker.DefaultParams, 32 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := randomData("dedup "+tt.name, tt.size)
			mid := len(orig) / 2
			edits := map[string][]byte{
				"insert 5 bytes": concat(orig[:mid], []byte("hello"), orig[mid:]),
				"delete 3 bytes": concat(orig[:mid], orig[mid+3:]),
				"overwrite 1":    concat(orig[:mid], []byte{^orig[mid]}, orig[mid+1:]),
			}
			before := cdcChunks(t, orig, tt.p)
			cutter := mustCutter(t, tt.p)
			for name, edited := range edits {
				after := cutterChunks(t, cutter, edited)
				fresh, shared := compareChunks(before, after)
				t.Logf("%s: %d → %d chunks, %d new, %.1f%% of old bytes reused",
					name, len(before), len(after), fresh, 100*shared)
				if fresh > 3 {
					t.Errorf("%s: %d new chunks, want at most 3", name, fresh)
				}
				if minShared := 1 - 4*float64(tt.p.Avg)/float64(tt.size); shared < minShared {
					t.Errorf("%s: %.1f%% of old bytes reused, want at least %.1f%%", name, 100*shared, 100*minShared)
				}
			}
			// Contrast: fixed-size chunks keep only what precedes the insertion.
			fixedBefore := fixedChunks(t, orig, tt.p.Avg)
			_, fixedShared := compareChunks(fixedBefore, fixedChunks(t, edits["insert 5 bytes"], tt.p.Avg))
			if fixedShared > 0.6 {
				t.Errorf("fixed chunking reused %.1f%% after an insertion, want about 50%%", 100*fixedShared)
			}
		})
	}
}

func concat(parts ...[]byte) []byte {
	return bytes.Join(parts, nil)
}

func fixedChunks(t *testing.T, data []byte, size int) []cut {
	t.Helper()
	f, err := chunker.NewFixed(bytes.NewReader(data), size)
	if err != nil {
		t.Fatal(err)
	}
	return mustChunks(t, f, data)
}

// compareChunks returns how many chunks of after are not in before, and the
// fraction of before's bytes found again in after.
func compareChunks(before, after []cut) (fresh int, shared float64) {
	have := make(map[string]bool, len(after))
	for _, c := range after {
		have[c.SHA256] = true
	}
	old := make(map[string]bool, len(before))
	var total, reused int
	for _, c := range before {
		old[c.SHA256] = true
		total += c.Length
		if have[c.SHA256] {
			reused += c.Length
		}
	}
	for _, c := range after {
		if !old[c.SHA256] {
			fresh++
		}
	}
	return fresh, float64(reused) / float64(total)
}

func TestCDC_Buffers(t *testing.T) {
	data := randomData("buffers", 300<<10)
	want := cdcChunks(t, data, smallParams)

	t.Run("nil buffer is allocated", func(t *testing.T) {
		c := mustCDC(t, bytes.NewReader(data), smallParams)
		ch, err := c.Next(nil)
		if err != nil || ch.Length != want[0].Length || digest(ch.Data) != want[0].SHA256 {
			t.Fatalf("Next(nil) = %d bytes, %v; want chunk %+v", ch.Length, err, want[0])
		}
	})
	t.Run("buffer is reused", func(t *testing.T) {
		c := mustCDC(t, bytes.NewReader(data), smallParams)
		buf := make([]byte, smallParams.Max)
		ch, err := c.Next(buf[:0])
		if err != nil {
			t.Fatal(err)
		}
		if &ch.Data[0] != &buf[0] {
			t.Fatal("Next did not write into the caller's buffer")
		}
	})
	t.Run("no allocations", func(t *testing.T) {
		rd := bytes.NewReader(data)
		c := mustCDC(t, rd, smallParams)
		buf := make([]byte, smallParams.Max)
		allocs := testing.AllocsPerRun(5, func() {
			rd.Reset(data)
			c.Reset(rd)
			for {
				if _, err := c.Next(buf); err != nil {
					break
				}
			}
		})
		if allocs != 0 {
			t.Fatalf("%v allocations per stream, want 0", allocs)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c := mustCDC(t, bytes.NewReader([]byte("some other stream, read halfway")), smallParams)
		if _, err := c.Next(nil); err != nil {
			t.Fatal(err)
		}
		c.Reset(bytes.NewReader(data))
		equalCuts(t, "after Reset", mustChunks(t, c, data), want)
		if got := c.Params(); got != smallParams {
			t.Fatalf("Params() = %v, want %v", got, smallParams)
		}
	})
}

var errBroken = errors.New("broken pipe")

func TestCDC_ReadErrors(t *testing.T) {
	data := randomData("errors", 100<<10)
	t.Run("error is returned and sticky", func(t *testing.T) {
		r := io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errBroken))
		c := mustCDC(t, r, smallParams)
		var err error
		for range 100 {
			if _, err = c.Next(nil); err != nil {
				break
			}
		}
		if !errors.Is(err, errBroken) {
			t.Fatalf("Next = %v, want %v", err, errBroken)
		}
		if _, err2 := c.Next(nil); !errors.Is(err2, errBroken) {
			t.Fatalf("Next after error = %v, want %v again", err2, errBroken)
		}
	})
	t.Run("unexpected EOF is an error, not the end", func(t *testing.T) {
		c := mustCDC(t, iotest.ErrReader(io.ErrUnexpectedEOF), smallParams)
		if _, err := c.Next(nil); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("no progress", func(t *testing.T) {
		c := mustCDC(t, emptyReader{}, smallParams)
		if _, err := c.Next(nil); !errors.Is(err, io.ErrNoProgress) {
			t.Fatalf("Next = %v, want io.ErrNoProgress", err)
		}
	})
	t.Run("EOF stays EOF", func(t *testing.T) {
		c := mustCDC(t, bytes.NewReader(nil), smallParams)
		for range 3 {
			if ch, err := c.Next(nil); !errors.Is(err, io.EOF) || ch.Length != 0 {
				t.Fatalf("Next on empty stream = %+v, %v; want io.EOF", ch, err)
			}
		}
	})
}

// emptyReader always returns (0, nil), which io.Reader discourages.
type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }
