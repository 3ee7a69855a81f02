package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 §11.2.1.2). Initiator opcodes are below 0x20.
const (
	opNOPOut      = 0x00
	opSCSICmd     = 0x01
	opTaskMgmt    = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opSNACK       = 0x10
	opNOPIn       = 0x20
	opSCSIResp    = 0x21
	opTaskMgmtRsp = 0x22
	opLoginResp   = 0x23
	opTextResp    = 0x24
	opDataIn      = 0x25
	opLogoutResp  = 0x26
	opR2T         = 0x31
	opAsync       = 0x32
	opReject      = 0x3f
)

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDataDigest     = 0x02
	rejectSNACK          = 0x03
	rejectProtocolError  = 0x04
	rejectNotSupported   = 0x05
	rejectImmediate      = 0x06
	rejectTaskInProgress = 0x07
	rejectInvalidField   = 0x09
	rejectOutOfResources = 0x0a
	rejectWaitingLogout  = 0x0c
)

const (
	bhsLen      = 48
	reservedTag = 0xffffffff
	// loginMaxDataSegment bounds text in the login phase before
	// MaxRecvDataSegmentLength is negotiated (RFC 7143 §13.12: 8192).
	loginMaxDataSegment = 8192
	// maxAHSBytes is the largest AHS the 8-bit TotalAHSLength can express.
	maxAHSBytes = 255 * 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by the PDU reader. All of them end the connection.
var (
	ErrHeaderDigest  = errors.New("iscsi: header digest mismatch")
	ErrDataDigest    = errors.New("iscsi: data digest mismatch")
	ErrSegmentTooBig = errors.New("iscsi: data segment longer than negotiated")
	ErrMalformedPDU  = errors.New("iscsi: malformed PDU")
)

// bhs is a Basic Header Segment: the fixed 48 bytes that start every PDU.
type bhs [bhsLen]byte

func (h *bhs) opcode() byte             { return h[0] & 0x3f }
func (h *bhs) immediate() bool          { return h[0]&0x40 != 0 }
func (h *bhs) flags() byte              { return h[1] }
func (h *bhs) ahsLen() int              { return int(h[4]) * 4 }
func (h *bhs) dataLen() int             { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *bhs) lunField() uint64         { return binary.BigEndian.Uint64(h[8:16]) }
func (h *bhs) itt() uint32              { return binary.BigEndian.Uint32(h[16:20]) }
func (h *bhs) u32(off int) uint32       { return binary.BigEndian.Uint32(h[off : off+4]) }
func (h *bhs) u16(off int) uint16       { return binary.BigEndian.Uint16(h[off : off+2]) }
func (h *bhs) putU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:off+4], v) }
func (h *bhs) putU16(off int, v uint16) { binary.BigEndian.PutUint16(h[off:off+2], v) }

func (h *bhs) setDataLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// Field offsets shared by many PDUs.
const (
	offTTT      = 20 // target transfer tag / EDTL / RefTaskTag
	offCmdSN    = 24 // CmdSN (initiator) or StatSN (target)
	offExpSN    = 28 // ExpStatSN (initiator) or ExpCmdSN (target)
	offMaxCmdSN = 32
	offDataSN   = 36
	offBufOff   = 40
	offResidual = 44
)

// decodeLUN turns the 8-byte SAM LUN field into a LUN number. Peripheral
// (method 0) and flat (method 1) addressing cover LUNs 0..16383; anything
// else is returned with the top bit set so it never matches a real LU.
func decodeLUN(f uint64) uint64 {
	b0 := byte(f >> 56)
	b1 := byte(f >> 48)
	switch b0 >> 6 {
	case 0:
		if b0 == 0 {
			return uint64(b1)
		}
	case 1:
		return uint64(b0&0x3f)<<8 | uint64(b1)
	}
	return 1<<63 | f>>1
}

// encodeLUN is the inverse of decodeLUN for LUNs below 16384.
func encodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	return (0x40|(lun>>8)&0x3f)<<56 | (lun&0xff)<<48
}

// pduHeader is a parsed header: BHS, AHS and the raw lengths.
type pduHeader struct {
	bhs bhs
	ahs []byte // aliases the reader's scratch; valid until the next read
}

