package scsi

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"github.com/cachelun/cachelun/internal/testkit"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
)

type blkRange struct {
	lba uint64
	n   uint32
}

func rangeList(rs []blkRange) []byte {
	var b []byte
	for _, r := range rs {
		d := make([]byte, 16)
		binary.BigEndian.PutUint64(d, r.lba)
		binary.BigEndian.PutUint32(d[8:], r.n)
		b = append(b, d...)
	}
	return b
}

func tokenCDB(sa byte, listID uint32, plen int) []byte {
	c := make([]byte, 16)
	c[0], c[1] = 0x83, sa
	binary.BigEndian.PutUint32(c[6:], listID)
	binary.BigEndian.PutUint32(c[10:], uint32(plen))
	return c
}

func populateParams(timeout uint32, rs []blkRange) []byte {
	rl := rangeList(rs)
	p := make([]byte, 16)
	binary.BigEndian.PutUint16(p[0:], uint16(14+len(rl)))
	binary.BigEndian.PutUint32(p[4:], timeout)
	binary.BigEndian.PutUint16(p[14:], uint16(len(rl)))
	return append(p, rl...)
}

func wutParams(flags byte, offset uint64, tok []byte, rs []blkRange) []byte {
	rl := rangeList(rs)
	p := make([]byte, 536)
	binary.BigEndian.PutUint16(p[0:], uint16(534+len(rl)))
	p[2] = flags
	binary.BigEndian.PutUint64(p[8:], offset)
	copy(p[16:528], tok)
	binary.BigEndian.PutUint16(p[534:], uint16(len(rl)))
	return append(p, rl...)
}

func (f *fixture) populate(listID uint32, rs ...blkRange) []byte {
	f.t.Helper()
	p := populateParams(0, rs)
	f.good(f.exec(nexusA, tokenCDB(0x10, listID, len(p)), p, 0))
	info := f.rrti(listID)
	if info[4] != 0x10 || info[5] != 0x01 || binary.BigEndian.Uint32(info[32:]) != 514 {
		f.t.Fatalf("RRTI after POPULATE TOKEN: % x", info[:40])
	}
	return info[38 : 38+512]
}

func (f *fixture) rrti(listID uint32) []byte {
	f.t.Helper()
	c := make([]byte, 16)
	c[0], c[1] = 0x84, 0x07
	binary.BigEndian.PutUint32(c[2:], listID)
	binary.BigEndian.PutUint32(c[10:], 4096)
	r := f.exec(nexusA, c, nil, 4096)
	f.good(r)
	if int(binary.BigEndian.Uint32(r.Data))+4 != len(r.Data) {
		f.t.Fatalf("RRTI available data % x", r.Data[:4])
	}
	return r.Data
}

func (f *fixture) wut(listID uint32, flags byte, offset uint64, tok []byte, rs ...blkRange) Response {
	p := wutParams(flags, offset, tok, rs)
	return f.exec(nexusA, tokenCDB(0x11, listID, len(p)), p, 0)
}

func TestODXCopy(t *testing.T) {
	f := newFixture(t, nil)
	a, b := pattern(8*testBS, 1), pattern(8*testBS, 2)
	f.write(10, a)
	f.write(100, b)
	tok := f.populate(1, blkRange{10, 8}, blkRange{100, 8})
	if binary.BigEndian.Uint32(tok) != rodTypePointInTime || binary.BigEndian.Uint64(tok[56:]) != 16*testBS {
		t.Fatalf("token header % x", tok[:64])
	}
	// The whole token into two destination ranges of other sizes.
	f.good(f.wut(2, 0, 0, tok, blkRange{500, 4}, blkRange{600, 12}))
	f.mustEqual(f.readBack(500, 4), a[:4*testBS])
	f.mustEqual(f.readBack(600, 12), append(bytes.Clone(a[4*testBS:]), b...))
	info := f.rrti(2)
	if info[4] != 0x11 || info[5] != 0x01 || info[15] != 0xf1 || binary.BigEndian.Uint64(info[16:]) != 16 || binary.BigEndian.Uint16(info[24:]) != 2 {
		t.Fatalf("RRTI after WRITE USING TOKEN: % x", info[:32])
	}
	// OFFSET INTO ROD, and a residual: 6 blocks are left from offset 10.
	f.write(700, make([]byte, 10*testBS))
	f.good(f.wut(3, 0, 10, tok, blkRange{700, 10}))
	f.mustEqual(f.readBack(700, 6), b[2*testBS:])
	f.mustEqual(f.readBack(706, 4), make([]byte, 4*testBS))
	info = f.rrti(3)
	if info[5] != 0x03 || binary.BigEndian.Uint64(info[16:]) != 6 {
		t.Fatalf("RRTI of a residual copy: % x", info[:32])
	}
	// DEL_TKN: the token is gone after a successful use.
	f.good(f.wut(4, 0x02, 0, tok, blkRange{800, 1}))
	f.sense(f.wut(5, 0, 0, tok, blkRange{800, 1}), SenseIllegalRequest, ASCTokenUnknown)
}

