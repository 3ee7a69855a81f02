package cachecore_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// crashEntry is one data-changing host request of a crash workload. Points
// are persist points of the cache media: start is PersistPoints() when the
// request was issued, so a crash after any point p >= start may show its
// effect; durable is the PersistPoints() value once the request was known
// durable (returned with FUA, or a later Flush returned), so a crash after
// any point p > durable must show it or something newer.
type crashEntry struct {
	id       uint64 // tag of the data; 0 for a discard (zeroes)
	off, n   int64
	start    int
	durable  int // math.MaxInt until durable
	acked    bool
	describe string
}

// crashModel is the history of one workload, shared with the persist hook.
type crashModel struct {
	mu      sync.Mutex
	entries []*crashEntry
	// bySector lists, per sector, indexes into entries in program order.
	bySector map[int64][]int
}

func (m *crashModel) add(e *crashEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx := len(m.entries)
	m.entries = append(m.entries, e)
	for s := e.off / sector; s < (e.off+e.n)/sector; s++ {
		m.bySector[s] = append(m.bySector[s], idx)
	}
}

// markDurable marks every acknowledged, not yet durable entry durable at point.
func (m *crashModel) markDurable(point int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entries {
		if e.acked && e.durable == math.MaxInt {
			e.durable = point
		}
	}
}

// allowed returns the write ids a crash after persist point p may show in
// sector s (0 meaning zeroes), and the newest entry that must be visible.
func (m *crashModel) allowed(s int64, p int) map[uint64]bool {
	ok := map[uint64]bool{}
	list := m.bySector[s]
	floor := -1
	for i := len(list) - 1; i >= 0; i-- {
		if e := m.entries[list[i]]; e.durable < p {
			floor = i
			break
		}
	}
	if floor < 0 {
		ok[0] = true
	} else {
		ok[m.entries[list[floor]].id] = true
	}
	for _, idx := range list[floor+1:] {
		if e := m.entries[idx]; e.start <= p {
			ok[e.id] = true
		}
	}
	return ok
}

// backingSnap is the backing device's durable state taken right after a
// persist point (exact: no later persist point completed before the image
// was taken).
type backingSnap struct {
	exact bool
	img   *backend.Memory
	torn  *backend.Memory // a torn variant (some unflushed sectors survive), or nil
}

// TestBlackboxCrashConsistency runs a mixed workload (writes, FUA writes,
// flushes, discards, compare-and-writes, mode switches, drains) on a small
// cache, so that GC and writeback run during it, and checks the crash images
// of the cache media at persist points (plus torn variants, where each
// unpersisted 8-byte unit may or may not survive) together with the backing
// device's durable state at the same instant. After reopening each image:
// every sector holds data some write wrote to that very sector (or zeroes),
// nothing older than the newest durable write, and nothing from a write not
// yet issued.
func TestBlackboxCrashConsistency(t *testing.T) {
	for _, c := range []struct {
		name     string
		unit     persist.TearUnit
		segments int
		gc       int
		vc       cachecore.VolumeConfig
	}{
		{"dax-writeback", persist.TearDAX, 24, 0, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
		{"page-writeback-bypass", persist.TearUnit(4096), 24, 0, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 32 << 10}},
		{"dax-gc-pressure", persist.TearDAX, 12, 20, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := rigOptions{Segments: c.segments, BackingSize: 1 << 20, Unit: c.unit, DataCRC: true, VC: c.vc,
				Cfg: cachecore.Config{GCPercent: c.gc}}
			runCrashWorkload(t, c.name, o)
		})
	}
}

