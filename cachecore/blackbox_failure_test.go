package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

var errInjectedMedia = errors.New("injected cache media failure")

// waitFailed waits until the cache reports its retirement.
func waitFailed(t *testing.T, c *cachecore.Cache) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, "the cache to report the media failure (Err() non-nil)", func() bool { return c.Err() != nil })
	if !c.Stats().Failed {
		t.Error("Err() is set but Stats().Failed is false")
	}
}

// closeNoLeak closes the cache within a deadline and checks that no
// goroutine it started survives.
func closeNoLeak(t *testing.T, r *rig, ignore goleak.Option) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.cache.Close(ctx) }()
	select {
	case err := <-done:
		// A failed cache may report the failure from Close; it must not hang.
		if err != nil {
			t.Logf("Close of a failed cache: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Close of a failed cache hangs")
	}
	r.cache = nil
	goleak.VerifyNone(t, ignore)
}

// writeSet writes n random 4 KiB blocks with ids from *next and returns the
// reference content.
func writeSet(t *testing.T, v *cachecore.Volume, ref *backend.Memory, rng *rand.Rand, next *uint64, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		off := rng.Int64N(v.Size()/4096) * 4096
		p := tagged(*next, off, 4096)
		*next++
		mustOK(t, "write", v.WriteAt(ctx, p, off, false))
		mustOK(t, "reference write", ref.WriteAt(ctx, p, off))
	}
}

func equalVolume(t *testing.T, v *cachecore.Volume, ref *backend.Memory, what string) {
	t.Helper()
	ctx := context.Background()
	got := make([]byte, v.Size())
	want := make([]byte, v.Size())
	mustOK(t, what+": read", v.ReadAt(ctx, got, 0))
	mustOK(t, "reference read", ref.ReadAt(ctx, want, 0))
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: volume differs from the reference: %s", what, describeDiff(got, want, 0))
	}
}

// TestBlackboxFailureAutoClean: a volume without dirty data (writethrough)
// continues in passthrough on the backing device after the cache media fails
// (policy auto), with all its data, and the cache shuts down without leaking
// goroutines.
func TestBlackboxFailureAutoClean(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 1))
	r := newRig(t, rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWritethrough}}, nil)
	ref := backend.NewMemory(r.opts.BackingSize)
	next := uint64(1)
	writeSet(t, r.vol, ref, rng, &next, 50)
	mustOK(t, "flush", r.vol.Flush(ctx))
	equalVolume(t, r.vol, ref, "before the failure")

	r.media.FailAfter(0, errInjectedMedia)
	// Keep doing I/O: the first media access fails and retires the cache;
	// none of these requests may fail, because the volume has no dirty data.
	writeSet(t, r.vol, ref, rng, &next, 30)
	mustOK(t, "flush after the failure", r.vol.Flush(ctx))
	waitFailed(t, r.cache)
	if err := r.cache.Err(); !errors.Is(err, cachecore.ErrCacheFailed) && !errors.Is(err, persist.ErrMediaFault) {
		t.Errorf("Err() = %v, want ErrCacheFailed or ErrMediaFault", err)
	}
	writeSet(t, r.vol, ref, rng, &next, 20)
	equalVolume(t, r.vol, ref, "after the failure")
	// The backing device alone holds everything.
	got := make([]byte, r.opts.BackingSize)
	want := make([]byte, r.opts.BackingSize)
	mustOK(t, "backing read", r.mem.ReadAt(ctx, got, 0))
	mustOK(t, "reference read", ref.ReadAt(ctx, want, 0))
	if !bytes.Equal(got, want) {
		t.Fatalf("backing device lacks data: %s", describeDiff(got, want, 0))
	}
	closeNoLeak(t, r, ignore)
}

// TestBlackboxFailureAutoDirty: a writeback volume holding dirty data fails
// I/O with MEDIUM ERROR once the media fails, keeps the dirty data on the
// media, and a restart on the repaired media recovers every flushed write.
func TestBlackboxFailureAutoDirty(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(2, 2))
	r := newRig(t, rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback},
		// No idle writeback during the test, and after its first pass
		// writeback pauses for (bytes written) seconds: the data must stay
		// dirty.
		Cfg: cachecore.Config{Writeback: cachecore.WritebackConfig{IdleAfter: time.Hour, TargetDirtyPercent: 90, HighWatermarkPercent: 95, MaxBytesPerSec: 1}}}, nil)
	ref := backend.NewMemory(r.opts.BackingSize)
	next := uint64(1)
	// A slow machine may let the first writeback pass take a whole round;
	// the next round then stays dirty.
	for round := 0; round == 0 || (round < 3 && r.vol.Stats().DirtyBytes == 0); round++ {
		writeSet(t, r.vol, ref, rng, &next, 60)
		mustOK(t, "flush", r.vol.Flush(ctx))
	}
	if r.vol.Stats().DirtyBytes == 0 {
		t.Fatal("no dirty data before the failure; the test needs some")
	}

	r.media.FailAfter(0, errInjectedMedia)
	var failures int
	for i := range 10 {
		off := int64(i) * 4096
		err := r.vol.WriteAt(ctx, tagged(1<<40+uint64(i), off, 4096), off, false)
		if err != nil {
			failures++
			if !errors.Is(err, blk.ErrMedium) {
				t.Fatalf("write on a failed cache with dirty data: %v, want ErrMedium", err)
			}
		}
		p := make([]byte, 4096)
		if err := r.vol.ReadAt(ctx, p, off); err != nil && !errors.Is(err, blk.ErrMedium) {
			t.Fatalf("read on a failed cache with dirty data: %v, want ErrMedium", err)
		}
	}
	waitFailed(t, r.cache)
	if err := r.vol.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("write after retirement: %v, want ErrMedium", err)
	}
	if err := r.vol.Flush(ctx); err == nil {
		t.Fatal("flush after retirement succeeded although dirty data cannot be made durable")
	}
	closeNoLeak(t, r, ignore)

	// Repair the media and restart: every write flushed before the failure
	// is there (the writes attempted during the failure may or may not be).
	r.media.FailAfter(-1, nil)
	c, v, err := openImage(ctx, r.media, r.backing, r.opts)
	if err != nil {
		t.Fatalf("restart on the repaired media: %v", err)
	}
	defer c.Close(ctx)
	got := make([]byte, v.Size())
	mustOK(t, "read after restart", v.ReadAt(ctx, got, 0))
	want := make([]byte, v.Size())
	mustOK(t, "reference read", ref.ReadAt(ctx, want, 0))
	for s := int64(0); s < v.Size()/sector; s++ {
		g, w := got[s*sector:(s+1)*sector], want[s*sector:(s+1)*sector]
		if bytes.Equal(g, w) {
			continue
		}
		id, derr := decodeSector(g, s)
		if derr == nil && id >= 1<<40 && s < 10*4096/sector {
			continue // a write attempted during the failure
		}
		t.Fatalf("after restart: %s", describeDiff(g, w, s*sector))
	}
	mustOK(t, "drain after restart", v.Drain(ctx, nil))
}

