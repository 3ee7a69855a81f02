package mrc

import (
	"container/heap"
	"math"
	"slices"
	"sync"
	"sync/atomic"
)

// Config configures an Estimator. Zero fields take their defaults.
type Config struct {
	// Rate is the initial sampling rate R in (0, 1]; default 0.01. The
	// rate only goes down from there, when MaxTracked blocks are tracked.
	Rate float64
	// MaxTracked bounds the sampled blocks tracked at once (memory);
	// default 16384.
	MaxTracked int
	// Seed perturbs the block hash, so that two estimators (or two runs)
	// can sample different blocks. Any value works.
	Seed uint64
}

// Default configuration values.
const (
	DefaultRate       = 0.01
	DefaultMaxTracked = 16384
)

const (
	tagBits        = 24
	modulus        = 1 << tagBits // P
	bucketsPerOct  = 32
	numBuckets     = 64 * bucketsPerOct
	minMaxTracked  = 16
	timeWindowMult = 4 // the time axis is compacted every (mult-1)·MaxTracked sampled references
)

// Estimator builds an LRU miss-ratio curve online from sampled references.
// See the package documentation for the method and its error.
type Estimator struct {
	seed   uint64
	max    int
	thresh atomic.Uint64 // T: a block is sampled iff tag < T
	refs   atomic.Uint64 // N: references seen
	// distinct estimates the distinct blocks seen (all of them, sampled
	// or not), so that Curve can correct for sampling more or fewer
	// blocks than R of them.
	distinct hll

	mu sync.Mutex
	// blocks maps a tracked block to its entry; byTag is a max-heap of
	// the entries by tag (eviction when more than max are tracked).
	blocks map[uint64]*entry
	byTag  tagHeap
	// fen counts the tracked blocks by the time of their last reference
	// (a Fenwick tree over time slots 1..len(fen)-1); clock is the last
	// slot handed out.
	fen   []int32
	clock int
	hist  [numBuckets]float64 // recorded distances, on the scale of the current rate
	cold  float64             // first references (infinite distance), same scale
}

type entry struct {
	block uint64
	tag   uint32
	time  int
	idx   int // position in byTag
}

// New returns an Estimator.
func New(cfg Config) *Estimator {
	if cfg.Rate <= 0 || cfg.Rate > 1 {
		cfg.Rate = DefaultRate
	}
	if cfg.MaxTracked <= 0 {
		cfg.MaxTracked = DefaultMaxTracked
	}
	cfg.MaxTracked = max(cfg.MaxTracked, minMaxTracked)
	e := &Estimator{seed: cfg.Seed, max: cfg.MaxTracked}
	e.thresh.Store(uint64(math.Max(1, math.Round(cfg.Rate*modulus))))
	e.reset()
	return e
}

func (e *Estimator) reset() {
	e.blocks = make(map[uint64]*entry, e.max+1)
	e.byTag = e.byTag[:0]
	e.fen = make([]int32, timeWindowMult*e.max+1)
	e.clock = 0
	e.hist = [numBuckets]float64{}
	e.cold = 0
}

// Reset forgets every reference; the sampling rate stays where it is.
func (e *Estimator) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.refs.Store(0)
	e.distinct.reset()
	e.reset()
}

// mix is a 64-bit finalizer (splitmix64's): every input bit affects every
// output bit, so consecutive block numbers get independent tags.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// see counts block into the distinct-block sketch and returns its tag.
func (e *Estimator) see(block uint64) uint32 {
	h := mix(block + e.seed*0x9e3779b97f4a7c15)
	e.distinct.add(h) // uses the low 40 bits, the tag the top 24
	return uint32(h >> (64 - tagBits))
}

// Access records one reference to block.
func (e *Estimator) Access(block uint64) {
	e.refs.Add(1)
	if t := e.see(block); uint64(t) < e.thresh.Load() {
		e.sampled(block, t)
	}
}

// AccessRange records references to the n blocks first, first+1, ... (one
// request spanning several blocks).
func (e *Estimator) AccessRange(first, n uint64) {
	e.refs.Add(n)
	th := e.thresh.Load()
	for b := first; b < first+n; b++ {
		if t := e.see(b); uint64(t) < th {
			e.sampled(b, t)
		}
	}
}

func (e *Estimator) sampled(block uint64, t uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	th := e.thresh.Load()
	if uint64(t) >= th {
		return // the rate went down meanwhile
	}
	rate := float64(th) / modulus
	if x, ok := e.blocks[block]; ok {
		// d: 1 + the tracked blocks referenced after x's last reference.
		d := e.count(x.time+1, e.clock) + 1
		e.record(1+float64(d-1)/rate, 1)
		e.fenAdd(x.time, -1)
		x.time = e.tick()
		e.fenAdd(x.time, 1)
		return
	}
	e.cold++
	x := &entry{block: block, tag: t, time: e.tick()}
	e.fenAdd(x.time, 1)
	e.blocks[block] = x
	heap.Push(&e.byTag, x)
	if len(e.blocks) > e.max {
		e.lowerRate()
	}
}

// lowerRate drops the tracked blocks with the largest tag and makes that
// tag the new threshold: those blocks are never sampled again. Counts
// recorded at the old rate are scaled to the new one.
func (e *Estimator) lowerRate() {
	old := e.thresh.Load()
	nt := uint64(e.byTag[0].tag)
	for len(e.byTag) > 0 && uint64(e.byTag[0].tag) >= nt {
		x := heap.Pop(&e.byTag).(*entry)
		e.fenAdd(x.time, -1)
		delete(e.blocks, x.block)
	}
	if nt == 0 {
		nt = 1 // keep sampling something; only reachable with MaxTracked colliding tags
	}
	e.thresh.Store(nt)
	f := float64(nt) / float64(old)
	for i := range e.hist {
		e.hist[i] *= f
	}
	e.cold *= f
}

