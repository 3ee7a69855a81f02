package cachecore_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
)

// indexDirtyBytes sums the dirty blocks the index reports (Explain) over
// the whole volume.
func indexDirtyBytes(v *cachecore.Volume, step int64) int64 {
	var n int64
	for off := int64(0); off < v.Size(); off += step {
		if v.Explain(off).Dirty {
			n += step
		}
	}
	return n
}

// checkDirtyBytes compares the volume's and the cache's DirtyBytes with the
// dirty bytes in the index while writeback is held at a gate on every
// backing write (so nothing turns clean during the comparison).
func checkDirtyBytes(t *testing.T, ctx context.Context, c *cachecore.Cache, v *cachecore.Volume, backing *backend.Faulty, what string) {
	t.Helper()
	gate := backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: v.Size()})
	defer gate.Release()
	arrived := gate.Arrived()
	mustOK(t, what+": flush", v.Flush(ctx))
	// With dirty data left, writeback comes to the gate and parks there
	// (a pass already past its backing writes may clean it first);
	// without, it has nothing to do. Either way no markClean runs while
	// the index is summed below.
	testkit.WaitFor(t, 10*time.Second, what+": writeback at the gate or no dirty bytes in the index", func() bool {
		if indexDirtyBytes(v, sector) == 0 {
			return true
		}
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		return gate.WaitArrived(wctx, arrived+1) == nil
	})
	want := indexDirtyBytes(v, sector)
	if got := v.Stats().DirtyBytes; got != want {
		t.Fatalf("%s: volume DirtyBytes = %d, the index holds %d dirty bytes", what, got, want)
	}
	if got := c.Stats().DirtyBytes; got != want {
		t.Fatalf("%s: cache DirtyBytes = %d, the index holds %d dirty bytes", what, got, want)
	}
}

// TestBlackboxDirtyBytesMatchIndex runs random overwrites, FUA writes,
// compare-and-writes, discards, flushes and partial writeback, and checks
// that DirtyBytes counts the bytes dirty in the index (an overwrite of
// dirty data counts once; writeback and discards subtract), also after a
// restart that replays the log.
func TestBlackboxDirtyBytesMatchIndex(t *testing.T) {
	seed := testSeed()
	t.Logf("seed %d (rerun with CACHELUN_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0xD1B7))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	o := rigOptions{Segments: 32, BackingSize: 1 << 20,
		Cfg: cachecore.Config{Writeback: cachecore.WritebackConfig{IdleAfter: time.Hour, TargetDirtyPercent: 90, HighWatermarkPercent: 95, MaxBytesPerSec: 256 << 10}},
		VC:  cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 512}}
	r := newRig(t, o, nil)
	defer r.close()
	size := r.vol.Size()
	// Overwrites concentrate on a small hot range so dirty data is
	// overwritten often before writeback reaches it.
	hot := size / 4
	nextID := uint64(1)
	rounds := 6
	if testkit.RaceEnabled {
		rounds = 4
	}
	for round := range rounds {
		for range 60 {
			lim := size
			if rng.IntN(3) > 0 {
				lim = hot
			}
			off := rng.Int64N(lim/sector) * sector
			n := min((1+rng.Int64N(24))*sector, size-off)
			switch k := rng.IntN(100); {
			case k < 70:
				mustOK(t, "write", r.vol.WriteAt(ctx, tagged(nextID, off, int(n)), off, rng.IntN(10) == 0))
				nextID++
			case k < 80:
				cur := make([]byte, n)
				mustOK(t, "read", r.vol.ReadAt(ctx, cur, off))
				mustOK(t, "compare and write", r.vol.CompareAndWrite(ctx, off, cur, tagged(nextID, off, int(n)), false))
				nextID++
			case k < 88:
				mustOK(t, "discard", r.vol.Discard(ctx, off, n))
			case k < 95:
				mustOK(t, "flush", r.vol.Flush(ctx))
			default:
				time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
			}
		}
		checkDirtyBytes(t, ctx, r.cache, r.vol, r.backing, "round "+string(rune('0'+round)))
	}
	// Leave dirty data of several epochs for the restart. A gate on every
	// backing write keeps writeback from cleaning it, through Close
	// (writeback's parked write ends when Close cancels it) and the
	// reopen, until the comparison below is done.
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: size})
	defer gate.Release()
	for e := range 8 {
		for i := range 4 {
			off := int64(e*4+i) * 8192
			mustOK(t, "write", r.vol.WriteAt(ctx, tagged(nextID, off, 8192), off, false))
			nextID++
		}
		mustOK(t, "flush", r.vol.Flush(ctx))
	}
	r.close()

	// Restart: the replayed index must give the same count.
	c, v, err := openImage(ctx, r.media, r.backing, o)
	mustOK(t, "reopen", err)
	defer func() {
		gate.Release()
		mustOK(t, "close", c.Close(ctx))
	}()
	after := indexDirtyBytes(v, sector)
	if after == 0 {
		t.Fatal("no dirty data after the restart: the replay check would be empty")
	}
	if got := v.Stats().DirtyBytes; got != after {
		t.Fatalf("after replay: volume DirtyBytes = %d, the index holds %d dirty bytes", got, after)
	}
	if got := c.Stats().DirtyBytes; got != after {
		t.Fatalf("after replay: cache DirtyBytes = %d, the index holds %d dirty bytes", got, after)
	}
	gate.Release()
	mustOK(t, "drain", v.Drain(ctx, nil))
	if got := v.Stats().DirtyBytes; got != 0 || indexDirtyBytes(v, sector) != 0 {
		t.Fatalf("after the drain DirtyBytes = %d, index %d", got, indexDirtyBytes(v, sector))
	}
	if got := c.Stats().DirtyBytes; got != 0 {
		t.Fatalf("after the drain the cache's DirtyBytes = %d", got)
	}
}

// TestBlackboxGCPercentStoredAcrossRestart: an explicit gc percent is
// persisted; the zero value (GCPercentStored) on the next Open keeps it,
// and SetConfig with the zero value keeps the value in force.
func TestBlackboxGCPercentStoredAcrossRestart(t *testing.T) {
	ctx := context.Background()
	o := rigOptions{Cfg: cachecore.Config{GCPercent: 35}}
	r := newRig(t, o, nil)
	if got := r.cache.GCPercent(); got != 35 {
		t.Fatalf("GCPercent() = %d, want 35", got)
	}
	mustOK(t, "SetConfig", r.cache.SetConfig(cachecore.Config{GCPercent: cachecore.GCPercentStored}))
	if got := r.cache.GCPercent(); got != 35 {
		t.Fatalf("SetConfig with the zero value changed the gc percent to %d", got)
	}
	r.close()
	o.Cfg.GCPercent = cachecore.GCPercentStored
	c, _, err := openImage(ctx, r.media, r.backing, o)
	mustOK(t, "reopen", err)
	defer c.Close(ctx)
	if got := c.GCPercent(); got != 35 {
		t.Fatalf("after a restart with the zero value GCPercent() = %d, want the stored 35", got)
	}
	if err := c.SetConfig(cachecore.Config{GCPercent: 91}); err == nil {
		t.Fatal("gc percent 91 accepted")
	}
}
