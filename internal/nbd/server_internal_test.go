package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

func TestServer_ClientRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opts    Options
		reqSize int
	}{
		{"structured", Options{}, 256 << 10},
		{"structured odd", Options{}, 1<<20 + 4097},
		{"structured whole", Options{}, testImageSize},
		{"simple", Options{NoStructuredReplies: true}, 192 << 10},
		{"simple whole", Options{NoStructuredReplies: true}, testImageSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, ServerOptions{})
			c := h.client(testExport, tt.opts)
			ex := c.Export()
			wantFlags := FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagCanMultiConn
			if ex.StructuredReplies {
				wantFlags |= FlagSendDF
			}
			if ex.Size != testImageSize || ex.Flags != wantFlags || ex.StructuredReplies == tt.opts.NoStructuredReplies ||
				ex.MinBlock != 1 || ex.PreferredBlock != 64<<10 || ex.MaxPayload != 32<<20 {
				t.Fatalf("export = %+v", ex)
			}
			got := make([]byte, ex.Size)
			g, ctx := errgroup.WithContext(testCtx(t))
			g.SetLimit(16)
			for off := 0; off < len(got); off += tt.reqSize {
				p := got[off:min(off+tt.reqSize, len(got))]
				g.Go(func() error { return c.ReadAt(ctx, p, int64(off)) })
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, h.img.data) {
				t.Fatal("data differs")
			}
		})
	}
}

func TestServer_ClientBlockStatus(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	c := h.client(testExport, Options{MetaContexts: []string{ContextBaseAllocation, DirtyBitmapContext("bm0")}})
	id, ok := c.MetaContextID(ContextBaseAllocation)
	if !ok || id != 0 || len(c.Export().MetaContexts) != 1 {
		t.Fatalf("meta contexts %+v", c.Export().MetaContexts)
	}
	got, err := Extents(testCtx(t), c, id, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := h.img.Extents(context.Background(), 0, testImageSize)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents\ngot  %v\nwant %v", got, want)
	}
	holes := 0
	for _, e := range got {
		if e.Flags == StateHole|StateZero {
			holes++
			if !isZero(h.img.data[e.Offset : e.Offset+e.Length]) {
				t.Errorf("hole %+v has data", e)
			}
		}
	}
	if holes != 2 {
		t.Errorf("%d holes, want 2: %v", holes, got)
	}
	// Clipped to an unaligned request; the odd tail.
	exts, err := c.BlockStatus(testCtx(t), id, 200<<10+7, 300<<10)
	if err != nil || exts[0] != (Extent{Offset: 200<<10 + 7, Length: 184<<10 - 7, Flags: StateHole | StateZero}) {
		t.Fatalf("BlockStatus = %v, %v", exts, err)
	}
	exts, err = c.BlockStatus(testCtx(t), id, testImageSize-3, 3)
	if err != nil || len(exts) != 1 || exts[0].Length != 3 || exts[0].Flags != 0 {
		t.Fatalf("BlockStatus of the tail = %v, %v", exts, err)
	}
}

