package scsi

import (
	"bytes"
	"context"
	"errors"

	"github.com/cachelun/cachelun/internal/blk"
)

// rwCDB is the decoded addressing part of a block command.
type rwCDB struct {
	lba    uint64
	blocks uint32
	flags  byte // byte 1: *PROTECT, DPO, FUA, ...
	// lenField is the CDB byte where the transfer length starts (for
	// sense field pointers).
	lenField int
}

// decodeRW decodes LBA, transfer length and flags of the READ/WRITE family
// and the other commands that share their layout. The caller has checked
// the CDB length.
func decodeRW(cdb []byte) rwCDB {
	switch cdb[0] {
	case 0x08, 0x0a: // READ(6), WRITE(6)
		r := rwCDB{lba: uint64(be24(cdb[1:4]) & 0x1fffff), blocks: uint32(cdb[4]), lenField: 4}
		if r.blocks == 0 {
			r.blocks = 256
		}
		return r
	case 0x28, 0x2a, 0x2e, 0x2f, 0x34, 0x35, 0x41:
		return rwCDB{lba: uint64(be32(cdb[2:6])), blocks: uint32(be16(cdb[7:9])), flags: cdb[1], lenField: 7}
	case 0xa8, 0xaa, 0xae, 0xaf:
		return rwCDB{lba: uint64(be32(cdb[2:6])), blocks: be32(cdb[6:10]), flags: cdb[1], lenField: 6}
	case 0x89: // COMPARE AND WRITE
		return rwCDB{lba: be64(cdb[2:10]), blocks: uint32(cdb[13]), flags: cdb[1], lenField: 13}
	default: // 16-byte forms
		return rwCDB{lba: be64(cdb[2:10]), blocks: be32(cdb[10:14]), flags: cdb[1], lenField: 10}
	}
}

const (
	flagDPO = 0x10
	flagFUA = 0x08
)

// checkProtect rejects a non-zero RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT:
// the logical units have no protection information.
func checkProtect(r rwCDB) error {
	if r.flags>>5 != 0 {
		return errCDBField(1, 7)
	}
	return nil
}

// checkXfer applies the range check, then the maximum transfer length.
func (lu *LU) checkXfer(r rwCDB) error {
	if err := lu.checkRange(r.lba, uint64(r.blocks)); err != nil {
		return err
	}
	if r.blocks > lu.maxXferBlocks {
		return errCDBField(r.lenField, -1)
	}
	return nil
}

// decodeTransfer decodes the task's READ/WRITE-family CDB and checks its
// protection field and that its range and transfer length fit the LU: the
// prologue every data-transfer command shares.
func (tk *task) decodeTransfer() (rwCDB, error) {
	r := decodeRW(tk.cdb)
	if err := checkProtect(r); err != nil {
		return r, err
	}
	return r, tk.lu.checkXfer(r)
}

func cmdRead(tk *task) error {
	lu := tk.lu
	r, err := tk.decodeTransfer()
	if err != nil {
		return err
	}
	bs := uint64(lu.blockSize)
	total := uint64(r.blocks) * bs
	tk.xfer = uint32(total)
	want := min(total, uint64(tk.cmd.DataInLen))
	if want == 0 {
		return nil
	}
	// Read only the blocks the initiator will receive (residual
	// overflow), straight into the transport's buffer when it has one.
	readLen := (want + bs - 1) / bs * bs
	// Only the first DataInLen bytes of DataIn belong to this command (a
	// TCMU ring segment's capacity runs into other commands' data).
	var buf []byte
	if readLen <= uint64(tk.cmd.DataInLen) && uint64(cap(tk.cmd.DataIn)) >= readLen {
		buf = tk.cmd.DataIn[:readLen]
	} else {
		buf = make([]byte, readLen)
	}
	if err := lu.vol.ReadAt(tk.volCtx(), buf, int64(r.lba*bs)); err != nil {
		return volumeError(err, ioRead)
	}
	tk.data = buf[:want]
	return nil
}

// writeFUA says whether a write must be durable before GOOD: FUA asked,
// or the write cache is disabled.
func (lu *LU) writeFUA(r rwCDB) bool {
	return r.flags&flagFUA != 0 || !lu.wce.Load()
}

