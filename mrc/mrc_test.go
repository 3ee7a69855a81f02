package mrc

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// A loop over L blocks has a known curve: every reference misses below L
// blocks, every one after the first turn hits from L blocks on.
func TestLoopHasKnownCurve(t *testing.T) {
	const loop, turns = 50000, 10
	e := New(Config{Rate: 0.01, Seed: 1})
	for range turns {
		e.AccessRange(0, loop)
	}
	c := e.Curve()
	want := float64(turns-1) / turns
	for _, tc := range []struct {
		size uint64
		want float64
	}{{loop / 4, 0}, {loop * 9 / 10, 0}, {loop * 11 / 10, want}, {loop * 4, want}} {
		if got := c.HitRatio(tc.size); math.Abs(got-tc.want) > 0.03 {
			t.Errorf("hit ratio at %d blocks: %.4f, want %.4f ± 0.03", tc.size, got, tc.want)
		}
	}
	if c.References != loop*turns {
		t.Errorf("References %d, want %d", c.References, loop*turns)
	}
}

// At rate 1 every reference is sampled: the curve is the exact one up to
// the histogram's resolution (32 buckets per power of two, about 2 %).
func TestRateOneMatchesExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 200000
	e := New(Config{Rate: 1, MaxTracked: 1 << 20})
	x := NewExact(n)
	for range n {
		b := uint64(rng.IntN(1000)) // hot
		if rng.IntN(3) == 0 {
			b = uint64(1000 + rng.IntN(20000))
		}
		e.Access(b)
		x.Access(b)
	}
	c := e.Curve()
	for _, size := range []uint64{10, 100, 500, 1000, 2000, 5000, 10000, 20000, 40000} {
		if got, want := c.HitRatio(size), x.HitRatio(size); math.Abs(got-want) > 0.01 {
			t.Errorf("size %d: %.4f, exact %.4f", size, got, want)
		}
	}
}

// Memory stays bounded: with MaxTracked blocks tracked the rate goes down
// and the curve still describes the workload.
func TestConstantMemory(t *testing.T) {
	const space = 400000
	e := New(Config{Rate: 0.05, MaxTracked: 512, Seed: 9})
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 4 * space {
		e.Access(uint64(rng.IntN(space)))
		if i%4096 == 0 && e.Curve().Tracked > 512 {
			t.Fatalf("%d blocks tracked, MaxTracked 512", e.Curve().Tracked)
		}
	}
	c := e.Curve()
	if c.Rate >= 0.05 || c.Rate <= 0 {
		t.Fatalf("rate %v: want it lowered below 0.05", c.Rate)
	}
	// Uniform over the space: LRU of half the space hits about half the
	// references of the warm part; the first 400 000 of 1.6 M are colder.
	x := NewExact(4 * space)
	rng = rand.New(rand.NewPCG(5, 6))
	for range 4 * space {
		x.Access(uint64(rng.IntN(space)))
	}
	for _, size := range []uint64{space / 4, space / 2, space} {
		if got, want := c.HitRatio(size), x.HitRatio(size); math.Abs(got-want) > 0.05 {
			t.Errorf("size %d: %.4f, exact %.4f (rate %.5f, 512 blocks)", size, got, want, c.Rate)
		}
	}
}

func TestSizeFor(t *testing.T) {
	e := New(Config{Rate: 0.1})
	for range 5 {
		e.AccessRange(0, 10000)
	}
	c := e.Curve()
	size, ok := c.SizeFor(0.5)
	if !ok || size < 9000 || size > 11000 {
		t.Fatalf("SizeFor(0.5) = %d, %v: want about 10 000 (the loop)", size, ok)
	}
	if c.HitRatio(size) < 0.5 {
		t.Errorf("HitRatio(SizeFor(0.5)) = %.4f", c.HitRatio(size))
	}
	if _, ok := c.SizeFor(0.9); ok {
		t.Errorf("SizeFor(0.9) reachable, but a fifth of the references are first ones")
	}
	if _, ok := New(Config{}).Curve().SizeFor(0.5); ok {
		t.Errorf("SizeFor on an empty curve")
	}
}

// Access and Curve from several goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	e := New(Config{Rate: 0.5, MaxTracked: 64})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				e.AccessRange(uint64(g*100000+i%700), 2)
				if i%500 == 0 {
					_ = e.Curve().HitRatio(100)
				}
			}
		}()
	}
	wg.Wait()
	if c := e.Curve(); c.References != 4*5000*2 || c.Tracked > 64 {
		t.Fatalf("References %d (want 40000), Tracked %d (max 64)", c.References, c.Tracked)
	}
	e.Reset()
	if c := e.Curve(); c.References != 0 || c.Tracked != 0 || c.HitRatio(10) != 0 {
		t.Fatalf("after Reset: %+v", c)
	}
}

// The distinct-block sketch counts within a few percent, small sets
// (linear counting) and large ones alike, whatever the repetitions.
func TestDistinctSketch(t *testing.T) {
	for _, n := range []int{100, 5000, 300000} {
		var h hll
		for range 3 {
			for i := range n {
				h.add(mix(uint64(i) * 7919)) // the same n values each turn
			}
		}
		if got := h.estimate(); math.Abs(got-float64(n)) > 0.03*float64(n)+2 {
			t.Errorf("%d distinct values: estimated %.0f", n, got)
		}
	}
	var h hll
	if h.estimate() != 0 {
		t.Errorf("empty sketch: %v", h.estimate())
	}
}

// BenchmarkAccess is the cost of one reference on the read path (the
// engine makes two per request: the volume's and the cache's estimator),
// from one goroutine and from all (the counters are shared).
func BenchmarkAccess(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		e := New(Config{})
		for i := 0; i < b.N; i++ {
			e.AccessRange(uint64(i)*2654435761%1000000, 1)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		e := New(Config{})
		b.RunParallel(func(pb *testing.PB) {
			i := uint64(0)
			for pb.Next() {
				i++
				e.AccessRange(i*2654435761%1000000, 1)
			}
		})
	})
}