func TestServer_Chunks(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	data := h.img.data
	r := h.raw()
	size, flags := r.start(true, true, testExport)
	if size != testImageSize || flags&FlagSendDF == 0 {
		t.Fatalf("size %d flags %#x", size, flags)
	}
	type chunk struct {
		typ      uint16
		off, n   uint64
		withData bool
	}
	check := func(name string, reps []rawReply, want []chunk) {
		t.Helper()
		if len(reps) != len(want) {
			t.Fatalf("%s: %d chunks, want %d: %+v", name, len(reps), len(want), reps)
		}
		for i, rep := range reps {
			w := want[i]
			off := binary.BigEndian.Uint64(rep.payload)
			switch {
			case rep.typ != w.typ || off != w.off:
				t.Fatalf("%s: chunk %d is %s at %d, want %s at %d", name, i, chunkTypeName(rep.typ), off, chunkTypeName(w.typ), w.off)
			case w.typ == chunkOffsetHole && binary.BigEndian.Uint32(rep.payload[8:]) != uint32(w.n):
				t.Fatalf("%s: hole %d has size %d, want %d", name, i, binary.BigEndian.Uint32(rep.payload[8:]), w.n)
			case w.typ == chunkOffsetData && !bytes.Equal(rep.payload[8:], data[w.off:w.off+w.n]):
				t.Fatalf("%s: data chunk %d differs", name, i)
			}
		}
	}
	r.request(cmdRead, 0, 1, 128<<10, 384<<10, nil)
	check("data-hole-data", r.chunks(), []chunk{
		{chunkOffsetData, 128 << 10, 64 << 10, true}, {chunkOffsetHole, 192 << 10, 192 << 10, false}, {chunkOffsetData, 384 << 10, 128 << 10, true}})
	// Zero bytes inside a data granule are data.
	r.request(cmdRead, 0, 2, 2<<20, 8192, nil)
	check("zero bytes in data", r.chunks(), []chunk{{chunkOffsetData, 2 << 20, 8192, true}})
	// DF: exactly one content chunk.
	r.request(cmdRead, cmdFlagDF, 3, 128<<10, 384<<10, nil)
	reps := r.chunks()
	if len(reps) != 1 || reps[0].typ != chunkOffsetData || !bytes.Equal(reps[0].payload[8:], data[128<<10:512<<10]) {
		t.Fatalf("DF read: %d chunks", len(reps))
	}
	r.request(cmdRead, cmdFlagDF, 4, 192<<10, 192<<10, nil)
	check("DF hole", r.chunks(), []chunk{{chunkOffsetHole, 192 << 10, 192 << 10, false}})
	// Several segments, the odd tail included.
	r.request(cmdRead, 0, 5, 0, testImageSize, nil)
	reps = r.chunks()
	got := make([]byte, testImageSize)
	for _, rep := range reps {
		off := binary.BigEndian.Uint64(rep.payload)
		if rep.typ == chunkOffsetData {
			copy(got[off:], rep.payload[8:])
		}
	}
	if !bytes.Equal(got, data) || len(reps) < 5 {
		t.Fatalf("whole read: %d chunks, data equal %v", len(reps), bytes.Equal(got, data))
	}
	// Length 0.
	r.request(cmdRead, 0, 6, 4096, 0, nil)
	if rep := r.reply(); rep.simple || rep.typ != chunkNone || rep.flags != replyFlagDone || len(rep.payload) != 0 {
		t.Fatalf("empty read: %+v", rep)
	}
}

func TestServer_SimpleReplies(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	r := h.raw()
	if _, flags := r.start(false, false, testExport); flags&FlagSendDF != 0 {
		t.Fatalf("SEND_DF without structured replies: %#x", flags)
	}
	r.request(cmdRead, 0, 7, 128<<10, 384<<10, nil)
	if rep := r.reply(); !rep.simple || rep.errno != 0 || rep.cookie != 7 {
		t.Fatalf("reply %+v", rep)
	}
	if !bytes.Equal(r.read(384<<10), h.img.data[128<<10:512<<10]) {
		t.Fatal("data differs")
	}
	r.request(cmdRead, cmdFlagDF, 8, 0, 512, nil)
	r.expectErrno(8, EINVAL)
	r.request(cmdBlockStatus, 0, 9, 0, 512, nil)
	r.expectErrno(9, EINVAL)
	h.img.FailReads(1<<20, 1)
	r.request(cmdRead, 0, 10, 1<<20-512, 1024, nil)
	r.expectErrno(10, EIO) // no data follows an error
	r.request(cmdRead, 0, 11, 0, 0, nil)
	if rep := r.reply(); !rep.simple || rep.errno != 0 || rep.cookie != 11 {
		t.Fatalf("empty read: %+v", rep)
	}
	r.request(cmdDisc, 0, 12, 0, 0, nil)
	r.expectClosed()
}

func TestServer_ReadErrors(t *testing.T) {
	for _, structured := range []bool{true, false} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			h := newHarness(t, ServerOptions{})
			c := h.client(testExport, Options{NoStructuredReplies: !structured})
			h.img.FailReads(1<<20+200<<10, 4096)
			p := make([]byte, 1<<20)
			err := c.ReadAt(testCtx(t), p, 1<<20)
			var se *ServerError
			if !errors.As(err, &se) || se.Errno != EIO {
				t.Fatalf("read over the failing range: %v", err)
			}
			// The connection is still usable, and other ranges read fine.
			if err := c.ReadAt(testCtx(t), p, 2<<20); err != nil || !bytes.Equal(p, h.img.data[2<<20:3<<20]) {
				t.Fatalf("read after the failure: %v", err)
			}
			h.img.mu.Lock()
			h.img.failExtents = true
			h.img.mu.Unlock()
			if err := c.ReadAt(testCtx(t), p[:4096], 0); !errors.As(err, &se) || se.Errno != EIO {
				t.Fatalf("read with failing extents: %v", err)
			}
		})
	}
}

