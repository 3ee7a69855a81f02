package tracebench

import (
	"container/heap"
	"container/list"
	"fmt"
	"math"
)

func fmtName(f string, a ...any) string { return fmt.Sprintf(f, a...) }

// Result is a policy's (or the engine's) outcome on a trace.
type Result struct {
	ReadReqs, ReadHits       uint64 // read requests, those whose every block hit
	ReadBlocks, ReadHitBlock uint64 // read blocks, those that hit
}

// HitRatio by requests.
func (r Result) HitRatio() float64 { return ratio(r.ReadHits, r.ReadReqs) }

// ByteHitRatio by bytes (blocks).
func (r Result) ByteHitRatio() float64 { return ratio(r.ReadHitBlock, r.ReadBlocks) }

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// policy is a block cache simulated on a trace: access reports whether
// the block was a hit (for writes the answer is ignored).
type policy interface {
	access(i int, block uint64, write bool) bool
}

// simulate runs a policy over the trace's blocks in order; i numbers the
// block references (as MIN's next-use table does).
func simulate(t Trace, p policy) Result {
	var r Result
	i := 0
	for _, q := range t.Reqs {
		all := true
		for b := q.Block; b < q.Block+uint64(q.N); b++ {
			hit := p.access(i, b, q.Write)
			i++
			if q.Write {
				continue
			}
			r.ReadBlocks++
			if hit {
				r.ReadHitBlock++
			} else {
				all = false
			}
		}
		if !q.Write {
			r.ReadReqs++
			if all {
				r.ReadHits++
			}
		}
	}
	return r
}

// LRU simulates an LRU cache of capacity blocks.
func LRU(t Trace, capacity int) Result {
	return simulate(t, &lru{cap: capacity, m: make(map[uint64]*list.Element, capacity), l: list.New()})
}

type lru struct {
	cap int
	m   map[uint64]*list.Element
	l   *list.List
}

func (c *lru) access(_ int, b uint64, _ bool) bool {
	if e, ok := c.m[b]; ok {
		c.l.MoveToFront(e)
		return true
	}
	if c.l.Len() >= c.cap {
		old := c.l.Back()
		c.l.Remove(old)
		delete(c.m, old.Value.(uint64))
	}
	c.m[b] = c.l.PushFront(b)
	return false
}

// FIFO simulates a FIFO cache of capacity blocks (hits do not move a
// block; every miss is admitted).
func FIFO(t Trace, capacity int) Result {
	return simulate(t, &fifo{cap: capacity, m: make(map[uint64]bool, capacity)})
}

type fifo struct {
	cap  int
	m    map[uint64]bool
	q    []uint64
	head int
}

func (c *fifo) access(_ int, b uint64, _ bool) bool {
	if c.m[b] {
		return true
	}
	if len(c.m) >= c.cap {
		delete(c.m, c.q[c.head])
		c.head++
		if c.head > len(c.q)/2 {
			c.q = append(c.q[:0], c.q[c.head:]...)
			c.head = 0
		}
	}
	c.m[b] = true
	c.q = append(c.q, b)
	return false
}

const never = math.MaxInt

// nextReads returns, for every block reference i, the index of the next
// read of the same block if it comes before the next write of it, else
// never: a block whose next reference overwrites it need not be kept.
func nextReads(t Trace) []int {
	type ref struct {
		b uint64
		w bool
	}
	var refs []ref
	for _, q := range t.Reqs {
		for b := q.Block; b < q.Block+uint64(q.N); b++ {
			refs = append(refs, ref{b, q.Write})
		}
	}
	next := make([]int, len(refs))
	seen := make(map[uint64]int)
	for i := len(refs) - 1; i >= 0; i-- {
		next[i] = never
		if j, ok := seen[refs[i].b]; ok && !refs[j].w {
			next[i] = j
		}
		seen[refs[i].b] = i
	}
	return next
}

// MIN simulates Belady's MIN with optional admission: the offline optimum
// of read hits for a cache of capacity blocks.
func MIN(t Trace, capacity int) Result {
	return simulate(t, &belady{cap: capacity, next: nextReads(t), in: make(map[uint64]int, capacity)})
}

type belady struct {
	cap  int
	next []int
	in   map[uint64]int // cached block → its next read
	h    nextHeap       // max-heap of (next, block); stale entries skipped
}

func (c *belady) access(i int, b uint64, _ bool) bool {
	nu := c.next[i]
	if _, ok := c.in[b]; ok {
		c.in[b] = nu
		heap.Push(&c.h, heapItem{nu, b})
		return true
	}
	if len(c.in) >= c.cap {
		for {
			top := c.h[0]
			if cur, ok := c.in[top.b]; !ok || cur != top.next {
				heap.Pop(&c.h)
				continue
			}
			break
		}
		if c.h[0].next <= nu {
			return false // bypass: every cached block is read again sooner
		}
		delete(c.in, heap.Pop(&c.h).(heapItem).b)
	}
	c.in[b] = nu
	heap.Push(&c.h, heapItem{nu, b})
	return false
}

type heapItem struct {
	next int
	b    uint64
}

type nextHeap []heapItem

func (h nextHeap) Len() int           { return len(h) }
func (h nextHeap) Less(i, j int) bool { return h[i].next > h[j].next }
func (h nextHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nextHeap) Push(x any)        { *h = append(*h, x.(heapItem)) }
func (h *nextHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
