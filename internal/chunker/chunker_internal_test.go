package chunker

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

// TestGearTable pins the gear table, which is part of the on-disk format.
// The expected values were computed outside Go from the documented
// derivation (first 8 bytes of SHA-256(gearSeed || byte(i)), big-endian).
func TestGearTable(t *testing.T) {
	const wantSum = "8c194a70af7a6404f9e83ac36365824c0cf3d89db58b52bddad1c30f8f9fb3c0"
	if gear[0] != 0xf98a053e0934885e || gear[255] != 0xfc3f538c8fdb54a2 {
		t.Fatalf("gear[0] = %#x, gear[255] = %#x: the CDC format changed", gear[0], gear[255])
	}
	var b []byte
	for _, v := range gear {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != wantSum {
		t.Fatalf("SHA-256 of the gear table = %s, want %s: the CDC format changed", got, wantSum)
	}
}

// refCut is the cut rule written as plainly as possible: the hash at a
// candidate length p is computed from scratch over data[p-64:p].
func refCut(c *Cutter, data []byte, atEOF bool) int {
	p := c.p
	n := min(len(data), p.Max)
	for l := p.Min; l <= n; l++ {
		if l == p.Max {
			return l
		}
		var fp uint64
		for k := range window {
			fp += gear[data[l-1-k]] << k
		}
		mask := c.maskL
		if l < p.Avg {
			mask = c.maskS
		}
		if fp&mask == 0 {
			return l
		}
	}
	if atEOF {
		return n
	}
	return 0
}

// TestCutter_Reference checks the unrolled scan against refCut for many
// inputs whose cuts fall at every position modulo the unroll factor.
func TestCutter_Reference(t *testing.T) {
	c, err := NewCutter(Params{Min: 64, Avg: 256, Max: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.maskS, uint64(0xffc0000000000000); got != want {
		t.Fatalf("strict mask %#x, want %#x (top log2(avg)+2 bits)", got, want)
	}
	if got, want := c.maskL, uint64(0xfc00000000000000); got != want {
		t.Fatalf("loose mask %#x, want %#x (top log2(avg)-2 bits)", got, want)
	}
	rng := rand.New(rand.NewChaCha8([32]byte{'r', 'e', 'f'}))
	data := make([]byte, 1100)
	seenMod := map[int]bool{}
	for range 3000 {
		n := rng.IntN(len(data) + 1)
		d := data[:n]
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		for _, atEOF := range []bool{false, true} {
			got, want := c.Cut(d, atEOF), refCut(c, d, atEOF)
			if got != want {
				t.Fatalf("Cut(%d bytes, atEOF=%v) = %d, reference says %d", n, atEOF, got, want)
			}
			if got > 0 {
				seenMod[got%8] = true
			}
		}
	}
	if len(seenMod) != 8 {
		t.Fatalf("cuts only at lengths ≡ %v mod 8; the test does not cover the unrolled loop", seenMod)
	}
}
