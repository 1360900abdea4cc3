package chunkstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Envelope format, see doc.go.
const (
	envMagic      = "BSCK"
	envVersion    = 1
	flagZstd      = 0x01
	flagEncrypted = 0x02
	knownFlags    = flagZstd | flagEncrypted
	headerSize    = 16
	nonceSize     = 12
	tagSize       = 16
	aadSize       = 12 + len(backup.ChunkID{})

	// envelopeOverhead bounds header, nonce and tag.
	envelopeOverhead = headerSize + nonceSize + tagSize

	// hardMaxChunkSize bounds Config.MaxChunkSize: the header stores the
	// plaintext length in 32 bits, and the decoder's memory limit is fixed.
	hardMaxChunkSize = 1 << 30
)

// HKDF labels of the subkeys derived from the encryption key (doc.go).
const (
	labelEncryption = "backstop/chunkstore/v1/encryption"
	labelChunkID    = "backstop/chunkstore/v1/chunk-id"
	labelKeyCheck   = "backstop/chunkstore/v1/key-check"
)

// Compression heuristics: chunks above sampleThreshold are judged by a
// sample of sampleSlices × sampleSlice bytes first; compression is kept when
// it saves at least 1/minSavingDiv of the input.
const (
	sampleThreshold = 64 << 10
	sampleSlices    = 8
	sampleSlice     = 4 << 10
	minSavingDiv    = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The zstd encoder and decoder are expensive to build and safe for
// concurrent EncodeAll/DecodeAll, so one of each serves every Store.
var (
	zstdEncoder = sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(0), // GOMAXPROCS EncodeAll calls at once
			zstd.WithEncoderCRC(false),     // the envelope has its own checks
			zstd.WithZeroFrames(true))
		if err != nil {
			panic(fmt.Sprintf("chunkstore: zstd encoder: %v", err)) // options are constant
		}
		return e
	})
	zstdDecoder = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(hardMaxChunkSize),
			// Never decode more than the caller sized dst for: the header's
			// length, so a crafted frame cannot inflate memory.
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			panic(fmt.Sprintf("chunkstore: zstd decoder: %v", err))
		}
		return d
	})
)

// codec names, encodes and decodes chunks. It is immutable after newCodec
// and safe for concurrent use.
type codec struct {
	compress bool
	maxChunk int
	aead     cipher.AEAD // nil without encryption
	macs     *sync.Pool  // of *mac (HMAC under the id key); nil without encryption
	keyCheck []byte      // marker check value; nil without encryption
}

func newCodec(key []byte, compress bool, maxChunk int) (*codec, error) {
	c := &codec{compress: compress, maxChunk: maxChunk}
	if len(key) == 0 {
		return c, nil
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("chunkstore: encryption key: want 32 bytes, got %d: %w", len(key), backup.ErrInvalid)
	}
	encKey, err := hkdf.Key(sha256.New, key, nil, labelEncryption, 32)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: derive encryption key: %w", err)
	}
	idKey, err := hkdf.Key(sha256.New, key, nil, labelChunkID, 32)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: derive id key: %w", err)
	}
	checkKey, err := hkdf.Key(sha256.New, key, nil, labelKeyCheck, 32)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: derive check key: %w", err)
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: aes: %w", err)
	}
	if c.aead, err = cipher.NewGCM(block); err != nil {
		return nil, fmt.Errorf("chunkstore: gcm: %w", err)
	}
	c.macs = &sync.Pool{New: func() any { return &mac{h: hmac.New(sha256.New, idKey)} }}
	m := hmac.New(sha256.New, checkKey)
	m.Write([]byte("backstop repository key check"))
	c.keyCheck = m.Sum(nil)[:16]
	return c, nil
}

// mac is a pooled HMAC with room for its sum, so Sum does not allocate.
type mac struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func (c *codec) encrypted() bool { return c.aead != nil }

// sum names data: SHA-256, or HMAC-SHA-256 under the id key.
func (c *codec) sum(data []byte) backup.ChunkID {
	if c.macs == nil {
		return sha256.Sum256(data)
	}
	m := c.macs.Get().(*mac)
	m.h.Reset()
	m.h.Write(data)
	id := backup.ChunkID(m.h.Sum(m.sum[:0]))
	c.macs.Put(m)
	return id
}

// encode appends the envelope of plaintext p, named id, to dst[:0] and
// returns it. dst's capacity is reused when it suffices.
func (c *codec) encode(id backup.ChunkID, p, dst []byte) []byte {
	hdr := headerSize
	if c.encrypted() {
		hdr += nonceSize
	}
	// Room for the worst case, so that neither zstd nor Seal reallocates.
	need := hdr + len(p) + len(p)>>7 + 512 + tagSize
	if cap(dst) < need {
		dst = make([]byte, 0, need)
	}
	out := dst[:hdr]
	var flags byte
	if c.compress && worthCompressing(p) {
		z := zstdEncoder().EncodeAll(p, out)
		if len(z)-hdr <= len(p)-len(p)/minSavingDiv-1 {
			out, flags = z, flagZstd
		} else {
			out = z[:hdr] // z may be a reallocation of out; reuse it
		}
	}
	if flags&flagZstd == 0 {
		out = append(out, p...)
	}
	binary.LittleEndian.PutUint32(out[8:12], uint32(len(p)))
	copy(out[0:4], envMagic)
	out[4] = envVersion
	out[6], out[7] = 0, 0
	if c.encrypted() {
		flags |= flagEncrypted
		out = slices.Grow(out, tagSize) // zstd may have reallocated; Seal must not
		out[5] = flags
		nonce := out[headerSize:hdr]
		rand.Read(nonce) // never fails (crypto/rand, Go ≥ 1.24)
		aad := makeAAD(out, id)
		body := out[hdr:]
		out = out[:hdr+len(c.aead.Seal(body[:0], nonce, body, aad[:]))]
	}
	out[5] = flags
	binary.LittleEndian.PutUint32(out[12:16], crc32.Checksum(out[headerSize:], castagnoli))
	return out
}

