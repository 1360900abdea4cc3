package nbd

// Server side of the fixed newstyle negotiation (nbd-protocol.md §2, §3,
// §9.1). Every option's data is read whole (capped) before it is parsed,
// so a malformed option never desynchronises the stream: it gets an error
// reply and the client may go on.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Server limits and advertised block sizes.
const (
	// maxOptionData caps an option's data; longer options are drained
	// and refused with ERR_TOO_BIG (or, above maxPayload, end the
	// connection). Legitimate options carry a few names of at most
	// maxString bytes.
	maxOptionData = 64 << 10
	// maxMetaQueries caps the queries of one meta-context option.
	maxMetaQueries = 1024
	// serverMinBlock is 1 so that any export size works (libnbd and
	// QEMU refuse sizes that are not a multiple of the minimum).
	serverMinBlock = 1
	// serverPreferredBlock: smaller or unaligned requests still work but
	// cost more with chunked backends.
	serverPreferredBlock = 64 << 10
	// serverMaxPayload is the longest READ served.
	serverMaxPayload = maxPayload
	// baseAllocationID is the id of base:allocation after SET.
	baseAllocationID uint32 = 0
)

// errAbort ends the handshake on the client's ABORT.
var errAbort = errors.New("nbd: client aborted the handshake")

// handshake negotiates until transmission starts (true) or the
// connection should close (false, with the reason unless it was orderly).
func (c *serverConn) handshake() (bool, error) {
	_ = c.raw.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	if c.stopping.Load() {
		return false, nil
	}
	if err := c.greet(); err != nil {
		return false, err
	}
	for {
		var hb [optionHeaderSize]byte
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return false, fmt.Errorf("read option: %w", err)
		}
		h, err := decodeOptionHeader(&hb)
		if err != nil {
			return false, err
		}
		data, err := c.optionData(h)
		if err != nil {
			return false, err
		}
		transmit := false
		if data != nil {
			transmit, err = c.option(h.Option, data)
		} else {
			err = c.optReply(h.Option, repErrTooBig, "option data too long")
		}
		if ferr := c.bw.Flush(); err == nil && ferr != nil {
			err = fmt.Errorf("send %s reply: %w", optName(h.Option), ferr)
		}
		if err != nil || transmit {
			return transmit && c.startTransmission(), err
		}
	}
}

// startTransmission lifts the handshake deadline, unless Shutdown has
// started (its deadline must stay).
func (c *serverConn) startTransmission() bool {
	_ = c.raw.SetDeadline(time.Time{})
	return !c.stopping.Load()
}

// greet sends the greeting and checks the client flags. Clients without
// fixed newstyle or with unknown flags are refused by closing.
func (c *serverConn) greet() error {
	var b [greetingSize]byte
	binary.BigEndian.PutUint64(b[0:], nbdMagic)
	binary.BigEndian.PutUint64(b[8:], optsMagic)
	binary.BigEndian.PutUint16(b[16:], handshakeFixedNewstyle|handshakeNoZeroes)
	if _, err := c.bw.Write(b[:]); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	f := binary.BigEndian.Uint32(cf[:])
	if f&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return fmt.Errorf("unknown client flags %#x", f)
	}
	if f&clientFixedNewstyle == 0 {
		return errors.New("client does not speak fixed newstyle negotiation")
	}
	c.noZeroes = f&clientNoZeroes != 0
	return nil
}

// optionData reads an option's data, or drains it and returns nil when it
// is too long to look at. EXPORT_NAME cannot be refused politely, and
// data beyond maxPayload is not worth draining: both close.
func (c *serverConn) optionData(h optionHeader) ([]byte, error) {
	if h.Length <= maxOptionData {
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("read %s data: %w", optName(h.Option), err)
		}
		return data, nil
	}
	if h.Option == optExportName || h.Length > maxPayload {
		return nil, fmt.Errorf("%s with %d bytes of data", optName(h.Option), h.Length)
	}
	if _, err := io.CopyN(io.Discard, c.br, int64(h.Length)); err != nil {
		return nil, fmt.Errorf("drain %s data: %w", optName(h.Option), err)
	}
	return nil, nil
}

// option answers one option. It reports true when transmission starts.
func (c *serverConn) option(opt uint32, data []byte) (bool, error) {
	if c.srv.opts.RequireTLS && !c.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return false, errors.New("EXPORT_NAME before the required TLS")
		}
		return false, c.optReply(opt, repErrTLSReqd, "TLS required")
	}
	switch opt {
	case optExportName:
		return c.optExportName(data)
	case optAbort:
		if err := c.optReply(opt, repAck, ""); err != nil {
			return false, err
		}
		return false, errAbort
	case optList:
		return false, c.optList(data)
	case optStartTLS:
		return false, c.optStartTLS(data)
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, "unexpected data")
		}
		if c.structured {
			return false, c.optReply(opt, repErrInvalid, "structured replies already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, "")
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt, data)
	}
	return false, c.optReply(opt, repErrUnsup, "unsupported option")
}

