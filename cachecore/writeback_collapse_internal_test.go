package cachecore

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
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
	deadline := time.Now().Add(10 * time.Second)
	for c.durableHead.Load() < c.store.KeyTail().LSN+ksets {
		if time.Now().After(deadline) {
			t.Fatal("the full ksets did not become durable")
		}
		time.Sleep(time.Millisecond)
	}
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