func TestODXZeroToken(t *testing.T) {
	f := newFixture(t, nil)
	f.write(0, pattern(32*testBS, 3))
	tok := make([]byte, 512)
	binary.BigEndian.PutUint32(tok, rodTypeBlockZero)
	f.good(f.wut(1, 0, 0, tok, blkRange{4, 8}))
	f.mustEqual(f.readBack(4, 8), make([]byte, 8*testBS))
	f.mustEqual(f.readBack(0, 4), pattern(32*testBS, 3)[:4*testBS])
}

func TestODXBetweenTargets(t *testing.T) {
	cm := NewCopyManager()
	var fs []*fixture
	for i, name := range []string{"iqn.test:one", "iqn.test:two"} {
		vol, _ := memvol.New(testBlocks*testBS, testBS)
		tg := NewTarget(TargetConfig{Name: name, CopyManager: cm})
		lu, err := tg.AddLU(0, LUConfig{Volume: vol, DeviceID: [16]byte{byte(i + 1)}, WriteCache: true})
		if err != nil {
			t.Fatal(err)
		}
		f := &fixture{t: t, tgt: tg, lu: lu, vol: vol}
		f.clearUA(nexusA)
		fs = append(fs, f)
	}
	data := pattern(16*testBS, 7)
	fs[0].write(0, data)
	tok := fs[0].populate(1, blkRange{0, 16})
	fs[1].good(fs[1].wut(1, 0, 0, tok, blkRange{1000, 16}))
	fs[1].mustEqual(fs[1].readBack(1000, 16), data)
	// Removing the source LU forgets its tokens.
	if err := fs[0].tgt.RemoveLU(0); err != nil {
		t.Fatal(err)
	}
	fs[1].sense(fs[1].wut(2, 0, 0, tok, blkRange{1000, 16}), SenseIllegalRequest, ASCTokenUnknown)
}

func TestODXTokenRevokedByWrites(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	f.write(0, pattern(64*testBS, 1))
	zero := make([]byte, 8*testBS)
	cases := []struct {
		name   string
		cdb    []byte
		out    []byte
		revoke bool
	}{
		{"write10 elsewhere", testkit.CDB10(0x2a, 0, 40, 1), pattern(testBS, 9), false},
		{"write10 into the range", testkit.CDB10(0x2a, 0, 17, 1), pattern(testBS, 9), true},
		{"write16 last block", testkit.CDB16(0x8a, 0, 23, 1), pattern(testBS, 9), true},
		{"write same covering", testkit.CDB16(0x93, 0, 0, 64), pattern(testBS, 9), true},
		{"unmap", testkit.CDB10(0x42, 0, 0, 24), func() []byte {
			p := make([]byte, 24)
			binary.BigEndian.PutUint16(p, 22)
			binary.BigEndian.PutUint16(p[2:], 16)
			binary.BigEndian.PutUint64(p[8:], 50)
			binary.BigEndian.PutUint32(p[16:], 1)
			return p
		}(), true},
		{"extended copy into the range", nil, nil, true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := f.populate(uint32(10+i), blkRange{16, 8})
			if c.cdb != nil {
				f.good(f.exec(nexusA, c.cdb, c.out, 0))
			} else {
				x := xcopyList{usage: 3, cscds: [][]byte{cscdFor(f.lu)}, segs: [][]byte{segB2B(0, 0, 1, 40, 20)}}
				f.good(f.xcopy(nexusA, x.bytes()))
			}
			f.write(200, zero)
			r := f.wut(uint32(100+i), 0, 0, tok, blkRange{200, 8})
			if c.revoke {
				f.sense(r, SenseIllegalRequest, ASCTokenRevoked)
				f.mustEqual(f.readBack(200, 8), zero)
			} else {
				f.good(r)
			}
		})
	}
}

func TestODXTokenExpires(t *testing.T) {
	f := newFixture(t, nil)
	cm := f.tgt.copyMgr
	now := time.Unix(1000, 0)
	cm.now = func() time.Time { return now }
	p := populateParams(5, []blkRange{{0, 4}})
	f.good(f.exec(nexusA, tokenCDB(0x10, 1, len(p)), p, 0))
	tok := f.rrti(1)[38 : 38+512]
	now = now.Add(4 * time.Second)
	f.good(f.wut(2, 0, 0, tok, blkRange{100, 4})) // use restarts the inactivity timer
	now = now.Add(4 * time.Second)
	f.good(f.wut(3, 0, 0, tok, blkRange{100, 4}))
	now = now.Add(6 * time.Second)
	f.sense(f.wut(4, 0, 0, tok, blkRange{100, 4}), SenseIllegalRequest, ASCTokenExpired)
}

