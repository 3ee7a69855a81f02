package cachecore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
)

// epochModel records the host writes of a writeback workload with the flush
// epoch they belong to. Epochs are separated by host Flush calls (a FUA write
// guarantees its own durability, not an ordering of earlier writes, so it is
// not treated as a boundary here: that is the more lenient reading of
// C6).
type epochModel struct {
	mu    sync.Mutex
	epoch int
	// per sector: writes in program order
	writes map[int64][]epochWrite
}

type epochWrite struct {
	id    uint64
	epoch int
}

// prefixEpoch returns an epoch E such that image holds, in every sector,
// either the newest write of epochs before E (zeroes if none) or a write of
// epoch E; ok is false when no such E exists.
func (m *epochModel) prefixEpoch(img []byte) (int, bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := map[int64]uint64{}
	for s := int64(0); s < int64(len(img))/sector; s++ {
		id, err := decodeSector(img[s*sector:(s+1)*sector], s)
		if err != nil {
			return 0, false, err.Error()
		}
		if id != 0 {
			if _, written := m.writes[s]; !written {
				return 0, false, fmt.Sprintf("sector %d holds write %d, which never wrote it", s, id)
			}
		}
		ids[s] = id
	}
	why := ""
	for e := 0; e <= m.epoch; e++ {
		ok := true
		for s, ws := range m.writes {
			var prev uint64
			allowed := false
			for _, w := range ws {
				if w.epoch < e {
					prev = w.id
				} else if w.epoch == e && ids[s] == w.id {
					allowed = true
				}
			}
			if ids[s] != prev && !allowed {
				ok = false
				if e == m.epoch {
					why = fmt.Sprintf("e.g. sector %d holds write %d; with epoch %d it should hold %d or a write of that epoch", s, ids[s], e, prev)
				}
				break
			}
		}
		if ok {
			return e, true, ""
		}
	}
	return 0, false, why
}

// TestBlackboxWritebackFlushConsistency interrupts writeback at every
// backing write and flush (C6): at each of those instants the image
// a power cut would leave on the backing device (only flushed data, and a
// variant where a random subset of unflushed sectors survives) must equal
// the state after some flush epoch E-1 plus a subset of epoch E's writes, as
// if the cache file had been lost.
//
// With passes of one kset, nearly every pass collapses its data with later
// ksets of its epoch (writeback's look-ahead), which must keep the same
// property.
func TestBlackboxWritebackFlushConsistency(t *testing.T) {
	t.Run("default passes", func(t *testing.T) { writebackFlushConsistency(t, 0) })
	t.Run("one-kset passes", func(t *testing.T) { writebackFlushConsistency(t, 1) })
}

