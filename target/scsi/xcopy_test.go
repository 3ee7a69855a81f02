package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/memvol"
)

// xcopyList builds an EXTENDED COPY (LID1) parameter list.
type xcopyList struct {
	listID byte
	usage  byte // LIST ID USAGE
	cscds  [][]byte
	segs   [][]byte
}

func (x xcopyList) bytes() []byte {
	var c, s []byte
	for _, d := range x.cscds {
		c = append(c, d...)
	}
	for _, d := range x.segs {
		s = append(s, d...)
	}
	h := make([]byte, 16)
	h[0] = x.listID
	h[1] = x.usage << 3
	binary.BigEndian.PutUint16(h[2:], uint16(len(c)))
	binary.BigEndian.PutUint32(h[8:], uint32(len(s)))
	return append(append(h, c...), s...)
}

// cscdFor is the identification descriptor CSCD naming lu by its NAA.
func cscdFor(lu *LU) []byte {
	d := make([]byte, 32)
	d[0] = 0xe4
	d[4] = 0x01 // binary
	d[5] = 0x03 // association LU, NAA
	d[7] = 16
	naa := lu.naa()
	copy(d[8:], naa[:])
	d[29], d[30], d[31] = byte(lu.blockSize>>16), byte(lu.blockSize>>8), byte(lu.blockSize)
	return d
}

func segB2B(src, dst uint16, n uint16, slba, dlba uint64) []byte {
	d := make([]byte, 28)
	d[0] = 0x02
	binary.BigEndian.PutUint16(d[2:], 0x18)
	binary.BigEndian.PutUint16(d[4:], src)
	binary.BigEndian.PutUint16(d[6:], dst)
	binary.BigEndian.PutUint16(d[10:], n)
	binary.BigEndian.PutUint64(d[12:], slba)
	binary.BigEndian.PutUint64(d[20:], dlba)
	return d
}

func xcopyCDB(plen int) []byte {
	c := make([]byte, 16)
	c[0] = 0x83
	binary.BigEndian.PutUint32(c[10:], uint32(plen))
	return c
}

func (f *fixture) xcopy(n *Nexus, p []byte) Response {
	return f.exec(n, xcopyCDB(len(p)), p, 0)
}

func rcrCDB(sa, id byte, alloc uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1], c[2] = 0x84, sa, id
	binary.BigEndian.PutUint32(c[10:], alloc)
	return c
}

func (f *fixture) write(lba int, data []byte) {
	f.t.Helper()
	if err := f.vol.WriteAt(context.Background(), data, int64(lba*testBS), false); err != nil {
		f.t.Fatal(err)
	}
}

func TestExtendedCopyWithinLU(t *testing.T) {
	f := newFixture(t, nil)
	src := pattern(64*testBS, 3)
	f.write(10, src)
	x := xcopyList{listID: 7, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 64, 10, 1000), segB2B(0, 0, 0, 0, 0)}}
	f.good(f.xcopy(nexusA, x.bytes()))
	f.mustEqual(f.readBack(1000, 64), src)

	// The status is held for list 7 and reported once.
	r := f.exec(nexusA, rcrCDB(0, 7, 64), nil, 64)
	f.good(r)
	if len(r.Data) != 12 || r.Data[4] != 0x01 || binary.BigEndian.Uint16(r.Data[5:]) != 2 || r.Data[7] != 0 ||
		binary.BigEndian.Uint32(r.Data[8:]) != 64*testBS {
		t.Fatalf("copy status % x", r.Data)
	}
	f.sense(f.exec(nexusA, rcrCDB(0, 7, 64), nil, 64), SenseIllegalRequest, ASCInvalidFieldInCDB)
	// Another nexus never sees this nexus' results.
	f.good(f.xcopy(nexusA, x.bytes()))
	f.sense(f.exec(nexusB, rcrCDB(0, 7, 64), nil, 64), SenseIllegalRequest, ASCInvalidFieldInCDB)
	// LIST ID USAGE 10b: no held data.
	x.usage, x.listID = 2, 9
	f.good(f.xcopy(nexusA, x.bytes()))
	f.sense(f.exec(nexusA, rcrCDB(0, 9, 64), nil, 64), SenseIllegalRequest, ASCInvalidFieldInCDB)
	// A lost nexus loses its held data.
	f.tgt.NexusLost(nexusA)
	f.clearUA(nexusA)
	f.sense(f.exec(nexusA, rcrCDB(0, 7, 64), nil, 64), SenseIllegalRequest, ASCInvalidFieldInCDB)
}

