package scsi

import (
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

// TestSoftwareWriteProtect: the Control mode page's SWP bit is changeable;
// set by one nexus it makes the other see a unit attention, MODE SENSE's
// WP bit, and DATA PROTECT / SOFTWARE WRITE PROTECTED for every command
// that changes the medium (data untouched), while reads still work; cleared,
// writes work again.
func TestSoftwareWriteProtect(t *testing.T) {
	f := newFixture(t, nil)
	controlPage := func(r Response) []byte {
		t.Helper()
		if r.Status != StatusGood {
			t.Fatalf("mode sense status %#x sense % x", r.Status, r.Sense)
		}
		p := r.Data[4+int(r.Data[3]):]
		if p[0]&0x3f != pageControl || p[1] != 10 {
			t.Fatalf("not the control page: % x", p)
		}
		return p
	}
	if m := controlPage(modeSense6(f, nexusA, pageControl, pcChangeable)); m[4] != 0x08 {
		t.Fatalf("control page changeable byte 4 = %#x, want SWP (0x08)", m[4])
	}
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 3, 1), pattern(testBS, 7), 0))
	setSWP := func(on bool) {
		t.Helper()
		p := controlPage(modeSense6(f, nexusA, pageControl, pcCurrent))
		sel := append([]byte{0, 0, 0, 0}, p...)
		sel[4] &^= 0x80
		if on {
			sel[4+4] |= 0x08
		} else {
			sel[4+4] &^= 0x08
		}
		f.good(f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0))
	}
	setSWP(true)
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCModeParametersChanged)
	r := modeSense6(f, nexusB, pageControl, pcCurrent)
	if r.Data[2]&0x80 == 0 {
		t.Fatalf("MODE SENSE device-specific parameter %#x: WP not set", r.Data[2])
	}
	if p := controlPage(r); p[4]&0x08 == 0 {
		t.Fatal("SWP not reported as current")
	}
	writes := map[string][]byte{
		"WRITE(10)":         testkit.CDB10(0x2a, 0, 3, 1),
		"WRITE(16)":         testkit.CDB16(0x8a, 0, 3, 1),
		"WRITE SAME(16)":    testkit.CDB16(0x93, 0, 3, 1),
		"UNMAP":             {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0},
		"COMPARE AND WRITE": {0x89, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0},
		"SANITIZE":          {0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0},
	}
	for name, cdb := range writes {
		out := pattern(2*testBS, 9)
		r := f.exec(nexusB, cdb, out, 0)
		checkSenseNamed(t, name, r, SenseDataProtect, ASCSoftwareWriteProtected)
	}
	f.mustEqual(f.readBack(3, 1), pattern(testBS, 7))
	setSWP(false)
	f.clearUA(nexusB)
	f.good(f.exec(nexusB, testkit.CDB10(0x2a, 0, 3, 1), pattern(testBS, 8), 0))
	f.mustEqual(f.readBack(3, 1), pattern(testBS, 8))
}

func checkSenseNamed(t *testing.T, name string, r Response, key SenseKey, asc ASC) {
	t.Helper()
	if r.Status != StatusCheckCondition || len(r.Sense) < 14 || SenseKey(r.Sense[2]&0x0f) != key || ASC(uint16(r.Sense[12])<<8|uint16(r.Sense[13])) != asc {
		t.Errorf("%s: status %#x sense % x, want key %#x asc %#04x", name, r.Status, r.Sense, key, asc)
	}
}
