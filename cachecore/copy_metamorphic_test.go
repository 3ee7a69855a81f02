package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
)

// copyBy copies like target/scsi's copyRange without a Copier: read, then
// write, in chunks, backwards when the destination starts inside the
// source.
func copyBy(ctx context.Context, src, dst blk.Volume, srcOff, dstOff, n int64, fua bool) error {
	const chunk = 256 << 10
	buf := make([]byte, min(n, chunk))
	backwards := src == dst && dstOff > srcOff && dstOff < srcOff+n
	for done := int64(0); done < n; {
		c := min(int64(len(buf)), n-done)
		at := done
		if backwards {
			at = n - done - c
		}
		if err := src.ReadAt(ctx, buf[:c], srcOff+at); err != nil {
			return err
		}
		if err := dst.WriteAt(ctx, buf[:c], dstOff+at, fua); err != nil {
			return err
		}
		done += c
	}
	return nil
}

// copyOrFallBack copies through CopyFrom, or by read and write where it
// answers ErrUnsupported (as target/scsi does).
func copyOrFallBack(ctx context.Context, src, dst *cachecore.Volume, srcOff, dstOff, n int64, fua bool) error {
	err := dst.CopyFrom(ctx, src, srcOff, dstOff, n, fua)
	if errors.Is(err, blk.ErrUnsupported) {
		return copyBy(ctx, src, dst, srcOff, dstOff, n, fua)
	}
	return err
}

// TestBlackboxCopyMetamorphic runs the same random workload of writes,
// discards, flushes, copies (within and between two volumes, overlapping,
// cached, partly cached and not), mode switches, drains and restarts on
// two caches: one copies with CopyFrom, the other by reading and writing
// through the volume, and a memory reference copies with memmove. Every
// check reads all three the same, and after the final drain the backing
// devices of both caches hold the reference. A small cache keeps GC and
// writeback busy; a sequential cutoff makes long writes bypass.
func TestBlackboxCopyMetamorphic(t *testing.T) {
	for _, crc := range []bool{true, false} {
		t.Run(fmt.Sprintf("datacrc=%v", crc), func(t *testing.T) {
			runCopyMetamorphic(t, crc)
		})
	}
}