func TestExtendedCopyOverlap(t *testing.T) {
	for _, shift := range []int{-37, -1, 1, 37} {
		t.Run(fmt.Sprint(shift), func(t *testing.T) {
			f := newFixture(t, nil)
			src := pattern(300*testBS, 5)
			f.write(500, src)
			// A small chunk makes the copy take several steps, so a
			// forward copy over its own source would corrupt it.
			ctx := context.Background()
			if err := copyRange(ctx, f.lu, f.lu, 500*testBS, int64(500+shift)*testBS, 300*testBS, 16*testBS); err != nil {
				t.Fatal(err)
			}
			f.mustEqual(f.readBack(500+shift, 300), src)
			// Through the command, in one chunk.
			g := newFixture(t, nil)
			g.write(500, src)
			x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(g.lu)}, segs: [][]byte{segB2B(0, 0, 300, 500, uint64(500+shift))}}
			g.good(g.xcopy(nexusA, x.bytes()))
			g.mustEqual(g.readBack(500+shift, 300), src)
		})
	}
}

func TestExtendedCopyBetweenTargets(t *testing.T) {
	cm := NewCopyManager()
	mk := func(name string, id byte) (*Target, *LU, *memvol.Volume) {
		vol, err := memvol.New(testBlocks*testBS, testBS)
		if err != nil {
			t.Fatal(err)
		}
		tg := NewTarget(TargetConfig{Name: name, CopyManager: cm})
		cfg := LUConfig{Volume: vol, WriteCache: true}
		cfg.DeviceID[0] = id
		lu, err := tg.AddLU(0, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return tg, lu, vol
	}
	t1, lu1, v1 := mk("iqn.test:one", 1)
	_, lu2, v2 := mk("iqn.test:two", 2)
	f := &fixture{t: t, tgt: t1, lu: lu1, vol: v1}
	f.clearUA(nexusA)
	src := pattern(32*testBS, 9)
	f.write(0, src)
	x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(lu1), cscdFor(lu2)}, segs: [][]byte{segB2B(0, 1, 32, 0, 2000)}}
	f.good(f.xcopy(nexusA, x.bytes()))
	got := make([]byte, len(src))
	if err := v2.ReadAt(context.Background(), got, 2000*testBS); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("copy to the other target's LU differs")
	}
	// A target without the shared copy manager cannot reach lu2.
	lone := NewTarget(TargetConfig{Name: "iqn.test:lone"})
	vol, _ := memvol.New(testBlocks*testBS, testBS)
	lu3, err := lone.AddLU(0, LUConfig{Volume: vol})
	if err != nil {
		t.Fatal(err)
	}
	g := &fixture{t: t, tgt: lone, lu: lu3, vol: vol}
	g.clearUA(nexusA)
	x.cscds = [][]byte{cscdFor(lu3), cscdFor(lu2)}
	r := g.xcopy(nexusA, x.bytes())
	g.sense(r, SenseCopyAborted, ASCCopyTargetDeviceNotReachable)
	// A removed LU is unreachable too.
	if err := t1.RemoveLU(0); err != nil {
		t.Fatal(err)
	}
	if cm.lookup(naaOf(lu1)) != nil {
		t.Fatal("removed LU still registered")
	}
}

func naaOf(lu *LU) []byte { n := lu.naa(); return n[:] }

