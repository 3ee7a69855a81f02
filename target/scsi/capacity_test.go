package scsi

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

// growingVolume shows the first size bytes of a larger volume; the test
// moves size as a volume that grew would.
type growingVolume struct {
	Volume
	size atomic.Int64
}

func (g *growingVolume) Size() int64 { return g.size.Load() }

func readCap10(f *fixture, n *Nexus) (lastLBA, bs uint32, r Response) {
	r = f.exec(n, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 8)
	if r.Status == StatusGood {
		lastLBA, bs = be32(r.Data[0:4]), be32(r.Data[4:8])
	}
	return lastLBA, bs, r
}

func readCap16(f *fixture, n *Nexus) (lastLBA uint64, r Response) {
	r = f.exec(n, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32)
	if r.Status == StatusGood {
		lastLBA = be64(r.Data[0:8])
	}
	return lastLBA, r
}

// TestCapacityGrowsWithUA: a volume that grew shows only after
// RefreshCapacity, and then together with CAPACITY DATA HAS CHANGED on
// every nexus: each nexus's next command gets the unit attention, READ
// CAPACITY(10/16) report the new size afterwards, and the blocks past the
// old end are readable and writable. A refresh without a change raises
// nothing.
func TestCapacityGrowsWithUA(t *testing.T) {
	var g *growingVolume
	f := newFixture(t, func(c *LUConfig) {
		g = &growingVolume{Volume: c.Volume}
		g.size.Store(c.Volume.Size() / 2)
		c.Volume = g
	})
	oldBlocks := uint64(testBlocks / 2)
	if last, r := readCap16(f, nexusA); r.Status != StatusGood || last != oldBlocks-1 {
		t.Fatalf("READ CAPACITY(16) before: last LBA %d status %#x", last, r.Status)
	}
	if _, _, changed := f.lu.RefreshCapacity(); changed {
		t.Fatal("a refresh without a change reported one")
	}
	f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS)) // no UA

	g.size.Store(testBlocks * testBS)
	// The volume grew, the unit has not been told: it keeps the old
	// capacity, so no host sees a change without the unit attention.
	if last, _ := readCap16(f, nexusA); last != oldBlocks-1 {
		t.Fatalf("capacity changed before RefreshCapacity: last LBA %d", last)
	}
	f.sense(f.exec(nexusA, testkit.CDB10(0x28, 0, uint32(oldBlocks), 1), nil, testBS), SenseIllegalRequest, ASCLBAOutOfRange)

	old, cur, changed := f.lu.RefreshCapacity()
	if !changed || old != int64(oldBlocks*testBS) || cur != testBlocks*testBS || f.lu.Capacity() != cur {
		t.Fatalf("RefreshCapacity = %d, %d, %v; Capacity %d", old, cur, changed, f.lu.Capacity())
	}
	for _, n := range []*Nexus{nexusA, nexusB} {
		_, r := readCap16(f, n)
		f.sense(r, SenseUnitAttention, ASCCapacityDataChanged)
		last, r := readCap16(f, n)
		if r.Status != StatusGood || last != testBlocks-1 {
			t.Fatalf("READ CAPACITY(16) after: last LBA %d status %#x", last, r.Status)
		}
		last10, bs, r := readCap10(f, n)
		if r.Status != StatusGood || last10 != testBlocks-1 || bs != testBS {
			t.Fatalf("READ CAPACITY(10) after: last LBA %d block %d status %#x", last10, bs, r.Status)
		}
	}
	data := make([]byte, testBS)
	for i := range data {
		data[i] = 0x5a
	}
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, testBlocks-1, 1), data, 0))
	f.mustEqual(f.readBack(testBlocks-1, 1), data)
	f.sense(f.exec(nexusA, testkit.CDB10(0x28, 0, testBlocks, 1), nil, testBS), SenseIllegalRequest, ASCLBAOutOfRange)
	if _, _, changed := f.lu.RefreshCapacity(); changed {
		t.Fatal("a second refresh reported a change")
	}
	f.good(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
}

// TestCapacityRefreshUnderIO: refreshes race commands of several nexuses
// (-race); every READ CAPACITY reports a size the volume had, and once the
// pending unit attention is taken (one, however many changes a nexus
// missed: the queue holds a condition once) the final size.
func TestCapacityRefreshUnderIO(t *testing.T) {
	var g *growingVolume
	f := newFixture(t, func(c *LUConfig) {
		g = &growingVolume{Volume: c.Volume}
		g.size.Store(testBS * 8)
		c.Volume = g
	})
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, n := range []*Nexus{nexusA, nexusB} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				last, r := readCap16(f, n)
				if r.Status == StatusGood && (last+1)%8 != 0 {
					t.Errorf("READ CAPACITY reported %d blocks", last+1)
					return
				}
			}
		}()
	}
	for s := int64(16); s <= testBlocks; s += 8 {
		g.size.Store(s * testBS)
		f.lu.RefreshCapacity()
	}
	stop.Store(true)
	wg.Wait()
	for _, n := range []*Nexus{nexusA, nexusB} {
		for range maxQueuedUA {
			if _, r := readCap16(f, n); r.Status == StatusGood {
				break
			}
		}
		if last, r := readCap16(f, n); r.Status != StatusGood || last != testBlocks-1 {
			t.Fatalf("final READ CAPACITY: last LBA %d status %#x", last, r.Status)
		}
	}
}
