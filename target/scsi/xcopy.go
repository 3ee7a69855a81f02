package scsi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
)

// EXTENDED COPY (LID1) and RECEIVE COPY RESULTS, SPC-4 6.4 and 6.18: the
// logical unit that receives the command is the copy manager; the copy
// targets (CSCDs) are logical units of the same daemon named by their NAA
// designator (VPD 83h), found through the CopyManager the Targets share.

// Copy manager limits, reported by RECEIVE COPY RESULTS (OPERATING
// PARAMETERS) and VPD 8Fh and enforced by EXTENDED COPY.
const (
	xcopyMaxCSCDs        = 8
	xcopyMaxSegments     = 32
	xcopyMaxDescListLen  = 2048 // bytes of CSCD plus segment descriptors
	xcopyHeaderLen       = 16
	xcopyCSCDLen         = 32 // identification descriptor CSCD (E4h)
	xcopySegB2BLen       = 28 // block to block segment descriptor (02h)
	xcopyTypeB2B         = 0x02
	xcopyTypeIdentCSCD   = 0xe4
	xcopyMaxParamListLen = xcopyHeaderLen + xcopyMaxDescListLen
	// xcopyChunk bounds the buffer of a copy done by read and write.
	xcopyChunk = 1 << 20
	// xcopyHeldResults bounds the copy results held per I_T nexus; the
	// oldest is dropped beyond it.
	xcopyHeldResults = 16
)

// CopyManager finds logical units by NAA designator for EXTENDED COPY.
// Every Target created with the same CopyManager (TargetConfig) can copy
// between its logical units and those of the other Targets; a Target
// created without one copies only among its own logical units.
type CopyManager struct {
	mu  sync.Mutex
	lus map[[16]byte]*LU
	odx odxState // ROD tokens (odx.go)
	// liveHint mirrors odx.live for the lock-free check every write
	// makes.
	liveHint atomic.Int64
	// now is the clock of token lifetimes (tests replace it).
	now func() time.Time
}

// NewCopyManager returns a CopyManager with no logical units.
func NewCopyManager() *CopyManager {
	cm := &CopyManager{lus: map[[16]byte]*LU{}}
	cm.initODX()
	return cm
}

func (cm *CopyManager) register(lu *LU) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	// The same volume exported by two targets (multipath) has one
	// identity; the first logical unit registered serves copies.
	if _, ok := cm.lus[lu.naa()]; !ok {
		cm.lus[lu.naa()] = lu
	}
}

func (cm *CopyManager) unregister(lu *LU) {
	cm.revokeLU(lu)
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.lus[lu.naa()] == lu {
		delete(cm.lus, lu.naa())
	}
}

func (cm *CopyManager) lookup(naa []byte) *LU {
	var k [16]byte
	copy(k[:], naa)
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return cm.lus[k]
}

// copyStatus is what RECEIVE COPY RESULTS (COPY STATUS) reports for a
// list identifier.
type copyStatus struct {
	listID   byte
	done     bool
	failed   bool
	segments uint16
	bytes    uint64
}

// xcopyState is the copy state of one I_T nexus at one logical unit: the
// list identifiers in use and the results held for retrieval.
type xcopyState struct {
	mu      sync.Mutex
	results []*copyStatus
}

func (xs *xcopyState) find(id byte) *copyStatus {
	for _, r := range xs.results {
		if r.listID == id {
			return r
		}
	}
	return nil
}

// start records a new copy under list identifier id; an id whose copy is
// still running is refused (SPC-4 6.4.3.2: OPERATION IN PROGRESS).
func (xs *xcopyState) start(id byte) (*copyStatus, error) {
	xs.mu.Lock()
	defer xs.mu.Unlock()
	out := xs.results[:0]
	for _, r := range xs.results {
		if r.listID == id {
			if !r.done {
				return nil, newSense(SenseIllegalRequest, ASCOperationInProgress)
			}
			continue // a new copy replaces the held results of the id
		}
		out = append(out, r)
	}
	xs.results = out
	if len(xs.results) >= xcopyHeldResults {
		xs.results = xs.results[1:]
	}
	cs := &copyStatus{listID: id}
	xs.results = append(xs.results, cs)
	return cs, nil
}

