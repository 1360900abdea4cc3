package nbd

// Wire format shared by the client and the server side: magic numbers,
// option, command and reply constants, and fixed-size header codecs. All
// fields are big-endian (see the design notes, nbd-protocol.md §1, §2, §4).

import (
	"encoding/binary"
	"fmt"
)

// Magic numbers.
const (
	nbdMagic             uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	optsMagic            uint64 = 0x49484156454f5054 // "IHAVEOPT"
	oldstyleMagic        uint64 = 0x00420281861253
	repMagic             uint64 = 0x0003e889045565a9
	requestMagic         uint32 = 0x25609513
	extendedRequestMagic uint32 = 0x21e41c71
	simpleReplyMagic     uint32 = 0x67446698
	structuredReplyMagic uint32 = 0x668e33ef
	extendedReplyMagic   uint32 = 0x6e8a278c
)

// Handshake flags sent by the server (u16) and by the client (u32).
const (
	handshakeFixedNewstyle uint16 = 1 << 0
	handshakeNoZeroes      uint16 = 1 << 1

	clientFixedNewstyle uint32 = 1 << 0
	clientNoZeroes      uint32 = 1 << 1
)

// Options (u32).
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types (u32); errors have bit 31 set.
const (
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repMetaContext uint32 = 4

	repFlagError        uint32 = 1 << 31
	repErrUnsup         uint32 = 0x80000001
	repErrPolicy        uint32 = 0x80000002
	repErrInvalid       uint32 = 0x80000003
	repErrPlatform      uint32 = 0x80000004
	repErrTLSReqd       uint32 = 0x80000005
	repErrUnknown       uint32 = 0x80000006
	repErrShutdown      uint32 = 0x80000007
	repErrBlockSizeReqd uint32 = 0x80000008
	repErrTooBig        uint32 = 0x80000009
	repErrExtHeaderReqd uint32 = 0x8000000a
)

// Info types (u16) in REP_INFO replies to INFO and GO, and their lengths.
const (
	infoExport            uint16 = 0
	infoName              uint16 = 1
	infoDescription       uint16 = 2
	infoBlockSize         uint16 = 3
	infoExportLength             = 12 // u16 type, u64 size, u16 flags
	infoBlockSizeLength          = 14 // u16 type, 3 × u32
	exportNameReplyLength        = 10 // u64 size, u16 flags (EXPORT_NAME, before padding)
	exportNamePadding            = 124
)

// Commands (u16).
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags (u16).
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Flags are the transmission flags of an export.
type Flags uint16

// Transmission flags (u16). Clients ignore bits they do not know.
const (
	FlagHasFlags        Flags = 1 << 0
	FlagReadOnly        Flags = 1 << 1
	FlagSendFlush       Flags = 1 << 2
	FlagSendFUA         Flags = 1 << 3
	FlagRotational      Flags = 1 << 4
	FlagSendTrim        Flags = 1 << 5
	FlagSendWriteZeroes Flags = 1 << 6
	FlagSendDF          Flags = 1 << 7
	FlagCanMultiConn    Flags = 1 << 8
	FlagSendResize      Flags = 1 << 9
	FlagSendCache       Flags = 1 << 10
	FlagSendFastZero    Flags = 1 << 11
)

// ReadOnly reports whether the export refuses writes and TRIM.
func (f Flags) ReadOnly() bool { return f&FlagReadOnly != 0 }

// CanTrim reports whether TRIM may be sent: advertised and not read-only.
func (f Flags) CanTrim() bool { return f&FlagSendTrim != 0 && !f.ReadOnly() }

// CanFlush reports whether the server accepts FLUSH.
func (f Flags) CanFlush() bool { return f&FlagSendFlush != 0 }

// CanMultiConn reports whether several connections to the export see the
// same data, so a client may spread its requests over them.
func (f Flags) CanMultiConn() bool { return f&FlagCanMultiConn != 0 }

// Structured reply chunk types (u16) and flags.
const (
	chunkNone           uint16 = 0
	chunkOffsetData     uint16 = 1
	chunkOffsetHole     uint16 = 2
	chunkBlockStatus    uint16 = 5
	chunkBlockStatusExt uint16 = 6
	chunkError          uint16 = 0x8001
	chunkErrorOffset    uint16 = 0x8002
	chunkTypeErrorBit   uint16 = 1 << 15

	replyFlagDone uint16 = 1 << 0
)

