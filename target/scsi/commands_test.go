package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
)

func TestIllegalRequests(t *testing.T) {
	f := newFixture(t, nil)
	oob := uint32(testBlocks)
	cases := []struct {
		name  string
		cdb   []byte
		out   []byte
		key   SenseKey
		asc   ASC
		field int // expected field pointer, -1 for none
	}{
		{"unknown opcode", []byte{0xc0, 0, 0, 0, 0, 0}, nil, SenseIllegalRequest, ASCInvalidOpcode, 0},
		{"format unit unsupported", []byte{0x04, 0, 0, 0, 0, 0}, nil, SenseIllegalRequest, ASCInvalidOpcode, 0},
		{"read10 past end", testkit.CDB10(0x28, 0, oob, 1), nil, SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"read10 straddles end", testkit.CDB10(0x28, 0, oob-1, 2), nil, SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"read16 lba -1", testkit.CDB16(0x88, 0, ^uint64(0), 1), nil, SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"read10 0 blocks past end", testkit.CDB10(0x28, 0, oob+1, 0), nil, SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"write16 past end", testkit.CDB16(0x8a, 0, uint64(oob), 1), pattern(testBS, 1), SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"read10 rdprotect", testkit.CDB10(0x28, 0x20, 0, 1), nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"write10 wrprotect", testkit.CDB10(0x2a, 0x40, 0, 1), pattern(testBS, 1), SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"read10 too long", testkit.CDB10(0x28, 0, 0, 0xffff), nil, SenseIllegalRequest, ASCLBAOutOfRange, -1},
		{"verify bytchk 10b", testkit.CDB10(0x2f, 0x04, 0, 1), nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"inquiry page without evpd", []byte{0x12, 0, 0x80, 0, 255, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 2},
		{"inquiry unknown vpd", []byte{0x12, 1, 0x99, 0, 255, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 2},
		{"inquiry cmddt", []byte{0x12, 2, 0, 0, 255, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"naca set", []byte{0, 0, 0, 0, 0, 0x04}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 5},
		{"prin bad service action", []byte{0x5e, 0x04, 0, 0, 0, 0, 0, 0, 255, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"sa-in bad service action", []byte{0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"short cdb", []byte{0x28, 0, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 3},
		{"mode sense unknown page", []byte{0x1a, 0, 0x05, 0, 255, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 2},
		{"mode sense saved without state", []byte{0x1a, 0, 0xc8, 0, 255, 0}, nil, SenseIllegalRequest, ASCSavingParametersUnsupported, -1},
		{"unmap on thick lu", testkit.CDB10(0x42, 0, 0, 24), make([]byte, 24), SenseIllegalRequest, ASCInvalidOpcode, 0},
		{"write same 0 blocks", testkit.CDB10(0x41, 0, 0, 0), pattern(testBS, 1), SenseIllegalRequest, ASCInvalidFieldInCDB, 7},
		{"write same anchor", testkit.CDB10(0x41, 0x10, 0, 1), pattern(testBS, 1), SenseIllegalRequest, ASCInvalidFieldInCDB, 1},
		{"report luns short alloc", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 6},
		{"start stop power condition", []byte{0x1b, 0, 0, 0, 0x30, 0}, nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 4},
		{"caw too many blocks", testkit.CDB16(0x89, 0, 0, 0), nil, SenseIllegalRequest, ASCInvalidFieldInCDB, 13},
	}
	// COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS is byte 13.
	cases[len(cases)-1].cdb[13] = 200
	cases[len(cases)-1].cdb[10], cases[len(cases)-1].cdb[11], cases[len(cases)-1].cdb[12] = 0, 0, 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.exec(nexusA, c.cdb, c.out, 4096)
			checkSense(t, r, c.key, c.asc)
			sksv := r.Sense[15]&0x80 != 0
			if c.field < 0 {
				return
			}
			if !sksv {
				t.Fatalf("no field pointer in sense % x", r.Sense)
			}
			if got := int(binary.BigEndian.Uint16(r.Sense[16:18])); got != c.field {
				t.Fatalf("field pointer %d, want %d", got, c.field)
			}
			if r.Sense[15]&0x40 == 0 {
				t.Fatal("C/D bit clear for a CDB field")
			}
		})
	}
	// Nothing above may have written.
	if !bytes.Equal(f.readBack(0, 1), make([]byte, testBS)) {
		t.Fatal("a rejected command wrote data")
	}
}

func TestResiduals(t *testing.T) {
	f := newFixture(t, nil)
	data := pattern(2*testBS, 9)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 2), data, 0))
	t.Run("read overflow", func(t *testing.T) {
		r := f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 2), nil, 200)
		f.good(r)
		if r.TransferLen != 2*testBS || len(r.Data) != 200 {
			t.Fatalf("TransferLen %d data %d", r.TransferLen, len(r.Data))
		}
		f.mustEqual(r.Data, data[:200])
	})
	t.Run("read underflow", func(t *testing.T) {
		r := f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, 10000)
		f.good(r)
		if r.TransferLen != testBS || len(r.Data) != testBS {
			t.Fatalf("TransferLen %d data %d", r.TransferLen, len(r.Data))
		}
	})
	t.Run("read zero expected", func(t *testing.T) {
		r := f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, 0)
		f.good(r)
		if r.TransferLen != testBS || len(r.Data) != 0 {
			t.Fatalf("TransferLen %d data %d", r.TransferLen, len(r.Data))
		}
	})
	t.Run("write overflow inside a block changes only the bytes sent", func(t *testing.T) {
		before := f.readBack(0, 2)
		sent := pattern(testBS+200, 0x55)
		r := f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 2), sent, 0)
		f.good(r)
		if r.TransferLen != 2*testBS {
			t.Fatalf("TransferLen %d", r.TransferLen)
		}
		want := append(bytes.Clone(sent), before[testBS+200:]...)
		f.mustEqual(f.readBack(0, 2), want)
	})
	t.Run("write overflow writes the whole blocks sent", func(t *testing.T) {
		before := f.readBack(0, 2)
		r := f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 2), pattern(testBS, 0x66), 0)
		f.good(r)
		if r.TransferLen != 2*testBS {
			t.Fatalf("TransferLen %d", r.TransferLen)
		}
		f.mustEqual(f.readBack(0, 1), pattern(testBS, 0x66))
		f.mustEqual(f.readBack(1, 1), before[testBS:])
	})
	t.Run("write underflow writes only the CDB range", func(t *testing.T) {
		second := f.readBack(1, 1)
		r := f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(2*testBS, 0x77), 0)
		f.good(r)
		if r.TransferLen != testBS {
			t.Fatalf("TransferLen %d", r.TransferLen)
		}
		f.mustEqual(f.readBack(0, 1), pattern(testBS, 0x77))
		f.mustEqual(f.readBack(1, 1), second)
	})
	t.Run("inquiry allocation length", func(t *testing.T) {
		r := f.exec(nexusA, []byte{0x12, 0, 0, 0, 255, 0}, nil, 255)
		f.good(r)
		if r.TransferLen != standardInquiryLen || len(r.Data) != standardInquiryLen {
			t.Fatalf("TransferLen %d data %d", r.TransferLen, len(r.Data))
		}
		r = f.exec(nexusA, []byte{0x12, 0, 0, 0, 5, 0}, nil, 5)
		if r.TransferLen != 5 || len(r.Data) != 5 {
			t.Fatalf("alloc 5: TransferLen %d data %d", r.TransferLen, len(r.Data))
		}
	})
}

