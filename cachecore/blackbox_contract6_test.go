package cachecore_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
)

// C6 with writes that reach the backing device directly (bypass,
// writethrough, writearound, backing discards): such a write may not land
// while dirty data of an older flush epoch is still waiting for writeback,
// or a lost cache file would leave a backing image that no flush epoch
// explains.

// c6Rig is a cache with one volume whose backing device is a Faulty over
// an optionally slowed Memory, so that the backing image can be checked at
// every backing request.
type c6Rig struct {
	cache   *cachecore.Cache
	vol     *cachecore.Volume
	mem     *backend.Memory
	backing *backend.Faulty
}

func newC6Rig(t *testing.T, o rigOptions, slow backend.SlowOptions) *c6Rig {
	t.Helper()
	o.fill()
	_, store := newStore(t, o)
	r := &c6Rig{mem: backend.NewMemory(o.BackingSize)}
	var dev backend.Device = r.mem
	if slow != (backend.SlowOptions{}) {
		dev = backend.NewSlow(r.mem, slow)
	}
	r.backing = backend.NewFaulty(dev)
	ctx := context.Background()
	var err error
	r.cache, err = cachecore.Open(ctx, store, o.Cfg)
	mustOK(t, "cachecore.Open", err)
	r.vol, err = r.cache.AddVolume(ctx, testVolName, r.backing, o.VC)
	if err != nil {
		r.cache.Close(ctx)
		t.Fatalf("AddVolume: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.cache.Close(ctx); err != nil {
			t.Errorf("Cache.Close: %v", err)
		}
	})
	return r
}

// durableSector returns the write id sector s holds in the flushed backing
// image.
func (r *c6Rig) durableSector(t *testing.T, s int64) uint64 {
	t.Helper()
	img, err := r.backing.DurableImage(nil)
	mustOK(t, "DurableImage", err)
	buf := make([]byte, sector)
	mustOK(t, "read image", img.ReadAt(context.Background(), buf, s*sector))
	id, err := decodeSector(buf, s)
	mustOK(t, "decode", err)
	return id
}