// TestExtendedCopyBadInput: every malformed list gets its sense and writes
// nothing.
func TestExtendedCopyBadInput(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) {})
	good := func() xcopyList {
		return xcopyList{listID: 1, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 8, 0, 100)}}
	}
	f.write(0, pattern(8*testBS, 1))
	zero := make([]byte, 8*testBS)
	f.write(100, zero)
	type tc struct {
		name  string
		p     func() []byte
		key   SenseKey
		asc   ASC
		field int // sense-key-specific field pointer, -1: not checked
		seg   int // COMMAND-SPECIFIC INFORMATION for COPY ABORTED
	}
	mod := func(m func(x *xcopyList)) func() []byte {
		return func() []byte { x := good(); m(&x); return x.bytes() }
	}
	raw := func(m func(p []byte) []byte) func() []byte {
		return func() []byte { return m(good().bytes()) }
	}
	many := func(n int, d []byte) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = d
		}
		return out
	}
	cases := []tc{
		{"header truncated", raw(func(p []byte) []byte { return p[:10] }), SenseIllegalRequest, ASCParameterListLengthError, -1, 0},
		{"cscd truncated", raw(func(p []byte) []byte { return p[:16+31] }), SenseIllegalRequest, ASCParameterListLengthError, -1, 0},
		{"segment truncated", raw(func(p []byte) []byte { return p[:len(p)-1] }), SenseIllegalRequest, ASCParameterListLengthError, -1, 0},
		{"descriptor lists too long", mod(func(x *xcopyList) { x.segs = many(80, x.segs[0]) }), SenseIllegalRequest, ASCParameterListLengthError, -1, 0},
		{"too many cscds", mod(func(x *xcopyList) { x.cscds = many(xcopyMaxCSCDs+1, x.cscds[0]) }), SenseIllegalRequest, ASCTooManyTargetDescriptors, -1, 0},
		{"too many segments", mod(func(x *xcopyList) { x.segs = many(xcopyMaxSegments+1, x.segs[0]) }), SenseIllegalRequest, ASCTooManySegmentDescriptors, -1, 0},
		{"fc cscd type", mod(func(x *xcopyList) { d := cscdFor(f.lu); d[0] = 0xe0; x.cscds[0] = d }), SenseIllegalRequest, ASCUnsupportedTargetDescType, 16, 0},
		{"stream segment type", mod(func(x *xcopyList) { d := segB2B(0, 0, 8, 0, 100); d[0] = 0x03; x.segs[0] = d }), SenseIllegalRequest, ASCUnsupportedSegmentDescType, 48, 0},
		{"segment length field", mod(func(x *xcopyList) { x.segs[0][3] = 0x14 }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 50, 0},
		{"peripheral type tape", mod(func(x *xcopyList) { d := cscdFor(f.lu); d[1] = 0x01; x.cscds[0] = d }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 17, 0},
		{"block size mismatch", mod(func(x *xcopyList) { d := cscdFor(f.lu); d[30] = 0x10; x.cscds[0] = d }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 45, 0},
		{"unknown naa", mod(func(x *xcopyList) { d := cscdFor(f.lu); d[20] ^= 0xff; x.cscds[0] = d }), SenseCopyAborted, ASCCopyTargetDeviceNotReachable, 20, 0},
		{"t10 designator", mod(func(x *xcopyList) { d := cscdFor(f.lu); d[5] = 0x01; x.cscds[0] = d }), SenseCopyAborted, ASCCopyTargetDeviceNotReachable, 20, 0},
		{"source index beyond list", mod(func(x *xcopyList) { x.segs[0] = segB2B(1, 0, 8, 0, 100) }), SenseCopyAborted, ASCUnreachableCopyTarget, 4, 0},
		{"destination index beyond list", mod(func(x *xcopyList) { x.segs[0] = segB2B(0, 1, 8, 0, 100) }), SenseCopyAborted, ASCUnreachableCopyTarget, 6, 0},
		{"source beyond end", mod(func(x *xcopyList) { x.segs[0] = segB2B(0, 0, 8, testBlocks-4, 100) }), SenseCopyAborted, ASCNoAdditionalSense, 12, 0},
		{"destination beyond end, 2nd segment", mod(func(x *xcopyList) { x.segs = append(x.segs, segB2B(0, 0, 8, 0, testBlocks-1)) }), SenseCopyAborted, ASCNoAdditionalSense, 20, 1},
		{"destination lba overflow", mod(func(x *xcopyList) { x.segs[0] = segB2B(0, 0, 8, 0, ^uint64(0)-2) }), SenseCopyAborted, ASCNoAdditionalSense, 20, 0},
		{"str bit", raw(func(p []byte) []byte { p[1] |= 0x20; return p }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 1, 0},
		{"list id usage 01b", mod(func(x *xcopyList) { x.usage = 1 }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 1, 0},
		{"usage 11b with list id", mod(func(x *xcopyList) { x.usage = 3; x.listID = 4 }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 0, 0},
		{"inline data", raw(func(p []byte) []byte { p[15] = 4; return p }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 12, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.xcopy(nexusA, c.p())
			checkSense(t, r, c.key, c.asc)
			if c.field >= 0 {
				if r.Sense[15]&0x80 == 0 || int(binary.BigEndian.Uint16(r.Sense[16:])) != c.field {
					t.Fatalf("field pointer % x, want %d", r.Sense[15:18], c.field)
				}
				if c.key == SenseCopyAborted && c.asc != ASCCopyTargetDeviceNotReachable && r.Sense[15]&0x20 == 0 {
					t.Fatalf("segment pointer without SD: % x", r.Sense)
				}
			}
			if c.key == SenseCopyAborted && int(binary.BigEndian.Uint32(r.Sense[8:12])) != c.seg {
				t.Fatalf("command-specific information % x, want segment %d", r.Sense[8:12], c.seg)
			}
			f.mustEqual(f.readBack(100, 8), zero)
		})
	}
	// A parameter list length of zero is no error and does nothing.
	f.good(f.exec(nexusA, xcopyCDB(0), nil, 0))
	// Fewer bytes than the parameter list length.
	f.sense(f.exec(nexusA, xcopyCDB(200), good().bytes(), 0), SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	f.mustEqual(f.readBack(100, 8), zero)
}

// failingVol fails writes once failAfter bytes have been written.
type failingVol struct {
	*memvol.Volume
	failAfter, written int64
}

func (v *failingVol) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if v.written+int64(len(p)) > v.failAfter {
		return fmt.Errorf("test: %w", blk.ErrMedium)
	}
	v.written += int64(len(p))
	return v.Volume.WriteAt(ctx, p, off, fua)
}

func TestExtendedCopyIOErrorReportsProgress(t *testing.T) {
	var fv *failingVol
	f := newFixture(t, func(c *LUConfig) {
		fv = &failingVol{Volume: c.Volume.(*memvol.Volume), failAfter: 8 * testBS}
		c.Volume = fv
	})
	x := xcopyList{listID: 3, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 8, 0, 100), segB2B(0, 0, 8, 0, 200)}}
	r := f.xcopy(nexusA, x.bytes())
	f.sense(r, SenseCopyAborted, ASCNoAdditionalSense)
	if got := binary.BigEndian.Uint32(r.Sense[8:12]); got != 1 {
		t.Fatalf("failing segment %d, want 1", got)
	}
	r = f.exec(nexusA, rcrCDB(0, 3, 64), nil, 64)
	f.good(r)
	if r.Data[4] != 0x02 || binary.BigEndian.Uint16(r.Data[5:]) != 1 || binary.BigEndian.Uint32(r.Data[8:]) != 8*testBS {
		t.Fatalf("copy status after failure % x", r.Data)
	}
}

// copierVol records CopyFrom calls and copies by itself, or declines.
type copierVol struct {
	*memvol.Volume
	calls   int
	decline bool
}

func (v *copierVol) CopyFrom(ctx context.Context, src blk.Volume, srcOff, dstOff, n int64, fua bool) error {
	v.calls++
	if v.decline {
		return blk.ErrUnsupported
	}
	buf := make([]byte, n)
	if err := src.ReadAt(ctx, buf, srcOff); err != nil {
		return err
	}
	return v.Volume.WriteAt(ctx, buf, dstOff, fua)
}

func TestExtendedCopyUsesCopier(t *testing.T) {
	for _, decline := range []bool{false, true} {
		var cv *copierVol
		f := newFixture(t, func(c *LUConfig) {
			cv = &copierVol{Volume: c.Volume.(*memvol.Volume), decline: decline}
			c.Volume = cv
		})
		src := pattern(16*testBS, 2)
		f.write(0, src)
		x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 16, 0, 50)}}
		f.good(f.xcopy(nexusA, x.bytes()))
		f.mustEqual(f.readBack(50, 16), src)
		if cv.calls != 1 {
			t.Fatalf("decline=%v: CopyFrom called %d times", decline, cv.calls)
		}
	}
}