func TestInquiry(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	r := f.exec(nexusA, []byte{0x12, 0, 0, 0, 255, 0}, nil, 255)
	f.good(r)
	d := r.Data
	if d[0] != 0 || d[2] != 0x06 || d[3] != 0x12 || d[7]&0x02 == 0 || d[5]&0x30 != 0 {
		t.Fatalf("standard inquiry header % x", d[:8])
	}
	if string(d[8:16]) != "CACHELUN" || string(d[16:32]) != "cached-lun      " || string(d[32:36]) != "0001" {
		t.Fatalf("identification %q %q %q", d[8:16], d[16:32], d[32:36])
	}
	var versions []uint16
	for i := 58; i < 74; i += 2 {
		versions = append(versions, binary.BigEndian.Uint16(d[i:]))
	}
	for _, v := range []uint16{versionSPC4, versionSBC3, versionSAM5, versionISCSI} {
		if !bytes.Contains(d[58:74], []byte{byte(v >> 8), byte(v)}) {
			t.Fatalf("version descriptor %#x missing from %x", v, versions)
		}
	}
	// VPD 00 lists every page, ascending, and each page answers.
	r = f.exec(nexusA, []byte{0x12, 1, 0, 0, 255, 0}, nil, 255)
	f.good(r)
	pages := r.Data[4:]
	if int(binary.BigEndian.Uint16(r.Data[2:4])) != len(pages) {
		t.Fatal("VPD 00 page length")
	}
	for i, p := range pages {
		if i > 0 && p <= pages[i-1] {
			t.Fatalf("VPD pages not sorted: % x", pages)
		}
		r := f.exec(nexusA, []byte{0x12, 1, p, 0, 255, 0}, nil, 255)
		f.good(r)
		if r.Data[1] != p || int(binary.BigEndian.Uint16(r.Data[2:4]))+4 != len(r.Data) {
			t.Fatalf("VPD %#x header % x len %d", p, r.Data[:4], len(r.Data))
		}
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0x80, 0, 255, 0}, nil, 255)
	if string(r.Data[4:]) != "SER0001" {
		t.Fatalf("serial %q", r.Data[4:])
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0x83, 0, 255, 0}, nil, 255)
	types := map[byte]bool{}
	for p := r.Data[4:]; len(p) >= 4; {
		l := int(p[3])
		types[p[1]&0x0f] = true
		if p[1]&0x0f == 3 && p[4]>>4 != 6 {
			t.Fatalf("NAA designator is not NAA 6: % x", p[4:4+l])
		}
		p = p[4+l:]
	}
	for _, typ := range []byte{1, 3, 4, 5, 8} {
		if !types[typ] {
			t.Fatalf("VPD 83 lacks designator type %d (have %v)", typ, types)
		}
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0xb0, 0, 255, 0}, nil, 255)
	if r.Data[3] != 0x3c || binary.BigEndian.Uint32(r.Data[8:12]) == 0 || binary.BigEndian.Uint32(r.Data[20:24]) == 0 {
		t.Fatalf("block limits % x", r.Data)
	}
	r = f.exec(nexusA, []byte{0x12, 1, 0xb2, 0, 255, 0}, nil, 255)
	if r.Data[5]&0xe0 != 0xe0 || r.Data[6]&0x07 != 2 {
		t.Fatalf("thin LU B2 % x", r.Data)
	}
	// No logical unit: qualifier 011b.
	r = f.tgt.Execute(context.Background(), &Command{Nexus: nexusA, LUN: 7, CDB: []byte{0x12, 0, 0, 0, 36, 0}, DataInLen: 36})
	f.good(r)
	if r.Data[0] != 0x7f {
		t.Fatalf("absent LUN peripheral byte %#x", r.Data[0])
	}
	r = f.tgt.Execute(context.Background(), &Command{Nexus: nexusA, LUN: 7, CDB: []byte{0, 0, 0, 0, 0, 0}})
	checkSense(t, r, SenseIllegalRequest, ASCLUNotSupported)
}

