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
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// sectorData names what a sector holds: the tag of write id at sector
// from (copies move tags to other sectors); id 0 is zeroes.
type sectorData struct {
	id   uint64
	from int64
}

// copyVersion is one data-changing request's effect on one sector.
type copyVersion struct {
	data    sectorData
	start   int // persist points before the request was issued
	durable int // persist point once known durable, math.MaxInt until then
	ackSeq  uint64
	what    string
}

// copyCrashModel is the per-sector history of a single-threaded workload
// of writes, discards and copies.
type copyCrashModel struct {
	mu      sync.Mutex
	sectors map[int64][]*copyVersion
	size    int64
}

// current is what the live volume holds in sector s.
func (m *copyCrashModel) current(s int64) sectorData {
	if l := m.sectors[s]; len(l) > 0 {
		return l[len(l)-1].data
	}
	return sectorData{}
}

func (m *copyCrashModel) markDurable(point int, call uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.sectors {
		for _, e := range l {
			if e.ackSeq != 0 && e.ackSeq < call && e.durable == math.MaxInt {
				e.durable = point
			}
		}
	}
}

// allowed returns what a crash after persist point p may show in sector s:
// the newest version durable before p, or any later one issued by then.
func (m *copyCrashModel) allowed(s int64, p int) map[sectorData]bool {
	ok := map[sectorData]bool{}
	l := m.sectors[s]
	floor := -1
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].durable < p {
			floor = i
			break
		}
	}
	if floor < 0 {
		ok[sectorData{}] = true
	} else {
		ok[l[floor].data] = true
	}
	for _, e := range l[floor+1:] {
		if e.start <= p {
			ok[e.data] = true
		}
	}
	return ok
}

// TestBlackboxCrashCopies runs a workload of writes, FUA writes, flushes,
// discards and copies (overlapping and not, cached and not, some FUA) on
// a small cache with writeback and GC running, and checks the crash images
// of the cache media at persist points (and torn variants) with the
// backing device's durable state at the same instant: after reopening,
// every sector holds data the model allows (a copy's data counts as a
// write of the destination sector; one that returned with FUA or before a
// Flush returned must show, or something newer), and the engine's
// invariants and persist.Check hold on every image.
func TestBlackboxCrashCopies(t *testing.T) {
	for _, c := range []struct {
		name  string
		unit  persist.TearUnit
		whole bool
		segs  int
		gc    int
		every bool // every exact persist point of a shorter workload
		// seed, when not 0, replays one workload (a regression)
		seed uint64
	}{
		{"dax", persist.TearDAX, false, 24, 0, false, 0},
		{"dax-gc", persist.TearDAX, false, 14, 20, false, 0},
		{"file-unfenced-gc", persist.TearPage, true, 16, 30, false, 0},
		{"dax-gc-every-point", persist.TearDAX, false, 14, 20, true, 0},
		// a torn tail kset dropped at Open whose keys' segments GC then
		// recycled: before the log was ended at it, a later walk took it
		// for a valid kset (images after persist point 246)
		{"file-unfenced-gc-torn-tail", persist.TearPage, true, 16, 30, true, 191211714710451094},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := rigOptions{Segments: c.segs, BackingSize: 1 << 20, Unit: c.unit, DataCRC: true, WholeFlush: c.whole,
				VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 64 << 10}, Cfg: cachecore.Config{GCPercent: c.gc}}
			ops, maxImages := 200, 50
			if testkit.RaceEnabled || testing.Short() {
				ops, maxImages = 120, 10
			}
			if c.every {
				ops, maxImages = 40, math.MaxInt
			}
			if c.seed != 0 {
				ops = 150
			}
			if longRun() {
				ops, maxImages = 1000, math.MaxInt
			}
			runCopyCrash(t, "copies-"+c.name, o, ops, maxImages, c.seed)
		})
	}
}

