package cachecore

import (
	"sync"
	"sync/atomic"
	"time"
)

const (
	chunkShift    = 25 // 32 MiB chunks for in-flight bypass write tracking
	chunkPageSize = 1024
)

type chunkPage [chunkPageSize]atomic.Uint32

// bypassTracker counts bypass writes in flight per 32 MiB chunk of a
// volume. Counters are 32-bit (never saturate) and live in pages allocated
// on first use with a CAS, so an increment is never skipped and every
// decrement matches an increment of the same chunk.
type bypassTracker struct {
	pages []atomic.Pointer[chunkPage]
}

func newBypassTracker(size int64) *bypassTracker {
	chunks := (uint64(size) + 1<<chunkShift - 1) >> chunkShift
	return &bypassTracker{pages: make([]atomic.Pointer[chunkPage], (chunks+chunkPageSize-1)/chunkPageSize+1)}
}

func (t *bypassTracker) counter(chunk uint64, alloc bool) *atomic.Uint32 {
	pi := chunk / chunkPageSize
	if pi >= uint64(len(t.pages)) {
		return nil
	}
	p := t.pages[pi].Load()
	if p == nil {
		if !alloc {
			return nil
		}
		np := new(chunkPage)
		if !t.pages[pi].CompareAndSwap(nil, np) {
			np = t.pages[pi].Load()
		}
		p = np
	}
	return &p[chunk%chunkPageSize]
}

// chunkRange is the inclusive chunk range of [off, off+n).
func chunkRange(off, n int64) (first, last uint64) {
	return uint64(off) >> chunkShift, uint64(off+n-1) >> chunkShift
}

func (t *bypassTracker) inc(first, last uint64) {
	for c := first; c <= last; c++ {
		if ctr := t.counter(c, true); ctr != nil {
			ctr.Add(1)
		}
	}
}

func (t *bypassTracker) dec(first, last uint64) {
	for c := first; c <= last; c++ {
		if ctr := t.counter(c, true); ctr != nil {
			ctr.Add(^uint32(0))
		}
	}
}

// count returns the number of bypass writes in flight on a chunk.
func (t *bypassTracker) count(chunk uint64) uint32 {
	if ctr := t.counter(chunk, false); ctr != nil {
		return ctr.Load()
	}
	return 0
}

// active reports whether any chunk of the inclusive range has a bypass
// write in flight.
func (t *bypassTracker) active(first, last uint64) bool {
	for c := first; c <= last; c++ {
		if t.count(c) != 0 {
			return true
		}
	}
	return false
}

// seqDetector is a bcache-style table of recent I/O streams. A request that
// starts where a tracked stream of the same initiator ended (within
// seqWindow) continues it; otherwise the least recently used entry is
// recycled. The sequential byte count of the stream decides the cutoff.
type seqDetector struct {
	mu      sync.Mutex
	entries [seqEntries]seqEntry
}

const (
	seqEntries = 64
	seqWindow  = 5 * time.Second
)

type seqEntry struct {
	stream string
	end    int64
	bytes  int64
	last   time.Time
}

// observe records [off, off+n) of stream and returns the stream's
// sequential byte count including this request.
func (d *seqDetector) observe(stream string, off, n int64, now time.Time) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	lru := 0
	for i := range d.entries {
		e := &d.entries[i]
		if e.end == off && e.stream == stream && !e.last.IsZero() && now.Sub(e.last) < seqWindow {
			e.end = off + n
			e.bytes += n
			e.last = now
			return e.bytes
		}
		if e.last.Before(d.entries[lru].last) {
			lru = i
		}
	}
	d.entries[lru] = seqEntry{stream: stream, end: off + n, bytes: n, last: now}
	return n
}

// latencyEWMA tracks a moving average of cache I/O latency (nanoseconds,
// weight 1/8) for congestion bypass.
type latencyEWMA struct{ v atomic.Int64 }

func (l *latencyEWMA) add(d time.Duration) {
	for {
		old := l.v.Load()
		nv := old + (int64(d)-old)/8
		if l.v.CompareAndSwap(old, nv) {
			return
		}
	}
}

func (l *latencyEWMA) congested(threshold time.Duration) bool {
	return threshold > 0 && time.Duration(l.v.Load()) > threshold
}