// TestBlackboxBypassWaitsForOlderEpoch is the deterministic case: write A
// (cached, dirty), flush, then a sequential stream B that would bypass the
// cache. A's writeback is held at a gate, so A is not on the backing
// device: B must not reach it either (it takes the cache path), and once A
// is written back, B follows in log order. When the volume is clean again,
// a sequential stream bypasses as before.
func TestBlackboxBypassWaitsForOlderEpoch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const cutoff = 64 << 10
	r := newC6Rig(t, rigOptions{BackingSize: 4 << 20,
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: cutoff}}, backend.SlowOptions{})

	const aOff, bOff, cOff = 0, 1 << 20, 2 << 20
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: aOff, Len: 4096})
	defer gate.Release()

	var mu sync.Mutex
	var violations []string
	bLanded := 0
	r.backing.SetHook(func(op backend.Op, off, n int64) {
		if op != backend.OpWrite || off+n <= bOff || off >= bOff+1<<20 {
			return
		}
		img, err := r.backing.DurableImage(nil)
		if err != nil {
			t.Errorf("DurableImage: %v", err)
			return
		}
		buf := make([]byte, sector)
		img.ReadAt(context.Background(), buf, aOff)
		id, _ := decodeSector(buf, aOff/sector)
		mu.Lock()
		defer mu.Unlock()
		bLanded++
		if id != 1 {
			violations = append(violations, fmt.Sprintf("write of B at %d reached the backing device while A (epoch 0) was not there (sector 0 holds write %d)", off, id))
		}
	})
	defer r.backing.SetHook(nil)

	mustOK(t, "write A", r.vol.WriteAt(ctx, tagged(1, aOff, 4096), aOff, false))
	mustOK(t, "flush", r.vol.Flush(ctx))
	mustOK(t, "writeback of A reaches the gate", gate.WaitArrived(ctx, 1))

	// B: 8 sequential writes of 64 KiB, each at or beyond the cutoff.
	const bWrites = 8
	for i := range bWrites {
		off := int64(bOff + i*cutoff)
		mustOK(t, "write B", r.vol.WriteAt(ctx, tagged(uint64(2+i), off, cutoff), off, false))
	}
	st := r.vol.Stats()
	mu.Lock()
	landedEarly, early := bLanded, append([]string(nil), violations...)
	mu.Unlock()
	if len(early) > 0 {
		t.Fatalf("B overtook A: %s", early[0])
	}
	if landedEarly != 0 {
		t.Fatalf("%d backing writes of B while A's writeback was held", landedEarly)
	}
	if st.HeldBack != bWrites {
		t.Fatalf("HeldBack = %d, want %d (every write of B held back)", st.HeldBack, bWrites)
	}
	if n := st.BypassedBytes["sequential"]; n != 0 {
		t.Fatalf("%d bytes counted as bypassed while none reached the backing device", n)
	}
	for i := range bWrites {
		// B is readable from the cache meanwhile.
		off := int64(bOff + i*cutoff)
		buf := make([]byte, cutoff)
		mustOK(t, "read B", r.vol.ReadAt(ctx, buf, off))
		if id, err := decodeSector(buf[:sector], off/sector); err != nil || id != uint64(2+i) {
			t.Fatalf("B at %d reads write %d (%v)", off, id, err)
		}
	}

	gate.Release()
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	mustOK(t, "flush", r.vol.Flush(ctx))
	mu.Lock()
	if len(violations) > 0 {
		t.Fatalf("B overtook A: %s", violations[0])
	}
	if bLanded == 0 {
		t.Fatal("B never reached the backing device")
	}
	mu.Unlock()
	if id := r.durableSector(t, aOff/sector); id != 1 {
		t.Fatalf("after the drain the backing device holds write %d at A, want 1", id)
	}
	for i := range bWrites {
		s := int64(bOff+i*cutoff) / sector
		if id := r.durableSector(t, s); id != uint64(2+i) {
			t.Fatalf("after the drain the backing device holds write %d at B's sector %d, want %d", id, s, 2+i)
		}
	}

	// Clean volume: a sequential stream bypasses and lands at once.
	before := r.vol.Stats()
	for i := range 4 {
		off := int64(cOff + i*cutoff)
		id := uint64(100 + i)
		mustOK(t, "write C", r.vol.WriteAt(ctx, tagged(id, off, cutoff), off, false))
		buf := make([]byte, sector)
		mustOK(t, "read backing", r.mem.ReadAt(ctx, buf, off))
		if got, err := decodeSector(buf, off/sector); err != nil || got != id {
			t.Fatalf("sequential write %d on a clean volume did not reach the backing device directly (holds %d, %v)", id, got, err)
		}
	}
	after := r.vol.Stats()
	if after.BypassedBytes["sequential"] != before.BypassedBytes["sequential"]+4*cutoff {
		t.Fatalf("sequential bypass bytes %d → %d, want +%d", before.BypassedBytes["sequential"], after.BypassedBytes["sequential"], 4*cutoff)
	}
	if after.HeldBack != before.HeldBack {
		t.Fatalf("writes held back on a clean volume: %d → %d", before.HeldBack, after.HeldBack)
	}
}

