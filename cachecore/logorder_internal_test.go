package cachecore

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// TestLogFollowsDataOrder: the ksets of 4 KiB fills spread over every
// kset slot each point into at most two data segments, so that GC passing
// a segment's worth of keys frees about a segment. A slot's kset used to
// stay open until full (or a flush), gathering keys whose data lay over
// the whole stretch filled meanwhile: GC then passed several segments'
// worth of keys before any segment came free and evicted them together.
// It also checks that a write whose data straddles a segment end keeps
// its keys in one kset.
func TestLogFollowsDataOrder(t *testing.T) {
	const segs, blocks = 48, 16 << 20 // 64 MiB: a stripe for every slot
	// Writeback would close ksets at its own epochs: it stays below its
	// target here.
	cfg := Config{JournalFlushInterval: time.Hour, Writeback: WritebackConfig{TargetDirtyPercent: 90, HighWatermarkPercent: 95}}
	r := newItRig(t, segs, blocks*4096/1024, cfg, VolumeConfig{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	filled := 0
	for ; filled < 20*itSegSize/4096; filled++ {
		if err := r.vol.Prefetch(ctx, int64(rng.IntN(blocks/1024))*4096, 4096); err != nil {
			t.Fatal(err)
		}
	}
	// A 12 KiB write that straddles the end of the head's segment (its
	// blocks lie in one stripe, so one slot gets its keys).
	for r.cache.heads[0].off.Load()+12<<10 <= itSegSize-4096 {
		if err := r.vol.Prefetch(ctx, int64(rng.IntN(blocks/1024))*4096, 4096); err != nil {
			t.Fatal(err)
		}
	}
	straddle := make([]byte, 12<<10)
	if err := r.vol.WriteAt(ctx, straddle, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rp := r.cache.store.Replay(r.cache.store.KeyTail())
	ksets, spread, straddleKsets := 0, 0, 0
	for {
		ks, ok := rp.Next()
		if !ok {
			break
		}
		ksets++
		seen, straddles := map[uint32]bool{}, false
		for _, k := range ks.Keys {
			seen[k.Pos.Seg] = true
			straddles = straddles || k.Offset >= 64<<10 && k.Offset < 76<<10
		}
		if straddles {
			straddleKsets++
		}
		spread = max(spread, len(seen))
	}
	if err := rp.StopReason(); err != nil && isMediaFault(err) {
		t.Fatal(err)
	}
	if ksets == 0 {
		t.Fatal("no kset in the log")
	}
	if spread > 2 {
		t.Errorf("a kset's keys point into %d data segments (of %d written), want at most 2", spread, filled*4096/itSegSize)
	}
	if straddleKsets != 1 {
		t.Errorf("the keys of the write straddling a segment end are in %d ksets, want 1", straddleKsets)
	}
}
