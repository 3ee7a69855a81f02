package tracebench

import (
	"math"
	"math/rand/v2"
)

// Req is one request: N blocks from Block on.
type Req struct {
	Block uint64
	N     uint32
	Write bool
}

// Trace is a named request sequence over blocks [0, Blocks).
type Trace struct {
	Name   string
	Blocks uint64 // the address space the trace touches, in blocks
	Reqs   []Req
}

// zipfSampler draws ranks 0..n-1 with P(k) ∝ 1/(k+1)^alpha by inverse CDF.
type zipfSampler struct{ cdf []float64 }

func newZipf(alpha float64, n int) *zipfSampler {
	cdf := make([]float64, n)
	s := 0.0
	for k := range n {
		s += 1 / math.Pow(float64(k+1), alpha)
		cdf[k] = s
	}
	for k := range cdf {
		cdf[k] /= s
	}
	return &zipfSampler{cdf: cdf}
}

func (z *zipfSampler) draw(rng *rand.Rand) int {
	u := rng.Float64()
	lo, hi := 0, len(z.cdf)-1
	for lo < hi {
		m := (lo + hi) / 2
		if z.cdf[m] < u {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// permutation maps ranks to block numbers, so that hot blocks are spread
// over the address space (and over the engine's stripes) as in real
// volumes, not packed at its start.
func permutation(n int, rng *rand.Rand) []uint64 {
	p := make([]uint64, n)
	for i := range p {
		p[i] = uint64(i)
	}
	rng.Shuffle(n, func(i, j int) { p[i], p[j] = p[j], p[i] })
	return p
}

// Zipf: n single-block reads, Zipf(alpha) over ws blocks.
func Zipf(name string, alpha float64, ws, n int, seed uint64) Trace {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	z := newZipf(alpha, ws)
	perm := permutation(ws, rng)
	t := Trace{Name: name, Blocks: uint64(ws), Reqs: make([]Req, n)}
	for i := range t.Reqs {
		t.Reqs[i] = Req{Block: perm[z.draw(rng)], N: 1}
	}
	return t
}

// HotScan: single-block reads of a hot set of hot blocks (uniform), and
// every period requests a full sequential scan of the whole space of
// space blocks in 64 KiB requests (16 blocks), until n requests.
func HotScan(name string, hot, space, period, n int, seed uint64) Trace {
	rng := rand.New(rand.NewPCG(seed, 0x5ca1))
	perm := permutation(space, rng)
	hotBlocks := perm[:hot]
	t := Trace{Name: name, Blocks: uint64(space)}
	for len(t.Reqs) < n {
		for range period {
			t.Reqs = append(t.Reqs, Req{Block: hotBlocks[rng.IntN(hot)], N: 1})
		}
		for b := 0; b < space; b += 16 {
			t.Reqs = append(t.Reqs, Req{Block: uint64(b), N: uint32(min(16, space-b))})
		}
	}
	t.Reqs = t.Reqs[:n]
	return t
}

// Loop: single-block reads cycling over loop blocks in one fixed random
// order (random, so that the engine's sequential cutoff does not take it
// for a scan: the loop is what a cache must hold, not skip).
func Loop(name string, loop, n int, seed uint64) Trace {
	rng := rand.New(rand.NewPCG(seed, 0x100b))
	perm := permutation(loop*4, rng)[:loop] // spread over 4× the space
	t := Trace{Name: name, Blocks: uint64(loop * 4), Reqs: make([]Req, n)}
	for i := range t.Reqs {
		t.Reqs[i] = Req{Block: perm[i%loop], N: 1}
	}
	return t
}

// Mixed: Zipf(alpha) over ws blocks, a share writes of single blocks
// (overwrites of the same hot blocks the reads want).
func Mixed(name string, alpha float64, ws, n int, writes float64, seed uint64) Trace {
	rng := rand.New(rand.NewPCG(seed, 0x3173d))
	z := newZipf(alpha, ws)
	perm := permutation(ws, rng)
	t := Trace{Name: name, Blocks: uint64(ws), Reqs: make([]Req, n)}
	for i := range t.Reqs {
		t.Reqs[i] = Req{Block: perm[z.draw(rng)], N: 1, Write: rng.Float64() < writes}
	}
	return t
}

// Standard returns the yardstick's traces for a cache of capacity blocks:
// Zipf α 0.8, 1.0, 1.2 over working sets 2×, 4× and 10× the cache; a hot
// set (half the cache) with a full scan of 10× the cache after every
// 4× cache hot reads; a loop 10 % larger than the cache; a mixed trace
// (Zipf 1.0 over 4× the cache, 30 % writes). Each has refsPerCache × the
// capacity requests, at least 3 × its working set.
func Standard(capacity, refsPerCache int) []Trace {
	n := capacity * refsPerCache
	var out []Trace
	seed := uint64(16)
	for _, a := range []float64{0.8, 1.0, 1.2} {
		for _, ws := range []int{2, 4, 10} {
			seed++
			out = append(out, Zipf(fmtName("zipf a=%.1f ws=%dx", a, ws), a, ws*capacity, max(n, 3*ws*capacity), seed))
		}
	}
	out = append(out,
		HotScan("hot 0.5x + scans 10x", capacity/2, 10*capacity, 4*capacity, max(n, 40*capacity), 101),
		Loop("loop 1.1x", capacity+capacity/10, max(n, 10*capacity), 102),
		Mixed("mixed a=1.0 ws=4x 30% writes", 1.0, 4*capacity, max(n, 12*capacity), 0.3, 103),
	)
	return out
}
