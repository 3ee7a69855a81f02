package scsi

import "github.com/cachelun/cachelun/internal/blk"

// WRITE ATOMIC(16), SBC-4 5.48. A logical unit offers it only when its
// volume implements blk.AtomicWriter with a non-zero maximum: the device
// server cannot make a write atomic across a crash by itself, so without
// the volume's guarantee it advertises nothing (Block Limits VPD atomic
// fields zero, the opcode unsupported).

// atomicLimits are the advertised atomic limits in logical blocks.
type atomicLimits struct {
	w        blk.AtomicWriter
	maxBlks  uint32 // MAXIMUM ATOMIC TRANSFER LENGTH
	align    uint32 // ATOMIC ALIGNMENT (0: none)
	gran     uint32 // ATOMIC TRANSFER LENGTH GRANULARITY (0: none)
	blockLen uint64
}

// newAtomicLimits derives the advertised limits from the volume's, in
// whole blocks and never above the maximum transfer length; nil when the
// volume offers no atomic write.
func newAtomicLimits(v Volume, bs uint64, maxXfer uint32) *atomicLimits {
	w, ok := blk.AtomicWriterOf(v)
	if !ok {
		return nil
	}
	l := w.AtomicLimits()
	maxBlks := min(uint64(max(l.MaxBytes, 0))/bs, uint64(maxXfer))
	if maxBlks == 0 {
		return nil
	}
	a := &atomicLimits{w: w, maxBlks: uint32(maxBlks), blockLen: bs}
	// An alignment or granularity below a block is no constraint; one
	// that is not a whole number of blocks is rounded up to one.
	if l.Alignment > int64(bs) {
		a.align = uint32((uint64(l.Alignment) + bs - 1) / bs)
	}
	if l.Granularity > int64(bs) {
		a.gran = uint32((uint64(l.Granularity) + bs - 1) / bs)
	}
	return a
}

// cmdWriteAtomic serves WRITE ATOMIC(16): the whole range is written by
// one blk.AtomicWriter call, or nothing is.
func cmdWriteAtomic(tk *task) error {
	lu := tk.lu
	a := lu.atomic
	if a == nil {
		return errInvalidOpcode()
	}
	cdb := tk.cdb
	if cdb[1]>>5 != 0 { // WRPROTECT: no protection information
		return errCDBField(1, 7)
	}
	lba := be64(cdb[2:10])
	boundary := be16(cdb[10:12])
	n := uint32(be16(cdb[12:14]))
	if err := lu.checkRange(lba, uint64(n)); err != nil {
		return err
	}
	if boundary != 0 {
		// MAXIMUM ATOMIC BOUNDARY SIZE is 0: no boundaries.
		return errCDBField(10, -1)
	}
	if n > a.maxBlks {
		return errCDBField(12, -1)
	}
	if a.align > 1 && lba%uint64(a.align) != 0 {
		return errCDBField(2, -1)
	}
	if a.gran > 1 && n%a.gran != 0 {
		return errCDBField(12, -1)
	}
	total := uint64(n) * a.blockLen
	tk.xfer = uint32(total)
	if n == 0 {
		return nil
	}
	// All the data or nothing: a short Data-Out writes nothing.
	data, err := tk.dataOut(total)
	if err != nil {
		return err
	}
	fua := cdb[1]&flagFUA != 0 || !lu.wce.Load()
	return volumeError(a.w.WriteAtomic(tk.volCtx(), data, int64(lba*a.blockLen), fua), ioWrite)
}
