package tracebench

import (
	"math/rand/v2"
	"testing"

	"github.com/cachelun/cachelun/cachecore"
)

// TestAdmissionFillsTheCache: a 2q cache admits every miss until it holds
// what a fifo cache holds when GC starts (Capacity), less a block (and on
// a cache with several data heads, less the room the other heads have
// left when one of them is full: the next fill may go to that one), and
// GC does not run before; once GC has run, new blocks are refused
// (admission by the ghost set), though each GC step leaves the data head
// with room.
func TestAdmissionFillsTheCache(t *testing.T) {
	cfg, _ := yardstickSize()
	eachSegmentSize(t, cfg, []uint32{1 << 20, 128 << 10}, admissionFillsTheCache)
}

func admissionFillsTheCache(t *testing.T, cfg EngineConfig) {
	e, capacity := openMeasured(t, cfg, 4)
	space := 4 * capacity
	heads := e.Cache().DataHeads()
	blocks := rand.New(rand.NewPCG(3, 3)).Perm(space)
	segBlocks := int(cfg.SegmentSize / BlockSize)
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
	t.Logf("%d data heads: first miss refused after %d blocks filled; the cache holds %d at GC's threshold", heads, filled, capacity)
	if short := capacity - filled; short > 1+(heads-1)*segBlocks {
		t.Errorf("2q refused its first miss with %d blocks filled, %d short of the %d the cache holds at GC's threshold", filled, short, capacity)
	}
	if e.Cache().Stats().GCRuns != 0 {
		t.Errorf("GC ran before the cache refused a miss: misses pushed it past GC's threshold")
	}
	// Writes are cached whatever the policy: they take the cache past
	// GC's threshold, and GC runs.
	for w := 0; e.Cache().Stats().GCRuns == 0 && w < 4*segBlocks*heads; w++ {
		if err := e.Do(Req{Block: uint64(blocks[next]), N: 1, Write: true}); err != nil {
			t.Fatal(err)
		}
		next++
	}
	if e.Cache().Stats().GCRuns == 0 {
		t.Fatalf("GC did not run after %d cached writes", 4*segBlocks*heads)
	}
	before := e.Volume().Stats()
	for range 2 * segBlocks * heads {
		st = read()
	}
	if admitted := (st.FillBytes - before.FillBytes) / BlockSize; int(admitted) > segBlocks/16 {
		t.Errorf("after GC ran, %d of %d never-read blocks were admitted, want (almost) none: %+v", admitted, 2*segBlocks*heads, st)
	}
}