func modeSense6(f *fixture, n *Nexus, page, pc byte) Response {
	return f.exec(n, []byte{0x1a, 0x08, pc<<6 | page, 0, 255, 0}, nil, 255)
}

// cachingPage returns the caching page from a MODE SENSE(6) with DBD.
func cachingPage(t *testing.T, r Response) []byte {
	t.Helper()
	if r.Status != StatusGood {
		t.Fatalf("mode sense status %#x sense % x", r.Status, r.Sense)
	}
	p := r.Data[4+int(r.Data[3]):]
	if p[0]&0x3f != pageCaching || p[1] != 18 {
		t.Fatalf("not the caching page: % x", p)
	}
	return p
}

func TestModeSelectWCE(t *testing.T) {
	f := newFixture(t, nil)
	p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcCurrent))
	if p[2]&0x04 == 0 {
		t.Fatal("WCE not set initially")
	}
	if m := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcChangeable)); m[2] != 0x04 {
		t.Fatalf("changeable mask % x", m)
	}
	// Turn the write cache off.
	sel := append([]byte{0, 0, 0, 0}, p...)
	sel[4] &^= 0x80 // PS is reserved in MODE SELECT
	sel[6] &^= 0x04
	fl0, _, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0))
	if f.lu.WriteCacheEnabled() {
		t.Fatal("WCE still on")
	}
	if fl1, _, _, _ := f.vol.Counters(); fl1 != fl0+1 {
		t.Fatal("turning the write cache off did not flush it")
	}
	// The other nexus is told.
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCModeParametersChanged)
	// With WCE=0 every write is FUA.
	_, fua0, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	f.good(f.exec(nexusA, []byte{0x0a, 0, 0, 1, 1, 0}, pattern(testBS, 1), 0))
	if _, fua1, _, _ := f.vol.Counters(); fua1 != fua0+2 {
		t.Fatalf("WCE=0 writes: %d FUA, want 2", fua1-fua0)
	}
	// Changing a non-changeable bit is refused with a pointer to it.
	bad := bytes.Clone(sel)
	bad[6] |= 0x01 // RCD
	r := f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(bad)), 0}, bad, 0)
	f.sense(r, SenseIllegalRequest, ASCInvalidFieldInParameterList)
	if got := binary.BigEndian.Uint16(r.Sense[16:18]); got != 6 {
		t.Fatalf("field pointer %d, want 6", got)
	}
	// SP=1 without a state file is refused.
	f.sense(f.exec(nexusA, []byte{0x15, 0x11, 0, 0, byte(len(sel)), 0}, sel, 0), SenseIllegalRequest, ASCInvalidFieldInCDB)
}

func TestWCEPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun0.state")
	f := newFixture(t, func(c *LUConfig) { c.StatePath = path })
	p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcCurrent))
	if p[0]&0x80 == 0 {
		t.Fatal("PS not set with a state file")
	}
	sel := append([]byte{0, 0, 0, 0}, p...)
	sel[4] &^= 0x80
	sel[6] &^= 0x04
	f.good(f.exec(nexusA, []byte{0x15, 0x11, 0, 0, byte(len(sel)), 0}, sel, 0))
	if p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcSaved)); p[2]&0x04 != 0 {
		t.Fatal("saved WCE still 1")
	}
	// A new logical unit on the same state file starts with WCE=0 even
	// though its configuration asks for the write cache.
	f2 := newFixture(t, func(c *LUConfig) { c.StatePath = path; c.WriteCache = true })
	if f2.lu.WriteCacheEnabled() {
		t.Fatal("saved WCE=0 not restored")
	}
}

func TestModeSenseBlockDescriptor(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 255)
	f.good(r)
	if r.Data[3] != 8 || binary.BigEndian.Uint32(r.Data[4:8]) != testBlocks || be24(r.Data[9:12]) != testBS {
		t.Fatalf("block descriptor % x", r.Data[:12])
	}
	if int(r.Data[0])+1 != len(r.Data) {
		t.Fatalf("mode data length %d for %d bytes", r.Data[0], len(r.Data))
	}
	if r.Data[2]&0x10 == 0 {
		t.Fatal("DPOFUA not set")
	}
	r = f.exec(nexusA, []byte{0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096)
	f.good(r)
	if r.Data[4]&1 == 0 || binary.BigEndian.Uint16(r.Data[6:8]) != 16 || binary.BigEndian.Uint64(r.Data[8:16]) != testBlocks {
		t.Fatalf("long LBA block descriptor % x", r.Data[:24])
	}
	if int(binary.BigEndian.Uint16(r.Data[0:2]))+2 != len(r.Data) {
		t.Fatal("mode sense(10) data length")
	}
}

