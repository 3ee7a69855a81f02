package cachecore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// TestWritebackCarriesVolumeNotAttached: dirty data of a volume recorded in
// the cache file but not attached does not stall writeback of the other
// volumes (one log serves them all): writeback journals its keys again and
// moves on. Its data survives GC passing the old keys, a crash, and is
// written back once the volume is attached again.
func TestWritebackCarriesVolumeNotAttached(t *testing.T) {
	ctx := context.Background()
	const devSize, blk = 4 << 20, 4096
	media, c, a, b, devA, devB, cfg, vc := newCarryPair(t, 64, devSize)
	var err error
	var st *persist.Store
	rng := rand.New(rand.NewPCG(5, 6))
	modelA, modelB := map[int64][]byte{}, map[int64][]byte{}
	// Writes of 1 to 8 blocks, so later ones replace parts of earlier
	// keys (a carried key must not bring replaced bytes back).
	write := func(v *Volume, model map[int64][]byte, n int) {
		t.Helper()
		for range n {
			nb := 1 + rng.Int64N(8)
			off := rng.Int64N(devSize/blk-nb+1) * blk
			p := make([]byte, nb*blk)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			for b := int64(0); b < nb; b++ {
				model[off+b*blk] = p[b*blk : (b+1)*blk]
			}
			if rng.IntN(20) == 0 {
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// B's data first in the log, then A's: A's writeback must pass B's.
	write(b, modelB, 200)
	write(a, modelA, 100)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Restart with only A attached.
	st, err = persist.Open(media)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(ctx) }()
	a, err = c.AddVolume(ctx, "a", devA, vc)
	if err != nil {
		t.Fatal(err)
	}
	write(a, modelA, 100)
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Drain(dctx, nil); err != nil {
		t.Fatalf("drain of the attached volume: %v (writeback stalled behind the volume not attached?)", err)
	}
	checkDev(t, "a (backing)", devA, modelA)
	if got := c.stats.writebackCarried.Load(); got == 0 {
		t.Fatal("no key was carried forward")
	}
	// GC (gc_percent 1) passes the old keys of B: the carried ones keep
	// its data.
	testkit.WaitFor(t, 10*time.Second, "GC to bring the key tail to the dirty tail", func() bool {
		if c.store.KeyTail().LSN >= c.store.DirtyTail().LSN {
			return true
		}
		c.kickGC()
		return false
	})
	cs := c.Stats()
	if cs.DirtyBytes == 0 {
		t.Fatal("B's dirty data vanished from the accounting")
	}
	if k := c.vols[1].Load().dirtyKeys.Load(); k <= 0 {
		t.Fatalf("B counts %d dirty keys after its keys were carried", k)
	}

	// A power cut now (only persisted bytes survive), then B is attached
	// again: its data is there and is written back.
	img := media.CrashImage(media.PersistPoints(), nil)
	// In the same session, B attached: its carried keys are written back
	// and the drain ends with nothing counted (the carry's accounting
	// matches the keys it left in the log).
	devB2 := devB.Clone()
	b2, err := c.AddVolume(ctx, "b", devB2, vc)
	if err != nil {
		t.Fatal(err)
	}
	checkVolume(t, "b (attached after the carry)", b2, modelB)
	if err := b2.Drain(dctx, nil); err != nil {
		t.Fatalf("drain of b after the carry: %v (dirty keys counted: %d)", err, c.vols[b2.st.id].Load().dirtyKeys.Load())
	}
	checkDev(t, "b (backing, same session)", devB2, modelB)
	if k, bytes := c.vols[b2.st.id].Load().dirtyKeys.Load(), b2.Stats().DirtyBytes; k != 0 || bytes != 0 {
		t.Fatalf("after the drain of b in the same session: %d dirty keys, %d dirty bytes counted", k, bytes)
	}
	c.Close(ctx)
	st, err = persist.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err = c.AddVolume(ctx, "b", devB, vc)
	if err != nil {
		t.Fatal(err)
	}
	checkVolume(t, "b (after the crash)", b, modelB)
	if err := b.Drain(dctx, nil); err != nil {
		t.Fatal(err)
	}
	checkDev(t, "b (backing)", devB, modelB)
	// Carried keys are counted as they are appended and the originals
	// uncounted as dirty_tail passes them: after the drain nothing is
	// left, neither missing (a drain ending early) nor over (one that
	// never ends).
	if k, bytes := c.vols[b.st.id].Load().dirtyKeys.Load(), b.Stats().DirtyBytes; k != 0 || bytes != 0 {
		t.Fatalf("after the drain: %d dirty keys, %d dirty bytes counted", k, bytes)
	}
}

// newCarryPair opens a cache of segs segments on crash media with volumes
// "a" and "b" (memory backing devices of devSize), GC eager (1 %),
// writeback only when a drain asks for it, and no grace period for
// carrying keys after Open.
func newCarryPair(t *testing.T, segs int, devSize int64) (media *persist.CrashMedia, c *Cache, a, b *Volume, devA, devB *backend.Memory, cfg Config, vc VolumeConfig) {
	t.Helper()
	ctx := context.Background()
	media = persist.NewCrashMedia(persist.SegmentsOffset+int64(segs)*itSegSize, persist.TearDAX)
	st, err := persist.Format(media, persist.FormatOptions{SegmentSize: itSegSize})
	if err != nil {
		t.Fatal(err)
	}
	cfg = Config{JournalFlushInterval: 5 * time.Millisecond, GCPercent: 1, noCarryGrace: true,
		Writeback: WritebackConfig{TargetDirtyPercent: 90, HighWatermarkPercent: 95, IdleAfter: time.Hour, MaxBytesPerSec: 1}}
	vc = VolumeConfig{Mode: ModeWriteback, BlockSize: 512}
	if c, err = Open(ctx, st, cfg); err != nil {
		t.Fatal(err)
	}
	devA, devB = backend.NewMemory(devSize), backend.NewMemory(devSize)
	if a, err = c.AddVolume(ctx, "a", devA, vc); err != nil {
		t.Fatal(err)
	}
	if b, err = c.AddVolume(ctx, "b", devB, vc); err != nil {
		t.Fatal(err)
	}
	return
}

func checkVolume(t *testing.T, name string, v *Volume, model map[int64][]byte) {
	t.Helper()
	got := make([]byte, 4096)
	for off, want := range model {
		if err := v.ReadAt(context.Background(), got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: block at %d differs", name, off)
		}
	}
}

func checkDev(t *testing.T, name string, d *backend.Memory, model map[int64][]byte) {
	t.Helper()
	got := make([]byte, 4096)
	for off, want := range model {
		if err := d.ReadAt(context.Background(), got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: block at %d differs", name, off)
		}
	}
}

// TestCarryForwardCrashPoints crashes at every persist point of a drain of
// volume A that carries the dirty keys of volume B (not attached) forward,
// with torn and dropped unpersisted writes, and checks that every
// acknowledged-and-flushed block of A and B reads back after the restart.
func TestCarryForwardCrashPoints(t *testing.T) {
	ctx := context.Background()
	const devSize, blk = 2 << 20, 4096
	media, c, a, b, devA, devB, cfg, vc := newCarryPair(t, 48, devSize)
	var err error
	var st *persist.Store
	rng := rand.New(rand.NewPCG(8, 9))
	modelA, modelB := map[int64][]byte{}, map[int64][]byte{}
	for i := range 240 {
		v, model := a, modelA
		if i%3 != 0 {
			v, model = b, modelB
		}
		off := rng.Int64N(devSize/blk) * blk
		p := make([]byte, blk)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		model[off] = p
		if i%25 == 0 {
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	from := media.PersistPoints()

	st, err = persist.Open(media)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err = c.AddVolume(ctx, "a", devA, vc)
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.Drain(dctx, nil); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); c.store.KeyTail().LSN < c.store.DirtyTail().LSN && time.Now().Before(deadline); {
		c.kickGC()
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if c.stats.writebackCarried.Load() == 0 {
		t.Fatal("nothing was carried forward")
	}
	to := media.PersistPoints()
	// Every point with CACHELUN_LONG=1 (about 8,000 images, 50 s);
	// otherwise a spread of them.
	step := 1
	switch {
	case os.Getenv("CACHELUN_LONG") != "":
	case testing.Short() || testkit.RaceEnabled:
		step = max(1, (to-from)/40)
	default:
		step = max(1, (to-from)/200)
	}
	images := 0
	for point := from; point <= to; point += step {
		for _, torn := range []bool{false, true} {
			var trng *rand.Rand
			if torn {
				trng = rand.New(rand.NewPCG(uint64(point), 1))
			}
			img := media.CrashImage(point, trng)
			st, err := persist.Open(img)
			if err != nil {
				t.Fatalf("point %d: %v", point, err)
			}
			c, err := Open(ctx, st, Config{GCPercent: 90, Writeback: cfg.Writeback})
			if err != nil {
				t.Fatalf("point %d: %v", point, err)
			}
			// Each image gets its own copy of A's backing device (all of
			// A's data after the drain): the image's own writeback must
			// not change what the next image reads.
			va, err := c.AddVolume(ctx, "a", devA.Clone(), vc)
			if err != nil {
				t.Fatal(err)
			}
			vb, err := c.AddVolume(ctx, "b", devB.Clone(), vc)
			if err != nil {
				t.Fatal(err)
			}
			checkVolume(t, fmt.Sprintf("a, crash at point %d (torn %v)", point, torn), va, modelA)
			checkVolume(t, fmt.Sprintf("b, crash at point %d (torn %v)", point, torn), vb, modelB)
			c.Close(ctx)
			images++
		}
	}
	t.Logf("%d crash images over persist points %d..%d", images, from, to)
}

// TestCarryWaitsForAttachAfterOpen: for carryGrace after Open, writeback
// waits for a volume with dirty data to be attached (a daemon attaches its
// volumes right after Open) instead of carrying its keys forward; then it
// carries them and the other volumes' writeback goes on.
func TestCarryWaitsForAttachAfterOpen(t *testing.T) {
	ctx := context.Background()
	const devSize = 1 << 20
	media := persist.NewCrashMedia(persist.SegmentsOffset+32*itSegSize, persist.TearDAX)
	st, err := persist.Format(media, persist.FormatOptions{SegmentSize: itSegSize})
	if err != nil {
		t.Fatal(err)
	}
	clk := testkit.NewClock(time.Unix(1_000_000, 0))
	cfg := Config{Clock: clk, JournalFlushInterval: 5 * time.Millisecond,
		Writeback: WritebackConfig{TargetDirtyPercent: 90, HighWatermarkPercent: 95, IdleAfter: time.Hour, MaxBytesPerSec: 1}}
	vc := VolumeConfig{Mode: ModeWriteback, BlockSize: 512}
	c, err := Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	devA, devB := backend.NewMemory(devSize), backend.NewMemory(devSize)
	// Writeback of the first session parks at these gates (Close ends the
	// parked writes): the data stays dirty for the second session.
	fa, fb := backend.NewFaulty(devA), backend.NewFaulty(devB)
	ga, gb := fa.Gate(backend.OpWrite, backend.Range{Off: 0, Len: devSize}), fb.Gate(backend.OpWrite, backend.Range{Off: 0, Len: devSize})
	defer ga.Release()
	defer gb.Release()
	b, err := c.AddVolume(ctx, "b", fb, vc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.AddVolume(ctx, "a", fa, vc)
	if err != nil {
		t.Fatal(err)
	}
	pb, pa := bytes.Repeat([]byte{0xbb}, 64<<10), bytes.Repeat([]byte{0xaa}, 64<<10)
	if err := b.WriteAt(ctx, pb, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteAt(ctx, pa, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}

	st, err = persist.Open(media)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(ctx) }()
	a, err = c.AddVolume(ctx, "a", devA, vc)
	if err != nil {
		t.Fatal(err)
	}
	if a.Stats().DirtyBytes == 0 {
		t.Fatal("a has no dirty data after the restart; the test needs some")
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = a.Drain(short, nil)
	cancel()
	if err == nil || c.stats.writebackCarried.Load() != 0 {
		t.Fatalf("within the grace period: drain %v, %d keys carried; want a wait and none carried", err, c.stats.writebackCarried.Load())
	}
	clk.Add(carryGrace + time.Second)
	long, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Drain(long, nil); err != nil {
		t.Fatalf("after the grace period: %v", err)
	}
	if c.stats.writebackCarried.Load() == 0 {
		t.Fatal("after the grace period nothing was carried")
	}
	got := make([]byte, len(pa))
	if err := devA.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, pa) {
		t.Fatalf("a's data not written back: %v", err)
	}
}