func runCopyCrash(t *testing.T, name string, o rigOptions, ops, maxImages int, seed uint64) {
	ctx := context.Background()
	if seed == 0 {
		seed = testSeed()
	}
	log := newOpLog(t, name, seed)
	rng := rand.New(rand.NewPCG(seed, 0x63726173))
	initial := backend.NewMemory(o.BackingSize)
	mustOK(t, "prefill", initial.WriteAt(ctx, tagged(1, 0, int(o.BackingSize)), 0))
	r := newRig(t, o, initial)
	defer r.close()
	size := r.vol.Size()
	model := &copyCrashModel{sectors: map[int64][]*copyVersion{}, size: size}
	for s := range size / sector {
		model.sectors[s] = []*copyVersion{{data: sectorData{1, s}, durable: 0, ackSeq: 1, what: "prefill"}}
	}

	// Backing device images at persist points, as runCrashWorkloadWith.
	var snapMu sync.Mutex
	snaps := map[int]backingSnap{}
	endOf := map[int]*backend.Memory{}
	lastFlushes := -1
	var lastImg *backend.Memory
	tornRng := rand.New(rand.NewPCG(seed, 99))
	r.media.SetPrePersistHook(func(point int) {
		snapMu.Lock()
		defer snapMu.Unlock()
		flushes := r.backing.Counts().Flushes
		if flushes != lastFlushes || lastImg == nil {
			img, err := r.backing.DurableImage(nil)
			if err != nil {
				t.Errorf("backing DurableImage: %v", err)
				return
			}
			lastImg, lastFlushes = img, flushes
		}
		endOf[point] = lastImg
	})
	r.media.SetPersistHook(func(point int) {
		exact := r.media.PersistPoints() == point
		snapMu.Lock()
		flushes := r.backing.Counts().Flushes
		img := lastImg
		if flushes != lastFlushes || img == nil {
			var err error
			if img, err = r.backing.DurableImage(nil); err != nil {
				snapMu.Unlock()
				t.Errorf("backing DurableImage: %v", err)
				return
			}
			lastImg, lastFlushes = img, flushes
		}
		var torn *backend.Memory
		if point%4 == 0 && r.backing.UnflushedSectors() > 0 {
			torn, _ = r.backing.DurableImage(rand.New(rand.NewPCG(tornRng.Uint64(), 1)))
		}
		snapMu.Unlock()
		// The hook runs after the persist without the media's lock: if
		// another persist point came before the backing's image was
		// taken, the image may hold writes issued after this point, and
		// is no crash at it.
		exact = exact && r.media.PersistPoints() == point
		snapMu.Lock()
		snaps[point] = backingSnap{exact: exact, img: img, torn: torn}
		snapMu.Unlock()
	})

	const bs = 4096
	ackSeq := uint64(1)
	id := uint64(2)
	// issue runs a request that gives the sectors from s0 on the contents
	// datas.
	issue := func(what string, s0 int64, datas []sectorData, fua bool, call func() error) {
		t.Helper()
		log.add("%s", what)
		start := r.media.PersistPoints()
		model.mu.Lock()
		vs := make([]*copyVersion, len(datas))
		for i, d := range datas {
			vs[i] = &copyVersion{data: d, start: start, durable: math.MaxInt, what: what}
			model.sectors[s0+int64(i)] = append(model.sectors[s0+int64(i)], vs[i])
		}
		model.mu.Unlock()
		if err := call(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		end := r.media.PersistPoints()
		model.mu.Lock()
		ackSeq++
		for _, v := range vs {
			v.ackSeq = ackSeq
			if fua {
				v.durable = end
			}
		}
		model.mu.Unlock()
	}
	for range ops {
		switch k := rng.IntN(100); {
		case k < 40:
			off := rng.Int64N(size/bs) * bs
			n := min((1+rng.Int64N(24))*bs, size-off)
			fua := rng.IntN(5) == 0
			datas := make([]sectorData, n/sector)
			for i := range datas {
				datas[i] = sectorData{id, off/sector + int64(i)}
			}
			p := tagged(id, off, int(n))
			issue(fmt.Sprintf("write id=%d off=%d n=%d fua=%v", id, off, n, fua), off/sector, datas, fua,
				func() error { return r.vol.WriteAt(ctx, p, off, fua) })
			id++
		case k < 75:
			n := (1 + rng.Int64N(64)) * bs
			so := rng.Int64N((size-n)/bs+1) * bs
			do := rng.Int64N((size-n)/bs+1) * bs
			if rng.IntN(3) == 0 {
				do = min(max(so+(rng.Int64N(9)-4)*bs, 0), size-n)
			}
			fua := rng.IntN(3) == 0
			model.mu.Lock()
			datas := make([]sectorData, n/sector)
			for i := range datas {
				datas[i] = model.current(so/sector + int64(i))
			}
			model.mu.Unlock()
			issue(fmt.Sprintf("copy [%d,+%d) -> %d fua=%v", so, n, do, fua), do/sector, datas, fua,
				func() error { return r.vol.CopyFrom(ctx, r.vol, so, do, n, fua) })
		case k < 80:
			off := rng.Int64N(size/bs) * bs
			n := min((1+rng.Int64N(16))*bs, size-off)
			issue(fmt.Sprintf("discard off=%d n=%d", off, n), off/sector, make([]sectorData, n/sector), false,
				func() error { return r.vol.Discard(ctx, off, n) })
		case k < 92:
			log.add("flush")
			model.mu.Lock()
			ackSeq++
			call := ackSeq
			model.mu.Unlock()
			mustOK(t, "flush", r.vol.Flush(ctx))
			model.markDurable(r.media.PersistPoints(), call)
		case k < 95:
			log.add("drain")
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
		default:
			off := rng.Int64N(size/bs) * bs
			p := make([]byte, min(16*bs, size-off))
			log.add("read off=%d n=%d", off, len(p))
			mustOK(t, "read", r.vol.ReadAt(ctx, p, off))
			for j := 0; j < len(p); j += sector {
				s := (off + int64(j)) / sector
				id, from, ok := decodeTag(p[j : j+sector])
				model.mu.Lock()
				want := model.current(s)
				model.mu.Unlock()
				if !ok || (sectorData{id, from}) != want {
					t.Fatalf("live read of sector %d: write %d of sector %d (intact %v), want %+v", s, id, from, ok, want)
				}
			}
		}
	}
	cst := r.cache.Stats()
	vst := r.vol.Stats()
	r.close()
	r.media.SetPersistHook(nil)
	r.media.SetPrePersistHook(nil)
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
	var closers sync.WaitGroup
	defer closers.Wait()
	checked := 0
	verify := func(p int, img *persist.CrashMedia, back *backend.Memory, label string) {
		t.Helper()
		c, v, err := openImage(ctx, img, back, o)
		if err != nil {
			t.Fatalf("crash image after persist point %d (%s): reopen: %v", p, label, err)
		}
		closers.Add(1)
		defer func() {
			go func() {
				defer closers.Done()
				c.Close(ctx)
				if err := c.CheckInvariants(); err != nil {
					t.Errorf("crash image after persist point %d (%s): %v", p, label, err)
				}
				if s, err := persist.Open(img); err != nil {
					t.Errorf("crash image after persist point %d (%s): reopen the file: %v", p, label, err)
				} else if problems, err := persist.Check(s); err != nil || len(problems) != 0 {
					t.Errorf("crash image after persist point %d (%s): persist.Check: %v %q", p, label, err, problems)
				}
			}()
		}()
		all := make([]byte, size)
		if err := v.ReadAt(ctx, all, 0); err != nil {
			t.Fatalf("crash image after persist point %d (%s): read: %v", p, label, err)
		}
		for s := range size / sector {
			id, from, ok := decodeTag(all[s*sector : (s+1)*sector])
			allowed := model.allowed(s, p)
			if !ok || !allowed[sectorData{id, from}] {
				var hist string
				for _, e := range model.sectors[s] {
					hist += fmt.Sprintf("[%s: %+v start=%d durable=%d] ", e.what, e.data, e.start, e.durable)
				}
				t.Fatalf("crash image after persist point %d of %d (%s): sector %d holds write %d of sector %d (intact %v); allowed %v; the cache: %+v; history: %s",
					p, points, label, s, id, from, ok, allowed, v.Explain(s*sector/bs*bs), hist)
			}
		}
		checked++
	}
	for i := 0; i < len(exact); i += step {
		p := exact[i]
		snapMu.Lock()
		s := snaps[p]
		end := endOf[p+1]
		snapMu.Unlock()
		verify(p, r.media.CrashImage(p, nil), s.img.Clone(), "clean")
		if end != nil {
			verify(p, r.media.CrashImage(p, rand.New(rand.NewPCG(seed, uint64(p)))), end.Clone(), "torn cache")
		}
		if s.torn != nil {
			verify(p, r.media.CrashImage(p, nil), s.torn.Clone(), "torn backing")
		}
	}
	t.Logf("%d persist points (%d exact), %d crash images checked; copies shared %d bytes, moved %d; GC runs %d, segments freed %d; %v",
		points, len(exact), checked, vst.CopySharedBytes, vst.CopyMovedBytes, cst.GCRuns, cst.GCSegmentsFreed, time.Now().Format(time.TimeOnly))
}