func TestSyncCacheAndPrefetch(t *testing.T) {
	f := newFixture(t, nil)
	fl0, _, _, pf0 := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x35, 0, 0, 0), nil, 0))
	f.good(f.exec(nexusA, testkit.CDB16(0x91, 0, 10, 5), nil, 0))
	f.sense(f.exec(nexusA, testkit.CDB16(0x91, 0, testBlocks, 1), nil, 0), SenseIllegalRequest, ASCLBAOutOfRange)
	r := f.exec(nexusA, testkit.CDB10(0x34, 0, 0, 16), nil, 0)
	if r.Status != StatusConditionMet {
		t.Fatalf("PRE-FETCH status %#x", r.Status)
	}
	f.good(f.exec(nexusA, testkit.CDB16(0x90, 0x02, 0, 16), nil, 0)) // IMMED: GOOD
	f.sense(f.exec(nexusA, testkit.CDB10(0x34, 0, testBlocks, 1), nil, 0), SenseIllegalRequest, ASCLBAOutOfRange)
	fl1, _, _, pf1 := f.vol.Counters()
	if fl1-fl0 != 2 || pf1-pf0 != 2 {
		t.Fatalf("flushes %d prefetches %d, want 2 and 2", fl1-fl0, pf1-pf0)
	}
	// FUA write reaches the volume as FUA even with WCE=1.
	_, fu0, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, flagFUA, 0, 1), pattern(testBS, 1), 0))
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	if _, fu1, _, _ := f.vol.Counters(); fu1-fu0 != 1 {
		t.Fatalf("FUA writes %d, want 1", fu1-fu0)
	}
}

func TestVerify(t *testing.T) {
	f := newFixture(t, nil)
	data := pattern(2*testBS, 4)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 8, 2), data, 0))
	f.good(f.exec(nexusA, testkit.CDB10(0x2f, 0x02, 8, 2), data, 0))
	bad := bytes.Clone(data)
	bad[700] ^= 1
	r := f.exec(nexusA, testkit.CDB16(0x8f, 0x02, 8, 2), bad, 0)
	f.sense(r, SenseMiscompare, ASCMiscompareDuringVerify)
	if r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:7]) != 700 {
		t.Fatalf("INFORMATION % x, want 700", r.Sense[3:7])
	}
	// BYTCHK=0 does not compare.
	f.good(f.exec(nexusA, testkit.CDB10(0x2f, 0, 8, 2), nil, 0))
	// BYTCHK=11b: one block against every block.
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 20, 3), bytes.Repeat(data[:testBS], 3), 0))
	f.good(f.exec(nexusA, testkit.CDB12(0xaf, 0x06, 20, 3), data[:testBS], 0))
	f.sense(f.exec(nexusA, testkit.CDB12(0xaf, 0x06, 19, 3), data[:testBS], 0), SenseMiscompare, ASCMiscompareDuringVerify)
	// WRITE AND VERIFY writes durably.
	_, fu0, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x2e, 0x02, 30, 1), data[:testBS], 0))
	if _, fu1, _, _ := f.vol.Counters(); fu1 != fu0+1 {
		t.Fatal("WRITE AND VERIFY not FUA")
	}
	f.mustEqual(f.readBack(30, 1), data[:testBS])
}

func cawCDB(lba uint64, n byte) []byte {
	c := testkit.CDB16(0x89, 0, lba, 0)
	c[10], c[11], c[12], c[13] = 0, 0, 0, n
	return c
}

func TestCompareAndWrite(t *testing.T) {
	f := newFixture(t, nil)
	old := pattern(testBS, 1)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 3, 1), old, 0))
	nw := pattern(testBS, 2)
	f.good(f.exec(nexusA, cawCDB(3, 1), append(bytes.Clone(old), nw...), 0))
	f.mustEqual(f.readBack(3, 1), nw)
	wrong := bytes.Clone(nw)
	wrong[37] ^= 0xff
	r := f.exec(nexusA, cawCDB(3, 1), append(wrong, pattern(testBS, 3)...), 0)
	f.sense(r, SenseMiscompare, ASCMiscompareDuringVerify)
	if binary.BigEndian.Uint32(r.Sense[3:7]) != 37 || r.Sense[0]&0x80 == 0 {
		t.Fatalf("miscompare INFORMATION % x", r.Sense[:8])
	}
	f.mustEqual(f.readBack(3, 1), nw)
	// Data-Out of the wrong size is refused.
	f.sense(f.exec(nexusA, cawCDB(3, 1), nw, 0), SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	f.sense(f.exec(nexusA, cawCDB(testBlocks, 1), append(bytes.Clone(nw), nw...), 0), SenseIllegalRequest, ASCLBAOutOfRange)
}

func TestOrWrite(t *testing.T) {
	f := newFixture(t, nil)
	a := bytes.Repeat([]byte{0x0f}, testBS)
	b := bytes.Repeat([]byte{0xf0}, testBS)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 4, 1), a, 0))
	f.good(f.exec(nexusA, testkit.CDB16(0x8b, 0, 4, 1), b, 0))
	f.mustEqual(f.readBack(4, 1), bytes.Repeat([]byte{0xff}, testBS))
	f.good(f.exec(nexusA, testkit.CDB16(0x8b, 0, 4, 0), nil, 0))
	f.sense(f.exec(nexusA, testkit.CDB16(0x8b, 0, testBlocks, 1), b, 0), SenseIllegalRequest, ASCLBAOutOfRange)
}