// Block-status flags of the meta contexts Backstop uses. Their meaning
// depends on the context the extents came from.
const (
	// StateHole (base:allocation): the range is not allocated.
	StateHole uint32 = 1 << 0
	// StateZero (base:allocation): the range reads as zeroes.
	StateZero uint32 = 1 << 1
	// StateDirty (qemu:dirty-bitmap:NAME): the range was written since
	// the bitmap was created or last cleared.
	StateDirty uint32 = 1 << 0
)

// Meta context names.
const (
	// ContextBaseAllocation is the standard allocation context.
	ContextBaseAllocation = "base:allocation"
	// contextDirtyBitmapPrefix prefixes QEMU's dirty bitmap contexts.
	contextDirtyBitmapPrefix = "qemu:dirty-bitmap:"
)

// DirtyBitmapContext returns the meta context name under which QEMU exports
// the dirty bitmap called name.
func DirtyBitmapContext(name string) string { return contextDirtyBitmapPrefix + name }

// Limits.
const (
	// maxString is the longest export name, query or message the
	// protocol allows.
	maxString = 4096
	// maxPayload is the largest READ/WRITE payload any server must
	// accept, and the largest Backstop ever sends or asks for.
	maxPayload = 32 << 20
	// maxOptionReply caps an option reply's payload; legitimate ones
	// carry at most a few strings of maxString bytes.
	maxOptionReply = 64 << 10
	// maxExtentsPerChunk caps one BLOCK_STATUS chunk (the spec asks
	// servers for at most 2^20; QEMU sends at most 2^17).
	maxExtentsPerChunk = 1 << 20
	// maxErrorPayload caps an error chunk: u32 + u16 + message + u64.
	maxErrorPayload = 4 + 2 + 0xffff + 8
)

// Header sizes.
const (
	greetingSize           = 18
	optionHeaderSize       = 16
	optionReplyHeaderSize  = 20
	requestHeaderSize      = 28
	simpleReplyHeaderSize  = 16
	chunkHeaderSize        = 20
	blockStatusDescSize    = 8 // u32 length, u32 flags
	offsetHoleLength       = 12
	errorChunkMinLength    = 6
	errorOffsetChunkMinLen = 14
)

// requestHeader is a compact (non-extended) transmission request.
type requestHeader struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

func (h *requestHeader) encode(b *[requestHeaderSize]byte) {
	binary.BigEndian.PutUint32(b[0:], requestMagic)
	binary.BigEndian.PutUint16(b[4:], h.Flags)
	binary.BigEndian.PutUint16(b[6:], h.Type)
	binary.BigEndian.PutUint64(b[8:], h.Cookie)
	binary.BigEndian.PutUint64(b[16:], h.Offset)
	binary.BigEndian.PutUint32(b[24:], h.Length)
}

