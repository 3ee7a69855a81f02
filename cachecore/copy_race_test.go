package cachecore_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
)

// decodeTag returns the (write id, sector written) tag of a sector and
// whether its bytes are exactly that write's data for that sector (or
// zeroes: id 0).
func decodeTag(p []byte) (id uint64, s int64, ok bool) {
	id = binary.LittleEndian.Uint64(p)
	s = int64(binary.LittleEndian.Uint64(p[8:]))
	if id == 0 && s == 0 {
		_, err := decodeSector(p, 0)
		return 0, 0, err == nil
	}
	got, err := decodeSector(p, s)
	return id, s, err == nil && got == id
}

// TestCopyRacesWrites copies a source range again and again while writers
// overwrite it (in the cache and, beyond the sequential cutoff, around it)
// and flushes, writeback and GC run: every destination sector must hold
// data written to the corresponding source sector, never older than the
// last write to it that completed before the copy started, never one
// issued after the copy returned. Run it under -race.
func TestCopyRacesWrites(t *testing.T) {
	ctx := context.Background()
	rounds := 60
	if testkit.RaceEnabled || testing.Short() {
		rounds = 25
	}
	if longRun() {
		rounds = 400
	}
	for _, crc := range []bool{true, false} {
		t.Run(fmt.Sprintf("datacrc=%v", crc), func(t *testing.T) {
			const size, srcLen, dstOff = 4 << 20, 1 << 20, 2 << 20
			init := backend.NewMemory(size)
			mustOK(t, "prefill", init.WriteAt(ctx, tagged(1, 0, size), 0))
			o := rigOptions{Segments: 24, BackingSize: size, DataCRC: crc, Cfg: cachecore.Config{GCPercent: 25},
				VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 128 << 10}}
			r := newRig(t, o, init)
			defer r.close()
			const sectors = srcLen / sector
			var mu sync.Mutex
			acked := make([]uint64, sectors) // last acknowledged write id per source sector
			for i := range acked {
				acked[i] = 1
			}
			var nextID atomic.Uint64
			nextID.Store(2)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var werr atomic.Value
			writer := func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(testSeed(), uint64(w)))
				lo := int64(w) * srcLen / 2
				for {
					select {
					case <-stop:
						return
					default:
					}
					off := lo + rng.Int64N(srcLen/2/4096)*4096
					n := min((1+rng.Int64N(16))*4096, lo+srcLen/2-off)
					runs := 1
					if rng.IntN(4) == 0 {
						runs = 6 // a sequential run: bypasses past the cutoff
					}
					for range runs {
						if off+n > lo+srcLen/2 {
							break
						}
						id := nextID.Add(1) - 1
						if err := r.vol.WriteAt(ctx, tagged(id, off, int(n)), off, rng.IntN(8) == 0); err != nil {
							werr.Store(err)
							return
						}
						mu.Lock()
						for s := off / sector; s < (off+n)/sector; s++ {
							acked[s] = id
						}
						mu.Unlock()
						off += n
					}
				}
			}
			wg.Add(3)
			go writer(0)
			go writer(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := r.vol.Flush(ctx); err != nil {
						werr.Store(err)
						return
					}
				}
			}()
			got := make([]byte, srcLen)
			var shared uint64
			for round := range rounds {
				mu.Lock()
				floor := append([]uint64{}, acked...)
				mu.Unlock()
				if err := r.vol.CopyFrom(ctx, r.vol, 0, dstOff, srcLen, round%5 == 0); err != nil {
					t.Fatalf("round %d: CopyFrom: %v", round, err)
				}
				ceil := nextID.Load()
				mustOK(t, "read copy", r.vol.ReadAt(ctx, got, dstOff))
				for s := range int64(sectors) {
					id, from, ok := decodeTag(got[s*sector : (s+1)*sector])
					if !ok || from != s || id < floor[s] || id >= ceil {
						close(stop)
						wg.Wait()
						t.Fatalf("round %d: destination sector %d holds write %d of sector %d (intact %v); want a write to sector %d in [%d, %d)",
							round, s, id, from, ok, s, floor[s], ceil)
					}
				}
				shared = r.vol.Stats().CopySharedBytes
			}
			close(stop)
			wg.Wait()
			if err, _ := werr.Load().(error); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d copies, %d bytes shared, %d moved; GC runs %d", rounds, shared, r.vol.Stats().CopyMovedBytes, r.cache.Stats().GCRuns)
		})
	}
}