// optReply queues an option reply without payload, or with msg as the
// payload of an error.
func (c *serverConn) optReply(opt, typ uint32, msg string) error {
	return c.optReplyData(opt, typ, []byte(msg))
}

func (c *serverConn) optReplyData(opt, typ uint32, payload []byte) error {
	var hb [optionReplyHeaderSize]byte
	h := optionReplyHeader{Option: opt, Type: typ, Length: uint32(len(payload))}
	h.encode(&hb)
	if _, err := c.bw.Write(hb[:]); err != nil {
		return fmt.Errorf("send %s reply: %w", optName(opt), err)
	}
	if _, err := c.bw.Write(payload); err != nil {
		return fmt.Errorf("send %s reply: %w", optName(opt), err)
	}
	return nil
}

// openExport looks name up and checks what came back.
func (c *serverConn) openExport(name string) (Image, func(), error) {
	img, release, err := c.srv.exports.Lookup(c.ctx, name, c.remote)
	if err == nil && (img == nil || img.Size() < 0) {
		if release != nil {
			release()
		}
		err = fmt.Errorf("nbd: export %q: no image or a negative size", name)
	}
	if err != nil {
		return nil, nil, err
	}
	if release == nil {
		release = func() {}
	}
	return img, release, nil
}

// logLookupError logs why an export could not be opened.
func (c *serverConn) logLookupError(opt uint32, name string, err error) {
	if errors.Is(err, ErrUnknownExport) {
		c.log.DebugContext(c.ctx, "nbd: unknown export", "option", optName(opt), "name", name, "err", err)
		return
	}
	c.log.WarnContext(c.ctx, "nbd: export lookup failed", "option", optName(opt), "name", name, "err", err)
}

// lookup opens an export for an option. On failure (ok false) it has
// logged and answered ERR_UNKNOWN, and err says whether that reply could
// be sent.
func (c *serverConn) lookup(opt uint32, name string) (img Image, release func(), ok bool, err error) {
	img, release, lerr := c.openExport(name)
	if lerr != nil {
		c.logLookupError(opt, name, lerr)
		return nil, nil, false, c.optReply(opt, repErrUnknown, "unknown export")
	}
	return img, release, true, nil
}

func (c *serverConn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optReply(optList, repErrInvalid, "unexpected data")
	}
	names, err := c.srv.exports.List(c.ctx, c.remote)
	if err != nil {
		c.log.WarnContext(c.ctx, "nbd: list exports", "err", err)
	}
	if err != nil || names == nil {
		return c.optReply(optList, repErrPolicy, "listing refused")
	}
	for _, n := range names {
		if len(n) > maxString {
			continue
		}
		p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(n)), uint32(len(n)))
		if err := c.optReplyData(optList, repServer, append(p, n...)); err != nil {
			return err
		}
	}
	return c.optReply(optList, repAck, "")
}

// optStartTLS upgrades the connection. Everything negotiated before is
// forgotten, as the spec requires.
func (c *serverConn) optStartTLS(data []byte) error {
	cfg := c.srv.opts.TLSConfig
	switch {
	case cfg == nil:
		return c.optReply(optStartTLS, repErrPolicy, "TLS not available")
	case c.tls:
		return c.optReply(optStartTLS, repErrInvalid, "TLS already started")
	case len(data) != 0:
		return c.optReply(optStartTLS, repErrInvalid, "unexpected data")
	}
	if err := c.optReply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send STARTTLS reply: %w", err)
	}
	if c.br.Buffered() != 0 {
		return errors.New("client sent data after STARTTLS before the TLS handshake")
	}
	tc := tls.Server(c.raw, cfg)
	ctx, cancel := context.WithTimeout(c.ctx, c.srv.opts.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.conn, c.tls = tc, true
	c.br.Reset(tc)
	c.bw.Reset(tc)
	c.structured, c.metaExport, c.metaBase = false, "", false
	return nil
}

// parseInfoRequest decodes INFO/GO data: u32 name length, name, u16 n,
// n × u16 info type.
func parseInfoRequest(data []byte) (name string, infos []uint16, ok bool) {
	if len(data) < 6 {
		return "", nil, false
	}
	n := uint64(binary.BigEndian.Uint32(data))
	if n > maxString || n > uint64(len(data)-6) {
		return "", nil, false
	}
	name, rest := string(data[4:4+n]), data[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, false
	}
	infos = make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, true
}

// exportFlags are the transmission flags of every export: read-only, and
// safe for several connections because the data never changes.
func (c *serverConn) exportFlags() Flags {
	f := FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagCanMultiConn
	if c.structured {
		f |= FlagSendDF
	}
	return f
}

