package chunker

import "encoding/binary"

// IsZero reports whether every byte of b is zero. It reads eight 64-bit
// words per step and ORs them together, stopping at the first 64-byte block
// with a set bit, so non-zero data is rejected after one block and an
// all-zero 4 MiB chunk is checked at memory speed.
func IsZero(b []byte) bool {
	for len(b) >= 64 {
		w := binary.LittleEndian.Uint64(b[0:8]) |
			binary.LittleEndian.Uint64(b[8:16]) |
			binary.LittleEndian.Uint64(b[16:24]) |
			binary.LittleEndian.Uint64(b[24:32]) |
			binary.LittleEndian.Uint64(b[32:40]) |
			binary.LittleEndian.Uint64(b[40:48]) |
			binary.LittleEndian.Uint64(b[48:56]) |
			binary.LittleEndian.Uint64(b[56:64])
		if w != 0 {
			return false
		}
		b = b[64:]
	}
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
