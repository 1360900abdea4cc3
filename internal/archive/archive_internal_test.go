package archive

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunker"
)

// discardSink stores nothing.
type discardSink struct{}

func (discardSink) Write([]byte) (backup.ChunkID, error) { return backup.ChunkID{1}, nil }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// TestRecorder_Exact checks the premise of the whole design: archive/tar
// consumes a member's headers in Next and exactly its data in Read, no
// byte further, so the recorder splits the stream where the member's data
// starts and ends.
func TestRecorder_Exact(t *testing.T) {
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			var buf bytes.Buffer
			cw := &countWriter{w: &buf}
			tw := tar.NewWriter(cw)
			type span struct{ start, dataStart, dataEnd int64 }
			var spans []span
			for i, size := range []int{0, 1, 511, 512, 513, 5000, 0, 70000} {
				if err := tw.Flush(); err != nil {
					t.Fatal(err)
				}
				start := cw.n
				name := "./f" + strings.Repeat("x", i*40)
				if format == tar.FormatUSTAR {
					name = name[:min(len(name), 100)]
				}
				hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(size), Mode: 0o644,
					ModTime: time.Unix(1e9, 0), Format: format}
				if format == tar.FormatPAX {
					hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.n": strings.Repeat("v", i*100)}
				}
				if err := tw.WriteHeader(hdr); err != nil {
					t.Fatal(err)
				}
				dataStart := cw.n
				if _, err := tw.Write(bytes.Repeat([]byte{byte(i + 1)}, size)); err != nil {
					t.Fatal(err)
				}
				spans = append(spans, span{start, dataStart, cw.n})
			}
			if err := tw.Close(); err != nil {
				t.Fatal(err)
			}
			data := buf.Bytes()
			payload, _ := newChunkStream("payload", chunker.DefaultParams, discardSink{})
			rec := &recorder{r: bytes.NewReader(data), max: 1 << 20}
			tr := tar.NewReader(rec)
			prevEnd := int64(0)
			for i, sp := range spans {
				rec.header()
				if _, err := tr.Next(); err != nil {
					t.Fatal(err)
				}
				if rec.off != sp.dataStart || !bytes.Equal(rec.head, data[prevEnd:sp.dataStart]) {
					t.Fatalf("member %d: Next consumed up to %d, want %d", i, rec.off, sp.dataStart)
				}
				if pad := blockPadding(prevEnd); prevEnd+int64(pad) != sp.start {
					t.Fatalf("member %d starts at %d, padding says %d", i, sp.start, prevEnd+int64(pad))
				}
				rec.data(payload)
				if _, err := io.Copy(io.Discard, tr); err != nil {
					t.Fatal(err)
				}
				if rec.off != sp.dataEnd || rec.paid != sp.dataEnd-sp.dataStart {
					t.Fatalf("member %d: data ends at %d, want %d", i, rec.off, sp.dataEnd)
				}
				prevEnd = sp.dataEnd
			}
		})
	}
}

// TestFindHoles checks that two headers that differ only in atime and
// ctime, with different digit counts, leave the same bytes once their
// holes are cut out.
func TestFindHoles(t *testing.T) {
	header := func(atime, ctime time.Time) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		hdr := &tar.Header{Name: "./etc/hosts", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3, Format: tar.FormatPAX,
			ModTime: time.Unix(1795651037, 906981630), AccessTime: atime, ChangeTime: ctime,
			PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b"}}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	canonical := func(head []byte) (string, int) {
		var out []byte
		prev := 0
		hs := findHoles(head)
		for _, h := range hs {
			if h.start < prev || h.end <= h.start {
				t.Fatalf("holes out of order: %+v", hs)
			}
			if h.zeros && !allZero(head[h.start:h.end]) {
				t.Fatalf("zeros hole over data")
			}
			out = append(out, head[prev:h.start]...)
			prev = h.end
		}
		return string(append(out, head[prev:]...)), len(hs)
	}
	a, na := canonical(header(time.Unix(1795651038, 29246216), time.Unix(1795651038, 21246216)))
	b, nb := canonical(header(time.Unix(1795652000, 100000000), time.Unix(1795652999, 999999999)))
	if a != b {
		t.Errorf("canonical headers differ:\n%q\n%q", a, b)
	}
	if na != 5 || nb != 5 {
		t.Errorf("%d and %d holes, want 5 (size, checksum, atime, ctime, padding)", na, nb)
	}
	if strings.Contains(a, "atime") || strings.Contains(a, "ctime") || !strings.Contains(a, "mtime") {
		t.Errorf("canonical header %q", a)
	}
	// Without atime and ctime nothing is cut.
	if hs := findHoles(header(time.Time{}, time.Time{})); len(hs) != 0 {
		t.Errorf("holes %+v in a header without atime and ctime", hs)
	}
	// Garbage is not an error: just no holes.
	if hs := findHoles(bytes.Repeat([]byte("x"), 3000)); len(hs) != 0 {
		t.Errorf("holes %+v in garbage", hs)
	}
}

func TestSparseName(t *testing.T) {
	for name, want := range map[string]bool{
		"./GNUSparseFile.1825/sparse":          true,
		"./var/lib/GNUSparseFile.7/db":         true,
		"GNUSparseFile.42/x":                   true,
		"./GNUSparseFile.x/y":                  false,
		"./myGNUSparseFile.12/y":               false,
		"./GNUSparseFile.12":                   false,
		"./etc/hosts":                          false,
		"./GNUSparseFile.12/" + "\x00\x00\x00": true,
	} {
		b := make([]byte, nameLen)
		copy(b, name)
		if got := sparseName(b); got != want {
			t.Errorf("sparseName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestCleanPath(t *testing.T) {
	for name, want := range map[string]string{
		"./":          "/",
		".":           "/",
		"/":           "/",
		"./etc":       "/etc",
		"./etc/":      "/etc",
		"etc/hosts":   "/etc/hosts",
		"/etc//hosts": "/etc/hosts",
		"./a/./b/":    "/a/b",
		"./caf\xe9":   "/caf\xe9",
		"..":          "",
		"./a/../b":    "",
		"../etc":      "",
		"":            "",
		"a\x00b":      "",
		"./...":       "/...",
		"./..hidden":  "/..hidden",
	} {
		got, err := cleanPath(name)
		if (err != nil) != (want == "") || string(got) != want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for field, want := range map[string]int64{
		"00000001750\x00": 1000,
		"     1750 \x00":  1000,
		"\x00":            0,
		"\x80\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00": 2 << 32,
	} {
		got, ok := parseSize([]byte(field))
		if !ok || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", field, got, ok, want)
		}
	}
	for _, field := range []string{"12x\x00", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"} {
		if _, ok := parseSize([]byte(field)); ok {
			t.Errorf("parseSize(%q) ok", field)
		}
	}
}