// pduReader reads PDUs from a connection. It owns no goroutine; the
// connection's reader goroutine is its only user.
type pduReader struct {
	r            io.Reader
	headerDigest bool
	dataDigest   bool
	maxData      int // largest data segment accepted
	ahsBuf       [maxAHSBytes]byte
	digBuf       [4]byte
	padBuf       [4]byte
}

// readHeader reads BHS, AHS and header digest. It rejects a data segment
// longer than maxData before any of it is read.
func (pr *pduReader) readHeader(h *pduHeader) error {
	if _, err := io.ReadFull(pr.r, h.bhs[:]); err != nil {
		return err
	}
	n := h.bhs.ahsLen()
	h.ahs = pr.ahsBuf[:n]
	if n > 0 {
		if _, err := io.ReadFull(pr.r, h.ahs); err != nil {
			return err
		}
	}
	if pr.headerDigest {
		if _, err := io.ReadFull(pr.r, pr.digBuf[:]); err != nil {
			return err
		}
		c := crc32.Update(0, castagnoli, h.bhs[:])
		c = crc32.Update(c, castagnoli, h.ahs)
		if c != binary.LittleEndian.Uint32(pr.digBuf[:]) {
			return ErrHeaderDigest
		}
	}
	if h.bhs.dataLen() > pr.maxData {
		return fmt.Errorf("%w: %d > %d", ErrSegmentTooBig, h.bhs.dataLen(), pr.maxData)
	}
	return nil
}

// readData reads the data segment of the header just read into p, which
// must be exactly dataLen() bytes, plus padding and data digest. A nil p
// reads and discards (used for PDUs whose payload has no home). The digest
// is checked in both cases; a mismatch returns ErrDataDigest after the whole
// segment was consumed, so the stream stays in sync.
func (pr *pduReader) readData(h *pduHeader, p []byte) error {
	n := h.bhs.dataLen()
	if n == 0 {
		return nil
	}
	var c uint32
	if p != nil {
		if _, err := io.ReadFull(pr.r, p[:n]); err != nil {
			return err
		}
		if pr.dataDigest {
			c = crc32.Update(0, castagnoli, p[:n])
		}
	} else {
		var chunk [4096]byte
		for left := n; left > 0; {
			k := min(left, len(chunk))
			if _, err := io.ReadFull(pr.r, chunk[:k]); err != nil {
				return err
			}
			if pr.dataDigest {
				c = crc32.Update(c, castagnoli, chunk[:k])
			}
			left -= k
		}
	}
	if pad := (4 - n%4) % 4; pad > 0 {
		if _, err := io.ReadFull(pr.r, pr.padBuf[:pad]); err != nil {
			return err
		}
		if pr.dataDigest {
			c = crc32.Update(c, castagnoli, pr.padBuf[:pad])
		}
	}
	if pr.dataDigest {
		if _, err := io.ReadFull(pr.r, pr.digBuf[:]); err != nil {
			return err
		}
		if c != binary.LittleEndian.Uint32(pr.digBuf[:]) {
			return ErrDataDigest
		}
	}
	return nil
}

// pduWriter encodes PDUs into a buffered writer. Only the connection's
// writer goroutine (or the login code before it starts) uses it.
type pduWriter struct {
	w            io.Writer
	headerDigest bool
	dataDigest   bool
	scratch      [bhsLen + 4]byte
}

var zeroPad [4]byte

// write emits one PDU with no AHS: header (+digest), data (+pad, +digest).
func (pw *pduWriter) write(h *bhs, data []byte) error {
	h.setDataLen(len(data))
	h[4] = 0
	copy(pw.scratch[:], h[:])
	n := bhsLen
	if pw.headerDigest {
		binary.LittleEndian.PutUint32(pw.scratch[bhsLen:], crc32.Checksum(pw.scratch[:bhsLen], castagnoli))
		n += 4
	}
	if _, err := pw.w.Write(pw.scratch[:n]); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := pw.w.Write(data); err != nil {
		return err
	}
	pad := (4 - len(data)%4) % 4
	if pad > 0 {
		if _, err := pw.w.Write(zeroPad[:pad]); err != nil {
			return err
		}
	}
	if pw.dataDigest {
		c := crc32.Update(0, castagnoli, data)
		c = crc32.Update(c, castagnoli, zeroPad[:pad])
		var d [4]byte
		binary.LittleEndian.PutUint32(d[:], c)
		if _, err := pw.w.Write(d[:]); err != nil {
			return err
		}
	}
	return nil
}
