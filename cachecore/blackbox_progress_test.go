package cachecore_test

import (
	"context"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// slowDirtyVolume opens a cache whose volume's backing device writes 2 MiB/s
// and gives it dirty 4 KiB blocks, every other one of the first 6 MiB
// (so writeback writes them one by one), held back from writeback until
// the test calls release: from its first progress report, so that the
// drain's starting figure is all of them (released before the drain, the
// controller's trickle may write one back first).
func slowDirtyVolume(t *testing.T) (c *cachecore.Cache, v *cachecore.Volume, mem *backend.Memory, release func()) {
	s := newSlowDirty(t)
	return s.c, s.v, s.mem, s.release
}

// slowDirty is the cache of slowDirtyVolume with its parts.
type slowDirty struct {
	c      *cachecore.Cache
	v      *cachecore.Volume
	mem    *backend.Memory
	faulty *backend.Faulty
	media  *persist.CrashMedia
	opts   rigOptions
	// release opens the backing device to writeback (idempotent).
	release func()
}

func newSlowDirty(t *testing.T) *slowDirty {
	t.Helper()
	ctx := context.Background()
	o := rigOptions{Segments: 128, BackingSize: 8 << 20}
	o.fill()
	o.Cfg.Writeback.IdleAfter = time.Hour
	o.Cfg.Writeback.TargetDirtyPercent = 90
	o.Cfg.Writeback.HighWatermarkPercent = 95
	media, store := newStore(t, o)
	c, err := cachecore.Open(ctx, store, o.Cfg)
	mustOK(t, "open", err)
	t.Cleanup(func() { c.Close(context.Background()) })
	mem := backend.NewMemory(o.BackingSize)
	faulty := backend.NewFaulty(mem)
	// Held until the test releases it: the controller trickles below its
	// target, and the tests measure a drain of all of it.
	gate := faulty.Gate(backend.OpWrite, backend.Range{})
	t.Cleanup(gate.Release)
	dev := backend.NewSlow(faulty, backend.SlowOptions{BytesPerSec: 2 << 20, Latency: time.Millisecond})
	v, err := c.AddVolume(ctx, testVolName, dev, o.VC)
	mustOK(t, "add volume", err)
	for off := int64(0); off < 6<<20; off += 8192 {
		mustOK(t, "write", v.WriteAt(ctx, tagged(uint64(off/8192+1), off, 4096), off, false))
	}
	mustOK(t, "flush", v.Flush(ctx))
	return &slowDirty{c: c, v: v, mem: mem, faulty: faulty, media: media, opts: o, release: gate.Release}
}

// TestBlackboxDrainProgress: a drain reports the bytes written back as
// they reach the backing device (monotonically, many steps, not one jump
// at the end), reaches 100 % only with its last report, and gives an
// estimate of the time left mid-drain.
func TestBlackboxDrainProgress(t *testing.T) {
	ctx := context.Background()
	_, v, mem, release := slowDirtyVolume(t)
	type obs struct{ p cachecore.Progress }
	var seen []obs
	err := v.Drain(ctx, func(p cachecore.Progress) {
		release()
		seen = append(seen, obs{p})
	})
	mustOK(t, "drain", err)
	if len(seen) < 2 {
		t.Fatalf("%d progress reports", len(seen))
	}
	last := seen[len(seen)-1].p
	if !last.Done || last.Fraction() != 1 || last.DirtyBytes != 0 {
		t.Fatalf("last report %+v: want done at 100 %% with nothing left", last)
	}
	if last.StartDirtyBytes != 3<<20 || last.WrittenBytes < 3<<20 {
		t.Fatalf("last report %+v: want 3 MiB dirty at the start, all written back", last)
	}
	steps := map[int]bool{}
	var prev cachecore.Progress
	var etaChecked bool
	for i, o := range seen[:len(seen)-1] {
		p := o.p
		if p.WrittenBytes < prev.WrittenBytes {
			t.Fatalf("report %d: %d bytes written back after %d", i, p.WrittenBytes, prev.WrittenBytes)
		}
		if p.Done || p.Fraction() >= 1 {
			t.Fatalf("report %d of %d is complete before the drain returned: %+v", i, len(seen), p)
		}
		if p.WrittenBytes > 0 && p.WrittenBytes+p.DirtyBytes > p.StartDirtyBytes {
			t.Fatalf("report %d: %d written + %d left exceed the %d dirty at the start (no new writes)", i, p.WrittenBytes, p.DirtyBytes, p.StartDirtyBytes)
		}
		steps[int(p.Fraction()*10)] = true
		// An estimate is given mid-drain; how good it is depends on the
		// host's timing, so its arithmetic is checked with an injected
		// clock (TestProgressETAFollowsRecentRate), not against the wall
		// clock here.
		if f := p.Fraction(); f >= 0.4 && f <= 0.7 && p.Remaining > 0 {
			etaChecked = true
		}
		prev = p
	}
	// 3 MiB at 2 MiB/s, reported every 10 ms: every 10 % step shows.
	if len(steps) < 8 {
		t.Errorf("the reports cover %d of the 10 %% steps below 100 %%: %v", len(steps), steps)
	}
	if !etaChecked {
		t.Errorf("no report between 40 and 70 %% with an estimate of the time left")
	}
	for off := int64(0); off < 6<<20; off += 8192 {
		b := make([]byte, 4096)
		mustOK(t, "read backing", mem.ReadAt(ctx, b, off))
		if id, err := decodeSector(b[:sector], off/sector); err != nil || id != uint64(off/8192+1) {
			t.Fatalf("backing at %d holds write %d (%v) after the drain, want %d", off, id, err, off/8192+1)
		}
	}
}

// TestBlackboxModeSwitchProgress: leaving writeback drains with the same
// progress: bytes written back grow step by step, 100 % only at the end.
func TestBlackboxModeSwitchProgress(t *testing.T) {
	ctx := context.Background()
	_, v, _, release := slowDirtyVolume(t)
	var seen []cachecore.Progress
	mustOK(t, "switch to writethrough", v.SetMode(ctx, cachecore.ModeWritethrough, func(p cachecore.Progress) {
		release()
		seen = append(seen, p)
	}))
	if len(seen) < 2 || !seen[len(seen)-1].Done || seen[len(seen)-1].Fraction() != 1 {
		t.Fatalf("reports %d, last %+v: want done at 100 %%", len(seen), seen[len(seen)-1])
	}
	steps := map[int]bool{}
	for i, p := range seen[:len(seen)-1] {
		if i > 0 && p.WrittenBytes < seen[i-1].WrittenBytes {
			t.Fatalf("report %d: %d bytes written back after %d", i, p.WrittenBytes, seen[i-1].WrittenBytes)
		}
		if p.Fraction() >= 1 {
			t.Fatalf("report %d of %d complete before the switch returned: %+v", i, len(seen), p)
		}
		steps[int(p.Fraction()*10)] = true
	}
	if len(steps) < 8 {
		t.Errorf("the reports cover %d of the 10 %% steps below 100 %%: %v", len(steps), steps)
	}
}
