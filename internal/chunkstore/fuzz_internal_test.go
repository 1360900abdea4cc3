package chunkstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

// fuzzPlaintext is what the committed seeds in testdata/fuzz/FuzzDecode
// hold, sealed or not; only it can decode successfully.
func fuzzPlaintext() []byte { return backuptest.Payload("text", 1, 3000) }

// FuzzDecode feeds arbitrary objects to the decoders of an unencrypted and
// an encrypted store. Decoding must not panic, must fail with ErrChecksum,
// or succeed only with the exact plaintext the id names.
//
//	go test -run '^$' -fuzz FuzzDecode -fuzztime 1m ./internal/chunkstore/
func FuzzDecode(f *testing.F) {
	p := fuzzPlaintext()
	plain, sealed := mustCodec(f, nil, true), mustCodec(f, testKey, true)
	raw := mustCodec(f, nil, false)
	rawSealed := mustCodec(f, testKey, false)
	for _, c := range []*codec{plain, sealed, raw, rawSealed} {
		f.Add(c.encode(c.sum(p), p, nil))
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		for _, c := range []*codec{plain, sealed} {
			id := c.sum(p)
			out, err := c.decode(id, bytes.Clone(obj), nil)
			if err == nil && !bytes.Equal(out, p) {
				t.Fatalf("decode succeeded with %d bytes that are not the plaintext", len(out))
			}
			if err != nil && !errors.Is(err, backup.ErrChecksum) {
				t.Fatalf("decode error %v is not ErrChecksum", err)
			}
		}
	})
}

// FuzzRoundTrip checks encode/decode on arbitrary plaintexts, in every
// configuration.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello"))
	f.Add(bytes.Repeat([]byte("abc"), 30000))
	f.Add(backuptest.Payload("random", 1, 70000))
	var codecs []*codec
	for _, cc := range codecCases {
		codecs = append(codecs, mustCodec(f, cc.key, cc.compress))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, c := range codecs {
			id := c.sum(p)
			env := c.encode(id, p, nil)
			out, err := c.decode(id, env, nil)
			if err != nil || !bytes.Equal(out, p) {
				t.Fatalf("round trip of %d bytes: %d bytes, %v", len(p), len(out), err)
			}
		}
	})
}