func decodeRequestHeader(b *[requestHeaderSize]byte) (requestHeader, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != requestMagic {
		return requestHeader{}, fmt.Errorf("bad request magic %#08x", m)
	}
	return requestHeader{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   binary.BigEndian.Uint16(b[6:]),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// simpleReplyHeader follows the 4-byte magic of a simple reply.
type simpleReplyHeader struct {
	Error  uint32
	Cookie uint64
}

func (h *simpleReplyHeader) encode(b *[simpleReplyHeaderSize]byte) {
	binary.BigEndian.PutUint32(b[0:], simpleReplyMagic)
	binary.BigEndian.PutUint32(b[4:], h.Error)
	binary.BigEndian.PutUint64(b[8:], h.Cookie)
}

// decodeSimpleReply decodes the 12 bytes after the magic.
func decodeSimpleReply(b []byte) simpleReplyHeader {
	return simpleReplyHeader{
		Error:  binary.BigEndian.Uint32(b[0:]),
		Cookie: binary.BigEndian.Uint64(b[4:]),
	}
}

// chunkHeader is a structured reply chunk header.
type chunkHeader struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Length uint32
}

func (h *chunkHeader) encode(b *[chunkHeaderSize]byte) {
	binary.BigEndian.PutUint32(b[0:], structuredReplyMagic)
	binary.BigEndian.PutUint16(b[4:], h.Flags)
	binary.BigEndian.PutUint16(b[6:], h.Type)
	binary.BigEndian.PutUint64(b[8:], h.Cookie)
	binary.BigEndian.PutUint32(b[16:], h.Length)
}

// decodeChunkHeader decodes the 16 bytes after the magic.
func decodeChunkHeader(b []byte) chunkHeader {
	return chunkHeader{
		Flags:  binary.BigEndian.Uint16(b[0:]),
		Type:   binary.BigEndian.Uint16(b[2:]),
		Cookie: binary.BigEndian.Uint64(b[4:]),
		Length: binary.BigEndian.Uint32(b[12:]),
	}
}

// optionHeader is an option request header (data follows).
type optionHeader struct {
	Option uint32
	Length uint32
}

func (h *optionHeader) encode(b *[optionHeaderSize]byte) {
	binary.BigEndian.PutUint64(b[0:], optsMagic)
	binary.BigEndian.PutUint32(b[8:], h.Option)
	binary.BigEndian.PutUint32(b[12:], h.Length)
}

func decodeOptionHeader(b *[optionHeaderSize]byte) (optionHeader, error) {
	if m := binary.BigEndian.Uint64(b[0:]); m != optsMagic {
		return optionHeader{}, fmt.Errorf("bad option magic %#016x", m)
	}
	return optionHeader{
		Option: binary.BigEndian.Uint32(b[8:]),
		Length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// optionReplyHeader is an option reply header (payload follows).
type optionReplyHeader struct {
	Option uint32
	Type   uint32
	Length uint32
}

func (h *optionReplyHeader) encode(b *[optionReplyHeaderSize]byte) {
	binary.BigEndian.PutUint64(b[0:], repMagic)
	binary.BigEndian.PutUint32(b[8:], h.Option)
	binary.BigEndian.PutUint32(b[12:], h.Type)
	binary.BigEndian.PutUint32(b[16:], h.Length)
}

func decodeOptionReplyHeader(b *[optionReplyHeaderSize]byte) (optionReplyHeader, error) {
	if m := binary.BigEndian.Uint64(b[0:]); m != repMagic {
		return optionReplyHeader{}, fmt.Errorf("bad option reply magic %#016x", m)
	}
	return optionReplyHeader{
		Option: binary.BigEndian.Uint32(b[8:]),
		Type:   binary.BigEndian.Uint32(b[12:]),
		Length: binary.BigEndian.Uint32(b[16:]),
	}, nil
}

// Errno is an NBD error code as carried in replies.
type Errno uint32

// NBD error codes. A peer's unknown values are read as EINVAL.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

// errnoFromWire maps a received error code to a known Errno.
func errnoFromWire(v uint32) Errno {
	switch e := Errno(v); e {
	case EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN:
		return e
	}
	return EINVAL
}

func (e Errno) String() string {
	switch e {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return fmt.Sprintf("errno %d", uint32(e))
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}

func optName(o uint32) string {
	switch o {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	case optExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return fmt.Sprintf("option %d", o)
}

func repName(r uint32) string {
	switch r {
	case repAck:
		return "ACK"
	case repServer:
		return "SERVER"
	case repInfo:
		return "INFO"
	case repMetaContext:
		return "META_CONTEXT"
	case repErrUnsup:
		return "ERR_UNSUP"
	case repErrPolicy:
		return "ERR_POLICY"
	case repErrInvalid:
		return "ERR_INVALID"
	case repErrPlatform:
		return "ERR_PLATFORM"
	case repErrTLSReqd:
		return "ERR_TLS_REQD"
	case repErrUnknown:
		return "ERR_UNKNOWN"
	case repErrShutdown:
		return "ERR_SHUTDOWN"
	case repErrBlockSizeReqd:
		return "ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "ERR_TOO_BIG"
	case repErrExtHeaderReqd:
		return "ERR_EXT_HEADER_REQD"
	}
	return fmt.Sprintf("reply type %#x", r)
}

func chunkTypeName(t uint16) string {
	switch t {
	case chunkNone:
		return "NONE"
	case chunkOffsetData:
		return "OFFSET_DATA"
	case chunkOffsetHole:
		return "OFFSET_HOLE"
	case chunkBlockStatus:
		return "BLOCK_STATUS"
	case chunkBlockStatusExt:
		return "BLOCK_STATUS_EXT"
	case chunkError:
		return "ERROR"
	case chunkErrorOffset:
		return "ERROR_OFFSET"
	}
	return fmt.Sprintf("chunk type %#04x", t)
}