func TestWriteSame(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	blk0 := pattern(testBS, 0x21)
	f.good(f.exec(nexusA, testkit.CDB10(0x41, 0, 100, 50), blk0, 0))
	got := f.readBack(100, 50)
	for i := 0; i < 50; i++ {
		f.mustEqual(got[i*testBS:(i+1)*testBS], blk0)
	}
	f.mustEqual(f.readBack(150, 1), make([]byte, testBS))
	// UNMAP with zero data discards.
	_, _, d0, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB16(0x93, 0x08, 100, 10), make([]byte, testBS), 0))
	f.mustEqual(f.readBack(100, 10), make([]byte, 10*testBS))
	// NDOB without UNMAP writes zeroes, with UNMAP discards.
	f.good(f.exec(nexusA, testkit.CDB16(0x93, 0x01, 110, 10), nil, 0))
	f.mustEqual(f.readBack(110, 10), make([]byte, 10*testBS))
	f.good(f.exec(nexusA, testkit.CDB16(0x93, 0x09, 120, 10), nil, 0))
	if _, _, d1, _ := f.vol.Counters(); d1-d0 != 2 {
		t.Fatalf("discards %d, want 2", d1-d0)
	}
	f.mustEqual(f.readBack(130, 1), blk0)
	// Wrong Data-Out size.
	f.sense(f.exec(nexusA, testkit.CDB10(0x41, 0, 0, 1), pattern(testBS-1, 1), 0), SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	f.sense(f.exec(nexusA, testkit.CDB10(0x41, 0, 0, 1), pattern(2*testBS, 1), 0), SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	f.sense(f.exec(nexusA, testkit.CDB10(0x41, 0, testBlocks-1, 2), blk0, 0), SenseIllegalRequest, ASCLBAOutOfRange)
}

func unmapList(descs ...[2]uint64) []byte {
	p := make([]byte, 8+16*len(descs))
	binary.BigEndian.PutUint16(p[0:2], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:4], uint16(16*len(descs)))
	for i, d := range descs {
		binary.BigEndian.PutUint64(p[8+16*i:], d[0])
		binary.BigEndian.PutUint32(p[16+16*i:], uint32(d[1]))
	}
	return p
}

func TestUnmap(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 8), pattern(8*testBS, 1), 0))
	p := unmapList([2]uint64{1, 2}, [2]uint64{5, 1})
	f.good(f.exec(nexusA, testkit.CDB10(0x42, 0, 0, uint16(len(p))), p, 0))
	got := f.readBack(0, 8)
	want := pattern(8*testBS, 1)
	clear(want[1*testBS : 3*testBS])
	clear(want[5*testBS : 6*testBS])
	f.mustEqual(got, want)
	// A bad descriptor rejects the whole list before anything is discarded.
	_, _, d0, _ := f.vol.Counters()
	p = unmapList([2]uint64{6, 1}, [2]uint64{testBlocks, 1})
	f.sense(f.exec(nexusA, testkit.CDB10(0x42, 0, 0, uint16(len(p))), p, 0), SenseIllegalRequest, ASCLBAOutOfRange)
	if _, _, d1, _ := f.vol.Counters(); d1 != d0 {
		t.Fatal("discarded before validating every descriptor")
	}
	f.good(f.exec(nexusA, testkit.CDB10(0x42, 0, 0, 0), nil, 0))
	f.sense(f.exec(nexusA, testkit.CDB10(0x42, 0, 0, 4), []byte{0, 2, 0, 0}, 0), SenseIllegalRequest, ASCParameterListLengthError)
}

func TestGetLBAStatus(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	c := testkit.CDB16(0x9e, 0x12, 10, 24)
	r := f.exec(nexusA, c, nil, 24)
	f.good(r)
	if binary.BigEndian.Uint64(r.Data[8:16]) != 10 || binary.BigEndian.Uint32(r.Data[16:20]) != testBlocks-10 {
		t.Fatalf("descriptor % x", r.Data)
	}
	f.sense(f.exec(nexusA, testkit.CDB16(0x9e, 0x12, testBlocks, 24), nil, 24), SenseIllegalRequest, ASCLBAOutOfRange)
}

