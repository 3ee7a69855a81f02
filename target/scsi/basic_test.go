package scsi

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

func TestPowerOnUnitAttention(t *testing.T) {
	f := newFixture(t, nil)
	n := &Nexus{InitiatorPort: "iqn.test:c,i,0x3", TargetPort: "t,t,0x1"}
	// INQUIRY neither reports nor clears the UA.
	f.good(f.exec(n, []byte{0x12, 0, 0, 0, 36, 0}, nil, 36))
	f.sense(f.exec(n, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCPowerOnReset)
	f.good(f.exec(n, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
}

func TestReadWriteRoundTrip(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name  string
		write []byte
		read  []byte
	}{
		{"6", []byte{0x0a, 0, 0, 5, 2, 0}, []byte{0x08, 0, 0, 5, 2, 0}},
		{"10", testkit.CDB10(0x2a, 0, 5, 2), testkit.CDB10(0x28, 0, 5, 2)},
		{"12", testkit.CDB12(0xaa, 0, 5, 2), testkit.CDB12(0xa8, 0, 5, 2)},
		{"16", testkit.CDB16(0x8a, 0, 5, 2), testkit.CDB16(0x88, 0, 5, 2)},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := pattern(2*testBS, byte(i+1))
			r := f.exec(nexusA, c.write, data, 0)
			f.good(r)
			if r.TransferLen != 2*testBS {
				t.Fatalf("write TransferLen %d", r.TransferLen)
			}
			f.mustEqual(f.readBack(5, 2), data)
			r = f.exec(nexusA, c.read, nil, 2*testBS)
			f.good(r)
			f.mustEqual(r.Data, data)
		})
	}
}

func TestReadIntoProvidedBuffer(t *testing.T) {
	f := newFixture(t, nil)
	data := pattern(4*testBS, 3)
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 0, 4), data, 0))
	buf := make([]byte, 4*testBS)
	r := f.tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: testkit.CDB10(0x28, 0, 0, 4), DataInLen: 4 * testBS, DataIn: buf})
	f.good(r)
	if &r.Data[0] != &buf[0] {
		t.Fatal("READ did not use Command.DataIn")
	}
	f.mustEqual(r.Data, data)
}

func TestReadCapacity(t *testing.T) {
	f := newFixture(t, nil)
	r := f.exec(nexusA, testkit.CDB10(0x25, 0, 0, 0), nil, 8)
	f.good(r)
	if got := binary.BigEndian.Uint32(r.Data[0:4]); got != testBlocks-1 {
		t.Fatalf("last LBA %d", got)
	}
	if got := binary.BigEndian.Uint32(r.Data[4:8]); got != testBS {
		t.Fatalf("block size %d", got)
	}
	c := make([]byte, 16)
	c[0], c[1], c[13] = 0x9e, 0x10, 32
	r = f.exec(nexusA, c, nil, 32)
	f.good(r)
	if got := binary.BigEndian.Uint64(r.Data[0:8]); got != testBlocks-1 {
		t.Fatalf("RC16 last LBA %d", got)
	}
	if r.Data[14] != 0 {
		t.Fatalf("thick LU reports LBPME/LBPRZ %#x", r.Data[14])
	}
	ft := newFixture(t, func(c *LUConfig) { c.Thin = true })
	r = ft.exec(nexusA, c, nil, 32)
	ft.good(r)
	if r.Data[14] != 0xc0 {
		t.Fatalf("thin LU byte 14 = %#x, want LBPME|LBPRZ", r.Data[14])
	}
}

func TestConcurrentExecute(t *testing.T) {
	f := newFixture(t, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := pattern(testBS, byte(g))
			for i := range 200 {
				lba := uint32(g*100 + i%100)
				if r := f.exec(nexusA, testkit.CDB10(0x2a, 0, lba, 1), data, 0); r.Status != StatusGood {
					t.Errorf("write status %#x", r.Status)
					return
				}
				r := f.exec(nexusA, testkit.CDB10(0x28, 0, lba, 1), nil, testBS)
				if r.Status != StatusGood || string(r.Data) != string(data) {
					t.Errorf("read back mismatch at %d", lba)
					return
				}
			}
		}()
	}
	wg.Wait()
}