func TestExtendedCopyFollowsWriteCache(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.WriteCache = false })
	x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 4, 0, 50)}}
	f.good(f.xcopy(nexusA, x.bytes()))
	if _, fua, _, _ := f.vol.Counters(); fua == 0 {
		t.Fatal("with WCE=0 the copy's writes must be FUA")
	}
}

func TestReceiveCopyResultsOperatingParameters(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, rcrCDB(3, 0, 1024), nil, 1024)
	f.good(r)
	d := r.Data
	if len(d) != 46 || binary.BigEndian.Uint32(d[0:]) != 42 || binary.BigEndian.Uint16(d[8:]) != xcopyMaxCSCDs ||
		binary.BigEndian.Uint16(d[10:]) != xcopyMaxSegments || binary.BigEndian.Uint32(d[12:]) != xcopyMaxDescListLen ||
		binary.BigEndian.Uint32(d[16:]) != 0xffff*testBS || d[43] != 2 || d[44] != 0x02 || d[45] != 0xe4 {
		t.Fatalf("operating parameters % x", d)
	}
	f.sense(f.exec(nexusA, rcrCDB(1, 0, 1024), nil, 1024), SenseIllegalRequest, ASCInvalidFieldInCDB)
}

func TestThirdPartyCopyVPD(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, []byte{0x12, 0, 0, 0, 96, 0}, nil, 96)
	f.good(r)
	if r.Data[5]&0x08 == 0 {
		t.Fatal("3PC not set in standard INQUIRY")
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0x00, 0, 255, 0}, nil, 255)
	f.good(r)
	if !bytes.Contains(r.Data[4:], []byte{0x8f}) {
		t.Fatalf("VPD 8F not listed: % x", r.Data)
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0x8f, 4, 0, 0}, nil, 1024)
	f.good(r)
	d := r.Data
	if d[1] != 0x8f || int(binary.BigEndian.Uint16(d[2:]))+4 != len(d) {
		t.Fatalf("page header % x", d[:4])
	}
	// Walk the descriptors; the Supported Commands one lists 83h/00h,
	// 10h, 11h and 84h/00h, 03h, 07h.
	found := map[uint16]bool{}
	for off := 4; off < len(d); {
		typ, n := binary.BigEndian.Uint16(d[off:]), int(binary.BigEndian.Uint16(d[off+2:]))
		if n%4 != 0 || off+4+n > len(d) {
			t.Fatalf("descriptor %04x length %d", typ, n)
		}
		found[typ] = true
		if typ == 0x0001 {
			want := []byte{10, 0x83, 3, 0x00, 0x10, 0x11, 0x84, 3, 0x00, 0x03, 0x07}
			if !bytes.Equal(d[off+4:off+4+len(want)], want) {
				t.Fatalf("supported commands % x", d[off+4:off+4+n])
			}
		}
		if typ == 0x0000 { // Block Device ROD Token Limits
			b := d[off+4:]
			if n != 0x24 || binary.BigEndian.Uint16(b[10:]) != odxMaxRanges || binary.BigEndian.Uint32(b[16:]) != odxDefaultInactivity ||
				binary.BigEndian.Uint64(b[20:]) != odxMaxTransferBytes/testBS {
				t.Fatalf("ROD limits % x", b[:n])
			}
		}
		off += 4 + n
	}
	for _, typ := range []uint16{0x0000, 0x0001, 0x0004, 0x0008, 0x8001} {
		if !found[typ] {
			t.Fatalf("descriptor %04x missing", typ)
		}
	}
}

