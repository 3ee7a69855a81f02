package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// TestPurgeReplicaDropsWithoutWriteback: a replicated volume's dirty data,
// left in the cache by a run that ended with it unwritten, is dropped by
// PurgeReplica: it never reaches the backing device (writeback passes its
// keys: another volume's later dirty data drains past them), a restart does
// not bring it back, and the volume added again reads its backing device.
// A volume that was not replicated is refused, and nothing of it changes.
func TestPurgeReplicaDropsWithoutWriteback(t *testing.T) {
	ctx := context.Background()
	old := bytes.Repeat([]byte{0xab}, 1<<20)
	wdata := bytes.Repeat([]byte{0x5c}, 64<<10)
	sc := newPurgeScene(t, old, wdata)
	media, replVC, plainVC, backV, backW := sc.media, sc.replVC, sc.plainVC, sc.backV, sc.backW
	var writesAfterPurge atomic.Int64

	reopen := func() *cachecore.Cache {
		t.Helper()
		c, err := sc.open(media)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := reopen()
	if _, err := c.PurgeReplica("w"); !errors.Is(err, cachecore.ErrNotReplicated) {
		t.Fatalf("PurgeReplica of a volume never replicated: %v, want ErrNotReplicated", err)
	}
	backV.ClearFaults()
	backV.SetHook(func(op backend.Op, off, n int64) {
		if op == backend.OpWrite {
			writesAfterPurge.Add(1)
		}
	})
	dropped, err := c.PurgeReplica("v")
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 1<<20 {
		t.Errorf("PurgeReplica dropped %d dirty bytes, want %d", dropped, 1<<20)
	}
	if n, err := c.PurgeReplica("v"); err != nil || n != 0 {
		t.Errorf("second PurgeReplica: %d, %v; want 0, nil", n, err)
	}
	// w's dirty data comes after v's in the log: its drain passes v's keys
	w, err := c.AddVolume(ctx, "w", backW, plainVC)
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := w.Drain(dctx, nil); err != nil {
		t.Fatalf("drain of the other volume past the purged keys: %v", err)
	}
	got := make([]byte, len(wdata))
	if err := backW.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, wdata) {
		t.Fatalf("the other volume's data did not reach its backing device (%v)", err)
	}
	zero := make([]byte, 1<<20)
	back := make([]byte, 1<<20)
	if err := backV.ReadAt(ctx, back, 0); err != nil || !bytes.Equal(back, zero) || writesAfterPurge.Load() != 0 {
		t.Fatalf("purged dirty data reached the backing device (%v, %d writes)", err, writesAfterPurge.Load())
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckInvariants(); err != nil {
		t.Fatal(err)
	}

	// a restart: the purge is durable, the volume comes back empty
	c = reopen()
	defer c.Close(ctx)
	v, err := c.AddVolume(ctx, "v", backV, replVC)
	if err != nil {
		t.Fatal(err)
	}
	if st := v.Stats(); st.DirtyBytes != 0 {
		t.Errorf("purged volume added again has %d dirty bytes", st.DirtyBytes)
	}
	got = make([]byte, 1<<20)
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, zero) {
		t.Fatalf("purged volume added again reads the dropped data (%v)", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestPurgeReplicaRefusesAttached: an attached volume is not purged.
func TestPurgeReplicaRefusesAttached(t *testing.T) {
	c, v, _ := openReplicated(t)
	if _, err := c.PurgeReplica(v.Name()); err == nil {
		t.Fatal("PurgeReplica of an attached volume succeeded")
	}
}

// TestReplicatedFlagFollowsTheConfig: the volume record says whether the
// volume was replicated when it was last attached, so a volume attached
// again without replication is no longer purgeable.
func TestReplicatedFlagFollowsTheConfig(t *testing.T) {
	ctx := context.Background()
	media := persist.NewCrashMedia(persist.SegmentsOffset+16*(1<<20), persist.TearDAX)
	store, err := persist.Format(media, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, store, cachecore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	back := backend.NewMemory(4 << 20)
	vc := cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096, Replicated: true}
	if _, err := c.AddVolume(ctx, "v", back, vc); err != nil {
		t.Fatal(err)
	}
	flagOf := func() uint32 {
		for _, r := range store.Volumes() {
			if r.Name == "v" {
				return r.Flags
			}
		}
		t.Fatal("no record of v")
		return 0
	}
	if flagOf()&persist.VolumeFlagReplicated == 0 {
		t.Fatal("replicated volume's record is not marked replicated")
	}
	if err := c.RemoveVolume(ctx, "v", nil); err != nil {
		t.Fatal(err)
	}
	vc.Replicated = false
	if _, err := c.AddVolume(ctx, "v", back, vc); err != nil {
		t.Fatal(err)
	}
	if flagOf()&persist.VolumeFlagReplicated != 0 {
		t.Fatal("volume attached without replication still marked replicated")
	}
}

// TestPurgeReplicaCrashAtEveryPersistPoint: a crash at any persist point
// of a PurgeReplica, and of the other volume's drain past the purged keys
// after it, leaves one of two states, in order: before the purge (the
// replicated volume's record and all its dirty data are there) or after
// it (the volume comes back empty and none of its dropped data is ever
// served or written back); never a mix, never the purge undone once it
// was durable. The other volume's data reads back in every image, clean
// or torn.
func TestPurgeReplicaCrashAtEveryPersistPoint(t *testing.T) {
	ctx := context.Background()
	vdata := bytes.Repeat([]byte{0xab}, 256<<10)
	wdata := bytes.Repeat([]byte{0x5c}, 64<<10)
	sc := newPurgeScene(t, vdata, wdata)
	media, replVC, plainVC, backW := sc.media, sc.replVC, sc.plainVC, sc.backW
	open := sc.open
	c, err := open(media)
	if err != nil {
		t.Fatal(err)
	}
	first := media.PersistPoints()
	if _, err := c.PurgeReplica("v"); err != nil {
		t.Fatal(err)
	}
	w, err := c.AddVolume(ctx, "w", backW, plainVC)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	last := media.PersistPoints()
	if last <= first {
		t.Fatalf("no persist point between %d and %d", first, last)
	}

	zero := make([]byte, len(vdata))
	purgedAt := -1
	for p := first; p <= last; p++ {
		for _, torn := range []bool{false, true} {
			var rng *rand.Rand
			if torn {
				rng = rand.New(rand.NewPCG(uint64(p), 7))
			}
			img := media.CrashImage(p, rng)
			c, err := open(img)
			if err != nil {
				t.Fatalf("crash after persist point %d (torn %v): open: %v", p, torn, err)
			}
			// v on a backing device of its own that records writes: a
			// purged volume's data must never reach it
			bv := backend.NewFaulty(backend.NewMemory(8 << 20))
			var writes atomic.Int64
			bv.SetHook(func(op backend.Op, off, n int64) {
				if op == backend.OpWrite {
					writes.Add(1)
				}
			})
			v, err := c.AddVolume(ctx, "v", bv, replVC)
			if err != nil {
				t.Fatalf("point %d: AddVolume v: %v", p, err)
			}
			got := make([]byte, len(vdata))
			if err := v.ReadAt(ctx, got, 0); err != nil {
				t.Fatalf("point %d: read v: %v", p, err)
			}
			// (before the purge, writeback may be writing v's data to bv
			// meanwhile: its dirty count says nothing then)
			purged := false
			switch {
			case bytes.Equal(got, vdata):
				if purgedAt >= 0 {
					t.Fatalf("point %d (torn %v): the purge durable at point %d is undone: v's dropped data is back", p, torn, purgedAt)
				}
			case bytes.Equal(got, zero):
				if dirty := v.Stats().DirtyBytes; dirty != 0 {
					t.Fatalf("point %d (torn %v): v reads as purged but has %d dirty bytes", p, torn, dirty)
				}
				purged = true
				// a torn image may hold the purge's write before its
				// persist point: only clean images say when it is durable
				if purgedAt < 0 && !torn {
					purgedAt = p
				}
			default:
				t.Fatalf("point %d (torn %v): v reads neither all its data nor none of it", p, torn)
			}
			w, err := c.AddVolume(ctx, "w", backW, plainVC)
			if err != nil {
				t.Fatalf("point %d: AddVolume w: %v", p, err)
			}
			gw := make([]byte, len(wdata))
			if err := w.ReadAt(ctx, gw, 0); err != nil || !bytes.Equal(gw, wdata) {
				t.Fatalf("point %d (torn %v): the other volume's data does not read back (%v)", p, torn, err)
			}
			// writeback passes v's keys on its way to w's
			if err := w.Drain(ctx, nil); err != nil {
				t.Fatalf("point %d (torn %v): drain w: %v", p, torn, err)
			}
			if err := c.Close(ctx); err != nil {
				t.Fatalf("point %d: close: %v", p, err)
			}
			if err := c.CheckInvariants(); err != nil {
				t.Fatalf("point %d (torn %v): %v", p, torn, err)
			}
			if purged && writes.Load() != 0 {
				t.Fatalf("point %d (torn %v): a purged volume's data was written back (%d writes)", p, torn, writes.Load())
			}
		}
	}
	if purgedAt < 0 {
		t.Fatalf("no crash image between persist points %d and %d has the purge", first, last)
	}
	if purgedAt == first {
		t.Fatalf("the clean image of persist point %d, before the purge, already has it", first)
	}
	t.Logf("persist points %d..%d, the purge durable from point %d", first, last, purgedAt)
}

// purgeScene is a closed cache file on crash media whose replicated
// volume v holds vdata dirty at offset 0 (its backing device refuses
// writes, so none of it was written back) and whose plain volume w holds
// wdata dirty at 0: a run that ended with v's data unwritten.
type purgeScene struct {
	media           *persist.CrashMedia
	cfg             cachecore.Config
	replVC, plainVC cachecore.VolumeConfig
	backV           *backend.Faulty // refuses writes until ClearFaults
	backW           *backend.Memory
}

func newPurgeScene(t *testing.T, vdata, wdata []byte) *purgeScene {
	t.Helper()
	ctx := context.Background()
	sc := &purgeScene{
		media:   persist.NewCrashMedia(persist.SegmentsOffset+32*(1<<20), persist.TearDAX),
		cfg:     cachecore.Config{JournalFlushInterval: 5 * time.Millisecond},
		replVC:  cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096, Replicated: true},
		plainVC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096},
		backV:   backend.NewFaulty(backend.NewMemory(8 << 20)),
		backW:   backend.NewMemory(8 << 20),
	}
	sc.backV.Inject(backend.Fault{Op: backend.OpWrite})
	store, err := persist.Format(sc.media, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, store, sc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, vol := range []struct {
		name string
		back backend.Device
		vc   cachecore.VolumeConfig
		data []byte
	}{{"v", sc.backV, sc.replVC, vdata}, {"w", sc.backW, sc.plainVC, wdata}} {
		v, err := c.AddVolume(ctx, vol.name, vol.back, vol.vc)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, vol.data, 0, false); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return sc
}

// open opens the cache on m (the scene's media or a crash image of it).
func (sc *purgeScene) open(m persist.Media) (*cachecore.Cache, error) {
	st, err := persist.Open(m)
	if err != nil {
		return nil, err
	}
	return cachecore.Open(context.Background(), st, sc.cfg)
}
