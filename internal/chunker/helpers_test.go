package chunker_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/chunker"
)

// smallParams keep tests fast while exercising every region of the cut rule.
var smallParams = chunker.Params{Min: 2 << 10, Avg: 8 << 10, Max: 32 << 10}

// seed32 turns a label into a ChaCha8 seed, so each test's input is named.
func seed32(label string) [32]byte {
	var s [32]byte
	copy(s[:], label)
	return s
}

// randomData returns n pseudo-random bytes from ChaCha8 seeded with label.
func randomData(label string, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed32(label)).Read(b) // never fails
	return b
}

// textData returns n bytes of low-entropy, log-like text: words from a small
// vocabulary picked by a seeded ChaCha8, so it repeats a lot, like real files.
func textData(label string, n int) []byte {
	words := strings.Fields("the quick brown fox jumps over lazy dog backup chunk " +
		"snapshot disk archive error info warn debug 0 1 2 3 4 5 6 7 8 9 = : / \n")
	r := rand.New(rand.NewChaCha8(seed32(label)))
	var buf bytes.Buffer
	buf.Grow(n + 16)
	for buf.Len() < n {
		buf.WriteString(words[r.IntN(len(words))])
		if r.IntN(12) == 0 {
			buf.WriteByte('\n')
		} else {
			buf.WriteByte(' ')
		}
	}
	return buf.Bytes()[:n]
}

// cut is a chunk boundary plus its digest: what the golden file stores.
type cut struct {
	Offset int64
	Length int
	SHA256 string
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// nexter is what Fixed and CDC have in common.
type nexter interface {
	Next(buf []byte) (chunker.Chunk, error)
}

// mustChunks drains n, checks that chunks are contiguous and cover data
// exactly, and returns their cuts.
func mustChunks(t testing.TB, n nexter, data []byte) []cut {
	t.Helper()
	var cuts []cut
	var off int64
	buf := make([]byte, 0, chunker.DefaultFixedSize) // the largest chunk of any test
	for {
		c, err := n.Next(buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d chunks: %v", len(cuts), err)
		}
		if c.Offset != off || c.Length != len(c.Data) || c.Length == 0 {
			t.Fatalf("chunk %d: offset %d length %d len(data) %d, want offset %d and a non-empty chunk",
				len(cuts), c.Offset, c.Length, len(c.Data), off)
		}
		if off+int64(c.Length) > int64(len(data)) || !bytes.Equal(c.Data, data[off:off+int64(c.Length)]) {
			t.Fatalf("chunk %d at offset %d: data differs from the input", len(cuts), off)
		}
		cuts = append(cuts, cut{c.Offset, c.Length, digest(c.Data)})
		off += int64(c.Length)
	}
	if off != int64(len(data)) {
		t.Fatalf("chunks cover %d bytes, want %d", off, len(data))
	}
	return cuts
}

func mustCDC(t testing.TB, r io.Reader, p chunker.Params) *chunker.CDC {
	t.Helper()
	c, err := chunker.NewCDC(r, p)
	if err != nil {
		t.Fatalf("NewCDC(%v): %v", p, err)
	}
	return c
}

func mustCutter(t testing.TB, p chunker.Params) *chunker.Cutter {
	t.Helper()
	c, err := chunker.NewCutter(p)
	if err != nil {
		t.Fatalf("NewCutter(%v): %v", p, err)
	}
	return c
}

// cdcChunks cuts data through an io.Reader.
func cdcChunks(t testing.TB, data []byte, p chunker.Params) []cut {
	t.Helper()
	return mustChunks(t, mustCDC(t, bytes.NewReader(data), p), data)
}

// cutterChunks cuts data held in memory with Cutter.Cut.
func cutterChunks(t testing.TB, c *chunker.Cutter, data []byte) []cut {
	t.Helper()
	var cuts []cut
	for off := 0; off < len(data); {
		n := c.Cut(data[off:], true)
		if n <= 0 || n > len(data)-off {
			t.Fatalf("Cut at offset %d of %d: got %d", off, len(data), n)
		}
		cuts = append(cuts, cut{int64(off), n, digest(data[off : off+n])})
		off += n
	}
	return cuts
}

// randomReader returns reads of random sizes in [1, maxRead] from data.
type randomReader struct {
	data    []byte
	rng     *rand.Rand
	maxRead int
}

func (r *randomReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), 1+r.rng.IntN(r.maxRead))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func equalCuts(t *testing.T, what string, got, want []cut) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d chunks, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: chunk %d: got %+v, want %+v", what, i, got[i], want[i])
		}
	}
}
