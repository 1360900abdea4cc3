package archive_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// member is one entry of a tar written with archive/tar.
type member struct {
	hdr  tar.Header
	data []byte
}

// countWriter counts bytes written.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeTar writes ms and returns the stream and each member's offset.
func writeTar(t testing.TB, ms []member, trailing int) ([]byte, []int64) {
	t.Helper()
	var buf bytes.Buffer
	cw := &countWriter{w: &buf}
	tw := tar.NewWriter(cw)
	var offs []int64
	for _, m := range ms {
		if err := tw.Flush(); err != nil { // writes the previous member's padding
			t.Fatal(err)
		}
		offs = append(offs, cw.n)
		h := m.hdr
		if h.Size == 0 && h.Typeflag == tar.TypeReg {
			h.Size = int64(len(m.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("WriteHeader(%q): %v", h.Name, err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(make([]byte, trailing))
	return buf.Bytes(), offs
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// smallConfig cuts tiny test archives into several chunks per stream.
func smallConfig() archive.Config {
	cfg := archive.DefaultConfig()
	cfg.Payload = chunker.Params{Min: 4 << 10, Avg: 8 << 10, Max: 32 << 10}
	cfg.Meta = chunker.Params{Min: 1 << 10, Avg: 2 << 10, Max: 8 << 10}
	cfg.Volatile = chunker.Params{Min: 256, Avg: 512, Max: 2 << 10}
	cfg.Batch = 3
	return cfg
}

func goMembers(format tar.Format) []member {
	r := rand.New(rand.NewPCG(1, 2))
	mt := time.Date(2026, 11, 25, 22, 0, 0, 123456789, time.UTC)
	if format != tar.FormatPAX {
		mt = mt.Truncate(time.Second)
	}
	h := func(name string, typ byte, mode int64) tar.Header {
		return tar.Header{Name: name, Typeflag: typ, Mode: mode, Uid: 1000, Gid: 1000, ModTime: mt, Format: format}
	}
	reg := func(name string, n int) member {
		return member{hdr: h(name, tar.TypeReg, 0o644), data: randBytes(r, n)}
	}
	long := "./" + strings.Repeat("d", 90) + "/" + strings.Repeat("f", 150)
	ms := []member{
		{hdr: h("./", tar.TypeDir, 0o755)},
		{hdr: h("./etc/", tar.TypeDir, 0o755)},
		reg("./etc/hosts", 100),
		reg("./etc/empty", 0),
		reg("./etc/block", 512),
		reg("./big", 100_000),
		{hdr: tar.Header{Name: "./link", Typeflag: tar.TypeSymlink, Linkname: "etc/hosts", Mode: 0o777, ModTime: mt, Format: format}},
		{hdr: tar.Header{Name: "./hard", Typeflag: tar.TypeLink, Linkname: "./etc/hosts", ModTime: mt, Format: format}},
		{hdr: tar.Header{Name: "./null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: mt, Format: format}},
		{hdr: tar.Header{Name: "./fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: mt, Format: format}},
		reg(long, 3000),
	}
	for i := range 40 {
		ms = append(ms, reg("./many/f"+strings.Repeat("x", i), 1+r.IntN(3000)))
	}
	if format == tar.FormatPAX {
		x := h("./xattr", tar.TypeReg, 0o640)
		x.PAXRecords = map[string]string{"SCHILY.xattr.user.foo": "bar", "SCHILY.acl.access": "user::rw-\ngroup::r--\nother::---\n"}
		x.AccessTime, x.ChangeTime = mt.Add(time.Hour), mt.Add(2*time.Hour)
		ms = append(ms, member{hdr: x, data: []byte("with xattrs")},
			member{hdr: tar.Header{Name: "global", Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": strings.Repeat("g", 700)}}},
			reg("./after-global", 10))
	}
	return ms
}

func TestIngest_GoFormats(t *testing.T) {
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			ms := goMembers(format)
			if format == tar.FormatUSTAR {
				ms = ms[:len(ms)-41] // no long names
			}
			data, offs := writeTar(t, ms, 3000)
			s := newTestStore()
			res, entries := mustIngest(t, s, data, smallConfig())
			if got := mustRestore(t, s, res.Indexes); !bytes.Equal(got, data) {
				t.Fatalf("restored stream differs at %d (len %d, want %d)", firstDiff(got, data), len(got), len(data))
			}
			checkGoEntries(t, s, res, entries, ms, offs)
			if res.Stats.TrailingBytes != 3000 {
				t.Errorf("trailing bytes %d, want 3000", res.Stats.TrailingBytes)
			}
			if got := res.Stats.HeaderBytes + res.Stats.PayloadBytes; got != res.Size {
				t.Errorf("header %d + payload %d bytes != size %d", res.Stats.HeaderBytes, res.Stats.PayloadBytes, res.Size)
			}
			// Read in one-byte, erroring and half reads, the result is the same.
			for name, r := range map[string]io.Reader{
				"onebyte": iotest.OneByteReader(bytes.NewReader(data)),
				"dataerr": iotest.DataErrReader(bytes.NewReader(data)),
				"half":    iotest.HalfReader(bytes.NewReader(data)),
			} {
				res2, entries2, err := ingest(t, newTestStore(), r, smallConfig())
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !sameIndexes(res.Indexes, res2.Indexes) || len(entries2) != len(entries) {
					t.Errorf("%s: other result", name)
				}
			}
		})
	}
}

func sameIndexes(a, b archive.Indexes) bool {
	eq := func(x, y *backup.DynamicIndex) bool {
		bx, _ := x.MarshalBinary()
		by, _ := y.MarshalBinary()
		return bytes.Equal(bx, by)
	}
	return eq(a.Meta, b.Meta) && eq(a.Payload, b.Payload) && eq(a.Volatile, b.Volatile)
}

func checkGoEntries(t *testing.T, s *testStore, res archive.Result, entries []archive.Entry, ms []member, offs []int64) {
	t.Helper()
	i := 0
	for k, m := range ms {
		if m.hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if i >= len(entries) {
			t.Fatalf("%d entries, want more", len(entries))
		}
		e := entries[i]
		i++
		want := "/" + strings.Trim(strings.TrimPrefix(m.hdr.Name, "./"), "/")
		if string(e.Path) != want {
			t.Errorf("entry %d: path %q, want %q", k, e.Path, want)
		}
		if e.Offset != offs[k] {
			t.Errorf("%s: offset %d, want %d", e.Path, e.Offset, offs[k])
		}
		if !e.ModTime.Equal(m.hdr.ModTime) || e.Mode != m.hdr.Mode || e.UID != int64(m.hdr.Uid) {
			t.Errorf("%s: mtime %v mode %o uid %d, want %v %o %d", e.Path, e.ModTime, e.Mode, e.UID, m.hdr.ModTime, m.hdr.Mode, m.hdr.Uid)
		}
		switch m.hdr.Typeflag {
		case tar.TypeReg:
			if e.Type != archive.TypeFile || e.Size != int64(len(m.data)) {
				t.Errorf("%s: type %s size %d", e.Path, e.Type, e.Size)
			}
			if got := mustOpenFile(t, s, res.Indexes, e); !bytes.Equal(got, m.data) {
				t.Errorf("%s: OpenFile returned other bytes", e.Path)
			}
		case tar.TypeSymlink:
			if e.Type != archive.TypeSymlink || string(e.LinkTarget) != m.hdr.Linkname {
				t.Errorf("%s: %s -> %q", e.Path, e.Type, e.LinkTarget)
			}
		case tar.TypeLink:
			if e.Type != archive.TypeHardlink || string(e.LinkTarget) != "/etc/hosts" {
				t.Errorf("%s: %s -> %q", e.Path, e.Type, e.LinkTarget)
			}
		case tar.TypeChar:
			if e.Type != archive.TypeCharDev || e.DevMajor != 1 || e.DevMinor != 3 {
				t.Errorf("%s: %s %d,%d", e.Path, e.Type, e.DevMajor, e.DevMinor)
			}
		}
		if x := m.hdr.PAXRecords["SCHILY.xattr.user.foo"]; x != "" && (e.Xattrs["user.foo"] != x || e.ACLAccess == "") {
			t.Errorf("%s: xattrs %q acl %q", e.Path, e.Xattrs, e.ACLAccess)
		}
	}
	if i != len(entries) {
		t.Errorf("%d entries, want %d", len(entries), i)
	}
}

func TestIngest_Malformed(t *testing.T) {
	ms := goMembers(tar.FormatPAX)
	good, offs := writeTar(t, ms, 0)
	end := int64(len(good)) - 1024 // the end-of-archive blocks; tar.Writer adds no more

	corrupt := bytes.Clone(good)
	corrupt[offs[3]+1024+10] ^= 1 // a byte of the name in the ustar block after the PAX header and its data

	tests := []struct {
		name string
		data []byte
		want string // in the error detail
	}{
		{"empty", nil, "empty stream"},
		{"mid first header", good[:100], "truncated"},
		{"one block", good[:512], "truncated"},
		{"mid PAX data", good[:offs[2]+600], "truncated"},
		{"mid data", good[:offs[5]+1024+5000], "truncated inside the data"},
		{"no end blocks", good[:end], "without the end-of-archive blocks"},
		{"one end block", good[:end+512], "without the end-of-archive blocks"},
		{"mid end block", good[:end+700], "truncated"},
		{"bad checksum", corrupt, "invalid header"},
		{"dotdot", mustTar(t, "./a/../../etc/passwd"), `".." component`},
		{"dotdot link", mustLink(t, "./x", "../y"), `".." component`},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), "invalid header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ingest(t, newTestStore(), bytes.NewReader(tt.data), smallConfig())
			var fe *archive.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, backup.ErrInvalid) {
				t.Fatalf("err = %v, want a FormatError", err)
			}
			if d := backup.Detail(err); !strings.Contains(d, tt.want) || !strings.Contains(d, "offset") {
				t.Errorf("detail %q, want %q and an offset", d, tt.want)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		if _, _, err := ingest(t, newTestStore(), bytes.NewReader(good), smallConfig()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("header limit", func(t *testing.T) {
		cfg := smallConfig()
		cfg.MaxHeader = 2048
		data, _ := writeTar(t, []member{{hdr: tar.Header{Name: "./f", Typeflag: tar.TypeReg, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 3000)}}}}, 0)
		_, _, err := ingest(t, newTestStore(), bytes.NewReader(data), cfg)
		if d := backup.Detail(err); !strings.Contains(d, "exceed 2048 bytes") {
			t.Fatalf("err = %v", err)
		}
	})
}

func mustTar(t *testing.T, name string) []byte {
	data, _ := writeTar(t, []member{{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg}, data: []byte("x")}}, 0)
	return data
}

func mustLink(t *testing.T, name, target string) []byte {
	data, _ := writeTar(t, []member{{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}}, 0)
	return data
}

// errReader fails after its data.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestIngest_Errors(t *testing.T) {
	data, _ := writeTar(t, goMembers(tar.FormatPAX), 0)
	t.Run("reader", func(t *testing.T) {
		boom := errors.New("connection reset")
		_, _, err := ingest(t, newTestStore(), &errReader{bytes.NewReader(data[:20000]), boom}, smallConfig())
		if !errors.Is(err, boom) || errors.Is(err, backup.ErrInvalid) {
			t.Fatalf("err = %v, want the reader's error", err)
		}
	})
	t.Run("sink", func(t *testing.T) {
		boom := errors.New("store down")
		s := newTestStore()
		w := s.writers()
		w.Payload = failSink{boom}
		_, err := archive.Ingest(t.Context(), bytes.NewReader(data), w, smallConfig(), func([]archive.Entry) error { return nil })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want the sink's error", err)
		}
	})
	t.Run("catalog", func(t *testing.T) {
		boom := errors.New("catalog down")
		_, err := archive.Ingest(t.Context(), bytes.NewReader(data), newTestStore().writers(), smallConfig(), func([]archive.Entry) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want the callback's error", err)
		}
	})
	t.Run("restore missing chunk", func(t *testing.T) {
		s := newTestStore()
		res, _ := mustIngest(t, s, data, smallConfig())
		if err := s.Delete(t.Context(), res.Payload.Refs()[1:2]); err != nil {
			t.Fatal(err)
		}
		_, err := archive.Restore(t.Context(), io.Discard, res.Indexes, s)
		if !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("restore corrupt chunk", func(t *testing.T) {
		s := newTestStore()
		res, _ := mustIngest(t, s, data, smallConfig())
		s.Corrupt(res.Meta.Refs()[0])
		_, err := archive.Restore(t.Context(), io.Discard, res.Indexes, s)
		if !errors.Is(err, backup.ErrChecksum) {
			t.Fatalf("err = %v, want ErrChecksum", err)
		}
	})
	t.Run("restore mismatched indexes", func(t *testing.T) {
		s := newTestStore()
		res, _ := mustIngest(t, s, data, smallConfig())
		idx := res.Indexes
		idx.Payload = &backup.DynamicIndex{Params: idx.Payload.Params, Entries: idx.Payload.Entries[:len(idx.Payload.Entries)-1]}
		if _, err := archive.Restore(t.Context(), io.Discard, idx, s); err == nil || !strings.Contains(err.Error(), "do not decode") {
			t.Fatalf("err = %v", err)
		}
	})
}

type failSink struct{ err error }

func (f failSink) Write([]byte) (backup.ChunkID, error) { return backup.ChunkID{}, f.err }

// rawHeader builds a ustar header block.
func rawHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b, name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "15301672735\x00")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:], "        ")
	var sum int
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad512(b []byte) []byte { return append(b, make([]byte, -len(b)&511)...) }

// paxMember builds a PAX header with records, then a member with data.
func paxMember(name string, records map[string]string, data []byte) []byte {
	var pax []byte
	for _, k := range slices.Sorted(maps.Keys(records)) {
		rec := " " + k + "=" + records[k] + "\n"
		n := len(rec) + 1 // the length counts its own digits
		for m := len(rec) + len(strconv.Itoa(n)); m != n; m = len(rec) + len(strconv.Itoa(n)) {
			n = m
		}
		pax = append(pax, strconv.Itoa(n)+rec...)
	}
	out := rawHeader("./PaxHeaders/x", 'x', int64(len(pax)))
	out = append(out, pad512(pax)...)
	out = append(out, rawHeader(name, '0', int64(len(data)))...)
	return append(out, pad512(data)...)
}

// TestIngest_SparseCrafted checks sparse members that GNU tar would not
// write: a map whose holes make a petabyte file from 10 bytes is stored
// in no time (archive/tar's reader would expand the holes), and a map that
// does not match the data is refused.
func TestIngest_SparseCrafted(t *testing.T) {
	end := make([]byte, 1024)
	sparse := func(m string, data []byte) []byte {
		b := paxMember("./GNUSparseFile.0/s", map[string]string{
			"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": "./s",
			"GNU.sparse.realsize": "1000000000000000", "GNU.sparse.numblocks": "1", "GNU.sparse.map": m,
		}, data)
		return append(append(b, paxMember("./after", nil, []byte("after"))...), end...)
	}
	t.Run("huge", func(t *testing.T) {
		data := sparse("999999999999990,10", []byte("0123456789"))
		start := time.Now()
		s := newTestStore()
		res, entries := mustIngest(t, s, data, smallConfig())
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Ingest took %v", d)
		}
		if len(entries) != 2 || !entries[0].Sparse || entries[0].Size != 1e15 || string(entries[1].Path) != "/after" {
			t.Fatalf("entries %+v", entries)
		}
		if got := mustRestore(t, s, res.Indexes); !bytes.Equal(got, data) {
			t.Fatal("restored stream differs")
		}
		if got := mustOpenFile(t, s, res.Indexes, entries[1]); string(got) != "after" {
			t.Errorf("OpenFile after a sparse member: %q", got)
		}
	})
	t.Run("map longer than data", func(t *testing.T) {
		_, _, err := ingest(t, newTestStore(), bytes.NewReader(sparse("0,20", []byte("0123456789"))), smallConfig())
		if d := backup.Detail(err); !strings.Contains(d, "map describes 20 data bytes, it has 10") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("map shorter than data", func(t *testing.T) {
		_, _, err := ingest(t, newTestStore(), bytes.NewReader(sparse("0,5", []byte("0123456789"))), smallConfig())
		if d := backup.Detail(err); !strings.Contains(d, "map describes 5 data bytes, it has 10") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		data := sparse("0,10", []byte("0123456789"))
		_, _, err := ingest(t, newTestStore(), bytes.NewReader(data[:1024+512+5]), smallConfig())
		if d := backup.Detail(err); !strings.Contains(d, "truncated inside the data") {
			t.Fatalf("err = %v", err)
		}
	})
}