// makeAAD returns header bytes 0..11 (flags included) followed by the id.
func makeAAD(hdr []byte, id backup.ChunkID) [aadSize]byte {
	var aad [aadSize]byte
	copy(aad[:12], hdr[:12])
	copy(aad[12:], id[:])
	return aad
}

// decode checks envelope obj against id and appends the plaintext to
// dst[:0]. It may overwrite obj (decryption happens in place). Every
// mismatch is backup.ErrChecksum.
func (c *codec) decode(id backup.ChunkID, obj, dst []byte) ([]byte, error) {
	if len(obj) < headerSize {
		return nil, checksumErr(id, "object is %d bytes, shorter than the header", len(obj))
	}
	if string(obj[0:4]) != envMagic {
		return nil, checksumErr(id, "bad magic %q", obj[0:4])
	}
	if obj[4] != envVersion {
		return nil, checksumErr(id, "unsupported envelope version %d", obj[4])
	}
	flags := obj[5]
	if flags&^knownFlags != 0 || obj[6] != 0 || obj[7] != 0 {
		return nil, checksumErr(id, "unknown flags %#02x/%#02x%02x", flags, obj[6], obj[7])
	}
	n := binary.LittleEndian.Uint32(obj[8:12])
	if uint64(n) > uint64(c.maxChunk) {
		return nil, checksumErr(id, "plaintext length %d exceeds the limit %d", n, c.maxChunk)
	}
	if got, want := crc32.Checksum(obj[headerSize:], castagnoli), binary.LittleEndian.Uint32(obj[12:16]); got != want {
		return nil, checksumErr(id, "crc32c %08x, header says %08x", got, want)
	}
	body, err := c.open(id, obj, flags)
	if err != nil {
		return nil, err
	}
	var out []byte
	if flags&flagZstd != 0 {
		if cap(dst) < int(n) {
			dst = make([]byte, 0, n)
		}
		out, err = zstdDecoder().DecodeAll(body, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("chunkstore: chunk %s: %w: zstd: %w", id, backup.ErrChecksum, err)
		}
	} else {
		if len(body) != int(n) {
			return nil, checksumErr(id, "payload is %d bytes, header says %d", len(body), n)
		}
		out = append(dst[:0], body...)
	}
	if len(out) != int(n) {
		return nil, checksumErr(id, "plaintext is %d bytes, header says %d", len(out), n)
	}
	if c.sum(out) != id {
		return nil, checksumErr(id, "content does not hash to the id")
	}
	return out, nil
}

// open returns the payload of obj after checking the encryption flag against
// the configuration and, if sealed, authenticating and decrypting in place.
func (c *codec) open(id backup.ChunkID, obj []byte, flags byte) ([]byte, error) {
	sealed := flags&flagEncrypted != 0
	switch {
	case sealed && !c.encrypted():
		return nil, checksumErr(id, "chunk is encrypted but no encryption key is configured")
	case !sealed && c.encrypted():
		return nil, checksumErr(id, "chunk is not encrypted but an encryption key is configured")
	case !sealed:
		return obj[headerSize:], nil
	}
	if len(obj) < headerSize+nonceSize+tagSize {
		return nil, checksumErr(id, "encrypted object is %d bytes, too short", len(obj))
	}
	nonce := obj[headerSize : headerSize+nonceSize]
	ct := obj[headerSize+nonceSize:]
	aad := makeAAD(obj, id)
	pt, err := c.aead.Open(ct[:0], nonce, ct, aad[:])
	if err != nil {
		return nil, fmt.Errorf("chunkstore: chunk %s: %w: decrypt: %w", id, backup.ErrChecksum, err)
	}
	return pt, nil
}

func checksumErr(id backup.ChunkID, format string, args ...any) error {
	return fmt.Errorf("chunkstore: chunk %s: %w: %s", id, backup.ErrChecksum, fmt.Sprintf(format, args...))
}

// samplePool holds sample buffers and their compressed output.
var samplePool = sync.Pool{New: func() any {
	b := make([]byte, 0, 2*sampleSlices*sampleSlice+512)
	return &b
}}

// worthCompressing reports whether a full zstd pass over p is likely to pay
// off. Small chunks are always tried; larger ones are judged by compressing
// a sample spread over the chunk, which costs under 1% of a 4 MiB pass.
func worthCompressing(p []byte) bool {
	if len(p) <= sampleThreshold {
		return true
	}
	bp := samplePool.Get().(*[]byte)
	defer samplePool.Put(bp)
	buf := (*bp)[:0]
	step := (len(p) - sampleSlice) / (sampleSlices - 1)
	for i := range sampleSlices {
		off := i * step
		buf = append(buf, p[off:off+sampleSlice]...)
	}
	sample := len(buf)
	z := zstdEncoder().EncodeAll(buf, buf[sample:sample])
	*bp = buf[:0]
	// A sample that barely shrinks predicts a chunk that will not shrink by
	// 1/64 either; be a little more lenient than the final rule so mixed
	// chunks still get their full pass.
	return len(z) < sample-sample/(2*minSavingDiv)
}