// TestBlackboxDiscardWaitsForOlderEpoch: a backing discard is a write of
// zeroes and may not overtake older dirty data of other blocks either: a
// large one waits for writeback, a small one is written as zeroes through
// the cache at once.
func TestBlackboxDiscardWaitsForOlderEpoch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newC6Rig(t, rigOptions{BackingSize: 4 << 20, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}, backend.SlowOptions{})
	const aOff, sOff, sLen, dOff, dLen = 0, 1 << 20, 64 << 10, 2 << 20, 2 << 20
	// S and D have data on the backing device (written while the volume
	// was clean and in writearound mode, so nothing is cached there).
	mustOK(t, "mode", r.vol.SetMode(ctx, cachecore.ModeWritearound, nil))
	mustOK(t, "write S", r.vol.WriteAt(ctx, tagged(6, sOff, sLen), sOff, true))
	mustOK(t, "write D", r.vol.WriteAt(ctx, tagged(7, dOff, dLen), dOff, true))
	mustOK(t, "mode", r.vol.SetMode(ctx, cachecore.ModeWriteback, nil))

	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: aOff, Len: 4096})
	defer gate.Release()
	mustOK(t, "write A", r.vol.WriteAt(ctx, tagged(1, aOff, 4096), aOff, false))
	mustOK(t, "flush", r.vol.Flush(ctx))
	mustOK(t, "writeback of A reaches the gate", gate.WaitArrived(ctx, 1))

	var discards atomic.Int64
	var bad atomic.Value
	r.backing.SetHook(func(op backend.Op, off, n int64) {
		if op != backend.OpDiscard {
			return
		}
		discards.Add(1)
		if id := r.durableSector(t, aOff/sector); id != 1 {
			bad.Store(fmt.Sprintf("backing discard at %d while A was not on the backing device (holds %d)", off, id))
		}
	})
	defer r.backing.SetHook(nil)
	// Small: zeroes through the cache, no backing discard, no wait.
	heldBefore := r.vol.Stats().HeldBack
	mustOK(t, "small discard", r.vol.Discard(ctx, sOff, sLen))
	if discards.Load() != 0 {
		t.Fatal("small discard reached the backing device while older dirty data was held")
	}
	if r.vol.Stats().HeldBack != heldBefore+1 {
		t.Fatal("small discard not counted as held back")
	}
	zeroes := func(off, n int64) {
		t.Helper()
		buf := make([]byte, n)
		mustOK(t, "read", r.vol.ReadAt(ctx, buf, off))
		for i, b := range buf {
			if b != 0 {
				t.Fatalf("byte %d of the discarded range at %d is %#x", i, off, b)
			}
		}
	}
	zeroes(sOff, sLen)

	// Large: waits for writeback of A, then discards on the backing device.
	done := make(chan error, 1)
	go func() { done <- r.vol.Discard(ctx, dOff, dLen) }()
	select {
	case err := <-done:
		t.Fatalf("discard returned (%v) while older dirty data was held from the backing device", err)
	case <-time.After(50 * time.Millisecond):
	}
	if discards.Load() != 0 {
		t.Fatal("backing discard issued while older dirty data was held")
	}
	gate.Release()
	mustOK(t, "discard", <-done)
	if s, ok := bad.Load().(string); ok {
		t.Fatal(s)
	}
	if discards.Load() == 0 {
		t.Fatal("the discard never reached the backing device")
	}
	zeroes(dOff, dLen)
	zeroes(sOff, sLen)
	// The small discard's zeroes reach the backing device by writeback.
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	mustOK(t, "flush", r.vol.Flush(ctx))
	for s := int64(sOff / sector); s < (sOff+sLen)/sector; s++ {
		if id := r.durableSector(t, s); id != 0 {
			t.Fatalf("after the drain backing sector %d holds write %d, want zeroes", s, id)
		}
	}
}