func (e *Estimator) record(dist float64, w float64) {
	e.hist[bucketOf(dist)] += w
}

func bucketOf(dist float64) int {
	if dist <= 1 {
		return 0
	}
	b := int(math.Log2(dist) * bucketsPerOct)
	return min(max(b, 0), numBuckets-1)
}

// bucketLow is the smallest distance of bucket b.
func bucketLow(b int) float64 { return math.Exp2(float64(b) / bucketsPerOct) }

// tick hands out the next time slot, compacting the time axis when it is
// used up: the tracked blocks keep their order and get slots 1..n.
func (e *Estimator) tick() int {
	if e.clock+1 >= len(e.fen) {
		live := make([]*entry, 0, len(e.blocks))
		for _, x := range e.blocks {
			live = append(live, x)
		}
		slices.SortFunc(live, func(a, b *entry) int { return a.time - b.time })
		clear(e.fen)
		for i, x := range live {
			x.time = i + 1
			e.fenAdd(x.time, 1)
		}
		e.clock = len(live)
	}
	e.clock++
	return e.clock
}

func (e *Estimator) fenAdd(i int, d int32) {
	for ; i < len(e.fen); i += i & -i {
		e.fen[i] += d
	}
}

func (e *Estimator) prefix(i int) int {
	s := 0
	for ; i > 0; i -= i & -i {
		s += int(e.fen[i])
	}
	return s
}

func (e *Estimator) count(lo, hi int) int {
	if lo > hi {
		return 0
	}
	return e.prefix(hi) - e.prefix(lo-1)
}

// Curve returns the miss-ratio curve of the references so far.
func (e *Estimator) Curve() Curve {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.refs.Load()
	th := e.thresh.Load()
	rate := float64(th) / modulus
	c := Curve{References: n, Rate: rate, Tracked: len(e.blocks), hist: make([]float64, numBuckets)}
	copy(c.hist, e.hist[:])
	c.cold = e.cold
	s := e.cold
	for _, h := range e.hist {
		s += h
	}
	c.Sampled = s
	// Two corrections of sampling noise. First, the blocks sampled: R·M
	// were expected (M distinct blocks, from the sketch, ±1 %), e.cold
	// were sampled (first references, scaled like every count); a share
	// too many or too few sampled blocks scales every count alike, so
	// every count is scaled by R·M/cold (a loop then comes out exact).
	if m := e.distinct.estimate(); m > 0 && e.cold > 0 {
		k := rate * m / e.cold
		for i := range c.hist {
			c.hist[i] *= k
		}
		c.cold *= k
		s *= k
		c.Sampled = s
	}
	// Second, SHARDS_adj: the expected sampled count is R·N (the
	// references of an era sampled at an older rate R' were expected
	// R'·N' times and are scaled by R/R'). What differs now is the mix
	// of the sampled blocks, mostly a hot block sampled (or missed) by
	// chance; it is credited to the shortest distance, where hot blocks'
	// references are.
	c.adj = rate*float64(n) - s
	return c
}

// Curve is a miss-ratio curve: the hit ratio of an LRU cache as a function
// of its size in blocks.
type Curve struct {
	References uint64  // references seen
	Sampled    float64 // sampled references, scaled to the current rate
	Rate       float64 // current sampling rate R (1 for an exact curve)
	Tracked    int     // sampled blocks tracked now
	hist       []float64
	cold       float64
	adj        float64
	exact      *Exact
}

// total is the denominator: the expected sampled count (never below 1).
func (c Curve) total() float64 { return max(c.Sampled+c.adj, 1) }

// HitRatio is the estimated hit ratio (by requests) of an LRU cache of
// size blocks, in [0, 1]; 0 before any sampled reference.
func (c Curve) HitRatio(size uint64) float64 {
	if c.exact != nil {
		return c.exact.HitRatio(size)
	}
	if c.Sampled == 0 || size == 0 {
		return 0
	}
	hits := c.adj
	x := float64(size)
	for b, h := range c.hist {
		if h == 0 {
			continue
		}
		lo, hi := bucketLow(b), bucketLow(b+1)
		if b == 0 {
			lo = 1
		}
		switch {
		case hi <= x:
			hits += h
		case lo <= x:
			hits += h * (x - lo) / (hi - lo)
		}
	}
	return min(max(hits/c.total(), 0), 1)
}

// SizeFor is the smallest size in blocks at which HitRatio reaches target,
// within the curve's resolution (3 % of the size); ok is false when no
// size reaches it (the workload's first references alone miss more).
func (c Curve) SizeFor(target float64) (size uint64, ok bool) {
	if c.exact != nil {
		return c.exact.SizeFor(target)
	}
	if c.Sampled == 0 || target > c.HitRatio(math.MaxUint64/2) {
		return 0, false
	}
	if target <= 0 {
		return 0, true
	}
	// HitRatio is non-decreasing in size: bisect.
	lo, hi := uint64(0), uint64(1)
	for c.HitRatio(hi) < target {
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 && float64(hi-lo) > float64(lo)*0.001 {
		m := lo + (hi-lo)/2
		if c.HitRatio(m) >= target {
			hi = m
		} else {
			lo = m
		}
	}
	return hi, true
}

type tagHeap []*entry

func (h tagHeap) Len() int           { return len(h) }
func (h tagHeap) Less(i, j int) bool { return h[i].tag > h[j].tag }
func (h tagHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *tagHeap) Push(x any) {
	e := x.(*entry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *tagHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