// TestServer_ErrorAfterData: a read that fails in a later segment sends
// the good data chunks, then an ERROR chunk that ends the reply.
func TestServer_ErrorAfterData(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	big := newMemImage(testImageData(3*readSegment, 2), testGranule)
	big.FailReads(2*readSegment+100, 1)
	h.exports.mu.Lock()
	h.exports.images["big"] = big
	h.exports.mu.Unlock()
	r := h.raw()
	r.start(true, false, "big")
	r.request(cmdRead, 0, 1, 0, 3*readSegment, nil)
	reps := r.chunks()
	last := reps[len(reps)-1]
	if last.typ != chunkError || Errno(last.errno) != EIO || len(reps) < 3 || reps[0].typ != chunkOffsetData {
		t.Fatalf("%d chunks, the last %+v", len(reps), last)
	}
	for _, rep := range reps[:len(reps)-1] {
		off := binary.BigEndian.Uint64(rep.payload)
		if rep.typ == chunkOffsetData && !bytes.Equal(rep.payload[8:], big.data[off:off+uint64(len(rep.payload)-8)]) {
			t.Fatalf("data chunk at %d differs", off)
		}
	}
	// Still usable.
	r.request(cmdRead, 0, 2, 0, 4096, nil)
	if reps := r.chunks(); len(reps) != 1 || reps[0].typ != chunkOffsetData {
		t.Fatalf("chunks %+v", reps)
	}
}

func TestServer_Transmission(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	r := h.raw()
	r.start(true, false, testExport)
	cookie := uint64(100)
	expect := func(typ, flags uint16, off uint64, length uint32, payload []byte, want Errno) {
		t.Helper()
		cookie++
		r.request(typ, flags, cookie, off, length, payload)
		r.expectErrno(cookie, want)
	}
	expect(cmdWrite, 0, 0, 4096, make([]byte, 4096), EPERM)
	expect(cmdWrite, cmdFlagFUA, 0, 0, nil, EPERM)
	expect(cmdTrim, 0, 0, 1<<20, nil, EPERM)
	expect(cmdWriteZeroes, cmdFlagNoHole, 0, 1<<20, nil, EPERM)
	expect(cmdRead, 0, testImageSize-4096, 4097, nil, EINVAL)
	expect(cmdRead, 0, 1<<63, 1, nil, EINVAL)
	expect(cmdRead, 0, 0, 32<<20+1, nil, EINVAL)
	expect(cmdRead, cmdFlagReqOne, 0, 4096, nil, EINVAL)
	expect(cmdRead, 1<<9, 0, 4096, nil, EINVAL)
	expect(99, 0, 0, 0, nil, EINVAL)
	expect(cmdBlockStatus, 0, 0, 4096, nil, EINVAL) // no context selected
	expect(cmdCache, 0, testImageSize, 1, nil, EINVAL)
	expect(cmdFlush, 0, 0, 0, nil, 0)
	expect(cmdCache, 0, 0, 1<<20, nil, 0)
	cookie++
	r.request(cmdRead, cmdFlagFUA, cookie, 0, 0, nil)
	if rep := r.reply(); rep.typ != chunkNone || rep.flags != replyFlagDone {
		t.Fatalf("empty FUA read: %+v", rep)
	}
	// FUA on a non-empty READ is tolerated too.
	cookie++
	r.request(cmdRead, cmdFlagFUA, cookie, 0, 512, nil)
	if reps := r.chunks(); len(reps) != 1 || reps[0].typ != chunkOffsetData {
		t.Fatalf("FUA read: %+v", reps)
	}
	// A WRITE too long to drain, or a bad magic, ends the connection.
	r.request(cmdWrite, 0, 1, 0, 32<<20+1, nil)
	r.expectClosed()
	r = h.raw()
	r.start(false, false, testExport)
	r.write(bytes.Repeat([]byte{0x42}, requestHeaderSize))
	r.expectClosed()
}