func (xs *xcopyState) drop(cs *copyStatus) {
	xs.mu.Lock()
	defer xs.mu.Unlock()
	for i, r := range xs.results {
		if r == cs {
			xs.results = append(xs.results[:i], xs.results[i+1:]...)
			return
		}
	}
}

// xcopySegment is one decoded block-to-block segment.
type xcopySegment struct {
	src, dst       *LU
	srcOff, dstOff int64
	n              int64
}

// naa is the NAA IEEE Registered Extended designator (VPD 83h) of the
// logical unit: the identity EXTENDED COPY and ODX name it by.
func (lu *LU) naa() [16]byte {
	return Identity{Serial: lu.serial, DeviceID: lu.deviceID}.NAA()
}

// copyAbortedSeg is COPY ABORTED for segment descriptor seg, pointing at
// byte field of that descriptor.
func copyAbortedSeg(asc ASC, seg int, field int) *SenseError {
	return &SenseError{Key: SenseCopyAborted, ASC: asc, CmdSpecific: uint32(seg),
		FieldValid: true, SegmentPointer: true, Field: uint16(field)}
}

// cmdExtendedCopy serves EXTENDED COPY (LID1), SPC-4 6.4. The whole
// parameter list is validated before any data moves, so a malformed list
// or a range beyond a copy target's capacity writes nothing. Segments are
// then processed in order; an I/O error ends the command with COPY ABORTED
// whose COMMAND-SPECIFIC INFORMATION names the failing segment, and
// RECEIVE COPY RESULTS reports the segments processed and bytes copied.
func cmdExtendedCopy(tk *task) error {
	plen := be32(tk.cdb[10:14])
	if plen == 0 {
		// SPC-4 6.4.1: not an error; nothing is copied or changed.
		return nil
	}
	if plen > xcopyMaxParamListLen {
		return errParamListLength()
	}
	if uint32(len(tk.cmd.DataOut)) < plen {
		return newSense(SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	}
	p := tk.cmd.DataOut[:plen]
	if len(p) < xcopyHeaderLen {
		return errParamListLength()
	}
	listID := p[0]
	usage := p[1] >> 3 & 0x03
	if p[1]&0x20 != 0 { // STR: no stream devices here
		return errParamField(1, 5)
	}
	switch usage {
	case 0x01: // reserved
		return errParamField(1, 4)
	case 0x03: // list identifier not used: it must be zero
		if listID != 0 {
			return errParamField(0, -1)
		}
	}
	cscdLen := int(be16(p[2:4]))
	segLen := int(be32(p[8:12]))
	if be32(p[12:16]) != 0 { // inline data: no segment type here uses it
		return errParamField(12, -1)
	}
	if cscdLen+segLen > xcopyMaxDescListLen {
		return errParamListLength()
	}
	if xcopyHeaderLen+cscdLen+segLen > len(p) {
		return errParamListLength()
	}
	lus, err := tk.parseCSCDs(p[xcopyHeaderLen : xcopyHeaderLen+cscdLen])
	if err != nil {
		return err
	}
	segs, err := tk.parseSegments(p[xcopyHeaderLen+cscdLen:xcopyHeaderLen+cscdLen+segLen], xcopyHeaderLen+cscdLen, lus)
	if err != nil {
		return err
	}
	for _, s := range segs {
		if s.dst.swp.Load() {
			// A destination under software write protect: nothing is
			// copied (SPC-4 6.4.5: the copy target's own status).
			return newSense(SenseDataProtect, ASCSoftwareWriteProtected)
		}
	}
	for _, lu := range lus {
		if lu == tk.lu {
			continue // dispatch checked the copy manager's own unit
		}
		if lu.sanitizeRefusal() != nil {
			// The copy target would answer NOT READY (sanitize in
			// progress) or MEDIUM ERROR (sanitize failed).
			return newSense(SenseCopyAborted, ASCCopyTargetDeviceNotReachable)
		}
		if lu.reservationActive.Load() && lu.conflictsFor(tk.nx.key, accessWrite) {
			tk.status = StatusReservationConflict
			return nil
		}
	}
	var cs *copyStatus
	if usage != 0x03 {
		if cs, err = tk.nx.xcopy.start(listID); err != nil {
			return err
		}
		if usage == 0x02 { // no held data: forget it once done
			defer tk.nx.xcopy.drop(cs)
		}
	} else {
		cs = &copyStatus{}
	}
	err = tk.runSegments(segs, cs)
	tk.nx.xcopy.mu.Lock()
	cs.done, cs.failed = true, err != nil
	tk.nx.xcopy.mu.Unlock()
	return err
}

// parseCSCDs decodes the CSCD descriptor list into the logical units it
// names. Every descriptor must be an identification descriptor (E4h) of a
// block device whose NAA designator names a logical unit known to the copy
// manager, with that unit's block size.
func (tk *task) parseCSCDs(b []byte) ([]*LU, error) {
	var lus []*LU
	for off := 0; off < len(b); {
		typ := b[off]
		if typ != xcopyTypeIdentCSCD {
			return nil, &SenseError{Key: SenseIllegalRequest, ASC: ASCUnsupportedTargetDescType,
				FieldValid: true, Field: uint16(xcopyHeaderLen + off)}
		}
		if len(lus) == xcopyMaxCSCDs {
			return nil, newSense(SenseIllegalRequest, ASCTooManyTargetDescriptors)
		}
		if off+xcopyCSCDLen > len(b) {
			return nil, errParamListLength()
		}
		d := b[off : off+xcopyCSCDLen]
		pf := xcopyHeaderLen + off
		// LU ID TYPE is ignored (SPC-4: the designator identifies the
		// logical unit); NUL is obsolete in SPC-4.
		if d[1]&0x1f != 0 { // peripheral device type: block devices only
			return nil, errParamField(pf+1, 4)
		}
		codeSet, desigType, assoc, dlen := d[4]&0x0f, d[5]&0x0f, d[5]>>4&0x03, int(d[7])
		var lu *LU
		if codeSet == 1 && desigType == 3 && assoc == 0 && dlen == 16 && d[8]>>4 == 6 {
			lu = tk.t.copyMgr.lookup(d[8:24])
		}
		if lu == nil {
			// SPC-4 6.4.3.? : a CSCD the copy manager cannot address.
			return nil, &SenseError{Key: SenseCopyAborted, ASC: ASCCopyTargetDeviceNotReachable,
				FieldValid: true, Field: uint16(pf + 4)}
		}
		if be24(d[29:32]) != lu.blockSize {
			return nil, errParamField(pf+29, -1)
		}
		lus = append(lus, lu)
		off += xcopyCSCDLen
	}
	return lus, nil
}

// parseSegments decodes the segment descriptor list (base is its offset in
// the parameter list) and checks every range against its copy target.
func (tk *task) parseSegments(b []byte, base int, lus []*LU) ([]xcopySegment, error) {
	var segs []xcopySegment
	for off := 0; off < len(b); {
		if off+4 > len(b) {
			return nil, errParamListLength()
		}
		typ := b[off]
		if typ != xcopyTypeB2B {
			return nil, &SenseError{Key: SenseIllegalRequest, ASC: ASCUnsupportedSegmentDescType,
				FieldValid: true, Field: uint16(base + off)}
		}
		if len(segs) == xcopyMaxSegments {
			return nil, newSense(SenseIllegalRequest, ASCTooManySegmentDescriptors)
		}
		if be16(b[off+2:off+4]) != xcopySegB2BLen-4 {
			return nil, errParamField(base+off+2, -1)
		}
		if off+xcopySegB2BLen > len(b) {
			return nil, errParamListLength()
		}
		d := b[off : off+xcopySegB2BLen]
		i := len(segs)
		si, di := int(be16(d[4:6])), int(be16(d[6:8]))
		if si >= len(lus) {
			return nil, copyAbortedSeg(ASCUnreachableCopyTarget, i, 4)
		}
		if di >= len(lus) {
			return nil, copyAbortedSeg(ASCUnreachableCopyTarget, i, 6)
		}
		src, dst := lus[si], lus[di]
		if src.blockSize != dst.blockSize {
			// NUMBER OF BLOCKS would not name whole blocks of both.
			return nil, copyAbortedSeg(ASCNoAdditionalSense, i, 10)
		}
		// DC selects whose blocks NUMBER OF BLOCKS counts; both sizes
		// are equal here.
		nblk, slba, dlba := uint64(be16(d[10:12])), be64(d[12:20]), be64(d[20:28])
		if src.checkRange(slba, nblk) != nil {
			// The source would answer LBA OUT OF RANGE; the copy
			// manager reports COPY ABORTED for the segment.
			return nil, copyAbortedSeg(ASCNoAdditionalSense, i, 12)
		}
		if dst.checkRange(dlba, nblk) != nil {
			return nil, copyAbortedSeg(ASCNoAdditionalSense, i, 20)
		}
		bs := int64(src.blockSize)
		segs = append(segs, xcopySegment{src: src, dst: dst, srcOff: int64(slba) * bs, dstOff: int64(dlba) * bs, n: int64(nblk) * bs})
		off += xcopySegB2BLen
	}
	return segs, nil
}

// runSegments moves the data of every segment, updating cs as it goes.
func (tk *task) runSegments(segs []xcopySegment, cs *copyStatus) error {
	ctx := tk.volCtx()
	for i, s := range segs {
		if s.n > 0 {
			if err := copyRange(ctx, s.src, s.dst, s.srcOff, s.dstOff, s.n, xcopyChunk); err != nil {
				if errors.Is(err, errTaskAborted) || ctx.Err() != nil {
					return errTaskAborted
				}
				// SPC-4 6.4.4: COPY ABORTED naming the segment; the
				// copy target's own sense is not forwarded.
				return &SenseError{Key: SenseCopyAborted, ASC: ASCNoAdditionalSense, CmdSpecific: uint32(i)}
			}
		}
		tk.nx.xcopy.mu.Lock()
		cs.segments++
		cs.bytes += uint64(s.n)
		tk.nx.xcopy.mu.Unlock()
	}
	return nil
}

// copyRange copies n bytes from src at srcOff to dst at dstOff. It lets a
// destination volume that implements blk.Copier do the copy; otherwise it
// reads and writes in chunks, as a host copy would (writes are FUA when
// the destination's write cache is off). Overlapping ranges of one volume
// are copied as if the whole source were read first: backwards when the
// destination starts inside the source.
func copyRange(ctx context.Context, src, dst *LU, srcOff, dstOff, n, chunk int64) error {
	fua := !dst.wce.Load()
	// Tokens of the destination range go stale before it changes.
	dst.t.copyMgr.revoke(dst.vol, odxRange{off: dstOff, n: n}, "EXTENDED COPY")
	if c, ok := blk.CopierOf(dst.vol); ok {
		err := c.CopyFrom(ctx, src.vol, srcOff, dstOff, n, fua)
		if !errors.Is(err, blk.ErrUnsupported) {
			return volumeError(err, ioWrite)
		}
	}
	buf := make([]byte, min(n, chunk))
	backwards := src.vol == dst.vol && dstOff > srcOff && dstOff < srcOff+n
	for done := int64(0); done < n; {
		c := min(int64(len(buf)), n-done)
		at := done
		if backwards {
			at = n - done - c
		}
		if err := src.vol.ReadAt(ctx, buf[:c], srcOff+at); err != nil {
			return fmt.Errorf("xcopy read at %d: %w", srcOff+at, volumeError(err, ioRead))
		}
		if err := dst.vol.WriteAt(ctx, buf[:c], dstOff+at, fua); err != nil {
			return fmt.Errorf("xcopy write at %d: %w", dstOff+at, volumeError(err, ioWrite))
		}
		done += c
	}
	return nil
}

// conflictsFor reports whether a command of the given access class from
// nexus k would end in RESERVATION CONFLICT on lu (a copy target other than
// the logical unit that received EXTENDED COPY).
func (lu *LU) conflictsFor(k nexusKey, access accessClass) bool {
	tk := &task{nx: &nexusState{key: k}}
	return lu.conflicts(tk, &opEntry{access: access})
}

// cmdReceiveCopyResults serves RECEIVE COPY RESULTS (LID1) COPY STATUS and
// OPERATING PARAMETERS, SPC-4 6.18.
func cmdReceiveCopyResults(tk *task) error {
	sa := tk.cdb[1] & 0x1f
	id := tk.cdb[2]
	alloc := int(be32(tk.cdb[10:14]))
	var d []byte
	switch sa {
	case 0x00: // COPY STATUS
		xs := &tk.nx.xcopy
		xs.mu.Lock()
		cs := xs.find(id)
		if cs == nil {
			xs.mu.Unlock()
			return errCDBField(2, -1)
		}
		d = make([]byte, 12)
		put32(d[0:4], 8)
		switch {
		case !cs.done:
			d[4] = 0x00 // operation in progress
		case cs.failed:
			d[4] = 0x02 // completed with errors
		default:
			d[4] = 0x01 // completed without errors
		}
		put16(d[5:7], cs.segments)
		if cs.bytes <= 0xffffffff {
			d[7] = 0x00 // bytes
			put32(d[8:12], uint32(cs.bytes))
		} else {
			d[7] = 0x01 // kibibytes
			put32(d[8:12], uint32(min(cs.bytes>>10, 0xffffffff)))
		}
		done := cs.done
		xs.mu.Unlock()
		if done {
			// The status of a finished copy is held until it has
			// been returned once.
			xs.drop(cs)
		}
	case 0x03: // OPERATING PARAMETERS
		d = make([]byte, 46)
		put32(d[0:4], uint32(len(d)-4))
		d[4] = 0x01 // SNLID: list identifiers are supported
		put16(d[8:10], xcopyMaxCSCDs)
		put16(d[10:12], xcopyMaxSegments)
		put32(d[12:16], xcopyMaxDescListLen)
		put32(d[16:20], tk.lu.xcopyMaxSegmentBytes())
		// max inline data 0, held data limit 0, stream transfer 0
		put16(d[34:36], xcopyHeldResults) // total concurrent copies
		d[36] = xcopyHeldResults          // maximum concurrent copies
		d[37] = byte(tk.lu.blockShift)    // data segment granularity (log2)
		d[43] = 2                         // implemented descriptor codes
		d[44] = xcopyTypeB2B
		d[45] = xcopyTypeIdentCSCD
	default:
		return errCDBField(1, 4)
	}
	tk.setDataIn(d, alloc)
	return nil
}

// xcopyMaxSegmentBytes is the largest segment: a block-to-block segment
// counts blocks in 16 bits.
func (lu *LU) xcopyMaxSegmentBytes() uint32 {
	return uint32(min(uint64(0xffff)<<lu.blockShift, 0xffffffff))
}

// thirdPartyCopyVPD builds VPD page 8Fh (SPC-4 7.8.17) for EXTENDED COPY
// (LID1), RECEIVE COPY RESULTS and the token commands (ODX).
func (lu *LU) thirdPartyCopyVPD() []byte {
	var out []byte
	desc := func(typ uint16, body []byte) {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		h := make([]byte, 4)
		put16(h[0:2], typ)
		put16(h[2:4], uint16(len(body)))
		out = append(append(out, h...), body...)
	}
	// Block Device ROD Token Limits (0000h).
	desc(0x0000, lu.rodLimitsDescriptor())
	// Supported Commands (0001h): opcode, service action count, actions.
	cmds := []byte{0x83, 3, 0x00, 0x10, 0x11, 0x84, 3, 0x00, 0x03, 0x07}
	desc(0x0001, append([]byte{byte(len(cmds))}, cmds...))
	// Parameter Data (0004h).
	pd := make([]byte, 0x1c)
	put16(pd[2:4], xcopyMaxCSCDs)
	put16(pd[4:6], xcopyMaxSegments)
	put32(pd[6:10], xcopyMaxDescListLen)
	desc(0x0004, pd)
	// Supported Descriptors (0008h).
	desc(0x0008, []byte{2, xcopyTypeB2B, xcopyTypeIdentCSCD})
	// General Copy Operations (8001h).
	g := make([]byte, 0x20)
	put32(g[0:4], xcopyHeldResults)
	put32(g[4:8], xcopyHeldResults)
	put32(g[8:12], lu.xcopyMaxSegmentBytes())
	g[12] = byte(lu.blockShift)
	desc(0x8001, g)
	return out
}