func TestExtendedCopyReservationOnOtherLU(t *testing.T) {
	cm := NewCopyManager()
	tg := NewTarget(TargetConfig{Name: "iqn.test:tgt", CopyManager: cm})
	v1, _ := memvol.New(testBlocks*testBS, testBS)
	v2, _ := memvol.New(testBlocks*testBS, testBS)
	lu1, err1 := tg.AddLU(0, LUConfig{Volume: v1, DeviceID: [16]byte{1}})
	lu2, err2 := tg.AddLU(1, LUConfig{Volume: v2, DeviceID: [16]byte{2}})
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tg, lu: lu1, vol: v1}
	f.clearUA(nexusA)
	// nexus B reserves LUN 1.
	for range 4 {
		tg.Execute(context.Background(), &Command{Nexus: nexusB, LUN: 1, CDB: []byte{0x03, 0, 0, 0, 18, 0}, DataInLen: 18})
	}
	if r := tg.Execute(context.Background(), &Command{Nexus: nexusB, LUN: 1, CDB: []byte{0x16, 0, 0, 0, 0, 0}}); r.Status != StatusGood {
		t.Fatalf("reserve: %x % x", r.Status, r.Sense)
	}
	x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(lu1), cscdFor(lu2)}, segs: [][]byte{segB2B(0, 1, 4, 0, 0)}}
	if r := f.xcopy(nexusA, x.bytes()); r.Status != StatusReservationConflict {
		t.Fatalf("copy into a LU reserved by another nexus: status %#x", r.Status)
	}
}