func TestReportLUNs(t *testing.T) {
	f := newFixture(t, nil)
	vol2 := f.vol
	if _, err := f.tgt.AddLU(300, LUConfig{Volume: vol2}); err != nil {
		t.Fatal(err)
	}
	// Adding a LU tells the nexuses of the others.
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCReportedLUNsDataChanged)
	f.sense(f.exec(nexusB, []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCReportedLUNsDataChanged)
	r := f.exec(nexusA, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 256)
	f.good(r)
	want := []byte{0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0}
	f.mustEqual(r.Data, want)
	if _, err := f.tgt.AddLU(300, LUConfig{Volume: vol2}); !errors.Is(err, ErrLUNExists) {
		t.Fatalf("duplicate AddLU: %v", err)
	}
	if err := f.tgt.RemoveLU(300); err != nil {
		t.Fatal(err)
	}
	// REPORT LUNS clears the REPORTED LUNS DATA HAS CHANGED condition.
	f.good(f.exec(nexusA, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 256))
	f.good(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
	if got := f.tgt.LUNs(); len(got) != 1 || got[0] != 0 {
		t.Fatalf("LUNs %v", got)
	}
}

func rsoc(opts byte, rctd bool, op byte, sa uint16) []byte {
	c := make([]byte, 12)
	c[0], c[1], c[2], c[3] = 0xa3, 0x0c, opts, op
	if rctd {
		c[2] |= 0x80
	}
	binary.BigEndian.PutUint16(c[4:6], sa)
	binary.BigEndian.PutUint32(c[6:10], 65536)
	return c
}

func TestReportSupportedOpcodes(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, rsoc(0, false, 0, 0), nil, 65536)
	f.good(r)
	if int(binary.BigEndian.Uint32(r.Data[0:4]))+4 != len(r.Data) {
		t.Fatal("RSOC length")
	}
	seen := map[[2]uint16]bool{}
	for d := r.Data[4:]; len(d) >= 8; d = d[8:] {
		op, sa := d[0], binary.BigEndian.Uint16(d[2:4])
		servactv := d[5]&1 != 0
		if !servactv && sa != 0 {
			t.Fatalf("opcode %#x: SA without SERVACTV", op)
		}
		seen[[2]uint16{uint16(op), sa}] = true
		opts := byte(1)
		if servactv {
			opts = 2
		}
		one := f.exec(nexusA, rsoc(opts, false, op, sa), nil, 4096)
		f.good(one)
		if one.Data[1]&7 != 3 || one.Data[4] != op || int(binary.BigEndian.Uint16(one.Data[2:4])) != int(binary.BigEndian.Uint16(d[6:8])) {
			t.Fatalf("one-command %#x/%#x: % x", op, sa, one.Data)
		}
		wrong := byte(2)
		if servactv {
			wrong = 1
		}
		f.sense(f.exec(nexusA, rsoc(wrong, false, op, sa), nil, 4096), SenseIllegalRequest, ASCInvalidFieldInCDB)
	}
	for _, must := range [][2]uint16{{0x28, 0}, {0x2a, 0}, {0x41, 0}, {0x89, 0}, {0x9e, 0x10}, {0x5f, 0x06}, {0xa3, 0x0c}} {
		if !seen[must] {
			t.Fatalf("%#x/%#x not reported", must[0], must[1])
		}
	}
	if seen[[2]uint16{0x42, 0}] {
		t.Fatal("UNMAP reported on a thick LU")
	}
	// DPO/FUA usage bits for WRITE(10).
	one := f.exec(nexusA, rsoc(1, false, 0x2a, 0), nil, 4096)
	if one.Data[5]&0x18 != 0x18 {
		t.Fatalf("WRITE(10) usage byte 1 = %#x", one.Data[5])
	}
	// RCTD adds timeout descriptors.
	r = f.exec(nexusA, rsoc(0, true, 0, 0), nil, 65536)
	f.good(r)
	for d := r.Data[4:]; len(d) > 0; {
		if d[5]&0x02 == 0 || binary.BigEndian.Uint16(d[8:10]) != 10 {
			t.Fatalf("descriptor without timeouts: % x", d[:min(len(d), 20)])
		}
		d = d[20:]
	}
	one = f.exec(nexusA, rsoc(1, false, 0xc0, 0), nil, 4096)
	f.good(one)
	if one.Data[1]&7 != 1 {
		t.Fatalf("unsupported opcode reported as %#x", one.Data[1])
	}
}

func TestRequestSense(t *testing.T) {
	f := newFixture(t, nil)
	n := &Nexus{InitiatorPort: "iqn.test:rs,i,0x9", TargetPort: "t,t,1"}
	r := f.exec(n, []byte{0x03, 0, 0, 0, 252, 0}, nil, 252)
	f.good(r)
	if r.Data[2]&0x0f != byte(SenseUnitAttention) || r.Data[12] != 0x29 {
		t.Fatalf("REQUEST SENSE did not report the UA: % x", r.Data)
	}
	r = f.exec(n, []byte{0x03, 0, 0, 0, 252, 0}, nil, 252)
	f.good(r)
	if r.Data[2] != 0 || r.Data[12] != 0 {
		t.Fatalf("second REQUEST SENSE % x", r.Data)
	}
	r = f.exec(n, []byte{0x03, 1, 0, 0, 252, 0}, nil, 252)
	if r.Data[0] != 0x72 {
		t.Fatal("DESC=1 not descriptor format")
	}
	f.good(f.exec(n, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
}

func TestCapacityChangedUA(t *testing.T) {
	f := newFixture(t, nil)
	f.lu.NotifyCapacityChanged()
	f.sense(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS), SenseUnitAttention, ASCCapacityDataChanged)
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCCapacityDataChanged)
}

// faultVol fails or panics on demand.
type faultVol struct {
	Volume
	err   error
	panic bool
}

func (v *faultVol) ReadAt(ctx context.Context, p []byte, off int64) error {
	if v.panic {
		panic("injected")
	}
	if v.err != nil {
		return v.err
	}
	return v.Volume.ReadAt(ctx, p, off)
}

func (v *faultVol) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if v.err != nil {
		return v.err
	}
	return v.Volume.WriteAt(ctx, p, off, fua)
}

