package handlers_test

import (
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// lyingNBD serves one export of size bytes that answers the handshake
// correctly and then misbehaves as mode says. It speaks only what the test
// needs: fixed newstyle, GO, structured replies and one meta context.
func lyingNBD(t *testing.T, size int64, mode string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			serveLying(c, size, mode)
			c.Close()
		}
	}()
	return "nbd://" + l.Addr().String() + "/drive-scsi0"
}

func serveLying(c net.Conn, size int64, mode string) {
	be := binary.BigEndian
	w := func(vs ...any) {
		for _, v := range vs {
			_ = binary.Write(c, be, v)
		}
	}
	w(uint64(0x4e42444d41474943), uint64(0x49484156454f5054), uint16(3))
	var cflags uint32
	if binary.Read(c, be, &cflags) != nil {
		return
	}
	reply := func(opt, typ uint32, data []byte) {
		w(uint64(0x0003e889045565a9), opt, typ, uint32(len(data)))
		_, _ = c.Write(data)
	}
	for {
		var hdr struct {
			Magic    uint64
			Opt, Len uint32
		}
		if binary.Read(c, be, &hdr) != nil {
			return
		}
		data := make([]byte, hdr.Len)
		if _, err := io.ReadFull(c, data); err != nil {
			return
		}
		switch hdr.Opt {
		case 8: // STRUCTURED_REPLY: only where the lie needs it
			if mode != "zeroextent" {
				reply(hdr.Opt, 0x80000001, nil)
				continue
			}
			reply(hdr.Opt, 1, nil)
		case 10: // SET_META_CONTEXT: accept the first query as id 1
			exportLen := be.Uint32(data)
			q := data[4+exportLen+4:]
			nameLen := be.Uint32(q)
			p := be.AppendUint32(nil, 1)
			reply(hdr.Opt, 4, append(p, q[4:4+nameLen]...))
			reply(hdr.Opt, 1, nil)
		case 7: // GO
			info := be.AppendUint16(nil, 0)
			adv := size
			if mode == "size" {
				adv += 4096
			}
			info = be.AppendUint64(info, uint64(adv))
			info = be.AppendUint16(info, 1|2) // HAS_FLAGS | READ_ONLY
			reply(hdr.Opt, 3, info)
			reply(hdr.Opt, 1, nil)
			transmit(c, mode)
			return
		default:
			reply(hdr.Opt, 0x80000001, nil)
		}
	}
}

func transmit(c net.Conn, mode string) {
	be := binary.BigEndian
	for {
		var req struct {
			Magic       uint32
			Flags, Type uint16
			Cookie      uint64
			Off         uint64
			Len         uint32
		}
		if binary.Read(c, be, &req) != nil {
			return
		}
		switch {
		case mode == "close":
			return
		case req.Type == 7 && mode == "zeroextent": // BLOCK_STATUS with an empty extent
			p := be.AppendUint32(nil, 1)
			p = be.AppendUint32(p, 0)
			p = be.AppendUint32(p, 0)
			hdr := be.AppendUint32(nil, 0x668e33ef)
			hdr = be.AppendUint16(hdr, 1)
			hdr = be.AppendUint16(hdr, 5)
			hdr = be.AppendUint64(hdr, req.Cookie)
			hdr = be.AppendUint32(hdr, uint32(len(p)))
			_, _ = c.Write(append(hdr, p...))
		case req.Type == 0: // READ, answered simply (structured replies refused)
			cookie := req.Cookie
			n := int(req.Len)
			if mode == "handle" {
				cookie++
			}
			if mode == "short" {
				n /= 2
			}
			hdr := be.AppendUint32(nil, 0x67446698)
			hdr = be.AppendUint32(hdr, 0)
			hdr = be.AppendUint64(hdr, cookie)
			_, _ = c.Write(append(hdr, make([]byte, n)...))
			if mode == "short" {
				return
			}
		default:
			return
		}
	}
}

// TestVMBackup_LyingPeer: an NBD peer that lies gets a failed task with the
// reason, and nothing is committed.
func TestVMBackup_LyingPeer(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	const size = 8 << 20
	cases := []struct {
		mode, bitmap, want string
	}{
		{"short", "new", "READ"},
		{"handle", "new", "cookie"},
		{"size", "new", "has 8392704 bytes"},
		{"close", "new", "nbd: "},
		{"zeroextent", "none", "protocol"},
	}
	for i, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			uri := lyingNBD(t, size, c.mode)
			b := s.openBackup(bk, 300+i, "qemu", 1764100000)
			body := map[string]any{"device": "drive-scsi0", "size": size, "bitmap_mode": c.bitmap, "source": map[string]any{"uri": uri}}
			if c.bitmap != "none" {
				body["bitmap_name"] = "bm0"
			}
			tv := s.waitTask(bk, s.startPull(bk, b.ID, body))
			if tv.State != "error" || !strings.Contains(tv.Error, c.want) {
				t.Fatalf("task %+v, want an error naming %q", tv, c.want)
			}
			wantProblem(t, s.do("POST", "/api/v1/backups/"+b.ID+"/commit", bk, "", nil), http.StatusConflict, "conflict")
			wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+b.ID+"/finish", bk, map[string]any{"success": false, "error": tv.Error}), http.StatusOK)
			wantProblem(t, s.do("GET", "/api/v1/snapshots/"+b.Name, bk, "", nil), http.StatusNotFound, "not_found")
		})
	}
}