func runCopyMetamorphic(t *testing.T, crc bool) {
	ctx := context.Background()
	seed := testSeed()
	log := newOpLog(t, "copy-metamorphic", seed)
	rng := rand.New(rand.NewPCG(seed, 0x636f7079))
	ops := 300
	if testkit.RaceEnabled || testing.Short() {
		ops = 120
	}
	if longRun() {
		ops = 3000
	}
	const size0, size1 = 6 << 20, 3 << 20
	o := rigOptions{Segments: 40, BackingSize: size0, DataCRC: crc, Cfg: cachecore.Config{GCPercent: 30},
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 1 << 20}}
	type side struct {
		r    *rig
		mem1 *backend.Memory
		vols [2]*cachecore.Volume
	}
	var sides [2]*side
	for i := range sides {
		init := backend.NewMemory(size0)
		mustOK(t, "prefill", init.WriteAt(ctx, tagged(1, 0, size0), 0))
		r := newRig(t, o, init)
		defer r.close()
		mem1 := backend.NewMemory(size1)
		mustOK(t, "prefill", mem1.WriteAt(ctx, tagged(2, 0, size1), 0))
		v1, err := r.cache.AddVolume(ctx, "vol1", mem1, o.VC)
		mustOK(t, "AddVolume", err)
		sides[i] = &side{r: r, mem1: mem1, vols: [2]*cachecore.Volume{r.vol, v1}}
	}
	refs := [2][]byte{tagged(1, 0, size0), tagged(2, 0, size1)}
	sizes := [2]int64{size0, size1}
	const bs = 4096
	id := uint64(10)
	check := func(what string) {
		t.Helper()
		for vi := range 2 {
			for si, s := range sides {
				if got := readAll(t, s.vols[vi]); !bytes.Equal(got, refs[vi]) {
					t.Fatalf("%s: side %d (copy by %s) volume %d: %s", what, si, []string{"CopyFrom", "read+write"}[si], vi, describeCopyDiff(got, refs[vi]))
				}
			}
		}
	}
	var shared, moved uint64
	countShares := func() {
		for _, v := range sides[0].vols {
			st := v.Stats()
			shared += st.CopySharedBytes
			moved += st.CopyMovedBytes
		}
	}
	modes := []cachecore.Mode{cachecore.ModeWriteback, cachecore.ModeWriteback, cachecore.ModeWriteonly, cachecore.ModeWritethrough, cachecore.ModeWritearound}
	for op := range ops {
		vi := rng.IntN(2)
		switch k := rng.IntN(100); {
		case k < 35:
			off := rng.Int64N(sizes[vi]/bs) * bs
			n := min((1+rng.Int64N(64))*bs, sizes[vi]-off)
			fua := rng.IntN(6) == 0
			p := tagged(id, off, int(n))
			log.add("v%d write id=%d off=%d n=%d fua=%v", vi, id, off, n, fua)
			id++
			for _, s := range sides {
				mustOK(t, "write", s.vols[vi].WriteAt(ctx, p, off, fua))
			}
			copy(refs[vi][off:], p)
		case k < 40:
			off := rng.Int64N(sizes[vi]/bs) * bs
			n := min((1+rng.Int64N(32))*bs, sizes[vi]-off)
			log.add("v%d discard off=%d n=%d", vi, off, n)
			for _, s := range sides {
				mustOK(t, "discard", s.vols[vi].Discard(ctx, off, n))
			}
			clear(refs[vi][off : off+n])
		case k < 75:
			si := rng.IntN(2)
			n := (1 + rng.Int64N(256)) * bs
			if rng.IntN(4) == 0 {
				n = (1 + rng.Int64N(8)) * bs
			}
			n = min(n, sizes[si], sizes[vi])
			so := rng.Int64N((sizes[si]-n)/bs+1) * bs
			do := rng.Int64N((sizes[vi]-n)/bs+1) * bs
			if si == vi && rng.IntN(3) == 0 {
				// Overlapping, by a few blocks either way.
				do = min(max(so+(rng.Int64N(17)-8)*bs, 0), sizes[vi]-n)
			}
			fua := rng.IntN(5) == 0
			log.add("copy v%d[%d,+%d) -> v%d[%d] fua=%v", si, so, n, vi, do, fua)
			mustOK(t, "CopyFrom", copyOrFallBack(ctx, sides[0].vols[si], sides[0].vols[vi], so, do, n, fua))
			mustOK(t, "copy by read+write", copyBy(ctx, sides[1].vols[si], sides[1].vols[vi], so, do, n, fua))
			copy(refs[vi][do:do+n], append([]byte{}, refs[si][so:so+n]...))
		case k < 80:
			log.add("v%d flush", vi)
			for _, s := range sides {
				mustOK(t, "flush", s.vols[vi].Flush(ctx))
			}
		case k < 82:
			m := modes[rng.IntN(len(modes))]
			log.add("v%d mode %s", vi, m)
			for _, s := range sides {
				mustOK(t, "SetMode", s.vols[vi].SetMode(ctx, m, nil))
			}
		case k < 87:
			log.add("v%d drain", vi)
			for _, s := range sides {
				mustOK(t, "drain", s.vols[vi].Drain(ctx, nil))
			}
		case k < 99:
			log.add("check")
			check(fmt.Sprintf("op %d", op))
		default:
			log.add("restart")
			countShares()
			for _, s := range sides {
				m0, m1 := s.vols[0].Mode(), s.vols[1].Mode()
				s.r.close()
				oo := s.r.opts
				oo.VC.Mode = m0
				c, v0, err := openImage(ctx, s.r.media, s.r.backing, oo)
				mustOK(t, "restart", err)
				s.r.cache, s.r.vol = c, v0
				vc := o.VC
				vc.Mode = m1
				v1, err := c.AddVolume(ctx, "vol1", s.mem1, vc)
				mustOK(t, "re-add vol1", err)
				s.vols = [2]*cachecore.Volume{v0, v1}
			}
		}
	}
	check("end")
	countShares()
	t.Logf("CopyFrom side: shared %d bytes, moved %d bytes", shared, moved)
	var wg sync.WaitGroup
	for _, s := range sides {
		for vi := range 2 {
			mustOK(t, "writeback mode", s.vols[vi].SetMode(ctx, cachecore.ModeWriteback, nil))
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.vols[vi].Drain(ctx, nil); err != nil {
					t.Errorf("final drain: %v", err)
				}
			}()
		}
	}
	wg.Wait()
	for si, s := range sides {
		for vi, dev := range []backend.Device{s.r.mem, s.mem1} {
			got := make([]byte, sizes[vi])
			mustOK(t, "backing read", dev.ReadAt(ctx, got, 0))
			if !bytes.Equal(got, refs[vi]) {
				t.Fatalf("side %d volume %d: backing device after the final drain: %s", si, vi, describeCopyDiff(got, refs[vi]))
			}
		}
	}
}