// TestBlackboxDiscardOfDirtyDataAfterItsWriteback: a large discard over
// dirty data not yet written back reaches the backing device as a discard,
// after that data and the older dirty data of other blocks (log order, C6),
// and leaves no dirty zeroes in the cache.
func TestBlackboxDiscardOfDirtyDataAfterItsWriteback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newC6Rig(t, rigOptions{BackingSize: 4 << 20, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}, backend.SlowOptions{})
	const aOff, xOff, xLen, dOff, dLen = 0, 1 << 20, 64 << 10, 1 << 20, 2 << 20
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: aOff, Len: 4096})
	defer gate.Release()
	mustOK(t, "write A", r.vol.WriteAt(ctx, tagged(1, aOff, 4096), aOff, false))
	mustOK(t, "flush", r.vol.Flush(ctx))
	mustOK(t, "writeback of A reaches the gate", gate.WaitArrived(ctx, 1))
	// X, in the discarded range, is dirty data of the discard's own epoch.
	mustOK(t, "write X", r.vol.WriteAt(ctx, tagged(2, xOff, xLen), xOff, false))

	var discards atomic.Int64
	var bad atomic.Value
	// X lies in the discarded range, so once the discard is done (and a
	// concurrent writeback pass may flush it) the backing device no longer
	// shows X: the hook sees the order of completed operations instead.
	var xWritten, xFlushed atomic.Bool
	r.backing.SetHook(func(op backend.Op, off, n int64) {
		switch op {
		case backend.OpWrite:
			if off <= xOff && xOff+xLen <= off+n {
				xWritten.Store(true)
			}
		case backend.OpFlush:
			if xWritten.Load() {
				xFlushed.Store(true)
			}
		case backend.OpDiscard:
			discards.Add(1)
			if id := r.durableSector(t, aOff/sector); id != 1 {
				bad.Store(fmt.Sprintf("backing discard at %d while A was not on the backing device (holds %d)", off, id))
			}
			if !xFlushed.Load() {
				bad.Store(fmt.Sprintf("backing discard at %d before X was written back and flushed", off))
			}
		}
	})
	defer r.backing.SetHook(nil)
	done := make(chan error, 1)
	go func() { done <- r.vol.Discard(ctx, dOff, dLen) }()
	select {
	case err := <-done:
		t.Fatalf("discard returned (%v) while older dirty data was held from the backing device", err)
	case <-time.After(50 * time.Millisecond):
	}
	gate.Release()
	mustOK(t, "discard", <-done)
	if s, ok := bad.Load().(string); ok {
		t.Fatal(s)
	}
	if discards.Load() == 0 {
		t.Fatal("the discard never reached the backing device")
	}
	if e := r.vol.Explain(xOff); e.Dirty || e.State != "miss" {
		t.Fatalf("the discarded dirty range is still cached: %+v", e)
	}
	buf := make([]byte, dLen)
	mustOK(t, "read", r.vol.ReadAt(ctx, buf, dOff))
	if !bytes.Equal(buf, make([]byte, dLen)) {
		t.Fatal("the discarded range does not read as zeroes")
	}
	mustOK(t, "flush", r.vol.Flush(ctx))
	for s := int64(dOff / sector); s < (dOff+dLen)/sector; s++ {
		if id := r.durableSector(t, s); id != 0 {
			t.Fatalf("backing sector %d holds write %d after the discard, want zeroes", s, id)
		}
	}
}

// c6Variant is one configuration of the flush-consistency workload.
type c6Variant struct {
	name string
	o    rigOptions
	slow backend.SlowOptions
	// seqPercent of the writes continue the previous one (sequential).
	seqPercent int
	maxBlocks  int64 // write size in 4 KiB blocks, at most
	// modes, if set, are switched through by a second goroutine during the
	// workload (SetMode, which drains when leaving a caching mode, and
	// SetConfig, which does not).
	modes []cachecore.Mode
	// switchTo, if set, is the mode the volume is switched to with
	// SetConfig (no drain) after the first third of the operations, so
	// that the mode meets dirty data of earlier epochs.
	switchTo cachecore.Mode
	// congestionEvery > 0 toggles the write congestion threshold between
	// 1ns (always congested) and off every that many operations.
	congestionEvery int
	// seqBurst drains the volume halfway through the workload and then
	// writes a sequential run of twice the cutoff: with no older dirty
	// data left, its tail must bypass the cache, whatever the random
	// workload did before (which may have held back every earlier run);
	// then another behind dirty data of a closed flush epoch that cannot
	// be written back yet, whose tail must be held back, whatever
	// writeback's pace.
	seqBurst bool
	// congestionBurst drains the volume halfway through the workload and
	// then writes a few blocks with the congestion threshold at 1ns, so
	// that some writes bypass for congestion with no older dirty data in
	// the way.
	congestionBurst bool
	// fuaEndsEpoch makes a completed FUA write end the model's flush
	// epoch like a Flush (the strict reading of C6).
	fuaEndsEpoch bool
	// check verifies that the variant exercised what it is about.
	check func(t *testing.T, vs cachecore.VolumeStats, cs cachecore.CacheStats)
}

