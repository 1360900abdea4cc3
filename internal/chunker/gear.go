package chunker

import (
	"crypto/sha256"
	"encoding/binary"
)

// gearSeed derives the gear table. Entry i is the first 8 bytes, read
// big-endian, of SHA-256(gearSeed || byte(i)).
//
// The table is part of the on-disk format: it decides every CDC cut point,
// and dynamic indexes record those points. Never change the seed or the
// derivation; a different table needs a new algorithm version. A SHA-256
// derivation (rather than math/rand) keeps the table independent of any
// PRNG implementation and easy to reproduce in another language.
// TestGearTable pins the result.
const gearSeed = "backstop/chunker gear table v1"

// gear maps a byte to a pseudo-random 64-bit value for the gear hash
// fp = fp<<1 + gear[b]. Read-only after package initialisation.
var gear = newGearTable(gearSeed)

func newGearTable(seed string) [256]uint64 {
	var t [256]uint64
	in := append([]byte(seed), 0)
	for i := range t {
		in[len(in)-1] = byte(i)
		sum := sha256.Sum256(in)
		t[i] = binary.BigEndian.Uint64(sum[:8])
	}
	return t
}
