package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
)

// TestBlackboxVolumesIsolatedAndRemovable runs two volumes on one small
// cache (so GC and writeback mix their data in shared segments) with
// interleaved random writes, discards, flushes and restarts; each must
// always read exactly its own reference, never the other's blocks. Then one
// volume is removed (its dirty data drained to its backing device), I/O to
// the removed handle fails with ErrNotReady, the other volume is unaffected,
// and re-adding the removed one shows its data from the backing device.
func TestBlackboxVolumesIsolatedAndRemovable(t *testing.T) {
	ctx := context.Background()
	seed := testSeed()
	log := newOpLog(t, "two-volumes", seed)
	rng := rand.New(rand.NewPCG(seed, 0x766f6c73))
	ops := 400
	if testkit.RaceEnabled {
		ops = 200
	}
	if longRun() {
		ops = 5000
	}
	o := rigOptions{Segments: 20, BackingSize: 2 << 20, Cfg: cachecore.Config{GCPercent: 40},
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}
	r := newRig(t, o, nil)
	defer r.close()
	// Volume "vol1" has another size and its own backing device.
	mem1 := backend.NewMemory(3 << 20)
	v1, err := r.cache.AddVolume(ctx, "vol1", mem1, r.opts.VC)
	mustOK(t, "AddVolume vol1", err)
	vols := []*cachecore.Volume{r.vol, v1}
	backs := []backend.Device{r.backing, mem1}
	refs := []*backend.Memory{backend.NewMemory(r.vol.Size()), backend.NewMemory(v1.Size())}
	names := []string{testVolName, "vol1"}
	const bs = 4096
	nextID := uint64(1)
	check := func(i int, what string) {
		t.Helper()
		got := make([]byte, vols[i].Size())
		want := make([]byte, vols[i].Size())
		mustOK(t, what+": read", vols[i].ReadAt(ctx, got, 0))
		mustOK(t, "reference read", refs[i].ReadAt(ctx, want, 0))
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: volume %s differs from its reference: %s", what, names[i], describeDiff(got, want, 0))
		}
	}
	for op := range ops {
		i := rng.IntN(2)
		v := vols[i]
		switch k := rng.IntN(100); {
		case k < 60:
			off := rng.Int64N(v.Size()/bs) * bs
			n := min((1+rng.Int64N(8))*bs, v.Size()-off)
			id := nextID
			nextID++
			log.add("%s write id=%d off=%d n=%d", names[i], id, off, n)
			p := tagged(id, off, int(n))
			mustOK(t, "write", v.WriteAt(ctx, p, off, rng.IntN(5) == 0))
			mustOK(t, "reference write", refs[i].WriteAt(ctx, p, off))
		case k < 70:
			off := rng.Int64N(v.Size()/bs) * bs
			n := min((1+rng.Int64N(16))*bs, v.Size()-off)
			log.add("%s discard off=%d n=%d", names[i], off, n)
			mustOK(t, "discard", v.Discard(ctx, off, n))
			mustOK(t, "reference discard", refs[i].Discard(ctx, off, n))
		case k < 80:
			log.add("%s flush", names[i])
			mustOK(t, "flush", v.Flush(ctx))
		case k < 95:
			log.add("%s read-all", names[i])
			check(i, fmt.Sprintf("op %d", op))
		default:
			log.add("restart")
			r.close()
			c, v0, err := openImage(ctx, r.media, r.backing, r.opts)
			mustOK(t, "restart", err)
			r.cache, r.vol = c, v0
			v1, err = c.AddVolume(ctx, "vol1", mem1, r.opts.VC)
			mustOK(t, "re-add vol1", err)
			vols = []*cachecore.Volume{r.vol, v1}
		}
	}
	check(0, "end")
	check(1, "end")

	// Remove vol1: its dirty data must reach its backing device.
	log.add("remove vol1")
	mustOK(t, "RemoveVolume", r.cache.RemoveVolume(ctx, "vol1", nil))
	if _, ok := r.cache.Volume("vol1"); ok {
		t.Fatal("removed volume still listed")
	}
	if err := v1.ReadAt(ctx, make([]byte, bs), 0); !errors.Is(err, blk.ErrNotReady) {
		t.Fatalf("read through a removed volume's handle: %v, want ErrNotReady", err)
	}
	got := make([]byte, v1.Size())
	want := make([]byte, v1.Size())
	mustOK(t, "backing read", backs[1].ReadAt(ctx, got, 0))
	mustOK(t, "reference read", refs[1].ReadAt(ctx, want, 0))
	if !bytes.Equal(got, want) {
		t.Fatalf("after RemoveVolume the backing device lacks data: %s", describeDiff(got, want, 0))
	}
	check(0, "after removing vol1")
	// Churn the cache so that vol1's old keys would be visible if they had
	// survived, then re-add it with its backing device changed underneath:
	// the cache must serve the backing device's data, not forgotten keys.
	for i := range 64 {
		off := int64(i) * bs
		mustOK(t, "write", r.vol.WriteAt(ctx, tagged(nextID, off, bs), off, false))
		mustOK(t, "reference write", refs[0].WriteAt(ctx, tagged(nextID, off, bs), off))
		nextID++
	}
	fresh := tagged(nextID, 0, int(v1.Size()))
	mustOK(t, "rewrite backing", mem1.WriteAt(ctx, fresh, 0))
	mustOK(t, "reference write", refs[1].WriteAt(ctx, fresh, 0))
	v1, err = r.cache.AddVolume(ctx, "vol1", mem1, r.opts.VC)
	mustOK(t, "re-add vol1", err)
	vols[1] = v1
	check(1, "re-added vol1")
	check(0, "end")
}
