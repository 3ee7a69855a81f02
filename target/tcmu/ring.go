package tcmu

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Byte layout of the shared UIO mapping, from the kernel's
// include/uapi/linux/target_core_user.h (mailbox version 2). All fields are
// little-endian on the architectures the kernel supports for TCMU here.
const (
	mbVersion  = 0  // u16
	mbFlags    = 2  // u16
	mbCmdrOff  = 4  // u32: offset of the command ring from the mapping start
	mbCmdrSize = 8  // u32
	mbCmdHead  = 12 // u32: written by the kernel
	mbCmdTail  = 64 // u32: written by us, on its own cache line
	mbSize     = 68

	mailboxVersion = 2

	// Mailbox capability flags.
	mbFlagOOOC    = 1 << 0 // out-of-order completion
	mbFlagReadLen = 1 << 1 // rsp.read_len honoured
	mbFlagTMR     = 1 << 2 // TMR notifications possible
	mbFlagKeepBuf = 1 << 3

	// Command entry header.
	entLenOp  = 0 // u32: length (multiple of 8) | opcode in the low 3 bits
	entCmdID  = 4 // u16
	entKFlags = 6 // u8
	entUFlags = 7 // u8
	entHdrLen = 8

	opMask = 0x7
	opPad  = 0
	opCmd  = 1
	opTMR  = 2

	uflagReadLen = 0x2

	// Request part (the kernel's inner struct is not packed: cdb_off is
	// 8-byte aligned).
	reqIovCnt     = 8  // u32
	reqIovBidiCnt = 12 // u32
	reqIovDifCnt  = 16 // u32
	reqCdbOff     = 24 // u64: offset of the CDB from the mapping start
	reqIov        = 48 // struct iovec[]: base (offset from mapping start), len
	iovecSize     = 16

	// Response part, overlaying the request.
	rspStatus  = 8  // u8
	rspReadLen = 12 // u32
	rspSense   = 16 // [96]byte
	senseSize  = 96

	// minCmdEntry is sizeof(struct tcmu_cmd_entry): the kernel never makes
	// a command entry shorter, so the response always fits.
	minCmdEntry = rspSense + senseSize

	// TMR entry.
	tmrType   = 8  // u8
	tmrCmdCnt = 12 // u32
	tmrCmdIDs = 32 // u16[]
)

// TMR types of a TCMU_OP_TMR entry.
const (
	tmrAbortTask        = 1
	tmrAbortTaskSet     = 2
	tmrClearACA         = 3
	tmrClearTaskSet     = 4
	tmrLUNReset         = 5
	tmrTargetWarmReset  = 6
	tmrTargetColdReset  = 7
	tmrLUNResetPRO      = 8
	maxIovecsPerCommand = 1 << 16
)

// errRing reports a ring the kernel would never produce: a decoder bug or
// memory corruption. The device stops serving rather than guess.
var errRing = errors.New("tcmu: malformed command ring")

// ringLayout is the validated geometry of one device's mapping.
type ringLayout struct {
	flags    uint16
	cmdrOff  uint32
	cmdrSize uint32
	dataOff  uint64 // first byte after the command ring
	mapLen   uint64
}

// parseMailbox validates the mailbox at the start of a mapping of mapLen
// bytes.
func parseMailbox(mm []byte) (ringLayout, error) {
	if len(mm) < mbSize {
		return ringLayout{}, fmt.Errorf("%w: mapping of %d bytes has no room for the mailbox", errRing, len(mm))
	}
	v := binary.LittleEndian.Uint16(mm[mbVersion:])
	if v != mailboxVersion {
		return ringLayout{}, fmt.Errorf("%w: mailbox version %d, want %d", errRing, v, mailboxVersion)
	}
	l := ringLayout{
		flags:    binary.LittleEndian.Uint16(mm[mbFlags:]),
		cmdrOff:  binary.LittleEndian.Uint32(mm[mbCmdrOff:]),
		cmdrSize: binary.LittleEndian.Uint32(mm[mbCmdrSize:]),
		mapLen:   uint64(len(mm)),
	}
	l.dataOff = uint64(l.cmdrOff) + uint64(l.cmdrSize)
	switch {
	case l.cmdrOff < mbSize:
		return ringLayout{}, fmt.Errorf("%w: command ring at %d overlaps the mailbox", errRing, l.cmdrOff)
	case l.cmdrSize < minCmdEntry || l.cmdrSize%8 != 0:
		return ringLayout{}, fmt.Errorf("%w: command ring size %d", errRing, l.cmdrSize)
	case l.dataOff > l.mapLen:
		return ringLayout{}, fmt.Errorf("%w: command ring [%d,+%d) exceeds the %d-byte mapping", errRing, l.cmdrOff, l.cmdrSize, l.mapLen)
	}
	return l, nil
}

