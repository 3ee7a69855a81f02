package tracebench

import (
	"math/rand/v2"
	"testing"

	"github.com/cachelun/cachelun/cachecore"
)

// TestAdmissionFillsTheCache: a 2q cache admits every miss until it holds
// what a fifo cache holds when GC starts (Capacity), less a block; and once GC has run, new blocks are refused (admission
// by the ghost set), though each GC step leaves the data head with room.
func TestAdmissionFillsTheCache(t *testing.T) {
	cfg, _ := yardstickSize()
	capacity, err := Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	space := 4 * capacity
	e, err := OpenEngine(cfg, uint64(space))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	blocks := rand.New(rand.NewPCG(3, 3)).Perm(space)
	const segBlocks = 1 << 20 / BlockSize
	next := 0
	read := func() cachecore.VolumeStats {
		t.Helper()
		if err := e.Do(Req{Block: uint64(blocks[next]), N: 1}); err != nil {
			t.Fatal(err)
		}
		next++
		return e.Volume().Stats()
	}
	var st cachecore.VolumeStats
	for st.AdmissionsRefused == 0 {
		st = read()
	}
	filled := int(st.FillBytes / BlockSize)
	t.Logf("first miss refused after %d blocks filled; the cache holds %d at GC's threshold", filled, capacity)
	if filled < capacity-1 {
		t.Errorf("2q refused its first miss with %d blocks filled, %d short of the %d the cache holds at GC's threshold", filled, capacity-filled, capacity)
	}
	if e.Cache().Stats().GCRuns != 0 {
		t.Errorf("GC ran before the cache refused a miss")
	}
	// Writes are cached whatever the policy: they take the cache past
	// GC's threshold, and GC runs.
	for w := 0; e.Cache().Stats().GCRuns == 0 && w < 4*segBlocks; w++ {
		if err := e.Do(Req{Block: uint64(blocks[next]), N: 1, Write: true}); err != nil {
			t.Fatal(err)
		}
		next++
	}
	if e.Cache().Stats().GCRuns == 0 {
		t.Fatalf("GC did not run after %d cached writes", 4*segBlocks)
	}
	before := e.Volume().Stats()
	for range 2 * segBlocks {
		st = read()
	}
	if admitted := (st.FillBytes - before.FillBytes) / BlockSize; admitted > segBlocks/16 {
		t.Errorf("after GC ran, %d of %d never-read blocks were admitted, want (almost) none: %+v", admitted, 2*segBlocks, st)
	}
}
