package chunker_test

import (
	"testing"

	"github.com/backstop-pve/backstop/internal/chunker"
)

// isZeroRef is the obvious byte loop IsZero must agree with.
func isZeroRef(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func TestIsZero(t *testing.T) {
	backing := make([]byte, 300+8)
	// Every length 0..300 at every alignment 0..7, all zero and with each
	// single byte set (low and high bit), against the reference loop.
	for align := range 8 {
		for n := 0; n <= 300; n++ {
			b := backing[align : align+n]
			if !chunker.IsZero(b) {
				t.Fatalf("IsZero(%d zero bytes at alignment %d) = false", n, align)
			}
			for i := range b {
				for _, v := range []byte{0x01, 0x80} {
					b[i] = v
					if got, want := chunker.IsZero(b), isZeroRef(b); got != want || got {
						t.Fatalf("IsZero(len %d, align %d, byte %d = %#x) = %v, want %v", n, align, i, v, got, want)
					}
					b[i] = 0
				}
			}
		}
	}
	// A set byte just outside the slice must not count.
	backing[0], backing[len(backing)-1] = 1, 1
	if !chunker.IsZero(backing[1 : len(backing)-1]) {
		t.Fatal("IsZero looked outside its slice")
	}
}

func TestIsZero_Chunk(t *testing.T) {
	b := make([]byte, chunker.DefaultFixedSize)
	if !chunker.IsZero(b) {
		t.Fatal("IsZero(4 MiB of zeros) = false")
	}
	for _, i := range []int{0, 63, 64, len(b) / 2, len(b) - 65, len(b) - 1} {
		b[i] = 0x10
		if chunker.IsZero(b) {
			t.Fatalf("IsZero(4 MiB with byte %d set) = true", i)
		}
		b[i] = 0
	}
	if chunker.IsZero(randomData("zero", 4096)) {
		t.Fatal("IsZero(random data) = true")
	}
}
