package cachecore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// The old end of the grow tests is inside a stripe (6 MiB: stripe 1 is half
// in the volume) and inside the first 32 MiB bypass chunk.
const growOld, growNew = 6 << 20, 21 << 20

func readBack(t *testing.T, v *Volume, off int64, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if err := v.ReadAt(context.Background(), got, off); err != nil {
		t.Fatalf("read %d+%d: %v", off, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d+%d: data differs at byte %d", off, len(want), firstDiffAt(got, want))
	}
}

func firstDiffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i/4096)
	}
	return p
}

// TestGrowServesTheNewRange: after Grow the blocks past the old end read
// (zeroes from the backing device, then what was written) and write, across
// the old end too; the data reaches the backing device by writeback; a
// smaller size, a size past the device and a misaligned size are refused
// and change nothing.
func TestGrowServesTheNewRange(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 64, growOld, Config{}, VolumeConfig{})
	v := r.vol
	if err := v.WriteAt(ctx, make([]byte, 4096), growOld, false); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("write past the end before Grow: %v", err)
	}
	before := pattern(1<<20, 1)
	if err := v.WriteAt(ctx, before, growOld-1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Grow(ctx, growNew); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("Grow past the backing device: %v", err)
	}
	r.dev.Resize(growNew)
	if err := v.Grow(ctx, growNew-100); !errors.Is(err, blk.ErrMisaligned) {
		t.Fatalf("misaligned Grow: %v", err)
	}
	if err := v.Grow(ctx, growNew); err != nil {
		t.Fatal(err)
	}
	if v.Size() != growNew {
		t.Fatalf("size %d after Grow, want %d", v.Size(), growNew)
	}
	if err := v.Grow(ctx, growNew); err != nil {
		t.Fatalf("Grow to the same size: %v", err)
	}
	if err := v.Grow(ctx, growOld); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrink: %v", err)
	}
	if v.Size() != growNew {
		t.Fatalf("size %d after a refused shrink", v.Size())
	}
	readBack(t, v, growOld-1<<20, before)
	readBack(t, v, growOld, make([]byte, 1<<20)) // the new range: the device's zeroes
	across := pattern(2<<20, 50)
	if err := v.WriteAt(ctx, across, growOld-1<<20, false); err != nil {
		t.Fatal(err)
	}
	tail := pattern(1<<20, 100)
	if err := v.WriteAt(ctx, tail, growNew-1<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), growNew, false); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("write past the new end: %v", err)
	}
	readBack(t, v, growOld-1<<20, across)
	readBack(t, v, growNew-1<<20, tail)
	if err := v.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := r.dev.ReadAt(ctx, got, growNew-1<<20); err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("backing device after writeback: err %v, equal %v", err, bytes.Equal(got, tail))
	}
	if e := v.Explain(growNew - 4096); e.State == "out of range" {
		t.Fatalf("Explain of the new range: %+v", e)
	}
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestGrowIsRecorded: the new size is in the cache file's volume table when
// Grow returns, so the dirty data written past the old end comes back after
// a clean reopen and after a power cut; every crash image taken while Grow
// and the write ran opens, and reads the write or the device's zeroes.
func TestGrowIsRecorded(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 64, growOld, Config{}, VolumeConfig{})
	// Writeback would copy the data to the device, which survives the
	// power cut: the volume is attached again on a device that fails
	// writes, so its data stays in the cache only.
	mem := r.dev
	faulty := backend.NewFaulty(mem)
	faulty.Inject(backend.Fault{Op: backend.OpWrite})
	if err := r.cache.RemoveVolume(ctx, "v", nil); err != nil {
		t.Fatal(err)
	}
	v, err := r.cache.AddVolume(ctx, "v", faulty, r.vc)
	if err != nil {
		t.Fatal(err)
	}
	r.vol = v
	mem.Resize(growNew)
	p0 := r.media.PersistPoints()
	if err := r.vol.Grow(ctx, growNew); err != nil {
		t.Fatal(err)
	}
	if recs := r.cache.store.Volumes(); len(recs) != 1 || recs[0].Size != growNew {
		t.Fatalf("volume table after Grow: %+v", recs)
	}
	data := pattern(256<<10, 7)
	if err := r.vol.WriteAt(ctx, data, growNew-256<<10, true); err != nil { // FUA: durable now
		t.Fatal(err)
	}
	if mem.AllocatedBytes() != 0 {
		t.Fatal("the write reached the backing device: the test would not show the cache's record")
	}
	p1 := r.media.PersistPoints()
	zero := make([]byte, len(data))
	for p := p0; p <= p1; p++ {
		img := r.media.CrashImage(p, nil)
		st, err := persist.Open(img)
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		c, err := Open(ctx, st, r.cfg)
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		v, err := c.AddVolume(ctx, "v", mem.Clone(), r.vc)
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		if v.Size() != growNew {
			t.Fatalf("crash at persist point %d: size %d", p, v.Size())
		}
		got := make([]byte, len(data))
		if err := v.ReadAt(ctx, got, growNew-256<<10); err != nil {
			t.Fatal(err)
		}
		if p == p1 && !bytes.Equal(got, data) {
			t.Fatalf("power cut after the FUA write: the data past the old end is gone (byte %d)", firstDiffAt(got, data))
		}
		if !bytes.Equal(got, data) && !bytes.Equal(got, zero) {
			t.Fatalf("crash at persist point %d: the new range reads neither the write nor zeroes", p)
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A power cut with the device back at its old size (another device,
	// or it shrank): refused, the cache's data is not dropped.
	st, err := persist.Open(r.media.CrashImage(p1, nil))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, st, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	small := mem.Clone()
	small.Resize(growOld)
	if _, err := c.AddVolume(ctx, "v", small, r.vc); err == nil {
		t.Fatal("a device smaller than the recorded size was accepted")
	}
	c.Close(ctx)

	r.dev = mem.Clone()
	r.reopen(func(vs *volState) {
		if vs.size.Load() != growNew {
			t.Errorf("replayed size %d", vs.size.Load())
		}
	})
	readBack(t, r.vol, growNew-256<<10, data)
}

// TestGrowUnderIO: writers and readers run over the whole current size
// while the volume grows in steps (-race); every block reads what its
// writer last wrote, in the old and the new ranges. In writearound every
// write bypasses the cache, so the bypass tracker's new pages are used
// while read misses fill around them.
func TestGrowUnderIO(t *testing.T) {
	for _, m := range []Mode{ModeWriteback, ModeWritearound} {
		t.Run(string(m), func(t *testing.T) { growUnderIO(t, m) })
	}
}

func growUnderIO(t *testing.T, mode Mode) {
	ctx := context.Background()
	const bs = 4096
	r := newItRig(t, 96, 3<<20, Config{}, VolumeConfig{Mode: mode, SequentialCutoff: 64 << 10})
	v := r.vol
	const writers = 4
	// Past 4 GiB the index needs a second page of stripes, past 32 GiB
	// the bypass tracker a second page of chunk counters (the devices
	// are sparse).
	steps := []int64{5 << 20, 9<<20 + 4096, 40 << 20, 4<<30 + 8<<20, 33 << 30, 70 << 30}
	var stop atomic.Bool
	var ops atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newTestRand(uint64(w) + 1)
			last := map[int64]byte{}
			buf := make([]byte, 64<<10)
			for n := 0; !stop.Load() || n < 50; n++ {
				// Each writer owns the blocks whose index is w mod
				// writers; a request is one or more of them, so
				// writers never overlap.
				ops.Add(1)
				size := v.Size()
				nb := size / bs / writers
				blkI := rng.Int64N(nb)*writers + int64(w)
				off := blkI * bs
				ver := byte(n)
				switch rng.IntN(4) {
				case 0, 1:
					p := buf[:bs]
					for i := range p {
						p[i] = ver ^ byte(blkI)
					}
					if err := v.WriteAt(ctx, p, off, rng.IntN(8) == 0); err != nil {
						errs <- fmt.Errorf("write %d (size %d): %w", off, size, err)
						return
					}
					last[off] = ver
				case 2:
					p := buf[:bs]
					if err := v.ReadAt(ctx, p, off); err != nil {
						errs <- fmt.Errorf("read %d: %w", off, err)
						return
					}
					want := byte(0)
					if ver, ok := last[off]; ok {
						want = ver ^ byte(blkI)
					}
					if p[0] != want || p[bs-1] != want {
						errs <- fmt.Errorf("block %d reads %#x, want %#x", blkI, p[0], want)
						return
					}
				case 3:
					// a large read across many stripes, up to the end
					off := max(0, size-int64(len(buf))-rng.Int64N(size/2)) &^ (bs - 1)
					if err := v.ReadAt(ctx, buf, off); err != nil {
						errs <- fmt.Errorf("long read %d (size %d): %w", off, size, err)
						return
					}
				}
			}
		}()
	}
	for _, s := range steps {
		target := ops.Load() + 400
		testkit.WaitFor(t, 60*time.Second, "I/O between grows", func() bool { return ops.Load() >= target || len(errs) > 0 })
		r.dev.Resize(s)
		if err := v.Grow(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestGrowExtendsPageDirectories: past the pages a small volume has of the
// index (4 GiB each) and of the bypass tracker (32 GiB each, one spare),
// both cover the new end after Grow, so a bypass write there is counted
// (C7) and a write there is indexed.
func TestGrowExtendsPageDirectories(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, growOld, Config{}, VolumeConfig{Mode: ModeWritearound})
	const size = 100 << 30
	last := int64(size - 4096)
	if r.vol.tracker.counter(uint64(last)>>chunkShift, true) != nil || r.vol.st.idx.get(uint64(last)>>stripeShift) != nil {
		t.Fatal("a 6 MiB volume's structures reach 100 GiB")
	}
	r.dev.Resize(size)
	if err := r.vol.Grow(ctx, size); err != nil {
		t.Fatal(err)
	}
	if r.vol.tracker.counter(uint64(last)>>chunkShift, true) == nil {
		t.Fatal("the bypass tracker does not cover the new end")
	}
	if r.vol.st.idx.get(uint64(last)>>stripeShift) == nil {
		t.Fatal("the index does not cover the new end")
	}
	p := pattern(4096, 9)
	if err := r.vol.WriteAt(ctx, p, last, false); err != nil { // bypasses: counted in the tracker
		t.Fatal(err)
	}
	readBack(t, r.vol, last, p)
}

// TestGrowThenProcessKill: a write past the old end that is only in an
// open kset and the intent log when the process is killed comes back at the
// next Open: the new size was recorded before the write was admitted, so
// the recovery does not clip the key at the old end.
func TestGrowThenProcessKill(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t)
	old := r.vol.Size()
	r.dev.Resize(old + 8<<20)
	if err := r.vol.Grow(ctx, old+8<<20); err != nil {
		t.Fatal(err)
	}
	p := pattern(64<<10, 3)
	off := old + 4<<20
	if err := r.vol.WriteAt(ctx, p, off, false); err != nil { // no FUA: open kset and intent log only
		t.Fatal(err)
	}
	img := r.kill()
	if got := make([]byte, len(p)); img.dev.ReadAt(ctx, got, off) != nil || bytes.Equal(got, p) {
		t.Fatal("the write reached the backing device before the kill: the test would not show the recovery")
	}
	r.restart(img, &r.boot)
	if r.cache.stats.intentRecovered.Load() == 0 {
		t.Fatal("nothing recovered from the intent log")
	}
	if r.vol.Size() != old+8<<20 {
		t.Fatalf("size %d after the kill", r.vol.Size())
	}
	// In the index, not only written back later from the log: a key
	// clipped at the recorded size would leave a miss (zeroes from the
	// device) until writeback got to it.
	if e := r.vol.Explain(off); e.State != "hit" {
		t.Fatalf("the recovered write past the old end is not in the index: %+v", e)
	}
	readBack(t, r.vol, off, p)
}