// TestBlackboxFailurePolicyFail: with on_cache_failure = "fail" even a clean
// volume fails I/O with MEDIUM ERROR once the media failed.
func TestBlackboxFailurePolicyFail(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 3))
	r := newRig(t, rigOptions{Cfg: cachecore.Config{OnCacheFailure: cachecore.FailFail},
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWritethrough}}, nil)
	ref := backend.NewMemory(r.opts.BackingSize)
	next := uint64(1)
	writeSet(t, r.vol, ref, rng, &next, 20)
	r.media.FailAfter(0, errInjectedMedia)
	for i := 0; i < 20 && r.cache.Err() == nil; i++ {
		r.vol.WriteAt(ctx, make([]byte, 4096), 0, false)
		r.vol.ReadAt(ctx, make([]byte, 4096), 4096)
	}
	waitFailed(t, r.cache)
	if err := r.vol.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("read on a failed cache under policy fail: %v, want ErrMedium", err)
	}
	if err := r.vol.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("write on a failed cache under policy fail: %v, want ErrMedium", err)
	}
	closeNoLeak(t, r, ignore)
}

// TestBlackboxFailureDuringBackgroundWork injects the media failure after a
// random number of media accesses while writeback and GC run, for several
// seeds: the cache must retire and shut down without leaking goroutines, and
// a restart on the repaired media must show every write flushed before the
// failure (or a newer write to the same block).
func TestBlackboxFailureDuringBackgroundWork(t *testing.T) {
	runs := 6
	if longRun() {
		runs = 60
	}
	for run := range runs {
		func() {
			ignore := goleak.IgnoreCurrent()
			ctx := context.Background()
			seed := testSeed()
			rng := rand.New(rand.NewPCG(seed, uint64(run)))
			r := newRig(t, rigOptions{Segments: 16, BackingSize: 2 << 20, Cfg: cachecore.Config{GCPercent: 30},
				VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}, nil)
			ref := backend.NewMemory(r.opts.BackingSize)
			next := uint64(1)
			writeSet(t, r.vol, ref, rng, &next, 80)
			mustOK(t, "flush", r.vol.Flush(ctx))
			failAt := rng.IntN(200)
			r.media.FailAfter(failAt, errInjectedMedia)
			later := map[int64]bool{} // blocks written after the flush
			for range 80 {
				off := rng.Int64N(r.vol.Size()/4096) * 4096
				id := next
				next++
				if err := r.vol.WriteAt(ctx, tagged(id, off, 4096), off, false); err != nil && !errors.Is(err, blk.ErrMedium) {
					t.Fatalf("seed %d run %d: write during the failure: %v, want nil or ErrMedium", seed, run, err)
				}
				later[off] = true
			}
			r.vol.Drain(ctx, nil) // may fail: the cache may be retired
			closeNoLeak(t, r, ignore)

			r.media.FailAfter(-1, nil)
			c, v, err := openImage(ctx, r.media, r.backing, r.opts)
			if err != nil {
				t.Fatalf("seed %d run %d (fail after %d): restart: %v", seed, run, failAt, err)
			}
			got := make([]byte, v.Size())
			mustOK(t, "read after restart", v.ReadAt(ctx, got, 0))
			want := make([]byte, v.Size())
			mustOK(t, "reference read", ref.ReadAt(ctx, want, 0))
			for off := int64(0); off < v.Size(); off += 4096 {
				if bytes.Equal(got[off:off+4096], want[off:off+4096]) {
					continue
				}
				if id, err := blockID(got[off:off+4096], off); err == nil && later[off] && id >= next-80 {
					continue // a write issued after the flush
				}
				t.Fatalf("seed %d run %d (fail after %d): after restart: %s", seed, run, failAt, describeDiff(got[off:off+4096], want[off:off+4096], off))
			}
			c.Close(ctx)
		}()
	}
}
