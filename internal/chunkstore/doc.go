// Package chunkstore keeps Backstop's chunks in an S3 bucket or a local
// directory. *Store implements backup.ChunkStore: it names data (Sum), wraps
// each chunk in a small versioned envelope (compression, optional
// encryption, checksums) and stores it as one object. It also gives the
// catalog plain object access on the same bucket for its binary indexes.
//
// # Object layout
//
// One repository is one S3 bucket or one directory:
//
//	backstop-repository          repository marker (JSON, see below)
//	chunks/<hex[0:4]>/<hex>      one chunk envelope per object, hex = chunk id
//	indexes/...                  catalog objects (PutObject; raw bytes)
//
// The four-digit prefix keeps directories of the file backend small (at most
// 65,536 of them) and spreads S3 key ranges. The marker records whether the
// repository is encrypted and a check value of its key; Open refuses a
// repository whose marker does not match the configured key, so a wrong key
// file fails loudly instead of writing a second, undeduplicated set of
// chunks.
//
// # Chunk ids
//
// Without encryption a chunk id is SHA-256 of the plaintext. With an
// encryption key K (32 bytes) the id is HMAC-SHA-256 of the plaintext under
// HKDF-SHA-256(K, salt = none, info = "backstop/chunkstore/v1/chunk-id"),
// so equal data under different keys gets different ids and an id reveals
// nothing about the data to someone without the key. The other subkeys come
// from the same HKDF with other labels:
//
//	"backstop/chunkstore/v1/encryption"  AES-256-GCM key of the envelopes
//	"backstop/chunkstore/v1/key-check"   HMAC key of the marker's check value
//
// # Envelope
//
// Every chunk object is a 16-byte header, an optional nonce and a payload.
// Integers are little-endian.
//
//	offset size field
//	0      4    magic "BSCK"
//	4      1    version, 1
//	5      1    flags: 0x01 payload is zstd, 0x02 payload is AES-256-GCM sealed;
//	            other bits must be zero
//	6      2    reserved, must be zero
//	8      4    plaintext length in bytes
//	12     4    CRC-32C (Castagnoli) of every byte after the header
//	16     12   nonce, only when flag 0x02 is set (random per Put)
//	16/28  ...  payload
//
// The payload is the plaintext, or its zstd frame (level 1, SpeedFastest),
// and with encryption on, that byte string sealed with AES-256-GCM (16-byte
// tag at the end). The additional authenticated data is header bytes 0..11
// followed by the 32-byte chunk id, so flags, length and the object's name
// are bound to the ciphertext as well. Nonces are 96 random bits per Put;
// NIST SP 800-38D allows 2^32 such seals per key, far beyond the chunk count
// of one repository (a re-put of an existing chunk seals again).
//
// Compression is kept only when the frame is at least 1/64 smaller than the
// plaintext; otherwise the plaintext is stored as is and decoding is a copy.
// Chunks larger than 64 KiB are first judged by compressing a 32 KiB sample
// (eight 4 KiB slices spread over the chunk): incompressible data, the common
// case for already compressed or encrypted guests, then costs a sample
// instead of a full zstd pass.
//
// # Decoding
//
// Get validates everything and reports any mismatch as backup.ErrChecksum
// with the chunk id: magic, version, unknown flags, reserved bits, the
// plaintext length against the configured maximum, the CRC, the encryption
// flag against the configuration (an encrypted store never accepts a plain
// chunk and vice versa), the GCM tag, the decompressed length, and finally
// that Sum of the plaintext equals the requested id. The CRC catches media
// and transfer damage cheaply before decryption or decompression run; the
// id check is what makes a returned chunk trustworthy.
//
// # Durability and concurrency
//
// Put returns after the backend acknowledged the whole object: an S3 PUT (a
// single request, never multipart), or for the file backend a temporary file
// in the target directory that is written, fsynced, renamed into place, after
// which the directory is fsynced. Equal ids carry equal plaintext, so
// concurrent puts of one id are harmless: the last rename or PUT wins with
// equivalent content. The all-zero chunk (any length) is never stored.
//
// Memory: each Put or Get in flight holds one pooled envelope buffer of up
// to MaxChunkSize plus under 1%, besides the caller's data.
//
// # Retries
//
// The S3 backend retries network errors, 5xx answers, 429 and SlowDown with
// exponential backoff and full jitter, at most Config.MaxRetries times, each
// attempt bounded by Config.Timeout. What still fails is reported as
// backup.ErrUnavailable. A missing object is backup.ErrNotFound, a full disk
// or quota backup.ErrStorageFull; the backend's error stays in the chain.
package chunkstore
