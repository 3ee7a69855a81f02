package tracebench

import (
	"math/rand/v2"
	"testing"

	"github.com/cachelun/cachelun/cachecore"
)

// TestGCFreesWholeSegments: GC evicts a segment's data only in the step
// that frees the segment. Misses of distinct blocks fill a fifo cache
// three times over; at checkpoints once GC runs, every data segment but
// the one being filled holds all its blocks. (A step that passed a fixed
// amount of data ended partway into the next segment and evicted part of
// it, whose space stayed taken until the next step.)
func TestGCFreesWholeSegments(t *testing.T) {
	cfg, _ := yardstickSize()
	cfg.Policy = cachecore.PolicyFIFO
	e, capacity := openMeasured(t, cfg, 3)
	space := 3 * capacity
	blocks := rand.New(rand.NewPCG(5, 5)).Perm(space)
	const checkpoints = 12
	var dead, partial int
	for i, b := range blocks {
		if err := e.Do(Req{Block: uint64(b), N: 1}); err != nil {
			t.Fatal(err)
		}
		if i < 2*capacity || (i-2*capacity)%(capacity/checkpoints) != 0 {
			continue
		}
		head := e.Volume().Explain(int64(b) * BlockSize).Pos.Seg
		held := map[uint32]int{}
		for _, r := range blocks[:i+1] {
			if x := e.Volume().Explain(int64(r) * BlockSize); x.State == "hit" {
				held[x.Pos.Seg]++
			}
		}
		full := 0
		for _, n := range held {
			full = max(full, n)
		}
		for s, n := range held {
			if s != head && n < full {
				dead += full - n
				partial++
			}
		}
	}
	t.Logf("%d segments partly evicted, %d blocks, over %d checkpoints", partial, dead, checkpoints)
	if dead > checkpoints*4 {
		t.Errorf("segments other than the one being filled held %d blocks less than full over %d checkpoints (%d segments partly evicted): GC evicts data it does not free", dead, checkpoints, partial)
	}
}
