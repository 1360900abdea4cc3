package chunker_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/backstop-pve/backstop/internal/chunker"
)

func TestFixed_Chunks(t *testing.T) {
	const size = 1000
	tests := []struct {
		name    string
		n       int
		lengths []int
	}{
		{"empty", 0, nil},
		{"one byte", 1, []int{1}},
		{"short", size - 1, []int{size - 1}},
		{"exact", size, []int{size}},
		{"exact multiple", 3 * size, []int{size, size, size}},
		{"short tail", 2*size + 7, []int{size, size, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomData("fixed "+tt.name, tt.n)
			readers := map[string]func() io.Reader{
				"whole":         func() io.Reader { return bytes.NewReader(data) },
				"OneByteReader": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
				"DataErrReader": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
			}
			for name, r := range readers {
				f, err := chunker.NewFixed(r(), size)
				if err != nil {
					t.Fatal(err)
				}
				cuts := mustChunks(t, f, data)
				if len(cuts) != len(tt.lengths) {
					t.Fatalf("%s: got %d chunks, want %d", name, len(cuts), len(tt.lengths))
				}
				for i, c := range cuts {
					if c.Offset != int64(i*size) || c.Length != tt.lengths[i] {
						t.Fatalf("%s: chunk %d at %d length %d, want at %d length %d",
							name, i, c.Offset, c.Length, i*size, tt.lengths[i])
					}
				}
				if _, err := f.Next(nil); !errors.Is(err, io.EOF) {
					t.Fatalf("%s: Next after the end = %v, want io.EOF", name, err)
				}
			}
		})
	}
}

func TestNewFixed_Size(t *testing.T) {
	for _, size := range []int{0, -1, chunker.MaxSize + 1} {
		if _, err := chunker.NewFixed(bytes.NewReader(nil), size); !errors.Is(err, chunker.ErrInvalidParams) {
			t.Errorf("NewFixed(size %d) = %v, want ErrInvalidParams", size, err)
		}
	}
	f, err := chunker.NewFixed(bytes.NewReader(nil), chunker.DefaultFixedSize)
	if err != nil || f.Size() != 4<<20 {
		t.Fatalf("NewFixed(DefaultFixedSize) = %v, %v; want size 4 MiB", f, err)
	}
}

func TestFixed_Buffers(t *testing.T) {
	const size = 4096
	data := randomData("fixed buffers", 10*size+123)

	t.Run("buffer is reused", func(t *testing.T) {
		f, _ := chunker.NewFixed(bytes.NewReader(data), size)
		buf := make([]byte, 0, size)
		c, err := f.Next(buf)
		if err != nil {
			t.Fatal(err)
		}
		if &c.Data[0] != &buf[:1][0] || !bytes.Equal(c.Data, data[:size]) {
			t.Fatal("Next did not read into the caller's buffer")
		}
	})
	t.Run("small buffer grows", func(t *testing.T) {
		f, _ := chunker.NewFixed(bytes.NewReader(data), size)
		c, err := f.Next(make([]byte, 10))
		if err != nil || !bytes.Equal(c.Data, data[:size]) {
			t.Fatalf("Next(small buf) = %d bytes, %v; want the first %d bytes", c.Length, err, size)
		}
	})
	t.Run("no allocations", func(t *testing.T) {
		rd := bytes.NewReader(data)
		f, _ := chunker.NewFixed(rd, size)
		buf := make([]byte, size)
		allocs := testing.AllocsPerRun(5, func() {
			rd.Reset(data)
			f.Reset(rd)
			for {
				if _, err := f.Next(buf); err != nil {
					break
				}
			}
		})
		if allocs != 0 {
			t.Fatalf("%v allocations per stream, want 0", allocs)
		}
	})
}

func TestFixed_ReadErrors(t *testing.T) {
	const size = 1000
	data := randomData("fixed errors", 2*size+10)
	t.Run("error is returned and sticky", func(t *testing.T) {
		f, _ := chunker.NewFixed(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errBroken)), size)
		for i := range 2 {
			if _, err := f.Next(nil); err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
		}
		// The 10-byte tail is followed by an error: it is not a chunk.
		for range 2 {
			if c, err := f.Next(nil); !errors.Is(err, errBroken) || c.Length != 0 {
				t.Fatalf("Next = %d bytes, %v; want no data and %v", c.Length, err, errBroken)
			}
		}
	})
	t.Run("unexpected EOF is an error, not a short tail", func(t *testing.T) {
		r := io.MultiReader(bytes.NewReader(data[:10]), iotest.ErrReader(io.ErrUnexpectedEOF))
		f, _ := chunker.NewFixed(r, size)
		if _, err := f.Next(nil); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("no progress", func(t *testing.T) {
		f, _ := chunker.NewFixed(emptyReader{}, size)
		if _, err := f.Next(nil); !errors.Is(err, io.ErrNoProgress) {
			t.Fatalf("Next = %v, want io.ErrNoProgress", err)
		}
	})
}