func TestVolumeErrorsMapToSense(t *testing.T) {
	var fv *faultVol
	f := newFixture(t, func(c *LUConfig) { fv = &faultVol{Volume: c.Volume}; c.Volume = fv })
	cases := []struct {
		err   error
		write bool
		key   SenseKey
		asc   ASC
	}{
		{fmt.Errorf("x: %w", blk.ErrMedium), false, SenseMediumError, ASCUnrecoveredReadError},
		{fmt.Errorf("x: %w", blk.ErrMedium), true, SenseMediumError, ASCWriteError},
		{fmt.Errorf("x: %w", blk.ErrNotReady), false, SenseNotReady, ASCNotReady},
		{fmt.Errorf("x: %w", blk.ErrOutOfRange), true, SenseIllegalRequest, ASCLBAOutOfRange},
		{fmt.Errorf("x: %w", blk.ErrMisaligned), false, SenseIllegalRequest, ASCInvalidFieldInCDB},
		{errors.New("unexpected"), false, SenseHardwareError, ASCInternalTargetFailure},
	}
	for _, c := range cases {
		fv.err = c.err
		var r Response
		if c.write {
			r = f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0)
		} else {
			r = f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS)
		}
		checkSense(t, r, c.key, c.asc)
	}
	fv.err = context.Canceled
	if r := f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS); r.Status != StatusTaskAborted {
		t.Fatalf("cancelled read status %#x", r.Status)
	}
	fv.err = nil
	fv.panic = true
	r := f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS)
	checkSense(t, r, SenseHardwareError, ASCInternalTargetFailure)
	fv.panic = false
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
}

func TestStartStopAndPreventAllow(t *testing.T) {
	f := newFixture(t, nil)
	fl0, _, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, []byte{0x1b, 0, 0, 0, 0x00, 0}, nil, 0)) // stop: flush
	f.good(f.exec(nexusA, []byte{0x1b, 0, 0, 0, 0x01, 0}, nil, 0)) // start
	if fl1, _, _, _ := f.vol.Counters(); fl1 != fl0+1 {
		t.Fatal("STOP did not flush")
	}
	f.good(f.exec(nexusA, []byte{0x1e, 0, 0, 0, 1, 0}, nil, 0))
	f.sense(f.exec(nexusA, []byte{0x1b, 0, 0, 0, 0x02, 0}, nil, 0), SenseIllegalRequest, ASCMediumRemovalPrevented)
	f.good(f.exec(nexusA, []byte{0x1e, 0, 0, 0, 0, 0}, nil, 0))
	f.good(f.exec(nexusA, []byte{0x1b, 0, 0, 0, 0x02, 0}, nil, 0))
	f.good(f.exec(nexusA, []byte{0x1e, 0, 0, 0, 1, 0}, nil, 0))
	f.tgt.NexusLost(nexusA)
	f.clearUA(nexusA)
	f.good(f.exec(nexusA, []byte{0x1b, 0, 0, 0, 0x02, 0}, nil, 0))
	f.sense(f.exec(nexusA, []byte{0x1e, 0, 0, 0, 2, 0}, nil, 0), SenseIllegalRequest, ASCInvalidFieldInCDB)
}

func TestModeSelect10WithBlockDescriptor(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, []byte{0x5a, 0, pageCaching, 0, 0, 0, 0, 0, 255, 0}, nil, 255)
	f.good(r)
	bdl := int(binary.BigEndian.Uint16(r.Data[6:8]))
	if bdl != 8 {
		t.Fatalf("block descriptor length %d", bdl)
	}
	sel := bytes.Clone(r.Data)
	sel[0], sel[1] = 0, 0
	page := sel[8+bdl:]
	page[0] &^= 0x80
	page[2] &^= 0x04
	c := []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, byte(len(sel)), 0}
	f.good(f.exec(nexusA, c, sel, 0))
	if f.lu.WriteCacheEnabled() {
		t.Fatal("MODE SELECT(10) did not clear WCE")
	}
	// A block descriptor with another block length is refused.
	bad := bytes.Clone(sel)
	binary.BigEndian.PutUint32(bad[12:16], 4096) // bytes 5-7 of the descriptor
	f.sense(f.exec(nexusA, c, bad, 0), SenseIllegalRequest, ASCInvalidFieldInParameterList)
	// Truncated page.
	f.sense(f.exec(nexusA, []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, byte(len(sel) - 3), 0}, sel[:len(sel)-3], 0), SenseIllegalRequest, ASCParameterListLengthError)
	// Unsupported page.
	unk := append(bytes.Clone(sel[:16]), 0x07, 2, 0, 0)
	f.sense(f.exec(nexusA, []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, byte(len(unk)), 0}, unk, 0), SenseIllegalRequest, ASCInvalidFieldInParameterList)
	// Zero-length parameter list is a no-op.
	f.good(f.exec(nexusA, []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0))
}

func TestThickWriteSameUnmapRefused(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 5), 0))
	r := f.exec(nexusA, testkit.CDB10(0x41, 0x08, 0, 1), make([]byte, testBS), 0)
	f.sense(r, SenseIllegalRequest, ASCInvalidFieldInCDB)
	f.mustEqual(f.readBack(0, 1), pattern(testBS, 5))
	r = f.exec(nexusA, []byte{0x12, 1, 0xb2, 0, 255, 0}, nil, 255)
	f.good(r)
	if r.Data[5] != 0 {
		t.Fatalf("thick LU advertises provisioning bits %#x", r.Data[5])
	}
}