func TestODXForgedTokens(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.populate(1, blkRange{0, 4})
	other := NewCopyManager() // a later run of the daemon: another key
	mod := func(m func(b []byte)) []byte { b := bytes.Clone(tok); m(b); return b }
	remac := func(b []byte) {
		mac := hmac.New(sha256.New, f.tgt.copyMgr.odx.key[:])
		mac.Write(b[:rodTokenMACAt])
		copy(b[rodTokenMACAt:], mac.Sum(nil))
	}
	cases := []struct {
		name string
		tok  []byte
		asc  ASC
	}{
		{"flipped MAC", mod(func(b []byte) { b[rodTokenMACAt] ^= 1 }), ASCTokenCorrupt},
		{"changed range size", mod(func(b []byte) { b[63]++ }), ASCTokenCorrupt},
		{"other key", mod(func(b []byte) {
			mac := hmac.New(sha256.New, other.odx.key[:])
			mac.Write(b[:rodTokenMACAt])
			copy(b[rodTokenMACAt:], mac.Sum(nil))
		}), ASCTokenCorrupt},
		{"unknown id with a valid MAC", mod(func(b []byte) { b[15]++; remac(b) }), ASCTokenUnknown},
		{"unsupported ROD type", mod(func(b []byte) { b[1] = 0x01 }), ASCTokenUnsupportedType},
		{"token length", mod(func(b []byte) { b[7] = 0x10 }), ASCTokenInvalidLength},
		{"all zero", make([]byte, 512), ASCTokenUnsupportedType},
	}
	f.write(100, make([]byte, 4*testBS))
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.wut(uint32(10+i), 0, 0, c.tok, blkRange{100, 4})
			f.sense(r, SenseIllegalRequest, c.asc)
			f.mustEqual(f.readBack(100, 4), make([]byte, 4*testBS))
		})
	}
}

func TestODXBadInput(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.populate(1, blkRange{0, 8})
	f.write(100, make([]byte, 16*testBS))
	many := make([]blkRange, odxMaxRanges+1)
	for i := range many {
		many[i] = blkRange{uint64(2 * i), 1}
	}
	type tc struct {
		name  string
		cdb   []byte
		p     []byte
		key   SenseKey
		asc   ASC
		field int
	}
	pop := func(p []byte) []byte { return tokenCDB(0x10, 50, len(p)) }
	wut := func(p []byte) []byte { return tokenCDB(0x11, 51, len(p)) }
	edit := func(p []byte, m func([]byte)) []byte { m(p); return p }
	big := int(odxMaxTransferBytes/testBS) - 10
	cases := []tc{
		{"populate short list", tokenCDB(0x10, 50, 10), make([]byte, 10), SenseIllegalRequest, ASCParameterListLengthError, -1},
		{"populate beyond end", nil, populateParams(0, []blkRange{{testBlocks - 2, 4}}), SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"populate overlapping ranges", nil, populateParams(0, []blkRange{{0, 4}, {3, 4}}), SenseIllegalRequest, ASCInvalidFieldInParameterList, 32},
		{"populate too many ranges", pop(populateParams(0, many)), populateParams(0, many), SenseIllegalRequest, ASCTooManySegmentDescriptors, -1},
		{"populate timeout above maximum", nil, populateParams(odxMaxInactivity+1, []blkRange{{0, 4}}), SenseIllegalRequest, ASCInvalidFieldInParameterList, 4},
		{"populate other ROD type", nil, edit(populateParams(0, []blkRange{{0, 4}}), func(p []byte) { p[2] = 0x02; p[8] = 0x01 }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 8},
		{"populate no ranges", nil, populateParams(0, nil), SenseIllegalRequest, ASCInvalidFieldInParameterList, 14},
		{"populate range list not whole", nil, edit(populateParams(0, []blkRange{{0, 4}}), func(p []byte) { p[15] = 15 }), SenseIllegalRequest, ASCInvalidFieldInParameterList, 14},
		{"populate range list past the end", nil, edit(populateParams(0, []blkRange{{0, 4}}), func(p []byte) { p[15] = 32 }), SenseIllegalRequest, ASCParameterListLengthError, -1},
		{"populate data length past the end", nil, edit(populateParams(0, []blkRange{{0, 4}}), func(p []byte) { p[1] = 0xff }), SenseIllegalRequest, ASCParameterListLengthError, -1},
		{"wut beyond end", nil, wutParams(0, 0, tok, []blkRange{{testBlocks - 1, 8}}), SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"wut overlapping ranges", nil, wutParams(0, 0, tok, []blkRange{{100, 4}, {102, 4}}), SenseIllegalRequest, ASCInvalidFieldInParameterList, 552},
		{"wut offset past the token", nil, wutParams(0, 8, tok, []blkRange{{100, 4}}), SenseIllegalRequest, ASCInvalidFieldInParameterList, 8},
		{"wut far beyond end", nil, wutParams(0, 0, tok, []blkRange{{0, uint32(big)}, {uint64(big), 20}}), SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"wut short list", tokenCDB(0x11, 51, 100), make([]byte, 100), SenseIllegalRequest, ASCParameterListLengthError, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cdb := c.cdb
			if cdb == nil {
				if len(c.p) >= 536 {
					cdb = wut(c.p)
				} else {
					cdb = pop(c.p)
				}
			}
			r := f.exec(nexusA, cdb, c.p, 0)
			checkSense(t, r, c.key, c.asc)
			if c.field >= 0 && (r.Sense[15]&0x80 == 0 || int(binary.BigEndian.Uint16(r.Sense[16:])) != c.field) {
				t.Fatalf("field pointer % x, want %d", r.Sense[15:18], c.field)
			}
			f.mustEqual(f.readBack(100, 16), make([]byte, 16*testBS))
		})
	}
	// RRTI of an unknown list identifier.
	c := make([]byte, 16)
	c[0], c[1], c[5], c[13] = 0x84, 0x07, 99, 0xff
	f.sense(f.exec(nexusA, c, nil, 255), SenseIllegalRequest, ASCInvalidFieldInCDB)
	// The failed operations left no result, the good one still has its.
	f.rrti(1)
}

