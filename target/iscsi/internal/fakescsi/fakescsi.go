// Package fakescsi is a minimal SCSI device server for transport tests:
// just enough of SPC/SBC (TEST UNIT READY, INQUIRY, READ CAPACITY 10/16,
// READ/WRITE 10/16, REPORT LUNS, SYNCHRONIZE CACHE) to log in, discover
// and move data. It also lets tests hold commands to observe concurrency,
// out-of-order completion and aborts. It is not the product's device
// server (target/scsi).
package fakescsi

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/target/scsi"
)

// Target serves LUNs backed by scsi.Volume implementations.
type Target struct {
	mu   sync.Mutex
	luns map[uint64]scsi.Volume

	// Gate, when non-nil, is called before each READ/WRITE executes; a
	// test blocks in it to hold commands in flight.
	Gate func(ctx context.Context, cmd *scsi.Command) error

	Running    atomic.Int32 // commands currently inside Execute
	MaxRunning atomic.Int32
	Resets     atomic.Int32
	Lost       atomic.Int32
}

// New returns a target with no LUNs.
func New() *Target { return &Target{luns: map[uint64]scsi.Volume{}} }

// AddLU adds a LUN.
func (t *Target) AddLU(lun uint64, v scsi.Volume) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.luns[lun] = v
}

// LUNs lists the LUNs in order.
func (t *Target) LUNs() []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []uint64
	for l := range t.luns {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// ResetLU counts the call.
func (t *Target) ResetLU(*scsi.Nexus, uint64) error { t.Resets.Add(1); return nil }

// ResetTarget counts the call.
func (t *Target) ResetTarget(*scsi.Nexus) { t.Resets.Add(1) }

// NexusLost counts the call.
func (t *Target) NexusLost(*scsi.Nexus) { t.Lost.Add(1) }

func check(key, asc byte) scsi.Response {
	s := make([]byte, 18)
	s[0], s[2], s[7], s[12] = 0x70, key, 10, asc
	return scsi.Response{Status: scsi.StatusCheckCondition, Sense: s}
}

func dataIn(cmd *scsi.Command, b []byte, alloc uint32) scsi.Response {
	n := min(uint32(len(b)), alloc, cmd.DataInLen)
	return scsi.Response{Status: scsi.StatusGood, Data: b[:n], TransferLen: min(uint32(len(b)), alloc)}
}

// Execute runs one command.
func (t *Target) Execute(ctx context.Context, cmd *scsi.Command) scsi.Response {
	running := t.Running.Add(1)
	defer t.Running.Add(-1)
	for {
		m := t.MaxRunning.Load()
		if running <= m || t.MaxRunning.CompareAndSwap(m, running) {
			break
		}
	}
	cdb := cmd.CDB
	if len(cdb) == 0 {
		return check(0x05, 0x20)
	}
	if cdb[0] == 0xa0 { // REPORT LUNS
		luns := t.LUNs()
		b := make([]byte, 8+8*len(luns))
		binary.BigEndian.PutUint32(b, uint32(8*len(luns)))
		for i, l := range luns {
			b[8+8*i+1] = byte(l)
		}
		return dataIn(cmd, b, binary.BigEndian.Uint32(cdb[6:10]))
	}
	t.mu.Lock()
	v := t.luns[cmd.LUN]
	t.mu.Unlock()
	if v == nil {
		if cdb[0] == 0x12 {
			b := make([]byte, 36)
			b[0] = 0x7f
			return dataIn(cmd, b, uint32(binary.BigEndian.Uint16(cdb[3:5])))
		}
		return check(0x05, 0x25)
	}
	bs := int64(v.BlockSize())
	switch cdb[0] {
	case 0x00: // TEST UNIT READY
		return scsi.Response{}
	case 0x12: // INQUIRY
		if cdb[1]&1 != 0 {
			if cdb[2] == 0 {
				return dataIn(cmd, []byte{0, 0, 0, 1, 0}, uint32(binary.BigEndian.Uint16(cdb[3:5])))
			}
			return check(0x05, 0x24)
		}
		b := make([]byte, 36)
		b[2], b[3], b[4], b[7] = 6, 2, 31, 0x02
		copy(b[8:], "FAKE    fake-lun        0001")
		return dataIn(cmd, b, uint32(binary.BigEndian.Uint16(cdb[3:5])))
	case 0x25: // READ CAPACITY 10
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(v.Size()/bs-1))
		binary.BigEndian.PutUint32(b[4:], uint32(bs))
		return dataIn(cmd, b, 8)
	case 0x9e: // READ CAPACITY 16
		b := make([]byte, 32)
		binary.BigEndian.PutUint64(b, uint64(v.Size()/bs-1))
		binary.BigEndian.PutUint32(b[8:], uint32(bs))
		return dataIn(cmd, b, binary.BigEndian.Uint32(cdb[10:14]))
	case 0x35, 0x91: // SYNCHRONIZE CACHE
		if err := v.Flush(ctx); err != nil {
			return check(0x03, 0x0c)
		}
		return scsi.Response{}
	case 0x28, 0x88, 0x2a, 0x8a:
	default:
		return check(0x05, 0x20)
	}
	var lba int64
	var blocks uint32
	if cdb[0] == 0x28 || cdb[0] == 0x2a {
		lba, blocks = int64(binary.BigEndian.Uint32(cdb[2:6])), uint32(binary.BigEndian.Uint16(cdb[7:9]))
	} else {
		lba, blocks = int64(binary.BigEndian.Uint64(cdb[2:10])), binary.BigEndian.Uint32(cdb[10:14])
	}
	tl := blocks * uint32(bs)
	if (lba+int64(blocks))*bs > v.Size() {
		return check(0x05, 0x21)
	}
	if t.Gate != nil {
		if err := t.Gate(ctx, cmd); err != nil {
			return scsi.Response{Status: scsi.StatusTaskAborted}
		}
	}
	off := lba * bs
	if cdb[0] == 0x28 || cdb[0] == 0x88 {
		// Read whole blocks, return only what the initiator accepts.
		n := min(tl, cmd.DataInLen)
		full := (n + uint32(bs) - 1) / uint32(bs) * uint32(bs)
		buf := make([]byte, full)
		if err := v.ReadAt(ctx, buf, off); err != nil {
			return check(0x03, 0x11)
		}
		return scsi.Response{Data: buf[:n], TransferLen: tl}
	}
	n := min(tl, uint32(len(cmd.DataOut))) / uint32(bs) * uint32(bs)
	if err := v.WriteAt(ctx, cmd.DataOut[:n], off, cdb[1]&0x08 != 0); err != nil {
		return check(0x03, 0x0c)
	}
	return scsi.Response{TransferLen: tl}
}