func TestMaxTransferLength(t *testing.T) {
	vol, err := memvolNew(64<<20, testBS)
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{})
	lu, err := tgt.AddLU(0, LUConfig{Volume: vol})
	if err != nil {
		t.Fatal(err)
	}
	tgt.Execute(context.Background(), &Command{CDB: []byte{0, 0, 0, 0, 0, 0}})
	over := lu.maxXferBlocks + 1
	r := tgt.Execute(context.Background(), &Command{CDB: testkit.CDB16(0x88, 0, 0, over), DataInLen: over * testBS})
	checkSense(t, r, SenseIllegalRequest, ASCInvalidFieldInCDB)
	r = tgt.Execute(context.Background(), &Command{CDB: testkit.CDB16(0x88, 0, 0, over-1), DataInLen: (over - 1) * testBS})
	if r.Status != StatusGood {
		t.Fatalf("maximum transfer refused: %#x", r.Status)
	}
}

func TestDerivedIdentityDiffersPerLU(t *testing.T) {
	tgt := NewTarget(TargetConfig{Name: "iqn.test:ids"})
	var ids [2][]byte
	for lun := range 2 {
		vol, err := memvolNew(64*testBS, testBS)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tgt.AddLU(uint64(lun), LUConfig{Volume: vol}); err != nil {
			t.Fatal(err)
		}
		r := tgt.Execute(context.Background(), &Command{LUN: uint64(lun), CDB: []byte{0x12, 1, 0x83, 0, 255, 0}, DataInLen: 255})
		if r.Status != StatusGood {
			t.Fatalf("status %#x", r.Status)
		}
		ids[lun] = r.Data[8:24] // first designator: NAA
	}
	if bytes.Equal(ids[0], ids[1]) {
		t.Fatalf("two LUs share NAA %x", ids[0])
	}
}

func TestWriteThroughDiscardIsFlushed(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true; c.WriteCache = false })
	fl0, _, _, _ := f.vol.Counters()
	p := unmapList([2]uint64{1, 2})
	f.good(f.exec(nexusA, testkit.CDB10(0x42, 0, 0, uint16(len(p))), p, 0))
	f.good(f.exec(nexusA, testkit.CDB16(0x93, 0x09, 8, 4), nil, 0))
	if fl1, _, _, _ := f.vol.Counters(); fl1-fl0 != 2 {
		t.Fatalf("WCE=0 discards flushed %d times, want 2", fl1-fl0)
	}
	// WRITE SAME writes FUA when WCE=0 and not otherwise.
	_, fu0, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x41, 0, 0, 1), pattern(testBS, 1), 0))
	if _, fu1, _, _ := f.vol.Counters(); fu1 != fu0+1 {
		t.Fatal("WRITE SAME with WCE=0 not FUA")
	}
}

func TestNilCommandDoesNotCrash(t *testing.T) {
	f := newFixture(t, nil)
	r := f.tgt.Execute(context.Background(), nil)
	checkSense(t, r, SenseHardwareError, ASCInternalTargetFailure)
}

func TestReadNeverWritesPastDataInLen(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 1), pattern(testBS, 1), 0))
	ring := bytes.Repeat([]byte{0xee}, 2*testBS)
	// 200 bytes expected: the buffer's capacity reaches into bytes that
	// are not this command's.
	r := f.tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: testkit.CDB10(0x28, 0, 0, 1), DataInLen: 200, DataIn: ring[:0]})
	f.good(r)
	f.mustEqual(r.Data, pattern(testBS, 1)[:200])
	if !bytes.Equal(ring[200:], bytes.Repeat([]byte{0xee}, 2*testBS-200)) {
		t.Fatal("READ wrote past DataInLen into the caller's buffer")
	}
}

// streamVol records the stream name of each read.
type streamVol struct {
	Volume
	streams chan string
}

func (v *streamVol) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.streams <- blk.Stream(ctx)
	return v.Volume.ReadAt(ctx, p, off)
}

func TestVolumeSeesStreamAndCancellation(t *testing.T) {
	var sv *streamVol
	f := newFixture(t, func(c *LUConfig) { sv = &streamVol{Volume: c.Volume, streams: make(chan string, 4)}; c.Volume = sv })
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	if got, want := <-sv.streams, nexusA.InitiatorPort+"/lun0"; got != want {
		t.Fatalf("stream %q, want %q", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := f.tgt.Execute(ctx, &Command{Nexus: nexusA, CDB: testkit.CDB10(0x28, 0, 0, 1), DataInLen: testBS})
	<-sv.streams
	if r.Status != StatusTaskAborted {
		t.Fatalf("cancelled task status %#x", r.Status)
	}
}

func TestModeSenseAllSubpagesOfOnePage(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, []byte{0x1a, 0x08, pageControl, 0xff, 255, 0}, nil, 255)
	f.good(r)
	if r.Data[4]&0x3f != pageControl || len(r.Data) != 4+12 {
		t.Fatalf("control page with subpage FFh: % x", r.Data)
	}
	f.sense(f.exec(nexusA, []byte{0x1a, 0x08, pageControl, 0x01, 255, 0}, nil, 255), SenseIllegalRequest, ASCInvalidFieldInCDB)
}