func TestExtendedCopyTargetBeingSanitized(t *testing.T) {
	tg := NewTarget(TargetConfig{Name: "iqn.test:tgt"})
	v1, _ := memvol.New(testBlocks*testBS, testBS)
	mv, _ := memvol.New(testBlocks*testBS, testBS)
	gv := &gatedVol{Volume: mv, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	lu1, err1 := tg.AddLU(0, LUConfig{Volume: v1, DeviceID: [16]byte{1}})
	lu2, err2 := tg.AddLU(1, LUConfig{Volume: gv, DeviceID: [16]byte{2}})
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tg, lu: lu1, vol: v1}
	f.clearUA(nexusA)
	p := overwriteParams(1, []byte{1})
	for range 4 {
		tg.Execute(context.Background(), &Command{Nexus: nexusA, LUN: 1, CDB: []byte{0x03, 0, 0, 0, 18, 0}, DataInLen: 18})
	}
	if r := tg.Execute(context.Background(), &Command{Nexus: nexusA, LUN: 1, CDB: sanitizeCDB(0x80|sanitizeOverwrite, uint16(len(p))), DataOut: p}); r.Status != StatusGood {
		t.Fatalf("sanitize: %#x % x", r.Status, r.Sense)
	}
	<-gv.entered
	x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(lu1), cscdFor(lu2)}, segs: [][]byte{segB2B(0, 1, 4, 0, 0)}}
	f.sense(f.xcopy(nexusA, x.bytes()), SenseCopyAborted, ASCCopyTargetDeviceNotReachable)
	close(gv.gate)
}
