package handlers_test

import (
	"archive/tar"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// TestContainer_UploadMemoryBounded streams a 384 MiB tar and checks the
// server's heap never holds the body (it once did: request validation
// read the whole body).
func TestContainer_UploadMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 384 MiB")
	}
	s := newTestServer(t)
	bk := s.mustToken("backup")
	b := s.openBackup(bk, 230, "lxc", 1764100000)
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		rng := rand.New(rand.NewChaCha8([32]byte{42}))
		buf := make([]byte, 1<<20)
		for i := range 48 {
			if err := tw.WriteHeader(&tar.Header{Name: "./f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Mode: 0o644, Size: 8 << 20, Typeflag: tar.TypeReg}); err != nil {
				pw.CloseWithError(err)
				return
			}
			for range 8 {
				for j := range buf {
					buf[j] = byte(rng.Uint32())
				}
				if _, err := tw.Write(buf); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	var r response
	grew := testenv.HeapGrowth(func() { r = s.putArchive(bk, b.ID, pr) })
	wantStatus(t, r, http.StatusCreated)
	t.Logf("heap grew by %d MiB while 384 MiB streamed in", grew>>20)
	if grew > 128<<20 {
		t.Fatalf("heap grew by %d MiB while a 384 MiB tar streamed in: the body is being held", grew>>20)
	}
}
