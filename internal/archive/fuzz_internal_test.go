package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// rawSink keeps a stream's bytes.
type rawSink struct{ buf bytes.Buffer }

func (s *rawSink) Write(p []byte) (backup.ChunkID, error) {
	s.buf.Write(p)
	return backup.ChunkID{1}, nil
}

// rawStreams ingests a tar and returns its three streams.
func rawStreams(t testing.TB, data []byte) (meta, vol, pay []byte) {
	var m, v, p rawSink
	_, err := Ingest(context.Background(), bytes.NewReader(data), Writers{Meta: &m, Payload: &p, Volatile: &v},
		DefaultConfig(), func([]Entry) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return m.buf.Bytes(), v.buf.Bytes(), p.buf.Bytes()
}

func seedTar(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1795651037, 906981630)
	for i, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./etc/hosts", Typeflag: tar.TypeReg, Size: 20, AccessTime: mt.Add(time.Hour), ChangeTime: mt},
		{Name: "./link", Typeflag: tar.TypeSymlink, Linkname: "etc/hosts"},
	} {
		h.ModTime, h.Format = mt, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(bytes.Repeat([]byte{byte('a' + i)}, int(h.Size))); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzMetaRecords feeds arbitrary meta, volatile and payload streams to
// the decoder Restore and OpenFile use: it must never panic, and its
// output is bounded by its input (each operation is a copy from one of
// the streams, or at most 511 zeros for one byte of volatile stream).
func FuzzMetaRecords(f *testing.F) {
	meta, vol, pay := rawStreams(f, seedTar(f))
	f.Add(meta, vol, pay)
	f.Add([]byte{opLiteral | 3<<opBits, 'a', 'b', 'c', opZeros, opPayload | 2<<opBits, opEnd}, []byte{7}, []byte("xy"))
	f.Fuzz(func(t *testing.T, meta, vol, pay []byte) {
		bound := int64(len(meta) + len(pay) + maxZeros*len(vol))
		for _, single := range []bool{false, true} {
			payload := bytes.NewReader(pay)
			d := newDecoder(bytes.NewReader(meta), bytes.NewReader(vol), 0, 0, func(int64) (io.Reader, error) { return payload, nil })
			d.single = single
			n, err := io.Copy(io.Discard, io.LimitReader(d, bound+1))
			if n > bound {
				t.Fatalf("decoded %d bytes from %d+%d+%d", n, len(meta), len(vol), len(pay))
			}
			if err != nil && !bytes.Contains([]byte(err.Error()), []byte("do not decode")) {
				t.Fatalf("error %v is not a decoding error", err)
			}
		}
	})
}

// FuzzIngest feeds arbitrary bytes to Ingest: it never panics, it fails
// only with a FormatError, and what it accepts restores byte for byte.
func FuzzIngest(f *testing.F) {
	f.Add(seedTar(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m, v, p rawSink
		small := chunker.Params{Min: 64, Avg: 128, Max: 512}
		cfg := Config{Payload: small, Meta: small, Volatile: small, MaxHeader: 1 << 20, Batch: 16}
		_, err := Ingest(context.Background(), bytes.NewReader(data), Writers{Meta: &m, Payload: &p, Volatile: &v},
			cfg, func([]Entry) error { return nil })
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a FormatError", err)
			}
			return
		}
		payload := bytes.NewReader(p.buf.Bytes())
		d := newDecoder(bytes.NewReader(m.buf.Bytes()), bytes.NewReader(v.buf.Bytes()), 0, 0,
			func(int64) (io.Reader, error) { return payload, nil })
		got, err := io.ReadAll(d)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("restore: %v; %d bytes, want %d", err, len(got), len(data))
		}
	})
}