func runCrashWorkload(t *testing.T, name string, o rigOptions) {
	ctx := context.Background()
	began := time.Now()
	seed := testSeed()
	log := newOpLog(t, name, seed)
	rng := rand.New(rand.NewPCG(seed, 0x63726173))
	ops, maxImages := 160, 60
	if raceEnabled {
		maxImages = 18
	}
	if longRun() {
		ops, maxImages = 1000, math.MaxInt
	}
	vc := o.VC
	r := newRig(t, o, nil)
	defer r.close()
	model := &crashModel{bySector: map[int64][]int{}}

	var snapMu sync.Mutex
	snaps := map[int]backingSnap{}
	var lastFlushes = -1
	var lastImg *backend.Memory
	tornRng := rand.New(rand.NewPCG(seed, 99))
	r.media.SetPersistHook(func(point int) {
		snapMu.Lock()
		defer snapMu.Unlock()
		flushes := r.backing.Counts().Flushes
		img := lastImg
		if flushes != lastFlushes || img == nil {
			var err error
			img, err = r.backing.DurableImage(nil)
			if err != nil {
				t.Errorf("backing DurableImage: %v", err)
				return
			}
			lastImg, lastFlushes = img, flushes
		}
		var torn *backend.Memory
		if point%4 == 0 && r.backing.UnflushedSectors() > 0 {
			torn, _ = r.backing.DurableImage(rand.New(rand.NewPCG(tornRng.Uint64(), 1)))
		}
		snaps[point] = backingSnap{exact: r.media.PersistPoints() == point, img: img, torn: torn}
	})

	bs := int64(vc.BlockSize)
	if bs == 0 {
		bs = 4096
	}
	size := r.vol.Size()
	nextID := uint64(1)
	modes := []cachecore.Mode{cachecore.ModeWriteback, cachecore.ModeWritethrough, cachecore.ModeWritearound, cachecore.ModeWriteonly}
	for range ops {
		switch k := rng.IntN(100); {
		case k < 62: // write (k in 55..61: a sequential run of 4 writes)
			runs := 1
			off := rng.Int64N(size/bs) * bs
			if k >= 55 {
				runs = 4
			}
			for range runs {
				n := min((1+rng.Int64N(8))*bs, size-off)
				fua := rng.IntN(5) == 0
				e := &crashEntry{id: nextID, off: off, n: n, durable: math.MaxInt, describe: fmt.Sprintf("write id=%d off=%d n=%d fua=%v", nextID, off, n, fua)}
				nextID++
				log.add("%s", e.describe)
				e.start = r.media.PersistPoints()
				model.add(e)
				mustOK(t, e.describe, r.vol.WriteAt(ctx, tagged(e.id, off, int(n)), off, fua))
				end := r.media.PersistPoints()
				model.mu.Lock()
				e.acked = true
				if fua {
					e.durable = end
				}
				model.mu.Unlock()
				off += n
				if off >= size {
					break
				}
			}
		case k < 72:
			log.add("flush")
			mustOK(t, "flush", r.vol.Flush(ctx))
			model.markDurable(r.media.PersistPoints())
		case k < 78:
			off := rng.Int64N(size/bs) * bs
			n := min((1+rng.Int64N(16))*bs, size-off)
			e := &crashEntry{off: off, n: n, durable: math.MaxInt, describe: fmt.Sprintf("discard off=%d n=%d", off, n)}
			log.add("%s", e.describe)
			e.start = r.media.PersistPoints()
			model.add(e)
			mustOK(t, e.describe, r.vol.Discard(ctx, off, n))
			model.mu.Lock()
			e.acked = true
			model.mu.Unlock()
		case k < 82: // compare and write against the current content
			off := rng.Int64N(size/bs) * bs
			cur := make([]byte, bs)
			mustOK(t, "read for compare-and-write", r.vol.ReadAt(ctx, cur, off))
			fua := rng.IntN(2) == 0
			e := &crashEntry{id: nextID, off: off, n: bs, durable: math.MaxInt, describe: fmt.Sprintf("caw id=%d off=%d fua=%v", nextID, off, fua)}
			nextID++
			log.add("%s", e.describe)
			e.start = r.media.PersistPoints()
			model.add(e)
			mustOK(t, e.describe, r.vol.CompareAndWrite(ctx, off, cur, tagged(e.id, off, int(bs)), fua))
			end := r.media.PersistPoints()
			model.mu.Lock()
			e.acked = true
			if fua {
				e.durable = end
			}
			model.mu.Unlock()
		case k < 88:
			m := modes[rng.IntN(len(modes))]
			log.add("set-mode %s", m)
			mustOK(t, "SetMode", r.vol.SetMode(ctx, m, nil))
		case k < 91:
			log.add("drain")
			mustOK(t, "Drain", r.vol.Drain(ctx, nil))
		default:
			off := rng.Int64N(size/bs) * bs
			p := make([]byte, min(8*bs, size-off))
			log.add("read off=%d n=%d", off, len(p))
			mustOK(t, "read", r.vol.ReadAt(ctx, p, off))
			// The live volume returns exactly the newest write.
			model.mu.Lock()
			for j := 0; j < len(p); j += sector {
				s := (off + int64(j)) / sector
				id, err := decodeSector(p[j:j+sector], s)
				want := uint64(0)
				if l := model.bySector[s]; len(l) > 0 {
					want = model.entries[l[len(l)-1]].id
				}
				if err != nil || id != want {
					model.mu.Unlock()
					t.Fatalf("live read of sector %d: write %d (%v), want %d", s, id, err, want)
				}
			}
			model.mu.Unlock()
		}
	}
	t.Logf("workload done after %v", time.Since(began))
	cst := r.cache.Stats()
	r.close()
	r.media.SetPersistHook(nil)
	points := r.media.PersistPoints()

	var exact []int
	snapMu.Lock()
	for p := 1; p <= points; p++ {
		if s, ok := snaps[p]; ok && s.exact {
			exact = append(exact, p)
		}
	}
	snapMu.Unlock()
	if len(exact) == 0 {
		t.Fatalf("no exact persist points among %d", points)
	}
	step := max(1, len(exact)/maxImages)
	checked, torn := 0, 0
	verify := func(p int, img *persist.CrashMedia, back *backend.Memory, label string) {
		t.Helper()
		c, v, err := openImage(ctx, img, back, o)
		if err != nil {
			t.Fatalf("crash image after persist point %d (%s): reopen: %v", p, label, err)
		}
		defer c.Close(ctx)
		all := make([]byte, size)
		if err := v.ReadAt(ctx, all, 0); err != nil {
			t.Fatalf("crash image after persist point %d (%s): read: %v", p, label, err)
		}
		for j := int64(0); j < size; j += sector {
			s := j / sector
			id, derr := decodeSector(all[j:j+sector], s)
			allowed := model.allowed(s, p)
			if derr != nil || !allowed[id] {
				t.Fatalf("crash image after persist point %d of %d (%s): sector %d holds write %d (%v); allowed %v; history of the sector: %s",
					p, points, label, s, id, derr, keys(allowed), sectorHistory(model, s))
			}
		}
		checked++
	}
	for i := 0; i < len(exact); i += step {
		p := exact[i]
		snapMu.Lock()
		s := snaps[p]
		snapMu.Unlock()
		verify(p, r.media.CrashImage(p, nil), s.img.Clone(), "clean")
		verify(p, r.media.CrashImage(p, rand.New(rand.NewPCG(seed, uint64(p)))), s.img.Clone(), "torn cache")
		if s.torn != nil {
			verify(p, r.media.CrashImage(p, nil), s.torn.Clone(), "torn backing")
			torn++
		}
	}
	t.Logf("%d persist points (%d exact), %d crash images checked (%d with a torn backing image); GC runs %d, segments freed %d",
		points, len(exact), checked, torn, cst.GCRuns, cst.GCSegmentsFreed)
}

func keys(m map[uint64]bool) []uint64 {
	var out []uint64
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sectorHistory(m *crashModel, s int64) string {
	out := ""
	for _, idx := range m.bySector[s] {
		e := m.entries[idx]
		d := "never"
		if e.durable != math.MaxInt {
			d = fmt.Sprint(e.durable)
		}
		out += fmt.Sprintf("[%s start=%d durable=%s] ", e.describe, e.start, d)
	}
	if out == "" {
		return "never written"
	}
	return out
}