// sizeVol is a volume of a size and nothing else: POPULATE TOKEN never
// reads data, so the transfer limit can be tested without 256 MiB of
// memory.
type sizeVol struct {
	*memvol.Volume
	size int64
}

func (v *sizeVol) Size() int64 { return v.size }

func TestODXTransferLimit(t *testing.T) {
	const bs = 4096
	mv, _ := memvol.New(bs, bs)
	vol := &sizeVol{Volume: mv, size: 2 * odxMaxTransferBytes}
	tg := NewTarget(TargetConfig{Name: "iqn.test:big"})
	lu, err := tg.AddLU(0, LUConfig{Volume: vol})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tg, lu: lu}
	f.clearUA(nexusA)
	n := uint32(odxMaxTransferBytes / bs)
	p := populateParams(0, []blkRange{{0, n}, {uint64(n), 1}})
	f.sense(f.exec(nexusA, tokenCDB(0x10, 1, len(p)), p, 0), SenseIllegalRequest, ASCInvalidFieldInParameterList)
	p = populateParams(0, []blkRange{{0, n}})
	f.good(f.exec(nexusA, tokenCDB(0x10, 1, len(p)), p, 0))
}

// WRITE USING TOKEN lets a destination volume that implements blk.Copier
// copy the token's data itself; one that declines is written as before.
// A token revoked before the copy writes nothing.
func TestODXWriteUsingTokenUsesCopier(t *testing.T) {
	for _, decline := range []bool{false, true} {
		var cv *copierVol
		f := newFixture(t, func(c *LUConfig) {
			cv = &copierVol{Volume: c.Volume.(*memvol.Volume), decline: decline}
			c.Volume = cv
		})
		a, b := pattern(8*testBS, 4), pattern(8*testBS, 5)
		f.write(10, a)
		f.write(100, b)
		tok := f.populate(1, blkRange{10, 8}, blkRange{100, 8})
		f.good(f.wut(2, 0, 0, tok, blkRange{500, 4}, blkRange{600, 12}))
		f.mustEqual(f.readBack(500, 4), a[:4*testBS])
		f.mustEqual(f.readBack(600, 12), append(bytes.Clone(a[4*testBS:]), b...))
		// One call per source range piece of each destination range; a
		// declining copier is asked once.
		if want := 3; !decline && cv.calls != want || decline && cv.calls != 1 {
			t.Fatalf("decline=%v: CopyFrom called %d times", decline, cv.calls)
		}
		info := f.rrti(2)
		if info[5] != 0x01 || binary.BigEndian.Uint64(info[16:]) != 16 {
			t.Fatalf("decline=%v: RRTI after WRITE USING TOKEN: % x", decline, info[:32])
		}
		// Revoked by a write to its source: nothing is copied.
		tok = f.populate(3, blkRange{10, 8})
		f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 12, 1), pattern(testBS, 9), 0))
		calls := cv.calls
		zero := make([]byte, 8*testBS)
		f.write(800, zero)
		f.sense(f.wut(4, 0, 0, tok, blkRange{800, 8}), SenseIllegalRequest, ASCTokenRevoked)
		f.mustEqual(f.readBack(800, 8), zero)
		if cv.calls != calls {
			t.Fatalf("decline=%v: a revoked token was copied", decline)
		}
	}
}