func TestServer_BlockStatusRaw(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	r := h.raw()
	r.start(true, true, testExport)
	r.request(cmdBlockStatus, 0, 1, 0, 1<<20, nil)
	reps := r.chunks()
	p := reps[0].payload
	want := statusPayload(0, 192<<10, 0, 192<<10, 3, 640<<10, 0)
	if len(reps) != 1 || reps[0].typ != chunkBlockStatus || !bytes.Equal(p, want) {
		t.Fatalf("block status %+v, want payload %x", reps, want)
	}
	r.request(cmdBlockStatus, cmdFlagReqOne, 2, 100, 1<<20, nil)
	reps = r.chunks()
	if !bytes.Equal(reps[0].payload, statusPayload(0, 192<<10-100, 0)) {
		t.Fatalf("REQ_ONE: %x", reps[0].payload)
	}
	r.request(cmdBlockStatus, 0, 3, 0, 0, nil)
	r.expectErrno(3, EINVAL)
	r.request(cmdBlockStatus, 0, 4, testImageSize-1, 2, nil)
	r.expectErrno(4, EINVAL)
	h.img.mu.Lock()
	h.img.failExtents = true
	h.img.mu.Unlock()
	r.request(cmdBlockStatus, 0, 5, 0, 4096, nil)
	r.expectErrno(5, EIO)
	// Contexts selected for another export do not apply.
	r = h.raw()
	r.greet(clientFixedNewstyle)
	r.expectOpt(optStructuredReply, nil, repAck)
	r.expectOpt(optSetMetaContext, metaData("other", ContextBaseAllocation), repAck)
	r.expectOpt(optGo, goData(testExport), repAck)
	r.request(cmdBlockStatus, 0, 6, 0, 4096, nil)
	r.expectErrno(6, EINVAL)
}