// outOfOrder reports whether the kernel accepts completions in any order.
// Every kernel with mailbox version 2 does; without it commands would have
// to be completed in ring order.
func (l ringLayout) outOfOrder() bool { return l.flags&mbFlagOOOC != 0 }

// entryHeader is the decoded header of the ring entry at a ring position.
type entryHeader struct {
	op     uint8
	length uint32
	cmdID  uint16
}

// readHeader decodes the header of the entry at ring position pos and checks
// that the entry lies inside the ring.
func (l ringLayout) readHeader(mm []byte, pos uint32) (entryHeader, error) {
	if pos%8 != 0 || pos >= l.cmdrSize || l.cmdrSize-pos < entHdrLen {
		return entryHeader{}, fmt.Errorf("%w: entry position %d in a %d-byte ring", errRing, pos, l.cmdrSize)
	}
	base := uint64(l.cmdrOff) + uint64(pos)
	lenOp := binary.LittleEndian.Uint32(mm[base+entLenOp:])
	h := entryHeader{
		op:     uint8(lenOp & opMask),
		length: lenOp &^ opMask,
		cmdID:  binary.LittleEndian.Uint16(mm[base+entCmdID:]),
	}
	if h.length == 0 || h.length > l.cmdrSize-pos {
		return entryHeader{}, fmt.Errorf("%w: entry at %d has length %d (ring %d bytes)", errRing, pos, h.length, l.cmdrSize)
	}
	return h, nil
}

// next returns the ring position after an entry of length n at pos.
func (l ringLayout) next(pos, n uint32) uint32 {
	return uint32((uint64(pos) + uint64(n)) % uint64(l.cmdrSize))
}

// iovec is one data-area segment of a command: an offset into the mapping
// and a length.
type iovec struct {
	off uint64
	len uint64
}

// cmdRequest is a command as decoded from its ring entry. The CDB is a copy;
// the iovecs point into the data area, which the kernel leaves alone until
// the command is completed (even after it timed the command out).
type cmdRequest struct {
	pos    uint32 // ring position of the entry
	length uint32 // entry length
	id     uint16
	cdb    []byte
	iovs   []iovec
	// bidi counts the trailing iovecs that belong to the data-in half of a
	// bidirectional command.
	bidi int
}

// dataLen is the total length of the command's data buffer.
func (r *cmdRequest) dataLen() uint64 {
	var n uint64
	for _, v := range r.iovs {
		n += v.len
	}
	return n
}

// decodeCommand decodes the TCMU_OP_CMD entry at ring position pos whose
// header is h. Every offset and length is checked against the mapping, so a
// corrupt entry yields an error, never a panic or an access outside the
// data area.
func (l ringLayout) decodeCommand(mm []byte, pos uint32, h entryHeader) (cmdRequest, error) {
	if h.length < minCmdEntry || uint64(h.length) > uint64(l.cmdrSize-pos) {
		return cmdRequest{}, fmt.Errorf("%w: command entry at %d too short (%d bytes)", errRing, pos, h.length)
	}
	base := uint64(l.cmdrOff) + uint64(pos)
	end := base + uint64(h.length)
	ent := mm[base:end]
	iovCnt := uint64(binary.LittleEndian.Uint32(ent[reqIovCnt:]))
	bidiCnt := uint64(binary.LittleEndian.Uint32(ent[reqIovBidiCnt:]))
	difCnt := uint64(binary.LittleEndian.Uint32(ent[reqIovDifCnt:]))
	total := iovCnt + bidiCnt + difCnt
	if total > maxIovecsPerCommand || reqIov+total*iovecSize > uint64(h.length) {
		return cmdRequest{}, fmt.Errorf("%w: command %d at %d has %d+%d+%d iovecs in a %d-byte entry",
			errRing, h.cmdID, pos, iovCnt, bidiCnt, difCnt, h.length)
	}
	req := cmdRequest{pos: pos, length: h.length, id: h.cmdID, bidi: int(bidiCnt)}
	if n := iovCnt + bidiCnt; n > 0 {
		req.iovs = make([]iovec, 0, n)
	}
	for i := uint64(0); i < iovCnt+bidiCnt; i++ {
		at := reqIov + i*iovecSize
		v := iovec{
			off: binary.LittleEndian.Uint64(ent[at:]),
			len: binary.LittleEndian.Uint64(ent[at+8:]),
		}
		if v.len == 0 {
			v.off = l.dataOff // an empty segment points nowhere in particular
		}
		if v.off < l.dataOff || v.off > l.mapLen || v.len > l.mapLen-v.off {
			return cmdRequest{}, fmt.Errorf("%w: command %d iovec %d [%d,+%d) outside the data area [%d,%d)",
				errRing, h.cmdID, i, v.off, v.len, l.dataOff, l.mapLen)
		}
		req.iovs = append(req.iovs, v)
	}
	// The CDB follows the iovecs inside the entry itself.
	cdbOff := binary.LittleEndian.Uint64(ent[reqCdbOff:])
	if cdbOff < base+reqIov || cdbOff >= end {
		return cmdRequest{}, fmt.Errorf("%w: command %d CDB offset %d outside its entry [%d,%d)", errRing, h.cmdID, cdbOff, base, end)
	}
	n := cdbLength(mm[cdbOff:end])
	if n == 0 || uint64(n) > end-cdbOff {
		return cmdRequest{}, fmt.Errorf("%w: command %d CDB (opcode %#02x) does not fit its entry", errRing, h.cmdID, mm[cdbOff])
	}
	req.cdb = append([]byte(nil), mm[cdbOff:cdbOff+uint64(n)]...)
	return req, nil
}