// TestBlackboxFlushConsistencyWithBypass runs the C6 check of
// TestBlackboxWritebackFlushConsistency (the backing image at every backing
// write, flush and discard, flushed only and torn, must be explained by a
// flush epoch) with every way a write reaches the backing device directly.
func TestBlackboxFlushConsistencyWithBypass(t *testing.T) {
	wb := cachecore.WritebackConfig{IdleAfter: time.Hour, TargetDirtyPercent: 50, HighWatermarkPercent: 90, MaxBytesPerSec: 64 << 10}
	variants := []c6Variant{
		{name: "sequential", seqPercent: 60, maxBlocks: 8, seqBurst: true,
			o: rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 16 << 10}},
			check: func(t *testing.T, vs cachecore.VolumeStats, _ cachecore.CacheStats) {
				if vs.HeldBack == 0 || vs.BypassedBytes["sequential"] == 0 {
					t.Errorf("held back %d, sequential bypass %d bytes: want both", vs.HeldBack, vs.BypassedBytes["sequential"])
				}
			}},
		{name: "congestion", maxBlocks: 4, slow: backend.SlowOptions{Latency: 50 * time.Microsecond}, congestionEvery: 12, congestionBurst: true,
			o: rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
			check: func(t *testing.T, vs cachecore.VolumeStats, _ cachecore.CacheStats) {
				if vs.HeldBack == 0 || vs.BypassedBytes["congestion"] == 0 {
					t.Errorf("held back %d, congestion bypass %d bytes: want both", vs.HeldBack, vs.BypassedBytes["congestion"])
				}
			}},
		{name: "full", maxBlocks: 16, slow: backend.SlowOptions{Latency: 100 * time.Microsecond},
			o: rigOptions{Segments: 5, Cfg: cachecore.Config{GCPercent: 10, Writeback: cachecore.WritebackConfig{IdleAfter: time.Hour, TargetDirtyPercent: 90, HighWatermarkPercent: 95, MaxBytesPerSec: 256 << 10}},
				VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
			check: func(t *testing.T, vs cachecore.VolumeStats, cs cachecore.CacheStats) {
				if cs.DeferredWrites == 0 && vs.BypassedBytes["full"] == 0 {
					t.Errorf("the cache never ran full (no deferred write, no full bypass)")
				}
			}},
		{name: "writethrough", maxBlocks: 4, switchTo: cachecore.ModeWritethrough,
			o:     rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
			check: wantHeldBack},
		{name: "writearound", maxBlocks: 4, switchTo: cachecore.ModeWritearound,
			o:     rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
			check: wantHeldBack},
		{name: "sequential-fua-epochs", seqPercent: 60, maxBlocks: 8, fuaEndsEpoch: true,
			o:     rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 16 << 10}},
			check: wantHeldBack},
		{name: "mode-switches", maxBlocks: 8, seqPercent: 30,
			o:     rigOptions{Segments: 32, Cfg: cachecore.Config{Writeback: wb}, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 32 << 10}},
			modes: []cachecore.Mode{cachecore.ModeWritethrough, cachecore.ModeWriteback, cachecore.ModeWritearound, cachecore.ModeWriteonly, cachecore.ModePassthrough, cachecore.ModeWriteback},
			check: wantHeldBack},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) { runFlushConsistency(t, v) })
	}
}

func wantHeldBack(t *testing.T, vs cachecore.VolumeStats, _ cachecore.CacheStats) {
	if vs.HeldBack == 0 {
		t.Errorf("no write was held back: the workload never met older dirty data")
	}
}