func TestServer_Handshake(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	t.Run("refused client flags", func(t *testing.T) {
		for _, f := range []uint32{0, clientNoZeroes, clientFixedNewstyle | 4} {
			r := h.raw()
			r.greet(f)
			r.expectClosed()
		}
	})
	t.Run("bad option magic", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.write(bytes.Repeat([]byte{1}, optionHeaderSize))
		r.expectClosed()
	})
	t.Run("unsupported and abort", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.expectOpt(99, []byte("abc"), repErrUnsup)
		r.expectOpt(optExtendedHeaders, nil, repErrUnsup)
		r.expectOpt(4, nil, repErrUnsup) // withdrawn PEEK_EXPORT
		r.expectOpt(99, make([]byte, maxOptionData+1), repErrTooBig)
		r.expectOpt(optStartTLS, nil, repErrPolicy)
		r.expectOpt(optAbort, nil, repAck)
		r.expectClosed()
	})
	t.Run("list", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle)
		reps := r.expectOpt(optList, nil, repAck)
		var names []string
		for _, rep := range reps[:len(reps)-1] {
			n := binary.BigEndian.Uint32(rep.payload)
			if rep.typ != repServer || int(n) != len(rep.payload)-4 {
				t.Fatalf("LIST reply %+v", rep)
			}
			names = append(names, string(rep.payload[4:]))
		}
		if fmt.Sprint(names) != "[disk other]" {
			t.Fatalf("names %q", names)
		}
		r.expectOpt(optList, []byte{0}, repErrInvalid)
		h.exports.mu.Lock()
		h.exports.noList = true
		h.exports.mu.Unlock()
		r.expectOpt(optList, nil, repErrPolicy)
		h.exports.mu.Lock()
		h.exports.noList = false
		h.exports.mu.Unlock()
	})
	t.Run("structured reply", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.expectOpt(optSetMetaContext, metaData(testExport, ContextBaseAllocation), repErrInvalid)
		r.expectOpt(optStructuredReply, []byte{1}, repErrInvalid)
		r.expectOpt(optStructuredReply, nil, repAck)
		r.expectOpt(optStructuredReply, nil, repErrInvalid)
	})
	t.Run("meta contexts", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle)
		// LIST works without structured replies.
		for _, qs := range [][]string{nil, {"base:"}, {ContextBaseAllocation, "qemu:dirty-bitmap:x"}} {
			reps := r.expectOpt(optListMetaContext, metaData(testExport, qs...), repAck)
			if len(reps) != 2 || !bytes.Equal(reps[0].payload, append([]byte{0, 0, 0, 0}, ContextBaseAllocation...)) {
				t.Fatalf("LIST_META_CONTEXT %q: %+v", qs, reps)
			}
		}
		if reps := r.expectOpt(optListMetaContext, metaData(testExport, "qemu:"), repAck); len(reps) != 1 {
			t.Fatalf("qemu: listed %+v", reps)
		}
		r.expectOpt(optStructuredReply, nil, repAck)
		reps := r.expectOpt(optSetMetaContext, metaData(testExport, "nope:x", ContextBaseAllocation, "base:", ContextBaseAllocation), repAck)
		if len(reps) != 2 || reps[0].typ != repMetaContext || string(reps[0].payload[4:]) != ContextBaseAllocation {
			t.Fatalf("SET_META_CONTEXT: %+v", reps)
		}
		if reps := r.expectOpt(optSetMetaContext, metaData(testExport, "qemu:dirty-bitmap:x"), repAck); len(reps) != 1 {
			t.Fatalf("unknown context selected: %+v", reps)
		}
		r.expectOpt(optSetMetaContext, metaData("nope", ContextBaseAllocation), repErrUnknown)
		for _, bad := range [][]byte{nil, {0, 0, 0, 9, 'd'}, metaData(testExport, "x")[:10], append(metaData(testExport), 0), binary.BigEndian.AppendUint32(nil, 1<<31)} {
			r.expectOpt(optSetMetaContext, bad, repErrInvalid)
			r.expectOpt(optListMetaContext, bad, repErrInvalid)
		}
	})
	t.Run("info then go", func(t *testing.T) {
		r := h.raw()
		r.greet(clientFixedNewstyle | clientNoZeroes)
		r.expectOpt(optGo, goData("nope"), repErrUnknown)
		for _, bad := range [][]byte{nil, {0, 0, 0, 4, 'd', 'i', 's', 'k'}, append(goData(testExport, infoName), 0), goData(string(make([]byte, maxString+1)))} {
			r.expectOpt(optInfo, bad, repErrInvalid)
		}
		reps := r.expectOpt(optInfo, goData(testExport, infoName, 42), repAck)
		seen := map[uint16][]byte{}
		for _, rep := range reps[:len(reps)-1] {
			seen[binary.BigEndian.Uint16(rep.payload)] = rep.payload
		}
		wantExport := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64([]byte{0, 0}, testImageSize), uint16(FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn))
		wantBS := []byte{0, 3, 0, 0, 0, 1, 0, 1, 0, 0, 2, 0, 0, 0}
		if len(seen) != 3 || !bytes.Equal(seen[infoExport], wantExport) || string(seen[infoName][2:]) != testExport || !bytes.Equal(seen[infoBlockSize], wantBS) {
			t.Fatalf("INFO replies %x", seen)
		}
		r.expectOpt(optGo, goData(testExport), repAck)
		r.request(cmdRead, 0, 1, 0, 16, nil)
		if rep := r.reply(); !rep.simple || rep.errno != 0 || !bytes.Equal(r.read(16), h.img.data[:16]) {
			t.Fatalf("read after GO: %+v", rep)
		}
	})
	t.Run("export name", func(t *testing.T) {
		for _, flags := range []uint32{clientFixedNewstyle, clientFixedNewstyle | clientNoZeroes} {
			r := h.raw()
			r.greet(flags)
			r.option(optExportName, []byte(testExport))
			n := exportNameReplyLength
			if flags&clientNoZeroes == 0 {
				n += exportNamePadding
			}
			b := r.read(n)
			if binary.BigEndian.Uint64(b) != testImageSize || Flags(binary.BigEndian.Uint16(b[8:])) != FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn || !isZero(b[10:]) {
				t.Fatalf("EXPORT_NAME reply %x", b)
			}
			r.request(cmdRead, 0, 1, 8, 8, nil)
			if rep := r.reply(); rep.errno != 0 || !bytes.Equal(r.read(8), h.img.data[8:16]) {
				t.Fatalf("read after EXPORT_NAME: %+v", rep)
			}
		}
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.option(optExportName, []byte("nope"))
		r.expectClosed()
	})
}

