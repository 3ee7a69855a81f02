package scsi

import (
	"context"
	"testing"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
)

// fuzzTarget builds a small thin logical unit for the fuzzers. A failed
// command must come back as a status, never as a panic: the recover in
// Execute would hide one, so the fuzzers check the log stays quiet by
// asserting no INTERNAL TARGET FAILURE is returned.
func fuzzTarget(f *testing.F) *Target {
	vol, err := memvol.New(256*512, 512)
	if err != nil {
		f.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{Name: "iqn.fuzz:t"})
	if _, err := tgt.AddLU(0, LUConfig{Volume: vol, Thin: true, WriteCache: true}); err != nil {
		f.Fatal(err)
	}
	return tgt
}

func checkNoInternalFailure(t *testing.T, r Response) {
	t.Helper()
	if r.Status == StatusCheckCondition && len(r.Sense) >= 14 && r.Sense[2]&0x0f == byte(SenseHardwareError) && r.Sense[12] == 0x44 {
		t.Fatalf("internal target failure (recovered panic): sense % x", r.Sense)
	}
	if r.Status == StatusCheckCondition && len(r.Sense) != FixedSenseLen {
		t.Fatalf("sense length %d", len(r.Sense))
	}
}

func FuzzExecute(f *testing.F) {
	seeds := [][]byte{
		{0x00, 0, 0, 0, 0, 0},
		{0x12, 1, 0x83, 0, 255, 0},
		testkit.CDB10(0x28, 0, 1, 2),
		testkit.CDB10(0x2a, 0x08, 1, 2),
		testkit.CDB16(0x93, 0x09, 0, 8),
		testkit.CDB16(0x89, 0, 0, 1),
		{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0},
		{0xa3, 0x0c, 0x82, 0x28, 0, 0, 0, 0, 1, 0, 0, 0},
		{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, // REPORT TARGET PORT GROUPS (no ALUA here; FuzzExecuteALUA has it)
		{0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0},
		{0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0},
		{0x5e, 0x03, 0, 0, 0, 0, 0, 1, 0, 0},
		{0x15, 0x11, 0, 0, 24, 0},
		{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0},
		{0x1a, 0x08, 0x3f, 0xff, 255, 0},
		{0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0},
		xcopyCDB(16 + 32 + 28),
		rcrCDB(0x03, 0, 1024),
		tokenCDB(0x10, 1, 32),
		tokenCDB(0x11, 1, 552),
		{0x84, 0x07, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0},
		sanitizeCDB(sanitizeOverwrite, 8),
		writeAtomicCDB(0, 0, 1),
	}
	tgt := fuzzTarget(f)
	for i, s := range seeds {
		f.Add(s, make([]byte, 1024), uint16(4096), byte(i))
	}
	// Well-formed parameter lists for the copy commands, so the fuzzer
	// starts from lists that reach the data movers.
	lu := tgt.LU(0)
	x := xcopyList{listID: 1, cscds: [][]byte{cscdFor(lu)}, segs: [][]byte{segB2B(0, 0, 4, 0, 8)}}
	f.Add(xcopyCDB(len(x.bytes())), x.bytes(), uint16(0), byte(0))
	pp := populateParams(0, []blkRange{{0, 4}})
	f.Add(tokenCDB(0x10, 1, len(pp)), pp, uint16(0), byte(0))
	wp := wutParams(0, 0, make([]byte, 512), []blkRange{{8, 4}})
	f.Add(tokenCDB(0x11, 1, len(wp)), wp, uint16(0), byte(0))
	nexuses := []*Nexus{
		{InitiatorPort: "iqn.fuzz:i,i,0x1", TargetPort: "iqn.fuzz:t,t,0x1", RelativePortID: 1},
		{InitiatorPort: "iqn.fuzz:j,i,0x2", TargetPort: "iqn.fuzz:t,t,0x1", RelativePortID: 1},
		nil,
	}
	f.Fuzz(func(t *testing.T, cdb, out []byte, inLen uint16, who byte) {
		n := nexuses[int(who)%len(nexuses)]
		attr := TaskAttr(who>>4) & 7
		r := tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb, DataOut: out, DataInLen: uint32(inLen), Attr: attr})
		checkNoInternalFailure(t, r)
		if len(r.Data) > int(inLen) {
			t.Fatalf("%d bytes of data-in for DataInLen %d", len(r.Data), inLen)
		}
	})
}

func FuzzModeSelect(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0, 0x08, 18, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0}, true)
	vol, err := memvol.New(64*512, 512)
	if err != nil {
		f.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{})
	lu, err := tgt.AddLU(0, LUConfig{Volume: vol, WriteCache: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p []byte, ten bool) {
		ch, err := lu.parseModeSelect(p, ten)
		if err == nil && ch.setWCE && len(p) < 4 {
			t.Fatal("accepted a list shorter than its header")
		}
	})
}

func FuzzUnmap(f *testing.F) {
	f.Add(unmapList([2]uint64{1, 2}, [2]uint64{5, 1}))
	f.Add([]byte{0, 6, 0, 16, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		descs, err := parseUnmap(p, 1000, 100, 8)
		if err != nil {
			return
		}
		if len(descs) > 8 {
			t.Fatalf("%d descriptors over the limit", len(descs))
		}
		for _, d := range descs {
			if d.lba+uint64(d.blocks) > 1000 || d.blocks > 100 {
				t.Fatalf("accepted out-of-range descriptor %+v", d)
			}
		}
	})
}

func FuzzPROut(f *testing.F) {
	_, p := prout(0, 0, 0, 1, 0)
	f.Add(byte(0), p)
	tid := transportID("iqn.x,i,0x1")
	mv := make([]byte, 24+len(tid))
	mv[11] = 1
	mv[23] = byte(len(tid))
	copy(mv[24:], tid)
	f.Add(byte(7), mv)
	f.Fuzz(func(t *testing.T, sa byte, p []byte) {
		pp, err := parsePROut(sa&0x1f, p)
		if err != nil {
			return
		}
		if sa&0x1f == 7 && pp.moveInitPort == "" {
			t.Fatal("REGISTER AND MOVE accepted without a TransportID name")
		}
	})
}
