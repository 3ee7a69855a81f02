package mrc

import "slices"

// Exact computes the exact LRU miss-ratio curve of a reference stream from
// full Mattson stack distances (a Fenwick tree over reference times, so
// O(log n) per reference and O(n) memory for n references). It is the
// yardstick the Estimator is validated against; it is not for production
// use (its memory grows with the trace).
type Exact struct {
	last  map[uint64]int // block → time of its last reference (1-based)
	fen   []int32
	clock int
	dist  map[int]uint64 // stack distance → references
	refs  uint64
	cold  uint64
	dists []int // sorted distances, built lazily by HitRatio
	cum   []uint64
}

// NewExact returns an Exact for a trace of up to n references.
func NewExact(n int) *Exact {
	return &Exact{last: make(map[uint64]int), fen: make([]int32, n+1), dist: make(map[int]uint64)}
}

// Access records one reference. It panics past the n references NewExact
// was sized for.
func (x *Exact) Access(block uint64) {
	x.refs++
	x.dists = nil
	x.clock++
	if t, ok := x.last[block]; ok {
		d := x.prefix(x.clock-1) - x.prefix(t) + 1
		x.dist[d]++
		x.add(t, -1)
	} else {
		x.cold++
	}
	x.last[block] = x.clock
	x.add(x.clock, 1)
}

func (x *Exact) add(i int, d int32) {
	for ; i < len(x.fen); i += i & -i {
		x.fen[i] += d
	}
}

func (x *Exact) prefix(i int) int {
	s := 0
	for ; i > 0; i -= i & -i {
		s += int(x.fen[i])
	}
	return s
}

func (x *Exact) build() {
	if x.dists != nil {
		return
	}
	x.dists = make([]int, 0, len(x.dist))
	for d := range x.dist {
		x.dists = append(x.dists, d)
	}
	slices.Sort(x.dists)
	x.cum = make([]uint64, len(x.dists))
	var s uint64
	for i, d := range x.dists {
		s += x.dist[d]
		x.cum[i] = s
	}
}

// HitRatio is the hit ratio of an LRU cache of size blocks on the
// references so far.
func (x *Exact) HitRatio(size uint64) float64 {
	if x.refs == 0 {
		return 0
	}
	x.build()
	// the number of references with distance <= size
	lo, hi := 0, len(x.dists)
	for lo < hi {
		m := (lo + hi) / 2
		if uint64(x.dists[m]) <= size {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return 0
	}
	return float64(x.cum[lo-1]) / float64(x.refs)
}

// SizeFor is the smallest size at which HitRatio reaches target.
func (x *Exact) SizeFor(target float64) (uint64, bool) {
	x.build()
	if target <= 0 {
		return 0, true
	}
	for i, d := range x.dists {
		if float64(x.cum[i])/float64(max(x.refs, 1)) >= target {
			return uint64(d), true
		}
	}
	return 0, false
}

// Curve returns the exact curve as a Curve (Rate 1).
func (x *Exact) Curve() Curve {
	return Curve{References: x.refs, Sampled: float64(x.refs), Rate: 1, Tracked: len(x.last), exact: x}
}