func runFlushConsistency(t *testing.T, v c6Variant) {
	seed := testSeed()
	t.Logf("seed %d (rerun with CACHELUN_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0xC6))
	ops := 160
	if testkit.RaceEnabled {
		ops = 100
	}
	if longRun() {
		ops = 2000
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if v.o.BackingSize == 0 {
		v.o.BackingSize = 512 << 10
	}
	r := newC6Rig(t, v.o, v.slow)
	m := &epochModel{writes: map[int64][]epochWrite{}}

	var checks, violations atomic.Int64
	var firstViolation atomic.Value
	var tornSeed atomic.Uint64
	tornSeed.Store(seed)
	r.backing.SetHook(func(op backend.Op, off, n int64) {
		if op != backend.OpWrite && op != backend.OpFlush && op != backend.OpDiscard {
			return
		}
		for _, torn := range []bool{false, true} {
			var tr *rand.Rand
			if torn {
				tr = rand.New(rand.NewPCG(tornSeed.Add(1), 5))
			}
			img, err := r.backing.DurableImage(tr)
			if err != nil {
				t.Errorf("DurableImage: %v", err)
				return
			}
			buf := make([]byte, img.Size())
			img.ReadAt(context.Background(), buf, 0)
			checks.Add(1)
			if _, ok, why := m.prefixEpoch(buf); !ok {
				if violations.Add(1) == 1 {
					firstViolation.Store(fmt.Sprintf("after a backing %s at %d+%d (torn=%v): no flush epoch explains the backing image: %s", op, off, n, torn, why))
				}
			}
		}
	})

	// The mode switcher runs beside the single writer, so the model's
	// epochs stay in program order.
	stop := make(chan struct{})
	var switcher sync.WaitGroup
	var switches atomic.Int64
	if len(v.modes) > 0 {
		switcher.Add(1)
		go func() {
			defer switcher.Done()
			srng := rand.New(rand.NewPCG(seed, 0x5717))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(2+srng.IntN(8)) * time.Millisecond):
				}
				mode := v.modes[i%len(v.modes)]
				var err error
				if srng.IntN(2) == 0 {
					err = r.vol.SetMode(ctx, mode, nil)
				} else {
					vc := v.o.VC
					vc.Mode = mode
					err = r.vol.SetConfig(vc)
				}
				if err != nil {
					t.Errorf("switch to %s: %v", mode, err)
					return
				}
				switches.Add(1)
			}
		}()
	}

	size := r.vol.Size()
	nextID := uint64(1)
	next := int64(0)
	record := func(id uint64, off, n int64) {
		m.mu.Lock()
		for s := off / sector; s < (off+n)/sector; s++ {
			m.writes[s] = append(m.writes[s], epochWrite{id: id, epoch: m.epoch})
		}
		m.mu.Unlock()
	}
	// gatedEpoch leaves dirty data of a closed flush epoch whose
	// writeback cannot finish until the gate it returns is released.
	gatedEpoch := func() *backend.Gate {
		gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: 4096})
		id := nextID
		nextID++
		record(id, 0, 4096)
		mustOK(t, "write", r.vol.WriteAt(ctx, tagged(id, 0, 4096), 0, false))
		mustOK(t, "flush", r.vol.Flush(ctx))
		m.mu.Lock()
		m.epoch++
		m.mu.Unlock()
		return gate
	}
	// seqRun writes n bytes from off in 8 KiB writes and returns where it
	// ended.
	seqRun := func(off, n int64) int64 {
		for end := off + n; off < end; off += 8192 {
			id := nextID
			nextID++
			record(id, off, 8192)
			mustOK(t, "sequential run write", r.vol.WriteAt(ctx, tagged(id, off, 8192), off, false))
		}
		return off
	}
	vc := v.o.VC
	for i := range ops {
		if v.switchTo != "" && i == ops/3 {
			// Older dirty data whose writeback is held at a gate meets
			// the new mode: the next writes must not reach the backing
			// device before it.
			gate := gatedEpoch()
			mustOK(t, "writeback reaches the gate", gate.WaitArrived(ctx, 1))
			vc.Mode = v.switchTo
			mustOK(t, "switch mode", r.vol.SetConfig(vc))
			for range 5 {
				off := rng.Int64N(size/4096) * 4096
				n := min((1+rng.Int64N(v.maxBlocks))*4096, size-off)
				id := nextID
				nextID++
				record(id, off, n)
				mustOK(t, "write", r.vol.WriteAt(ctx, tagged(id, off, int(n)), off, false))
			}
			gate.Release()
		}
		if v.seqBurst && i == ops/2 {
			mustOK(t, "drain before the sequential burst", r.vol.Drain(ctx, nil))
			run := 2 * v.o.VC.SequentialCutoff
			next = seqRun(rng.Int64N((size-run)/4096+1)*4096, run)
			// And a run held back: dirty data of a closed flush epoch
			// whose writeback cannot finish, then a run past the cutoff
			// elsewhere.
			gate := gatedEpoch()
			seqRun((size/2)&^4095, run)
			gate.Release()
		}
		if v.congestionBurst && i == ops/2 {
			mustOK(t, "drain before the congestion burst", r.vol.Drain(ctx, nil))
			burst := vc
			burst.CongestedWriteThreshold = time.Nanosecond
			mustOK(t, "congest", r.vol.SetConfig(burst))
			for range 4 {
				off := rng.Int64N(size/4096) * 4096
				id := nextID
				nextID++
				record(id, off, 4096)
				mustOK(t, "congestion burst write", r.vol.WriteAt(ctx, tagged(id, off, 4096), off, false))
			}
			mustOK(t, "restore congestion threshold", r.vol.SetConfig(vc))
		}
		if v.congestionEvery > 0 && i%v.congestionEvery == 0 {
			if vc.CongestedWriteThreshold == 0 {
				vc.CongestedWriteThreshold = time.Nanosecond
			} else {
				vc.CongestedWriteThreshold = 0
			}
			mustOK(t, "toggle congestion", r.vol.SetConfig(vc))
		}
		switch k := rng.IntN(100); {
		case k < 75:
			off := rng.Int64N(size/4096) * 4096
			if rng.IntN(100) < v.seqPercent && next < size {
				off = next
			}
			n := min((1+rng.Int64N(v.maxBlocks))*4096, size-off)
			next = off + n
			id := nextID
			nextID++
			record(id, off, n)
			fua := rng.IntN(8) == 0
			mustOK(t, "write", r.vol.WriteAt(ctx, tagged(id, off, int(n)), off, fua))
			if fua && v.fuaEndsEpoch {
				m.mu.Lock()
				m.epoch++
				m.mu.Unlock()
			}
		case k < 88:
			mustOK(t, "flush", r.vol.Flush(ctx))
			m.mu.Lock()
			m.epoch++
			m.mu.Unlock()
		case k < 92:
			off := rng.Int64N(size/4096) * 4096
			n := min((1+rng.Int64N(4))*4096, size-off)
			record(0, off, n)
			mustOK(t, "discard", r.vol.Discard(ctx, off, n))
		case k < 97:
			time.Sleep(time.Millisecond) // let writeback run
		default:
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
		}
	}
	close(stop)
	switcher.Wait()
	mustOK(t, "final drain", r.vol.Drain(ctx, nil))
	r.backing.SetHook(nil)
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d of %d backing images are not flush-consistent; first: %s", n, checks.Load(), firstViolation.Load())
	}
	mustOK(t, "flush", r.vol.Flush(ctx))
	img, err := r.backing.DurableImage(nil)
	mustOK(t, "DurableImage", err)
	buf := make([]byte, img.Size())
	img.ReadAt(ctx, buf, 0)
	m.mu.Lock()
	for s, ws := range m.writes {
		if id, err := decodeSector(buf[s*sector:(s+1)*sector], s); err != nil || id != ws[len(ws)-1].id {
			m.mu.Unlock()
			t.Fatalf("after drain and flush, backing sector %d holds write %d (%v), want %d", s, id, err, ws[len(ws)-1].id)
		}
	}
	m.mu.Unlock()
	vs, cs := r.vol.Stats(), r.cache.Stats()
	t.Logf("%d backing images checked over %d flush epochs; held back %d, bypassed %v, deferred %d, mode switches %d",
		checks.Load(), m.epoch, vs.HeldBack, vs.BypassedBytes, cs.DeferredWrites, switches.Load())
	if checks.Load() < 20 {
		t.Fatalf("only %d backing images checked", checks.Load())
	}
	if v.check != nil {
		v.check(t, vs, cs)
	}
}

// TestBlackboxFlushCoversDirectWriteInFlight: a Flush that runs while a
// direct write is on its way to the backing device does not cover it, so
// the next Flush after the write completed must flush the backing device
// again (C3 for writes that bypass the cache).
func TestBlackboxFlushCoversDirectWriteInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := newC6Rig(t, rigOptions{BackingSize: 1 << 20, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWritearound}}, backend.SlowOptions{})
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: 4096})
	defer gate.Release()
	done := make(chan error, 1)
	go func() { done <- r.vol.WriteAt(ctx, tagged(1, 0, 4096), 0, false) }()
	mustOK(t, "direct write reaches the gate", gate.WaitArrived(ctx, 1))
	mustOK(t, "flush while the write is in flight", r.vol.Flush(ctx))
	gate.Release()
	mustOK(t, "direct write", <-done)
	mustOK(t, "flush after the write completed", r.vol.Flush(ctx))
	if id := r.durableSector(t, 0); id != 1 {
		t.Fatalf("after a Flush that followed the write, the backing device holds write %d durably, want 1", id)
	}
}
