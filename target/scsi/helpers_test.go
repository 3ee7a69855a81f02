package scsi

import (
	"bytes"
	"context"
	"testing"

	"github.com/cachelun/cachelun/internal/memvol"
)

const (
	testBlocks = 2048
	testBS     = 512
)

var nexusA = &Nexus{InitiatorName: "iqn.test:a", InitiatorPort: "iqn.test:a,i,0x000000000001", TargetPort: "iqn.test:tgt,t,0x0001", RelativePortID: 1}
var nexusB = &Nexus{InitiatorName: "iqn.test:b", InitiatorPort: "iqn.test:b,i,0x000000000002", TargetPort: "iqn.test:tgt,t,0x0001", RelativePortID: 1}

type fixture struct {
	t   *testing.T
	tgt *Target
	lu  *LU
	vol *memvol.Volume
}

func newFixture(t *testing.T, mod func(*LUConfig)) *fixture {
	t.Helper()
	vol, err := memvol.New(testBlocks*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{Name: "iqn.test:tgt"})
	cfg := LUConfig{Volume: vol, SerialNumber: "SER0001", WriteCache: true}
	cfg.DeviceID[0] = 0xab
	if mod != nil {
		mod(&cfg)
	}
	lu, err := tgt.AddLU(0, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, lu: lu, vol: vol}
	f.clearUA(nexusA)
	f.clearUA(nexusB)
	return f
}

// clearUA consumes the power-on unit attention of n.
func (f *fixture) clearUA(n *Nexus) {
	f.t.Helper()
	for range 8 {
		r := f.exec(n, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
		if r.Status == StatusGood && r.Data[2]&0x0f == 0 {
			return
		}
	}
	f.t.Fatal("unit attention does not clear")
}

func (f *fixture) exec(n *Nexus, cdb, out []byte, inLen uint32) Response {
	return f.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: 0, CDB: cdb, DataOut: out, DataInLen: inLen})
}

// want asserts GOOD status.
func (f *fixture) good(r Response) {
	f.t.Helper()
	if r.Status != StatusGood {
		f.t.Fatalf("status %#x sense % x, want GOOD", r.Status, r.Sense)
	}
}

// sense asserts CHECK CONDITION with the given key and ASC/ASCQ.
func (f *fixture) sense(r Response, key SenseKey, asc ASC) {
	f.t.Helper()
	checkSense(f.t, r, key, asc)
}

func checkSense(t *testing.T, r Response, key SenseKey, asc ASC) {
	t.Helper()
	if r.Status != StatusCheckCondition {
		t.Fatalf("status %#x, want CHECK CONDITION %x/%04x", r.Status, key, asc)
	}
	if len(r.Sense) < 14 {
		t.Fatalf("sense too short: % x", r.Sense)
	}
	gotKey := SenseKey(r.Sense[2] & 0x0f)
	gotASC := ASC(r.Sense[12])<<8 | ASC(r.Sense[13])
	if gotKey != key || gotASC != asc {
		t.Fatalf("sense key %#x asc %04x, want %#x %04x (sense % x)", gotKey, gotASC, key, asc, r.Sense)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func (f *fixture) readBack(lba, n int) []byte {
	f.t.Helper()
	b := make([]byte, n*testBS)
	if err := f.vol.ReadAt(context.Background(), b, int64(lba*testBS)); err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *fixture) mustEqual(got, want []byte) {
	f.t.Helper()
	if !bytes.Equal(got, want) {
		f.t.Fatalf("data mismatch: got % x..., want % x...", head(got), head(want))
	}
}

func head(b []byte) []byte {
	if len(b) > 16 {
		return b[:16]
	}
	return b
}

func memvolNew(size int64, bs int) (*memvol.Volume, error) { return memvol.New(size, bs) }