func writebackFlushConsistency(t *testing.T, passKsets int) {
	seed := testSeed()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x7762))
	ops := 150
	if testkit.RaceEnabled {
		ops = 80
	}
	if longRun() {
		ops = 3000
	}
	ctx := context.Background()
	cfg := cachecore.Config{Writeback: cachecore.WritebackConfig{IdleAfter: time.Millisecond, TargetDirtyPercent: 1, HighWatermarkPercent: 5}}
	if passKsets > 0 {
		cfg = cachecore.WithWritebackPassKsets(cfg, passKsets)
	}
	r := newRig(t, rigOptions{Segments: 24, BackingSize: 1 << 20,
		Cfg: cfg,
		VC:  cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}, nil)
	defer r.close()
	m := &epochModel{writes: map[int64][]epochWrite{}}

	var checks, violations atomic.Int64
	var firstViolation atomic.Value
	tornSeed := atomic.Uint64{}
	tornSeed.Store(seed)
	check := func(op backend.Op) {
		for _, torn := range []bool{false, true} {
			var tr *rand.Rand
			if torn {
				tr = rand.New(rand.NewPCG(tornSeed.Add(1), 5))
			}
			img, err := r.backing.DurableImage(tr)
			if err != nil {
				t.Errorf("DurableImage: %v", err)
				return
			}
			buf := make([]byte, img.Size())
			img.ReadAt(ctx, buf, 0)
			checks.Add(1)
			if _, ok, why := m.prefixEpoch(buf); !ok {
				if violations.Add(1) == 1 {
					firstViolation.Store(fmt.Sprintf("after a backing %s (torn=%v): no flush epoch explains the backing image: %s", op, torn, why))
				}
			}
		}
	}
	r.backing.SetHook(func(op backend.Op, off, n int64) {
		if op == backend.OpWrite || op == backend.OpFlush || op == backend.OpDiscard {
			check(op)
		}
	})

	size := r.vol.Size()
	nextID := uint64(1)
	for range ops {
		switch k := rng.IntN(100); {
		case k < 75:
			off := rng.Int64N(size/4096) * 4096
			n := min((1+rng.Int64N(4))*4096, size-off)
			id := nextID
			nextID++
			m.mu.Lock()
			for s := off / sector; s < (off+n)/sector; s++ {
				m.writes[s] = append(m.writes[s], epochWrite{id: id, epoch: m.epoch})
			}
			m.mu.Unlock()
			mustOK(t, "write", r.vol.WriteAt(ctx, tagged(id, off, int(n)), off, rng.IntN(8) == 0))
		case k < 90:
			mustOK(t, "flush", r.vol.Flush(ctx))
			m.mu.Lock()
			m.epoch++
			m.mu.Unlock()
		case k < 95:
			time.Sleep(2 * time.Millisecond) // let idle writeback run
		default:
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
		}
	}
	mustOK(t, "final drain", r.vol.Drain(ctx, nil))
	r.backing.SetHook(nil)
	if v := violations.Load(); v > 0 {
		t.Fatalf("%d of %d backing images are not flush-consistent; first: %s", v, checks.Load(), firstViolation.Load())
	}
	// After the drain and a flush, the backing image is the final state.
	mustOK(t, "flush", r.vol.Flush(ctx))
	img, _ := r.backing.DurableImage(nil)
	buf := make([]byte, img.Size())
	img.ReadAt(ctx, buf, 0)
	m.mu.Lock()
	for s, ws := range m.writes {
		if id, err := decodeSector(buf[s*sector:(s+1)*sector], s); err != nil || id != ws[len(ws)-1].id {
			m.mu.Unlock()
			t.Fatalf("after drain and flush, backing sector %d holds write %d (%v), want %d", s, id, err, ws[len(ws)-1].id)
		}
	}
	m.mu.Unlock()
	if checks.Load() < 20 {
		t.Fatalf("only %d backing images checked: writeback hardly ran", checks.Load())
	}
	t.Logf("%d backing images checked at backing writes/flushes over %d flush epochs", checks.Load(), m.epoch)
}

// TestBlackboxEpochModelRejectsReordering shows the flush-consistency check
// can fail: epoch 1's write on the backing device while an epoch 0 write to
// another sector is missing is not a prefix state.
func TestBlackboxEpochModelRejectsReordering(t *testing.T) {
	m := &epochModel{epoch: 1, writes: map[int64][]epochWrite{
		0: {{id: 1, epoch: 0}},
		1: {{id: 2, epoch: 1}},
	}}
	img := make([]byte, 4*sector)
	tagSector(img[sector:2*sector], 2, 1) // sector 1 has epoch 1's write, sector 0 lacks epoch 0's
	if _, ok, _ := m.prefixEpoch(img); ok {
		t.Fatal("a reordered image was accepted")
	}
	tagSector(img[0:sector], 1, 0)
	if e, ok, why := m.prefixEpoch(img); !ok || e != 1 {
		t.Fatalf("a prefix state was rejected: %d %v %s", e, ok, why)
	}
	clear(img)
	if e, ok, _ := m.prefixEpoch(img); !ok || e != 0 {
		t.Fatal("the initial state was rejected")
	}
}