// cdbLength is the length the kernel's scsi_command_size() gives the CDB
// starting at b, or 0 if b is too short to tell.
func cdbLength(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	const variableLengthCmd = 0x7f
	if b[0] == variableLengthCmd {
		if len(b) < 8 {
			return 0
		}
		return int(b[7]) + 8
	}
	return [8]int{6, 10, 10, 12, 16, 12, 10, 10}[b[0]>>5]
}

// tmrNotice is a decoded TCMU_OP_TMR entry: which task management function
// the kernel ran and which of our in-flight commands it aborted.
type tmrNotice struct {
	kind   uint8
	cmdIDs []uint16
}

func (l ringLayout) decodeTMR(mm []byte, pos uint32, h entryHeader) (tmrNotice, error) {
	if h.length < tmrCmdIDs {
		return tmrNotice{}, fmt.Errorf("%w: TMR entry at %d too short (%d bytes)", errRing, pos, h.length)
	}
	base := uint64(l.cmdrOff) + uint64(pos)
	ent := mm[base : base+uint64(h.length)]
	n := uint64(binary.LittleEndian.Uint32(ent[tmrCmdCnt:]))
	if tmrCmdIDs+2*n > uint64(len(ent)) {
		return tmrNotice{}, fmt.Errorf("%w: TMR entry at %d lists %d commands in %d bytes", errRing, pos, n, len(ent))
	}
	t := tmrNotice{kind: ent[tmrType], cmdIDs: make([]uint16, n)}
	for i := range t.cmdIDs {
		t.cmdIDs[i] = binary.LittleEndian.Uint16(ent[tmrCmdIDs+2*i:])
	}
	return t, nil
}

// completion is what we write back for one command.
type completion struct {
	id     uint16
	status byte
	sense  []byte
	// readLen, when hasReadLen, is how many data-in bytes are valid; the
	// kernel then reports the residual to the initiator.
	readLen    uint32
	hasReadLen bool
}

// writeCompletion stores c into the CMD entry at ring position pos (which
// may have carried a different command: with out-of-order completion the
// entry at the tail is reused for whichever command finishes next; its
// request was decoded before).
func (l ringLayout) writeCompletion(mm []byte, pos uint32, c completion) {
	base := uint64(l.cmdrOff) + uint64(pos)
	ent := mm[base : base+minCmdEntry]
	binary.LittleEndian.PutUint16(ent[entCmdID:], c.id)
	ent[entKFlags] = 0
	var uf byte
	if c.hasReadLen && l.flags&mbFlagReadLen != 0 {
		uf |= uflagReadLen
		binary.LittleEndian.PutUint32(ent[rspReadLen:], c.readLen)
	} else {
		binary.LittleEndian.PutUint32(ent[rspReadLen:], 0)
	}
	ent[entUFlags] = uf
	ent[rspStatus] = c.status
	ent[rspStatus+1], ent[rspStatus+2], ent[rspStatus+3] = 0, 0, 0
	s := ent[rspSense : rspSense+senseSize]
	n := copy(s, c.sense)
	clear(s[n:])
}