// optInfoGo answers INFO and GO: the export's size and flags, block sizes,
// its name if asked, then ACK. GO then starts transmission.
func (c *serverConn) optInfoGo(opt uint32, data []byte) (bool, error) {
	name, infos, ok := parseInfoRequest(data)
	if !ok {
		return false, c.optReply(opt, repErrInvalid, "malformed request")
	}
	img, release, ok, err := c.lookup(opt, name)
	if !ok {
		return false, err
	}
	keep := false
	defer func() {
		if !keep {
			release()
		}
	}()
	size, flags := img.Size(), c.exportFlags()
	p := binary.BigEndian.AppendUint16(nil, infoExport)
	p = binary.BigEndian.AppendUint64(p, uint64(size))
	p = binary.BigEndian.AppendUint16(p, uint16(flags))
	if err := c.optReplyData(opt, repInfo, p); err != nil {
		return false, err
	}
	for _, t := range infos {
		if t == infoName {
			p := binary.BigEndian.AppendUint16(nil, infoName)
			if err := c.optReplyData(opt, repInfo, append(p, name...)); err != nil {
				return false, err
			}
			break
		}
	}
	p = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	p = binary.BigEndian.AppendUint32(p, serverMinBlock)
	p = binary.BigEndian.AppendUint32(p, serverPreferredBlock)
	p = binary.BigEndian.AppendUint32(p, serverMaxPayload)
	if err := c.optReplyData(opt, repInfo, p); err != nil {
		return false, err
	}
	if err := c.optReply(opt, repAck, ""); err != nil {
		return false, err
	}
	if opt == optInfo {
		return false, nil
	}
	keep = true
	c.setExport(name, img, release, flags)
	return true, nil
}

// setExport fixes the export for transmission. Meta contexts selected
// for another export do not apply.
func (c *serverConn) setExport(name string, img Image, release func(), flags Flags) {
	c.name, c.img, c.release, c.size, c.flags = name, img, release, img.Size(), flags
	if c.metaExport != name {
		c.metaBase = false
	}
}

// optExportName is the old way in: no error reply exists, so an unknown
// export closes the connection.
func (c *serverConn) optExportName(data []byte) (bool, error) {
	if len(data) > maxString {
		return false, fmt.Errorf("EXPORT_NAME of %d bytes", len(data))
	}
	name := string(data)
	img, release, err := c.openExport(name)
	if err != nil {
		c.logLookupError(optExportName, name, err)
		return false, fmt.Errorf("EXPORT_NAME %q: %w", name, err)
	}
	flags := c.exportFlags()
	c.setExport(name, img, release, flags)
	p := binary.BigEndian.AppendUint64(make([]byte, 0, exportNameReplyLength+exportNamePadding), uint64(c.size))
	p = binary.BigEndian.AppendUint16(p, uint16(flags))
	if !c.noZeroes {
		p = append(p, make([]byte, exportNamePadding)...)
	}
	if _, err := c.bw.Write(p); err != nil {
		return false, fmt.Errorf("send EXPORT_NAME reply: %w", err)
	}
	return true, nil
}

// parseMetaRequest decodes LIST/SET_META_CONTEXT data: u32 name length,
// name, u32 n, n × (u32 length, query).
func parseMetaRequest(data []byte) (name string, queries []string, ok bool) {
	take := func(n uint64) ([]byte, bool) {
		if n > uint64(len(data)) {
			return nil, false
		}
		b := data[:n]
		data = data[n:]
		return b, true
	}
	b, ok := take(4)
	if !ok {
		return "", nil, false
	}
	n := uint64(binary.BigEndian.Uint32(b))
	if n > maxString {
		return "", nil, false
	}
	if b, ok = take(n); !ok {
		return "", nil, false
	}
	name = string(b)
	if b, ok = take(4); !ok {
		return "", nil, false
	}
	count := binary.BigEndian.Uint32(b)
	if count > maxMetaQueries {
		return "", nil, false
	}
	for range count {
		if b, ok = take(4); !ok {
			return "", nil, false
		}
		n := uint64(binary.BigEndian.Uint32(b))
		if n > maxString {
			return "", nil, false
		}
		if b, ok = take(n); !ok {
			return "", nil, false
		}
		queries = append(queries, string(b))
	}
	return name, queries, len(data) == 0
}

// optMetaContext answers LIST_ and SET_META_CONTEXT. Only base:allocation
// exists; other queries are ignored, as the spec asks. A SET replaces the
// selection even when it fails.
func (c *serverConn) optMetaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		c.metaExport, c.metaBase = "", false
	}
	name, queries, ok := parseMetaRequest(data)
	if !ok {
		return c.optReply(opt, repErrInvalid, "malformed request")
	}
	if opt == optSetMetaContext && !c.structured {
		return c.optReply(opt, repErrInvalid, "structured replies not negotiated")
	}
	_, release, ok, err := c.lookup(opt, name)
	if !ok {
		return err
	}
	release()
	selected := false
	for _, q := range queries {
		selected = selected || q == ContextBaseAllocation || (opt == optListMetaContext && q == "base:")
	}
	if opt == optListMetaContext && len(queries) == 0 {
		selected = true
	}
	if selected {
		p := binary.BigEndian.AppendUint32(nil, baseAllocationID)
		if err := c.optReplyData(opt, repMetaContext, append(p, ContextBaseAllocation...)); err != nil {
			return err
		}
	}
	if opt == optSetMetaContext {
		c.metaExport, c.metaBase = name, selected
	}
	return c.optReply(opt, repAck, "")
}