// dataOut returns exactly n bytes of Data-Out, or INVALID FIELD IN
// COMMAND INFORMATION UNIT when the initiator sent fewer (residual
// overflow: SPC forbids writing a partial range). Extra bytes (residual
// underflow) are ignored.
func (tk *task) dataOut(n uint64) ([]byte, error) {
	if uint64(len(tk.cmd.DataOut)) < n {
		return nil, newSense(SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	}
	return tk.cmd.DataOut[:n], nil
}

// cmdWrite serves WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16).
func cmdWrite(tk *task) error {
	lu := tk.lu
	r, err := tk.decodeTransfer()
	if err != nil {
		return err
	}
	bs := uint64(lu.blockSize)
	total := uint64(r.blocks) * bs
	tk.xfer = uint32(total)
	if total == 0 {
		return nil
	}
	data := tk.cmd.DataOut
	if uint64(len(data)) > total {
		data = data[:total] // residual underflow: the rest is ignored
	}
	// With residual overflow only the data the initiator sent is written
	// (FCP-4 9.4.2 a); the transport reports the overflow from
	// TransferLen. A trailing partial block is merged into the block's
	// current contents, so no byte the initiator did not send changes.
	whole := uint64(len(data)) / bs * bs
	fua := lu.writeFUA(r)
	if isWriteAndVerify(tk.cdb[0]) {
		// The verification reads back from the medium: make the data
		// durable first.
		fua = true
	}
	ctx := tk.volCtx()
	off := int64(r.lba * bs)
	if whole > 0 {
		if err := lu.vol.WriteAt(ctx, data[:whole], off, fua); err != nil {
			return volumeError(err, ioWrite)
		}
	}
	if tail := data[whole:]; len(tail) > 0 {
		return lu.mergeBlock(ctx, off+int64(whole), tail, fua)
	}
	return nil
}

// mergeBlock writes p (shorter than a block) over the start of the block
// at off, keeping the rest of the block, atomically against other writers
// (a compare-and-write of what was read, retried while others interfere).
func (lu *LU) mergeBlock(ctx context.Context, off int64, p []byte, fua bool) error {
	cur := make([]byte, lu.blockSize)
	next := make([]byte, lu.blockSize)
	for range orWriteRetries {
		if err := lu.vol.ReadAt(ctx, cur, off); err != nil {
			return volumeError(err, ioRead)
		}
		copy(next, cur)
		copy(next, p)
		err := lu.vol.CompareAndWrite(ctx, off, cur, next, fua)
		if !errors.Is(err, blk.ErrMiscompare) {
			return volumeError(err, ioWrite)
		}
	}
	return newSense(SenseAbortedCommand, ASCNoAdditionalSense)
}

func isWriteAndVerify(op byte) bool { return op == 0x2e || op == 0xae || op == 0x8e }

// cmdVerify serves VERIFY(10/12/16). BYTCHK 00b checks the range only,
// 01b compares the Data-Out with the medium, 11b compares one block of
// Data-Out with every block of the range.
func cmdVerify(tk *task) error {
	lu := tk.lu
	r, err := tk.decodeTransfer()
	if err != nil {
		return err
	}
	bs := uint64(lu.blockSize)
	bytchk := (tk.cdb[1] >> 1) & 0x03
	var outLen uint64
	switch bytchk {
	case 0:
	case 1:
		outLen = uint64(r.blocks) * bs
	case 3:
		if r.blocks > 0 {
			outLen = bs
		}
	default:
		return errCDBField(1, 2)
	}
	tk.xfer = uint32(outLen)
	if r.blocks == 0 {
		return nil
	}
	var want []byte
	if outLen > 0 {
		var err error
		if want, err = tk.dataOut(outLen); err != nil {
			return err
		}
	}
	medium := make([]byte, uint64(r.blocks)*bs)
	if err := lu.vol.ReadAt(tk.volCtx(), medium, int64(r.lba*bs)); err != nil {
		return volumeError(err, ioRead)
	}
	if bytchk == 0 {
		return nil
	}
	for off := uint64(0); off < uint64(len(medium)); {
		var exp []byte
		if bytchk == 1 {
			exp = want
		} else {
			exp = want[:bs]
		}
		got := medium[off : off+uint64(len(exp))]
		if !bytes.Equal(got, exp) {
			i := firstDiff(got, exp)
			return miscompare(off + uint64(i))
		}
		off += uint64(len(exp))
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// miscompare is MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the
// byte offset of the first difference in INFORMATION.
func miscompare(off uint64) *SenseError {
	return &SenseError{Key: SenseMiscompare, ASC: ASCMiscompareDuringVerify, InfoValid: true, Info: uint32(off)}
}

// rangeToEnd decodes LBA and block count of commands where a count of 0
// means "to the end of the medium" (SYNCHRONIZE CACHE, PRE-FETCH).
func (lu *LU) rangeToEnd(r rwCDB) (lba, n uint64, err error) {
	if err := lu.checkRange(r.lba, uint64(r.blocks)); err != nil {
		return 0, 0, err
	}
	n = uint64(r.blocks)
	if n == 0 {
		n = lu.blocks() - r.lba
	}
	return r.lba, n, nil
}

func cmdSyncCache(tk *task) error {
	lu := tk.lu
	if _, _, err := lu.rangeToEnd(decodeRW(tk.cdb)); err != nil {
		return err
	}
	// The whole volatile cache is flushed whatever the range; IMMED is
	// honoured by completing only when the flush is done, which SBC
	// permits (status may come later, never earlier).
	if err := lu.vol.Flush(tk.volCtx()); err != nil {
		return volumeError(err, ioWrite)
	}
	return nil
}

func cmdPrefetch(tk *task) error {
	lu := tk.lu
	lba, n, err := lu.rangeToEnd(decodeRW(tk.cdb))
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	// PRE-FETCH is a hint; ranges over the maximum prefetch length are
	// cut, and then GOOD (not CONDITION MET) tells the initiator that not
	// all of it was brought in.
	complete := true
	if limit := uint64(lu.maxXferBlocks); n > limit {
		n, complete = limit, false
	}
	bs := uint64(lu.blockSize)
	if err := lu.vol.Prefetch(tk.volCtx(), int64(lba*bs), int64(n*bs)); err != nil {
		return volumeError(err, ioRead)
	}
	if complete && tk.cdb[1]&0x02 == 0 {
		tk.status = StatusConditionMet
	}
	return nil
}

func cmdUnmap(tk *task) error {
	lu := tk.lu
	if !lu.thin {
		return errInvalidOpcode()
	}
	if tk.cdb[1]&0x01 != 0 { // ANCHOR
		return errCDBField(1, 0)
	}
	plen := uint64(be16(tk.cdb[7:9]))
	tk.xfer = uint32(plen)
	if plen == 0 {
		return nil
	}
	data := tk.cmd.DataOut
	if uint64(len(data)) > plen {
		data = data[:plen]
	}
	descs, err := parseUnmap(data, lu.blocks(), lu.maxUnmapBlocks, lu.maxUnmapDescs)
	if err != nil {
		return err
	}
	return lu.discard(tk.volCtx(), descs)
}

// discard deallocates the ranges. With the write cache disabled the
// initiator takes completion as stability, so the discards are flushed
// before GOOD (otherwise a crash could bring the old data back).
func (lu *LU) discard(ctx context.Context, descs []unmapDesc) error {
	bs := int64(lu.blockSize)
	done := false
	for _, d := range descs {
		if d.blocks == 0 {
			continue
		}
		if err := lu.vol.Discard(ctx, int64(d.lba)*bs, int64(d.blocks)*bs); err != nil {
			return volumeError(err, ioWrite)
		}
		done = true
	}
	if done && !lu.wce.Load() {
		if err := lu.vol.Flush(ctx); err != nil {
			return volumeError(err, ioWrite)
		}
	}
	return nil
}

type unmapDesc struct {
	lba    uint64
	blocks uint32
}

// parseUnmap decodes and validates an UNMAP parameter list (SBC-3 5.28.2)
// completely before anything is discarded.
func parseUnmap(p []byte, capacity uint64, maxBlocks, maxDescs uint32) ([]unmapDesc, error) {
	if len(p) < 8 {
		return nil, errParamListLength()
	}
	dataLen := int(be16(p[0:2]))
	bdl := int(be16(p[2:4]))
	if dataLen < 6 && dataLen != 0 {
		return nil, errParamField(0, -1)
	}
	if bdl%16 != 0 {
		return nil, errParamField(2, -1)
	}
	avail := (len(p) - 8) / 16 * 16
	if bdl > avail {
		return nil, errParamListLength()
	}
	n := bdl / 16
	if uint32(n) > maxDescs {
		return nil, errParamField(2, -1)
	}
	descs := make([]unmapDesc, 0, n)
	for i := 0; i < n; i++ {
		d := p[8+16*i:]
		u := unmapDesc{lba: be64(d[0:8]), blocks: be32(d[8:12])}
		if u.lba > capacity || uint64(u.blocks) > capacity-u.lba {
			return nil, errLBAOutOfRange()
		}
		if u.blocks > maxBlocks {
			return nil, errParamField(8+16*i+8, -1)
		}
		descs = append(descs, u)
	}
	return descs, nil
}

// writeSameChunk bounds the pattern buffer of WRITE SAME.
const writeSameChunk = 1 << 20

func cmdWriteSame(tk *task) error {
	lu := tk.lu
	r := decodeRW(tk.cdb)
	if err := checkProtect(r); err != nil {
		return err
	}
	f := tk.cdb[1]
	if f&0x10 != 0 { // ANCHOR
		return errCDBField(1, 4)
	}
	if f&0x06 != 0 { // PBDATA, LBDATA
		return errCDBField(1, 2)
	}
	unmap := f&0x08 != 0
	if unmap && !lu.thin {
		// LBPWS/LBPWS10 are zero on a fully provisioned unit.
		return errCDBField(1, 3)
	}
	ndob := tk.cdb[0] == 0x93 && f&0x01 != 0
	if r.blocks == 0 { // WSNZ=1
		if err := lu.checkRange(r.lba, 0); err != nil {
			return err
		}
		return errCDBField(r.lenField, -1)
	}
	if err := lu.checkRange(r.lba, uint64(r.blocks)); err != nil {
		return err
	}
	if uint64(r.blocks) > lu.maxWriteSameBlks {
		return errCDBField(r.lenField, -1)
	}
	bs := uint64(lu.blockSize)
	var pattern []byte
	if !ndob {
		tk.xfer = uint32(bs)
		if uint64(len(tk.cmd.DataOut)) != bs {
			return newSense(SenseIllegalRequest, ASCInvalidFieldInCmdIU)
		}
		pattern = tk.cmd.DataOut
	}
	zero := ndob || isZero(pattern)
	off, n := int64(r.lba*bs), int64(uint64(r.blocks)*bs)
	ctx := tk.volCtx()
	if unmap && zero && lu.thin {
		return lu.discard(ctx, []unmapDesc{{lba: r.lba, blocks: r.blocks}})
	}
	fua := !lu.wce.Load() // WRITE SAME has no FUA bit
	chunk := min(n, writeSameChunk)
	buf := make([]byte, chunk)
	if !zero {
		for i := int64(0); i < chunk; i += int64(bs) {
			copy(buf[i:], pattern)
		}
	}
	for done := int64(0); done < n; done += chunk {
		w := min(chunk, n-done)
		if err := lu.vol.WriteAt(ctx, buf[:w], off+done, fua); err != nil {
			return volumeError(err, ioWrite)
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func cmdCompareAndWrite(tk *task) error {
	lu := tk.lu
	r := decodeRW(tk.cdb)
	if err := checkProtect(r); err != nil {
		return err
	}
	if uint32(r.blocks) > lu.maxCAWBlocks {
		return errCDBField(13, -1)
	}
	if err := lu.checkRange(r.lba, uint64(r.blocks)); err != nil {
		return err
	}
	bs := uint64(lu.blockSize)
	n := uint64(r.blocks) * bs
	tk.xfer = uint32(2 * n)
	if n == 0 {
		// Zero blocks is a no-op (SBC-3 5.2), but Data-Out attached to it
		// means the initiator meant a count the 8-bit field cannot hold.
		if len(tk.cmd.DataOut) != 0 {
			return errCDBField(13, -1)
		}
		return nil
	}
	if uint64(len(tk.cmd.DataOut)) != 2*n {
		return newSense(SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	}
	buf := tk.cmd.DataOut
	err := lu.vol.CompareAndWrite(tk.volCtx(), int64(r.lba*bs), buf[:n], buf[n:2*n], lu.writeFUA(r))
	var me *blk.MiscompareError
	if errors.As(err, &me) {
		return miscompare(uint64(me.Offset))
	}
	return volumeError(err, ioWrite)
}

// orWriteRetries bounds the optimistic read-OR-compare-and-write loop of
// ORWRITE when other writers keep changing the range.
const orWriteRetries = 64

// cmdOrWrite serves ORWRITE(16) (BMOP 000b: OR the Data-Out into the
// medium) atomically, as a compare-and-write of what was read.
func cmdOrWrite(tk *task) error {
	lu := tk.lu
	r, err := tk.decodeTransfer()
	if err != nil {
		return err
	}
	bs := uint64(lu.blockSize)
	n := uint64(r.blocks) * bs
	tk.xfer = uint32(n)
	if n == 0 {
		return nil
	}
	data, err := tk.dataOut(n)
	if err != nil {
		return err
	}
	ctx := tk.volCtx()
	off := int64(r.lba * bs)
	cur := make([]byte, n)
	next := make([]byte, n)
	fua := lu.writeFUA(r)
	for range orWriteRetries {
		if err := lu.vol.ReadAt(ctx, cur, off); err != nil {
			return volumeError(err, ioRead)
		}
		for i := range next {
			next[i] = cur[i] | data[i]
		}
		err := lu.vol.CompareAndWrite(ctx, off, cur, next, fua)
		if !errors.Is(err, blk.ErrMiscompare) {
			return volumeError(err, ioWrite)
		}
	}
	return newSense(SenseAbortedCommand, ASCNoAdditionalSense)
}

func cmdGetLBAStatus(tk *task) error {
	lu := tk.lu
	lba := be64(tk.cdb[2:10])
	alloc := be32(tk.cdb[10:14])
	nb := lu.blocks()
	if lba >= nb {
		return errLBAOutOfRange()
	}
	// A thick unit, or a volume that does not track allocation, reports
	// every LBA mapped. A thin one reports the volume's runs, as many
	// descriptors as the allocation length holds (at most
	// lbaStatusMaxDescriptors), from the starting LBA on.
	prov, ok := blk.ProvisionerOf(lu.vol)
	if !lu.thin || !ok {
		d := make([]byte, 24)
		put32(d[0:4], 20)
		put64(d[8:16], lba)
		put32(d[16:20], uint32(min(nb-lba, 0xffffffff)))
		d[20] = 0 // mapped
		tk.setDataIn(d, int(min(alloc, 24)))
		return nil
	}
	bs := int64(lu.blockSize)
	want := min(max((int(alloc)-8)/16, 1), lbaStatusMaxDescriptors)
	d := make([]byte, 8, 8+16*want)
	for cur := lba; cur < nb && (len(d)-8)/16 < want; {
		// one descriptor: a run of one state, cut at 2^32-1 blocks
		mapped, blocks := false, uint64(0)
		for cur+blocks < nb && blocks < 0xffffffff {
			at := int64(cur+blocks) * bs
			m, run, err := prov.Provisioning(tk.volCtx(), at, int64(min(nb-cur-blocks, 0xffffffff-blocks))*bs)
			if err != nil {
				return volumeError(err, ioRead)
			}
			if blocks > 0 && m != mapped {
				break
			}
			mapped = m
			blocks += uint64(max(run/bs, 1))
		}
		desc := make([]byte, 16)
		put64(desc[0:8], cur)
		put32(desc[8:12], uint32(blocks))
		if !mapped {
			desc[12] = 1 // deallocated
		}
		d = append(d, desc...)
		cur += blocks
	}
	put32(d[0:4], uint32(len(d)-4))
	tk.setDataIn(d, int(alloc))
	return nil
}

// lbaStatusMaxDescriptors bounds the descriptors one GET LBA STATUS
// returns (each may cost a backing device query).
const lbaStatusMaxDescriptors = 64
