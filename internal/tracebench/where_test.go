package tracebench

import (
	"container/list"
	"fmt"
	"os"
	"strings"
	"testing"
)

// whereCounts sorts the read blocks that the engine and LRU, replayed side
// by side from GC's first run on, do not both hit.
type whereCounts struct {
	refused       int // LRU hit; the engine refused the block's last miss (the ghost set did not know it)
	refusedKnown  int // of those, blocks referenced before that miss too (the ghost set had forgotten them)
	evictedUnread int // LRU hit; the engine held the block and GC evicted it, not read since it was cached
	evictedRead   int // LRU hit; the engine held the block, read it since it was cached, and GC evicted it
	other         int // LRU hit; the engine never held the block (a fill not cached: dropped, bypassed, raced)
	engineOnly    int // the engine hit, LRU missed
	// raced counts multi-block reads whose blocks the engine held
	// changed between Explain and the read (GC runs on its own too).
	raced int
	// lruHits counts LRU's read blocks hit, for the caller to check
	// against the reference's own replay.
	lruHits uint64
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// blockHistory is what the engine did with one block, as seen from
// outside: whether it refused the block's last miss, whether it held the
// block since, and the reads it served from the cache since then.
type blockHistory struct {
	refused, held bool
	// refusedKnown: the refused miss was not the block's first reference.
	refusedKnown  bool
	hitsSinceHeld int
}

// whereLRUWins replays t through a fresh engine and an LRU cache of
// capacity blocks, one request at a time. Before each request it asks the
// engine (Explain, once GC has had its turn) which of the request's blocks
// it holds; a single-block read's outcome is the engine's statistics. From
// GC's first run on it sorts the blocks only one of the two hits
// (whereCounts). It returns the engine's byte hit ratio over the whole
// trace as counted block by block, and an error when that count is not
// the engine's own (unless GC raced a multi-block read).
func whereLRUWins(cfg EngineConfig, t Trace, capacity int) (whereCounts, float64, error) {
	e, err := OpenEngine(cfg, t.Blocks)
	if err != nil {
		return whereCounts{}, 0, err
	}
	defer e.Close()
	l := &lru{cap: capacity, m: make(map[uint64]*list.Element, capacity), l: list.New()}
	var w whereCounts
	hist := map[uint64]*blockHistory{}
	histOf := func(b uint64) (*blockHistory, bool) {
		h := hist[b]
		if h == nil {
			h = &blockHistory{}
			hist[b] = h
			return h, false
		}
		return h, true
	}
	var readBlocks, engineHits uint64
	i := 0
	engineHit := make([]bool, 0, 16)
	for _, q := range t.Reqs {
		// As Do does: GC and the fill worker have their turn first, so
		// what Explain says now is what the request finds.
		if e.overThreshold() {
			if err := e.settle(); err != nil {
				return w, 0, err
			}
		}
		gcRan := e.cache.Stats().GCRuns > 0
		engineHit = engineHit[:0]
		for b := q.Block; b < q.Block+uint64(q.N); b++ {
			engineHit = append(engineHit, e.vol.Explain(int64(b)*BlockSize).State == "hit")
		}
		before := e.vol.Stats()
		if err := e.Do(q); err != nil {
			return w, 0, err
		}
		after := e.vol.Stats()
		refused := after.AdmissionsRefused > before.AdmissionsRefused
		if !q.Write {
			// GC's own goroutine may evict a block between Explain and
			// the read: the read's outcome is the engine's statistics.
			hits := (after.ReadHitBytes - before.ReadHitBytes) / BlockSize
			if q.N == 1 {
				engineHit[0] = hits == 1
			} else if n := countTrue(engineHit); uint64(n) != hits {
				w.raced++
			}
		}
		for j := range int(q.N) {
			b := q.Block + uint64(j)
			lruHit := l.access(i, b, q.Write)
			i++
			h, seen := histOf(b)
			if q.Write {
				// An overwrite is cached as new data, unread so far.
				*h = blockHistory{held: e.vol.Explain(int64(b)*BlockSize).State == "hit"}
				continue
			}
			readBlocks++
			if lruHit {
				w.lruHits++
			}
			if engineHit[j] {
				engineHits++
			}
			if gcRan && lruHit != engineHit[j] {
				switch {
				case !lruHit:
					w.engineOnly++
				case h.refused:
					w.refused++
					if h.refusedKnown {
						w.refusedKnown++
					}
				case h.held && h.hitsSinceHeld > 0:
					w.evictedRead++
				case h.held:
					w.evictedUnread++
				default:
					w.other++
				}
			}
			switch {
			case engineHit[j]:
				h.hitsSinceHeld++
			case e.vol.Explain(int64(b)*BlockSize).State == "hit":
				*h = blockHistory{held: true}
			case refused:
				*h = blockHistory{refused: true, refusedKnown: seen}
			default:
				*h = blockHistory{}
			}
		}
	}
	if total := e.vol.Stats().ReadHitBytes / BlockSize; w.raced == 0 && total != engineHits {
		return w, 0, fmt.Errorf("%s: %d read blocks hit counted block by block, the engine counted %d", t.Name, engineHits, total)
	}
	return w, ratio(engineHits, readBlocks), nil
}

// lruEquivalentLimit bounds lruEquivalent's search, in multiples of the
// capacity.
const lruEquivalentLimit = 8

// lruEquivalent is the smallest LRU capacity, as a multiple of capacity,
// whose byte hit ratio on t is at least hr (LRU's hit ratio never falls as
// its capacity grows), searched up to lruEquivalentLimit× capacity; false
// when even that falls short.
func lruEquivalent(t Trace, capacity int, hr float64) (float64, bool) {
	lo, hi := 1, lruEquivalentLimit*capacity
	if LRU(t, hi).ByteHitRatio() < hr {
		return 0, false
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if LRU(t, mid).ByteHitRatio() >= hr {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return float64(lo) / float64(capacity), true
}

// TestYardstickWhereLRUWins replays each yardstick trace through the
// engine (2q) and LRU side by side and prints, from GC's first run on, the
// read blocks LRU hits and the engine misses, by what the engine had done
// with the block (refused its last miss, or held it until GC evicted it,
// read or not since), and those the engine hits and LRU misses; and the
// capacity LRU needs for the engine's byte hit ratio, as a multiple of the
// engine's. It tells what a policy change would have to win back, and
// where. Off unless CACHELUN_WHERE=1 (about 10 s at 32 MiB;
// CACHELUN_LONG=1 for 256 MiB, about 4 minutes).
func TestYardstickWhereLRUWins(t *testing.T) {
	if os.Getenv("CACHELUN_WHERE") != "1" {
		t.Skip("set CACHELUN_WHERE=1 to sort the blocks LRU and the engine do not both hit")
	}
	cfg, refsPerCache := yardstickSize()
	capacity, err := Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "capacity %d blocks, %d references per cache block; read blocks from GC's first run on\n", capacity, refsPerCache)
	fmt.Fprintf(&b, "%-30s | %-16s | %-14s | %-12s | %-6s | %-11s | %-8s | %s\n", "trace", "refused (known)", "evicted unread", "evicted read", "other", "engine only", "net", "LRU-equivalent capacity")
	for _, tr := range Standard(capacity, refsPerCache) {
		w, hr, err := whereLRUWins(cfg, tr, capacity)
		if err != nil {
			t.Fatal(err)
		}
		if ref := LRU(tr, capacity).ReadHitBlock; w.lruHits != ref {
			t.Errorf("%s: LRU beside the engine hit %d read blocks, the reference LRU %d", tr.Name, w.lruHits, ref)
		}
		if w.raced > 0 {
			t.Logf("%s: %d multi-block reads found other blocks than Explain had said (GC ran meanwhile); sorted by Explain", tr.Name, w.raced)
		}
		lruOnly := w.refused + w.evictedUnread + w.evictedRead + w.other
		eq := fmt.Sprintf("more than %d×", lruEquivalentLimit)
		if x, ok := lruEquivalent(tr, capacity, hr); ok {
			eq = fmt.Sprintf("%.3f×", x)
		}
		fmt.Fprintf(&b, "%-30s | %-16s | %-14d | %-12d | %-6d | %-11d | %+-8d | %s\n", tr.Name, fmt.Sprintf("%d (%d)", w.refused, w.refusedKnown), w.evictedUnread, w.evictedRead, w.other,
			w.engineOnly, w.engineOnly-lruOnly, eq)
	}
	t.Log("\n" + b.String())
}
