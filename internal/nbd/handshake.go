package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
)

// Export describes what the handshake negotiated for one export.
type Export struct {
	Name  string
	Size  int64
	Flags Flags
	// MinBlock, PreferredBlock and MaxPayload are the server's block size
	// constraints (INFO_BLOCK_SIZE). Without them the portable defaults
	// apply: 1, 4096 and 32 MiB.
	MinBlock       uint32
	PreferredBlock uint32
	MaxPayload     uint32
	// StructuredReplies is false when the server refused them: no block
	// status, READ errors only as simple replies.
	StructuredReplies bool
	// MetaContexts are the contexts the server selected, with the ids it
	// gave them. A requested context that is missing is not an error here;
	// the caller decides (see Client.MetaContextID).
	MetaContexts []MetaContext
}

// MetaContext is a selected metadata context.
type MetaContext struct {
	Name string
	ID   uint32
}

// Options configure the handshake.
type Options struct {
	// MetaContexts are selected with SET_META_CONTEXT, for example
	// ContextBaseAllocation or DirtyBitmapContext("bm0"). Select one
	// context per connection when talking to QEMU: after a failed
	// multi-context BLOCK_STATUS it sends chunks for a finished request.
	MetaContexts []string
	// NoStructuredReplies skips STRUCTURED_REPLY: simple replies only and
	// no block status. For old servers and tests.
	NoStructuredReplies bool
}

// maxOptionReplies bounds how many replies one option may produce, so a
// server cannot keep the handshake busy forever with INFO replies.
const maxOptionReplies = 256

// handshake runs the client side of the fixed newstyle negotiation.
type handshake struct {
	conn net.Conn
	br   *bufio.Reader
}

func (h *handshake) run(export string, opts Options) (Export, error) {
	if len(export) > maxString {
		return Export{}, fmt.Errorf("nbd: export name is %d bytes, longer than %d", len(export), maxString)
	}
	if err := checkQueries(opts.MetaContexts); err != nil {
		return Export{}, err
	}
	noZeroes, err := h.greet()
	if err != nil {
		return Export{}, err
	}
	ex := Export{Name: export}
	if !opts.NoStructuredReplies {
		if ex.StructuredReplies, err = h.structuredReply(); err != nil {
			return Export{}, err
		}
	}
	if ex.StructuredReplies && len(opts.MetaContexts) > 0 {
		if ex.MetaContexts, err = h.setMetaContexts(export, opts.MetaContexts); err != nil {
			return Export{}, err
		}
	}
	err = h.goExport(&ex)
	var oe *OptionError
	if errors.As(err, &oe) && oe.code == repErrUnsup {
		err = h.exportName(&ex, noZeroes)
	}
	if err != nil {
		return Export{}, err
	}
	return ex, nil
}

func checkQueries(qs []string) error {
	seen := make(map[string]bool, len(qs))
	for _, q := range qs {
		if q == "" || len(q) > maxString {
			return fmt.Errorf("nbd: meta context query %q: want 1-%d bytes", q, maxString)
		}
		if seen[q] {
			return fmt.Errorf("nbd: meta context %q requested twice", q)
		}
		seen[q] = true
	}
	return nil
}