func TestServer_ConcurrentOutOfOrder(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	entered, release := make(chan struct{}), make(chan struct{})
	h.img.setReadHook(func(off int64) {
		if off == 0 {
			close(entered)
			<-release
		}
	})
	c := h.client(testExport, Options{})
	ctx := testCtx(t)
	first := make(chan error, 1)
	p0 := make([]byte, 4096)
	go func() { first <- c.ReadAt(ctx, p0, 0) }()
	<-entered
	// Served while the first request still waits.
	p := make([]byte, 4096)
	if err := c.ReadAt(ctx, p, 1<<20); err != nil || !bytes.Equal(p, h.img.data[1<<20:1<<20+4096]) {
		t.Fatalf("second read: %v", err)
	}
	close(release)
	if err := <-first; err != nil || !bytes.Equal(p0, h.img.data[:4096]) {
		t.Fatalf("first read: %v", err)
	}
	// Many random reads at once.
	g, ctx := errgroup.WithContext(ctx)
	for i := range 32 {
		g.Go(func() error {
			rng := mrand.New(mrand.NewPCG(uint64(i), 7))
			for range 40 {
				off := rng.Int64N(testImageSize)
				p := make([]byte, rng.Int64N(min(testImageSize-off, 300<<10))+1)
				if err := c.ReadAt(ctx, p, off); err != nil {
					return err
				}
				if !bytes.Equal(p, h.img.data[off:off+int64(len(p))]) {
					return fmt.Errorf("read [%d,+%d) differs", off, len(p))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestServer_MaxRequestsInFlight(t *testing.T) {
	h := newHarness(t, ServerOptions{MaxRequestsInFlight: 2})
	var cur, peak atomic.Int64
	h.img.setReadHook(func(int64) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		cur.Add(-1)
	})
	c := h.client(testExport, Options{})
	g, ctx := errgroup.WithContext(testCtx(t))
	for i := range 16 {
		g.Go(func() error { return c.ReadAt(ctx, make([]byte, 4096), int64(i)<<16) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrent reads %d, want 2", p)
	}
}

// TestServer_Disc: after DISC, replies in flight still go out, then the
// server closes.
func TestServer_Disc(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	release := make(chan struct{})
	h.img.setReadHook(func(int64) { <-release })
	r := h.raw()
	r.start(true, false, testExport)
	r.request(cmdRead, 0, 1, 0, 512, nil)
	r.request(cmdDisc, 0, 2, 0, 0, nil)
	close(release)
	if reps := r.chunks(); reps[0].cookie != 1 || reps[0].typ != chunkOffsetData {
		t.Fatalf("reply after DISC: %+v", reps)
	}
	r.expectClosed()
}

func TestServer_TLS(t *testing.T) {
	cfg, certPEM := selfSignedTLS(t)
	pool := x509CertPool(t, certPEM)
	t.Run("required", func(t *testing.T) {
		h := newHarness(t, ServerOptions{TLSConfig: cfg, RequireTLS: true})
		r := h.raw()
		r.greet(clientFixedNewstyle | clientNoZeroes)
		r.expectOpt(optGo, goData(testExport), repErrTLSReqd)
		r.expectOpt(optList, nil, repErrTLSReqd)
		r.expectOpt(optStructuredReply, nil, repErrTLSReqd)
		r.expectOpt(optStartTLS, []byte{1}, repErrInvalid)
		r.expectOpt(optStartTLS, nil, repAck)
		tr := r.startTLS(pool)
		tr.expectOpt(optStartTLS, nil, repErrInvalid)
		tr.expectOpt(optStructuredReply, nil, repAck)
		tr.expectOpt(optGo, goData(testExport), repAck)
		tr.request(cmdRead, 0, 1, 4096, 8192, nil)
		if reps := tr.chunks(); len(reps) != 1 || !bytes.Equal(reps[0].payload[8:], h.img.data[4096:12288]) {
			t.Fatalf("read over TLS: %+v", reps)
		}
		r = h.raw()
		r.greet(clientFixedNewstyle)
		r.option(optExportName, []byte(testExport))
		r.expectClosed()
	})
	t.Run("optional forgets earlier state", func(t *testing.T) {
		h := newHarness(t, ServerOptions{TLSConfig: cfg})
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.expectOpt(optStructuredReply, nil, repAck)
		r.expectOpt(optStartTLS, nil, repAck)
		tr := r.startTLS(pool)
		tr.expectOpt(optGo, goData(testExport), repAck)
		tr.request(cmdRead, 0, 1, 0, 512, nil)
		if rep := tr.reply(); !rep.simple || rep.errno != 0 || !bytes.Equal(tr.read(512), h.img.data[:512]) {
			t.Fatalf("read over TLS: %+v", rep)
		}
	})
	t.Run("bad handshake", func(t *testing.T) {
		h := newHarness(t, ServerOptions{TLSConfig: cfg})
		r := h.raw()
		r.greet(clientFixedNewstyle)
		r.expectOpt(optStartTLS, nil, repAck)
		r.write([]byte("this is not a TLS client hello, not at all......"))
		r.expectClosed()
	})
}

func TestServer_PanicRecovered(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	var panics atomic.Int64
	h.srv.onPanic = func(any) { panics.Add(1) }
	h.img.mu.Lock()
	h.img.panicReads = true
	h.img.mu.Unlock()
	c := h.client(testExport, Options{})
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); err == nil {
		t.Fatal("read through a panicking image succeeded")
	}
	if panics.Load() != 1 {
		t.Fatalf("%d panics reported", panics.Load())
	}
	h.img.mu.Lock()
	h.img.panicReads = false
	h.img.mu.Unlock()
	c = h.client(testExport, Options{})
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); err != nil {
		t.Fatalf("new connection after a panic: %v", err)
	}
}

func TestServer_WriteTimeout(t *testing.T) {
	h := newHarness(t, ServerOptions{WriteTimeout: 50 * time.Millisecond})
	r := h.raw()
	r.start(true, false, testExport)
	r.request(cmdRead, 0, 1, 0, 1<<20, nil) // never read
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.ActiveConns() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection of a client that does not read is still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServer_HandshakeTimeout(t *testing.T) {
	h := newHarness(t, ServerOptions{HandshakeTimeout: 50 * time.Millisecond})
	r := h.raw()
	r.greet(clientFixedNewstyle)
	r.expectClosed()
}

func TestServer_ServeConnCancel(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go func() { h.srv.ServeConn(ctx, sc); close(done) }()
	c, err := NewClient(testCtx(t), cc, testExport, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return after cancel")
	}
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); err == nil {
		t.Fatal("read after the server's context ended succeeded")
	}
}

func TestServer_ServeShutdown(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), l) }()
	uri := "nbd://" + l.Addr().String() + "/" + testExport
	c, err := Dial(testCtx(t), uri, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.ReadAt(testCtx(t), make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if n := h.srv.ActiveConns(); n != 1 {
		t.Fatalf("ActiveConns = %d, want 1", n)
	}
	// A request in flight during Shutdown is still answered.
	entered, release := make(chan struct{}), make(chan struct{})
	h.img.setReadHook(func(int64) { close(entered); <-release })
	inflight := make(chan error, 1)
	p := make([]byte, 4096)
	go func() { inflight <- c.ReadAt(testCtx(t), p, 8192) }()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- h.srv.Shutdown(testCtx(t)) }()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-inflight; err != nil || !bytes.Equal(p, h.img.data[8192:12288]) {
		t.Fatalf("in-flight read during shutdown: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if err := c.ReadAt(testCtx(t), p, 0); err == nil {
		t.Fatal("read after Shutdown succeeded")
	}
	if _, err := Dial(testCtx(t), uri, Options{}); err == nil {
		t.Fatal("dial after Shutdown succeeded")
	}
	if err := h.srv.Serve(context.Background(), l); err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

func TestServer_ServeContextCancel(t *testing.T) {
	h := newHarness(t, ServerOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(ctx, l) }()
	c, err := Dial(testCtx(t), "nbd://"+l.Addr().String()+"/"+testExport, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if n := h.srv.ActiveConns(); n != 0 {
		t.Fatalf("ActiveConns = %d after Serve returned", n)
	}
}
