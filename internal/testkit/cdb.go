package testkit

import "encoding/binary"

// SCSI operation codes of the read and write commands that Read10 and
// Write10 build (SBC-4).
const (
	opRead10  = 0x28
	opWrite10 = 0x2a
)

// CDB10 builds a 10-byte CDB in the layout of READ(10), WRITE(10) and their
// kin: operation code, flags byte (byte 1: RDPROTECT/DPO/FUA...), a 32-bit
// LBA at byte 2 and a 16-bit transfer length at byte 7.
func CDB10(op, flags byte, lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

// CDB12 builds a 12-byte CDB: operation code, flags, a 32-bit LBA at byte 2
// and a 32-bit transfer length at byte 6.
func CDB12(op, flags byte, lba uint32, n uint32) []byte {
	c := make([]byte, 12)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint32(c[6:], n)
	return c
}

// CDB16 builds a 16-byte CDB: operation code, flags, a 64-bit LBA at byte 2
// and a 32-bit transfer length at byte 10.
func CDB16(op, flags byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

// Read10 is READ(10) of n blocks at lba, no flags.
func Read10(lba uint32, n uint16) []byte { return CDB10(opRead10, 0, lba, n) }

// Write10 is WRITE(10) of n blocks at lba, no flags.
func Write10(lba uint32, n uint16) []byte { return CDB10(opWrite10, 0, lba, n) }
