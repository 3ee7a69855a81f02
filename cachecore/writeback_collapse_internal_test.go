package cachecore

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// TestWritebackCollapsesAcrossPasses: block 0 is written in one kset and
// written again in a later kset. When both are durable and of the same
// flush epoch, writeback writes block 0 back once, with its newer data,
// although the two ksets go to the backing device in different passes.
// When a flush separates them, it writes both versions back, in order:
// the older one belongs to an epoch the backing device must hold in full
// before anything of the next.
func TestWritebackCollapsesAcrossPasses(t *testing.T) {
	for _, flushBetween := range []bool{false, true} {
		blockWrites, final := collapseScenario(t, flushBetween)
		want := 1
		if flushBetween {
			want = 2
		}
		if blockWrites != want {
			t.Errorf("flush between the versions %v: block 0 reached the backing device %d times, want %d", flushBetween, blockWrites, want)
		}
		if !bytes.Equal(final, versionData(0, 2)) {
			t.Errorf("flush between the versions %v: backing block 0 does not hold the newer version", flushBetween)
		}
	}
}

// versionData is the content of version v of block b.
func versionData(b, v int) []byte {
	p := make([]byte, 4096)
	for i := range p {
		p[i] = byte(b*7 + v*31 + i%13)
	}
	return p
}

// collapseScenario writes block 0 (version 1) and 127 other blocks, which
// fill one kset, then block 0 again (version 2) and 127 more, which fill a
// second. Writeback cannot run meanwhile (backing writes are gated), so
// both ksets are durable in the log before the first pass. The cache is
// then opened again with one kset per writeback pass and drained. It
// returns how many backing writes covered block 0 and block 0's final
// backing content.
func collapseScenario(t *testing.T, flushBetween bool) (int, []byte) {
	t.Helper()
	ctx := context.Background()
	m := persist.NewCrashMedia(persist.SegmentsOffset+64*itSegSize, persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: itSegSize})
	if err != nil {
		t.Fatal(err)
	}
	mem := backend.NewMemory(4 << 20)
	cfg := Config{JournalFlushInterval: time.Hour}

	// Session 1: the keys, with writeback held at the backing device.
	dev := backend.NewFaulty(mem)
	gate := dev.Gate(backend.OpWrite, backend.Range{})
	c, err := Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.AddVolume(ctx, "v", dev, VolumeConfig{BlockSize: 4096, Mode: ModeWriteback})
	if err != nil {
		t.Fatal(err)
	}
	write := func(b, ver int) {
		if err := v.WriteAt(ctx, versionData(b, ver), int64(b)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	// All blocks lie in one 4 MiB stripe, so their keys share a kset
	// slot, and 128 keys fill a kset.
	write(0, 1)
	for b := 1; b < persist.MaxKSetKeys; b++ {
		write(b, 1)
	}
	if flushBetween {
		// A FUA write: durable, and a new flush epoch after it.
		if err := v.WriteAt(ctx, versionData(900, 1), 900*4096, true); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 2)
	for b := persist.MaxKSetKeys; b < 2*persist.MaxKSetKeys-1; b++ {
		write(b, 1)
	}
	// The ksets are full (or synced by the FUA write), hence committed;
	// wait until they are durable.
	ksets := uint64(2)
	if flushBetween {
		ksets = 3
	}
	testkit.WaitFor(t, 10*time.Second, "the full ksets to become durable", func() bool {
		return c.durableHead.Load() >= c.store.KeyTail().LSN+ksets
	})
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	gate.Release()

	// Session 2: write back with one kset per pass, counting the backing
	// writes that cover block 0.
	st, err = persist.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	cfg.wbPassKsets = 1
	dev = backend.NewFaulty(mem)
	var mu sync.Mutex
	blockWrites := 0
	dev.SetHook(func(op backend.Op, off, n int64) {
		if op == backend.OpWrite && off < 4096 {
			mu.Lock()
			blockWrites++
			mu.Unlock()
		}
	})
	c, err = Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err = c.AddVolume(ctx, "v", dev, VolumeConfig{BlockSize: 4096, Mode: ModeWriteback})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	final := make([]byte, 4096)
	if err := mem.ReadAt(ctx, final, 0); err != nil {
		t.Fatal(err)
	}
	for b := 1; b < 2*persist.MaxKSetKeys-1; b++ {
		got := make([]byte, 4096)
		if err := mem.ReadAt(ctx, got, int64(b)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, versionData(b, 1)) {
			t.Fatalf("flush between %v: backing block %d does not hold its data after the drain", flushBetween, b)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return blockWrites, final
}

// TestCollapseAheadStopsAtDurableAndEpoch: a later key collapses the
// pass's range only from a kset that is durable and of the pass's epoch.
// A kset written but not yet durable may still vanish in a crash; the
// pass's older data is then the newest the log can give back, and must
// reach the backing device.
func TestCollapseAheadStopsAtDurableAndEpoch(t *testing.T) {
	m := persist.NewCrashMedia(persist.SegmentsOffset+8*itSegSize, persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: itSegSize})
	if err != nil {
		t.Fatal(err)
	}
	seg := uint32(7)
	alloc := func() (uint32, error) { seg--; return seg, nil }
	j := st.OpenJournal(st.KeyTail(), alloc)
	key := func(off uint64) []persist.Key {
		return []persist.Key{{Volume: 0, Offset: off, Length: 4096, Pos: persist.Pos{Seg: 7}, Gen: 1, Flags: persist.KeyDirty}}
	}
	// kset 1 (the pass): block 0. kset 2: block 0 again, same epoch.
	// kset 3: block 1, next epoch. kset 4: block 1 again, that epoch.
	var lsns []uint64
	for _, k := range []struct {
		off   uint64
		epoch uint64
	}{{0, 5}, {0, 5}, {4096, 6}, {4096, 6}} {
		ks, err := j.Append(key(k.off), k.epoch)
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, ks.LSN)
	}

	// pass runs a one-kset pass over kset 1 with blocks 0 and 1 dirty in
	// it, looks ahead with the given durable bound and reports which
	// blocks the pass still writes back.
	pass := func(durable uint64) (block0, block1 bool) {
		r := st.Replay(st.KeyTail())
		first, ok := r.Next()
		if !ok {
			t.Fatalf("no first kset: %v", r.StopReason())
		}
		l := &extentList{}
		l.replace(0, 8192, &extent{gen: 1, start: 0, length: 8192, seg: 7, kind: extDirty}) // blocks 0 and 1
		targets := map[uint32]*wbTarget{0: {vs: newVolState(0, "v", 1<<20), v: &Volume{}, list: map[uint64]*extentList{0: l}}}
		collapseAhead(r, 64, first.Epoch, durable, targets)
		for _, x := range l.ext {
			if x.start < 4096 {
				block0 = true
			}
			if x.start+x.length > 4096 {
				block1 = true
			}
		}
		return block0, block1
	}
	// kset 2 not durable: block 0 is written back.
	if b0, b1 := pass(lsns[1]); !b0 || !b1 {
		t.Errorf("kset 2 not durable: pass writes block 0 %v, block 1 %v; want both", b0, b1)
	}
	// kset 2 durable: block 0 collapses; block 1 is only overwritten in
	// the next epoch and stays, even with everything durable.
	if b0, b1 := pass(lsns[3] + 1); b0 || !b1 {
		t.Errorf("everything durable: pass writes block 0 %v, block 1 %v; want only block 1", b0, b1)
	}
}
