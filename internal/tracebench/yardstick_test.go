package tracebench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/mrc"
)

// long reports whether the full-size runs were asked for.
func long() bool { return os.Getenv("CACHELUN_LONG") == "1" }

// yardstickSize is the engine under test: the short run uses a 32 MiB
// cache file (about 5 600 blocks of data), the long one 256 MiB (the
// quick start's demo cache, about 45 000 blocks).
func yardstickSize() (EngineConfig, int) {
	if long() {
		return EngineConfig{CacheBytes: 256 << 20}, 40
	}
	return EngineConfig{CacheBytes: 32 << 20}, 12
}

type row struct {
	name                string
	engine, engineFIFO  EngineResult // the default policy (2q), and fifo
	lru, fifo, min      Result
	log                 LogResult // the engine's layout without its policy (Log)
	advisor, exactReads float64   // LRU hit ratio (block references, reads only) at 1×: SHARDS 1 %, exact
}

// TestYardstick replays every trace through the engine and the reference
// policies at the same capacity and prints issue 16's table. It checks
// what must hold whatever the engine's policy: MIN is at least every
// other policy (the engine included), LRU and FIFO get almost nothing on
// a loop larger than the cache, every figure is a ratio.
func TestYardstick(t *testing.T) {
	cfg, refsPerCache := yardstickSize()
	capacity, err := Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("engine: %d MiB cache file, %d KiB segments, GC at %d %%: holds %d blocks of 4 KiB (%.0f %% of the file); the references get the same capacity",
		cfg.CacheBytes>>20, 1024, 70, capacity, float64(capacity)*BlockSize*100/float64(cfg.CacheBytes))
	if capacity < int(cfg.CacheBytes/BlockSize/2) {
		t.Fatalf("the engine holds only %d blocks of a %d-block file", capacity, cfg.CacheBytes/BlockSize)
	}
	// The advisor's idea of today's size (cachecore.Advice) is the
	// formula; the capacity above is measured.
	e, err := OpenEngine(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	formula := e.Cache().Advice().CapacityBlocks
	segBlocks := e.SegmentBlocks()
	e.Close()
	if d := float64(formula)/float64(capacity) - 1; d < -0.05 || d > 0.05 {
		t.Errorf("cachecore.Advice says the cache holds %d blocks, measured %d", formula, capacity)
	}
	var rows []row
	var logDiffs []float64 // engine fifo − ideal log, traces of single blocks
	for _, tr := range Standard(capacity, refsPerCache) {
		r := row{name: tr.Name}
		r.lru, r.fifo, r.min = LRU(tr, capacity), FIFO(tr, capacity), MIN(tr, capacity)
		r.log = Log(tr, capacity, LogConfig{SegBlocks: segBlocks})
		r.engine, err = Replay(cfg, tr)
		if err != nil {
			t.Fatalf("%s: %v", tr.Name, err)
		}
		fifoCfg := cfg
		fifoCfg.Policy = cachecore.PolicyFIFO
		if r.engineFIFO, err = Replay(fifoCfg, tr); err != nil {
			t.Fatalf("%s (fifo): %v", tr.Name, err)
		}
		if a := r.engine.ReappendAmp(); a > 1.2+1e-9 {
			t.Errorf("%s: GC re-appended %d bytes for %d installed: write amplification %.3f above the 1.2 budget", tr.Name, r.engine.ReappendBytes, r.engine.InstalledBytes, a)
		}
		// The engine's fifo policy is the log Log simulates: where every
		// request is one block (none is sequential enough to bypass the
		// cache), it must hold what the ideal log holds, or the engine
		// wastes room (partly filled heads, segments held by nothing).
		if singleBlocks(tr) {
			d := r.engineFIFO.ByteHitRatio() - r.log.ByteHitRatio()
			logDiffs = append(logDiffs, d)
			if d < -logTraceTolerance || d > logTraceTolerance {
				t.Errorf("%s: the engine's fifo byte hit ratio %.4f, an ideal log of its capacity %.4f (more than %.3f apart)", tr.Name, r.engineFIFO.ByteHitRatio(), r.log.ByteHitRatio(), logTraceTolerance)
			}
		}
		if hasWrites(tr) {
			// What cleaning out of log order would get back of the
			// overwrites' dead copies, within GC's write budget and
			// beyond it (docs/yardstick.md).
			for _, share := range []float64{0, 0.2, 0.5, 1} {
				g := Log(tr, capacity, LogConfig{SegBlocks: segBlocks, Clean: true, MoveShare: share})
				t.Logf("%s: the ideal log cleaning out of log order, moving live blocks within a write amplification of %.1f: byte hit ratio %.4f at %.2fx (in log order %.4f, LRU %.4f, engine 2q %.4f)", tr.Name, 1+share, g.ByteHitRatio(), g.WriteAmp, r.log.ByteHitRatio(), r.lru.ByteHitRatio(), r.engine.ByteHitRatio())
			}
		}
		est, ex := advisorOn(tr, 0.01)
		r.advisor, r.exactReads = est.HitRatio(uint64(capacity)), ex.HitRatio(uint64(capacity))
		rows = append(rows, r)

		for _, p := range []struct {
			name string
			r    Result
		}{{"LRU", r.lru}, {"FIFO", r.fifo}, {"engine", r.engine.Result}, {"engine fifo", r.engineFIFO.Result}} {
			if p.r.ReadBlocks != r.min.ReadBlocks {
				t.Errorf("%s: %s saw %d read blocks, MIN %d", tr.Name, p.name, p.r.ReadBlocks, r.min.ReadBlocks)
			}
			// The engine's capacity is measured once, at GC's threshold on
			// a fresh cache; during a replay its partly filled data heads
			// make it hold up to a segment per head more or less, so it may
			// come out a hair above MIN at the measured capacity.
			tol := 1e-9
			if strings.HasPrefix(p.name, "engine") {
				tol = 0.01
			}
			if p.r.ByteHitRatio() > r.min.ByteHitRatio()+tol {
				t.Errorf("%s: %s's byte hit ratio %.4f above MIN's %.4f", tr.Name, p.name, p.r.ByteHitRatio(), r.min.ByteHitRatio())
			}
		}
		if strings.HasPrefix(tr.Name, "loop") {
			if r.lru.HitRatio() > 0.01 || r.fifo.HitRatio() > 0.01 {
				t.Errorf("%s: LRU %.4f, FIFO %.4f on a loop larger than the cache, want about 0", tr.Name, r.lru.HitRatio(), r.fifo.HitRatio())
			}
			// MIN keeps most of the loop: capacity-1 blocks of every turn
			// after the first hit.
			if r.min.HitRatio() < 0.8 {
				t.Errorf("%s: MIN %.4f on a loop 10 %% larger than the cache, want > 0.8", tr.Name, r.min.HitRatio())
			}
		}
	}
	if m := mean(logDiffs); m < -logMeanTolerance || m > logMeanTolerance {
		t.Errorf("the engine's fifo byte hit ratio is %+.4f from the ideal log's on average over %d traces (%.4f), more than %.3f", m, len(logDiffs), logDiffs, logMeanTolerance)
	}
	t.Log("\n" + table(rows))
}

// The engine's fifo byte hit ratio is 0.000 to 0.002 below the ideal log's
// on each trace of single blocks at 32 MiB and 256 MiB, up to 0.005 on a
// machine busy with other tests, and 0.0005 to 0.0009 on average over
// them, from its data heads and the order in which concurrent kset commits
// reach the log. A segment less costs the ideal log 0.005 to 0.014 on the
// Zipf traces with α <= 1.0 at 32 MiB, 0.005 on average over the traces:
// logMeanTolerance tells that apart, logTraceTolerance a gross loss on one
// trace.
const (
	logMeanTolerance  = 0.003
	logTraceTolerance = 0.02
)

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func singleBlocks(tr Trace) bool {
	for _, q := range tr.Reqs {
		if q.N != 1 {
			return false
		}
	}
	return true
}

func hasWrites(tr Trace) bool {
	for _, q := range tr.Reqs {
		if q.Write {
			return true
		}
	}
	return false
}

// advisorOn runs the read references of a trace through the SHARDS
// estimator (rate r) and the exact Mattson curve.
func advisorOn(tr Trace, rate float64) (mrc.Curve, *mrc.Exact) {
	est := mrc.New(mrc.Config{Rate: rate, Seed: 7})
	n := 0
	for _, q := range tr.Reqs {
		if !q.Write {
			n += int(q.N)
		}
	}
	ex := mrc.NewExact(n)
	for _, q := range tr.Reqs {
		if q.Write {
			continue
		}
		est.AccessRange(q.Block, uint64(q.N))
		for b := q.Block; b < q.Block+uint64(q.N); b++ {
			ex.Access(b)
		}
	}
	return est.Curve(), ex
}

func table(rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-30s | %-27s | %-13s | %-8s | %-13s | %-13s | %-13s | %-13s | %-14s | %-13s | %-13s | %s\n", "trace", "engine 2q req/byte (÷MIN)", "eng fifo", "log byte", "LRU req/byte", "FIFO req/byte", "MIN req/byte", "LRU/FIFO ÷MIN", "eng WA (GC WA)", "advisor/exact", "eng occupancy", "2q-LRU bytes")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-30s | %.3f/%.3f (%.2f/%.2f) | %.3f/%.3f   | %.3f    | %.3f/%.3f   | %.3f/%.3f   | %.3f/%.3f   | %.2f/%.2f     | %5.2fx (%.2fx) | %.3f/%.3f   | %.2f          | %+.4f\n", r.name,
			r.engine.HitRatio(), r.engine.ByteHitRatio(), div(r.engine.HitRatio(), r.min.HitRatio()), div(r.engine.ByteHitRatio(), r.min.ByteHitRatio()),
			r.engineFIFO.HitRatio(), r.engineFIFO.ByteHitRatio(), r.log.ByteHitRatio(),
			r.lru.HitRatio(), r.lru.ByteHitRatio(), r.fifo.HitRatio(), r.fifo.ByteHitRatio(), r.min.HitRatio(), r.min.ByteHitRatio(),
			div(r.lru.HitRatio(), r.min.HitRatio()), div(r.fifo.HitRatio(), r.min.HitRatio()), r.engine.WriteAmp(), r.engine.ReappendAmp(), r.advisor, r.exactReads, r.engine.Occupancy,
			r.engine.ByteHitRatio()-r.lru.ByteHitRatio())
	}
	return b.String()
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// TestYardstickSeeds replays the Zipf traces with CACHELUN_SEEDS other
// seeds each (CACHELUN_REFS references per cache block, default the
// yardstick's) and prints, per trace, how far 2q's byte hit ratio is from
// LRU's: mean, lowest, highest, and on how many seeds it is below. One
// seed's figure moves with the trace as much as with the policy; this
// tells the two apart. It checks GC's write amplification from re-appends
// on every run. Off unless CACHELUN_SEEDS is set (12 seeds: about 2
// minutes at 32 MiB, 12 references per block).
func TestYardstickSeeds(t *testing.T) {
	seeds, _ := strconv.Atoi(os.Getenv("CACHELUN_SEEDS"))
	if seeds <= 0 {
		t.Skip("set CACHELUN_SEEDS=N to replay the Zipf traces with N seeds each")
	}
	cfg, refsPerCache := yardstickSize()
	if v := os.Getenv("CACHELUN_REFS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("CACHELUN_REFS=%q: want a positive number", v)
		}
		refsPerCache = n
	}
	capacity, err := Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d seeds, %d references per cache block, capacity %d blocks\n", seeds, refsPerCache, capacity)
	fmt.Fprintf(&b, "%-20s | %-9s | %-9s | %-9s | %s\n", "trace", "2q-LRU", "lowest", "highest", "seeds below LRU")
	for _, a := range []float64{0.8, 1.0, 1.2} {
		for _, ws := range []int{2, 4, 10} {
			var sum, lo, hi float64
			below := 0
			for s := range seeds {
				n := max(capacity*refsPerCache, 3*ws*capacity)
				tr := Zipf("", a, ws*capacity, n, uint64(1000+s))
				r, err := Replay(cfg, tr)
				if err != nil {
					t.Fatal(err)
				}
				if amp := r.ReappendAmp(); amp > 1.2+1e-9 {
					t.Errorf("α=%.1f ws=%d× seed %d: GC's write amplification from re-appends %.3f", a, ws, 1000+s, amp)
				}
				d := r.ByteHitRatio() - LRU(tr, capacity).ByteHitRatio()
				sum += d
				if s == 0 || d < lo {
					lo = d
				}
				if s == 0 || d > hi {
					hi = d
				}
				if d < 0 {
					below++
				}
			}
			fmt.Fprintf(&b, "%-20s | %+.4f   | %+.4f   | %+.4f   | %d\n", fmt.Sprintf("zipf α=%.1f ws=%d×", a, ws), sum/float64(seeds), lo, hi, below)
		}
	}
	t.Log("\n" + b.String())
}