// greet reads the server greeting and sends the client flags. It reports
// whether both sides agreed to drop the EXPORT_NAME padding.
func (h *handshake) greet() (noZeroes bool, err error) {
	var b [greetingSize]byte
	if _, err := io.ReadFull(h.br, b[:16]); err != nil {
		return false, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(b[0:]); m != nbdMagic {
		return false, protocolError("greeting: bad magic %#016x, not an NBD server", m)
	}
	switch m := binary.BigEndian.Uint64(b[8:]); m {
	case optsMagic:
	case oldstyleMagic:
		return false, protocolError("greeting: server uses oldstyle negotiation, which is not supported")
	default:
		return false, protocolError("greeting: bad second magic %#016x", m)
	}
	if _, err := io.ReadFull(h.br, b[16:]); err != nil {
		return false, fmt.Errorf("nbd: read greeting: %w", err)
	}
	sflags := binary.BigEndian.Uint16(b[16:])
	if sflags&handshakeFixedNewstyle == 0 {
		return false, protocolError("greeting: server does not offer fixed newstyle negotiation")
	}
	cflags := clientFixedNewstyle
	if sflags&handshakeNoZeroes != 0 {
		cflags |= clientNoZeroes
		noZeroes = true
	}
	var w [4]byte
	binary.BigEndian.PutUint32(w[:], cflags)
	if _, err := h.conn.Write(w[:]); err != nil {
		return false, fmt.Errorf("nbd: send client flags: %w", err)
	}
	return noZeroes, nil
}

func (h *handshake) sendOption(opt uint32, data []byte) error {
	var hb [optionHeaderSize]byte
	hdr := optionHeader{Option: opt, Length: uint32(len(data))}
	hdr.encode(&hb)
	buf := append(hb[:], data...)
	if _, err := h.conn.Write(buf); err != nil {
		return fmt.Errorf("nbd: send option %s: %w", optName(opt), err)
	}
	return nil
}

// readReply reads one option reply to opt. Error replies come back as
// *OptionError with a nil payload.
func (h *handshake) readReply(opt uint32) (typ uint32, payload []byte, err error) {
	var hb [optionReplyHeaderSize]byte
	if _, err := io.ReadFull(h.br, hb[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read %s reply: %w", optName(opt), err)
	}
	hdr, err := decodeOptionReplyHeader(&hb)
	if err != nil {
		return 0, nil, protocolError("%s reply: %v", optName(opt), err)
	}
	if hdr.Option != opt {
		return 0, nil, protocolError("%s reply: answers option %s", optName(opt), optName(hdr.Option))
	}
	if hdr.Length > maxOptionReply {
		return 0, nil, protocolError("%s reply %s: length %d exceeds %d", optName(opt), repName(hdr.Type), hdr.Length, maxOptionReply)
	}
	payload = make([]byte, hdr.Length)
	if _, err := io.ReadFull(h.br, payload); err != nil {
		return 0, nil, fmt.Errorf("nbd: read %s reply: %w", optName(opt), err)
	}
	if hdr.Type&repFlagError != 0 {
		msg := payload
		if len(msg) > 256 {
			msg = msg[:256]
		}
		return hdr.Type, nil, &OptionError{Option: optName(opt), Reply: repName(hdr.Type), Message: printable(msg), code: hdr.Type}
	}
	return hdr.Type, payload, nil
}

// printable makes peer text safe to put in an error message.
func printable(b []byte) string {
	out := make([]rune, 0, len(b))
	for _, r := range string(b) {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}

// structuredReply asks for structured replies; any error reply means no.
func (h *handshake) structuredReply() (bool, error) {
	if err := h.sendOption(optStructuredReply, nil); err != nil {
		return false, err
	}
	typ, payload, err := h.readReply(optStructuredReply)
	var oe *OptionError
	switch {
	case errors.As(err, &oe):
		return false, nil
	case err != nil:
		return false, err
	case typ != repAck:
		return false, protocolError("STRUCTURED_REPLY: unexpected reply %s", repName(typ))
	case len(payload) != 0:
		return false, protocolError("STRUCTURED_REPLY: ACK with %d bytes of payload", len(payload))
	}
	return true, nil
}

// setMetaContexts selects queries on export. An error reply selects
// nothing (the server discards the selection), which the caller sees as
// missing contexts.
func (h *handshake) setMetaContexts(export string, queries []string) ([]MetaContext, error) {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint32(data, uint32(len(queries)))
	for _, q := range queries {
		data = binary.BigEndian.AppendUint32(data, uint32(len(q)))
		data = append(data, q...)
	}
	if err := h.sendOption(optSetMetaContext, data); err != nil {
		return nil, err
	}
	var got []MetaContext
	for range maxOptionReplies {
		typ, payload, err := h.readReply(optSetMetaContext)
		var oe *OptionError
		switch {
		case errors.As(err, &oe):
			return nil, nil
		case err != nil:
			return nil, err
		case typ == repAck:
			if len(payload) != 0 {
				return nil, protocolError("SET_META_CONTEXT: ACK with %d bytes of payload", len(payload))
			}
			return got, nil
		case typ != repMetaContext:
			return nil, protocolError("SET_META_CONTEXT: unexpected reply %s", repName(typ))
		}
		mc, err := parseMetaContext(payload, queries, got)
		if err != nil {
			return nil, err
		}
		got = append(got, mc)
	}
	return nil, protocolError("SET_META_CONTEXT: more than %d replies", maxOptionReplies)
}

func parseMetaContext(payload []byte, queries []string, got []MetaContext) (MetaContext, error) {
	if len(payload) < 5 {
		return MetaContext{}, protocolError("SET_META_CONTEXT: context reply of %d bytes, want id and name", len(payload))
	}
	mc := MetaContext{ID: binary.BigEndian.Uint32(payload), Name: string(payload[4:])}
	requested := false
	for _, q := range queries {
		requested = requested || q == mc.Name
	}
	if !requested {
		return MetaContext{}, protocolError("SET_META_CONTEXT: server selected context %q, which was not requested", printable(payload[4:]))
	}
	for _, g := range got {
		if g.Name == mc.Name || g.ID == mc.ID {
			return MetaContext{}, protocolError("SET_META_CONTEXT: context %q (id %d) duplicates %q (id %d)", mc.Name, mc.ID, g.Name, g.ID)
		}
	}
	return mc, nil
}

// goExport sends GO with a BLOCK_SIZE request and fills ex from the
// replies. An *OptionError with code ERR_UNSUP asks for the EXPORT_NAME
// fallback.
func (h *handshake) goExport(ex *Export) error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(ex.Name)))
	data = append(data, ex.Name...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := h.sendOption(optGo, data); err != nil {
		return err
	}
	var haveExport, haveBlockSize bool
	for range maxOptionReplies {
		typ, payload, err := h.readReply(optGo)
		if err != nil {
			return err
		}
		switch typ {
		case repAck:
			if len(payload) != 0 {
				return protocolError("GO: ACK with %d bytes of payload", len(payload))
			}
			if !haveExport {
				return protocolError("GO: ACK without INFO_EXPORT")
			}
			if !haveBlockSize {
				ex.MinBlock, ex.PreferredBlock, ex.MaxPayload = 1, 4096, maxPayload
			}
			return checkSizeAligned(ex)
		case repInfo:
			if err := parseInfo(payload, ex, &haveExport, &haveBlockSize); err != nil {
				return err
			}
		default:
			return protocolError("GO: unexpected reply %s", repName(typ))
		}
	}
	return protocolError("GO: more than %d replies", maxOptionReplies)
}

func parseInfo(p []byte, ex *Export, haveExport, haveBlockSize *bool) error {
	if len(p) < 2 {
		return protocolError("GO: INFO reply of %d bytes, too short for its type", len(p))
	}
	switch t := binary.BigEndian.Uint16(p); t {
	case infoExport:
		if len(p) != infoExportLength {
			return protocolError("GO: INFO_EXPORT of %d bytes, want %d", len(p), infoExportLength)
		}
		if *haveExport {
			return protocolError("GO: INFO_EXPORT sent twice")
		}
		*haveExport = true
		return parseSizeFlags(p[2:], ex)
	case infoBlockSize:
		if len(p) != infoBlockSizeLength {
			return protocolError("GO: INFO_BLOCK_SIZE of %d bytes, want %d", len(p), infoBlockSizeLength)
		}
		if *haveBlockSize {
			return protocolError("GO: INFO_BLOCK_SIZE sent twice")
		}
		*haveBlockSize = true
		ex.MinBlock = binary.BigEndian.Uint32(p[2:])
		ex.PreferredBlock = binary.BigEndian.Uint32(p[6:])
		ex.MaxPayload = binary.BigEndian.Uint32(p[10:])
		return checkBlockSize(ex)
	}
	return nil // NAME, DESCRIPTION, unknown types: not needed
}

// parseSizeFlags reads u64 size and u16 flags.
func parseSizeFlags(p []byte, ex *Export) error {
	size := binary.BigEndian.Uint64(p)
	if size > math.MaxInt64 {
		return protocolError("export size %d too large", size)
	}
	ex.Size = int64(size)
	ex.Flags = Flags(binary.BigEndian.Uint16(p[8:]))
	if ex.Flags&FlagHasFlags == 0 {
		return protocolError("transmission flags %#04x lack HAS_FLAGS", uint16(ex.Flags))
	}
	return nil
}

func isPow2(v uint32) bool { return v != 0 && bits.OnesCount32(v) == 1 }

func checkBlockSize(ex *Export) error {
	lo, pref, hi := ex.MinBlock, ex.PreferredBlock, ex.MaxPayload
	switch {
	case !isPow2(lo) || lo > 64<<10:
		return protocolError("GO: minimum block size %d is not a power of two in 1..65536", lo)
	case !isPow2(pref) || pref < lo:
		return protocolError("GO: preferred block size %d is not a power of two >= minimum %d", pref, lo)
	case hi < lo || (hi != math.MaxUint32 && hi%lo != 0):
		return protocolError("GO: maximum payload %d is not a multiple of minimum %d", hi, lo)
	}
	return nil
}

// checkSizeAligned refuses exports whose end cannot be read with aligned
// requests (QEMU's client refuses them too).
func checkSizeAligned(ex *Export) error {
	if ex.Size%int64(ex.MinBlock) != 0 {
		return protocolError("export size %d is not a multiple of the minimum block size %d", ex.Size, ex.MinBlock)
	}
	return nil
}

// exportName is the fallback for servers without GO. The server closes
// the connection on an unknown export; there is no polite error.
func (h *handshake) exportName(ex *Export, noZeroes bool) error {
	if err := h.sendOption(optExportName, []byte(ex.Name)); err != nil {
		return err
	}
	n := exportNameReplyLength
	if !noZeroes {
		n += exportNamePadding
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.br, b); err != nil {
		return fmt.Errorf("nbd: EXPORT_NAME %q (the server closes the connection on an unknown export): %w", ex.Name, err)
	}
	if err := parseSizeFlags(b, ex); err != nil {
		return err
	}
	ex.MinBlock, ex.PreferredBlock, ex.MaxPayload = 1, 4096, maxPayload
	return nil
}
