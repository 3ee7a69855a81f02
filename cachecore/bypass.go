package cachecore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/persist"
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
// The page directory grows with the volume (Volume.Grow).
type bypassTracker struct {
	pages pageDir[chunkPage]
}

func newBypassTracker(size int64) *bypassTracker {
	t := &bypassTracker{}
	t.pages.init(trackerPages(size))
	return t
}

// trackerPages is the number of counter pages a volume of size bytes needs
// (one spare).
func trackerPages(size int64) int {
	chunks := (uint64(size) + 1<<chunkShift - 1) >> chunkShift
	return int((chunks+chunkPageSize-1)/chunkPageSize + 1)
}

// grow makes the tracker cover size bytes. Safe while requests run;
// callers serialize grows.
func (t *bypassTracker) grow(size int64) { t.pages.grow(trackerPages(size)) }

func (t *bypassTracker) counter(chunk uint64, alloc bool) *atomic.Uint32 {
	p := t.pages.page(chunk/chunkPageSize, alloc)
	if p == nil {
		return nil
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

// seqDetector is a bcache-style table of recent I/O streams. A request of
// a tracked stream's initiator that starts where the stream ended (reads:
// near it, see readReorder) continues it; otherwise the least recently used
// entry is recycled. The stream's sequential byte count decides the
// cutoff: the bytes of its requests, but no more than its end moved (a
// block read again and again is not a stream), and none while they cover
// less than half of the range the end moved over (random reads that
// happened to land near an end are not one either).
type seqDetector struct {
	mu      sync.Mutex
	entries [seqEntries]seqEntry
}

const (
	seqEntries = 64
	seqWindow  = 5 * time.Second
	// A target serves a queue's commands in parallel, so a sequential
	// read stream at queue depth 32 reaches the detector in an order
	// shuffled within its in-flight requests: required to start exactly
	// at the end, no read stream at queue depth 32 was ever sequential
	// over iSCSI (and its fills went on until the cache was full). A
	// read that starts up to seqReorderDepth requests of its size (at
	// most seqReorderMax) past the end continues the stream, and so does
	// one up to seqLateFactor times that before it: a request can wait in
	// the queue while many after it are served. Writes keep the exact
	// rule: a sequential write that bypasses goes to the slow device, and
	// a rewrite pattern near the end (a log's tail) must not become one.
	seqReorderDepth = 32
	seqReorderMax   = 512 << 10
	seqLateFactor   = 8
)

// readReorder is how far from a stream's end a read of n bytes may start
// and continue it.
func readReorder(n int64) int64 { return min(seqReorderDepth*n, seqReorderMax) }

type seqEntry struct {
	stream string
	end    int64 // the end of the furthest request of the stream
	bytes  int64 // how far end moved (from the first request's start)
	seen   int64 // the bytes of the stream's requests
	last   int64 // unix nanoseconds; 0: unused (the scan below compares integers, not time.Time)
}

// observe records [off, off+n) of stream and returns the stream's
// sequential byte count including this request. A request that starts up
// to reorder bytes past a stream's end, or up to seqLateFactor*reorder
// before it, continues it (0: only one that starts at the end).
func (d *seqDetector) observe(stream string, off, n, reorder int64, now time.Time) int64 {
	t := now.UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	lru, lruLast := 0, d.entries[0].last
	var cont *seqEntry // the longest stream this request may continue
	for i := range d.entries {
		e := &d.entries[i]
		if e.last != 0 && t-e.last < int64(seqWindow) && off >= e.end-seqLateFactor*reorder && off <= e.end+reorder && e.stream == stream {
			// A read delayed past the reorder window starts a stream of
			// its own near the long one: the long one goes on.
			if cont == nil || e.bytes > cont.bytes {
				cont = e
			}
			continue
		}
		if e.last < lruLast {
			lru, lruLast = i, e.last
		}
	}
	if e := cont; e != nil {
		if end := off + n; end > e.end {
			e.bytes += end - e.end
			e.end = end
		}
		e.seen += n
		e.last = t
		if e.seen*2 < e.bytes {
			return 0
		}
		return min(e.bytes, e.seen)
	}
	d.entries[lru] = seqEntry{stream: stream, end: off + n, bytes: n, seen: n, last: t}
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

// dirtyEpochs tells whether a volume still has dirty keys of a flush epoch
// older than a given one that are not yet written back and flushed on the
// backing device (C6: only then may a write reach the backing device
// directly). It is maintained without locks on the data path: the append
// path counts a key under its stripe lock before the write is acknowledged,
// and writeback uncounts it after the backing flush that made it durable
// there (markClean), using the epoch its kset carries in the log.
//
// newest packs the low 32 bits of the newest epoch counted so far with the
// number of its keys still dirty; older counts the still dirty keys of all
// epochs before it. A key of a newer epoch moves newest's count into older
// (older first, then the CAS, so a reader never misses keys in transit: it
// may see them twice, which only delays a bypass). A key whose exact epoch
// is unknown (a flush moved the epoch while it was appended) is kept in
// unsure by identity and counts as older until it is clean.
type dirtyEpochs struct {
	newest atomic.Uint64
	older  atomic.Int64

	unsureN  atomic.Int64
	unsureMu sync.Mutex
	unsure   map[dirtyKeyID]struct{}
}

// dirtyKeyID identifies a dirty key of a volume: its cache position and
// generation with its volume offset. A position alone is not unique: keys
// made by CopyFrom share the cache data of other keys, also of the same
// volume (at another offset: the share registry never lets two keys of one
// volume map one offset to the same data while both may be live).
type dirtyKeyID struct {
	seg, off uint32
	gen      uint64
	voff     uint64
}

// dirtyKeyIDOf returns the identity of dirty key k.
func dirtyKeyIDOf(k *persist.Key) dirtyKeyID {
	return dirtyKeyID{seg: k.Pos.Seg, off: k.Pos.Off, gen: k.Gen, voff: k.Offset}
}

func packEpochCount(epoch uint64, n uint32) uint64 { return epoch<<32 | uint64(n) }

func unpackEpochCount(w uint64) (tag uint32, n uint32) { return uint32(w >> 32), uint32(w) }

// epochAfter reports whether epoch is later than the 32-bit tag (epochs
// outstanding at the same time are far less than 2^31 apart).
func epochAfter(epoch uint64, tag uint32) bool { return int32(uint32(epoch)-tag) > 0 }

// added counts a dirty key appended in epoch (exact=false: in epoch or
// later, the exact value unknown).
func (d *dirtyEpochs) added(epoch uint64, exact bool, id dirtyKeyID) {
	if !exact {
		d.unsureMu.Lock()
		if d.unsure == nil {
			d.unsure = make(map[dirtyKeyID]struct{})
		}
		d.unsure[id] = struct{}{}
		d.unsureN.Add(1)
		d.unsureMu.Unlock()
		return
	}
	for {
		w := d.newest.Load()
		tag, n := unpackEpochCount(w)
		switch {
		case uint32(epoch) == tag:
			if d.newest.CompareAndSwap(w, packEpochCount(epoch, n+1)) {
				return
			}
		case epochAfter(epoch, tag):
			d.older.Add(int64(n))
			if d.newest.CompareAndSwap(w, packEpochCount(epoch, 1)) {
				return
			}
			d.older.Add(-int64(n))
		default:
			d.older.Add(1)
			return
		}
	}
}

// cleaned uncounts a dirty key of epoch (as recorded in the log) once it is
// written back and the backing device flushed.
func (d *dirtyEpochs) cleaned(epoch uint64, id dirtyKeyID) {
	if d.unsureN.Load() > 0 {
		d.unsureMu.Lock()
		_, ok := d.unsure[id]
		if ok {
			delete(d.unsure, id)
			d.unsureN.Add(-1)
		}
		d.unsureMu.Unlock()
		if ok {
			return
		}
	}
	for {
		w := d.newest.Load()
		tag, n := unpackEpochCount(w)
		if uint32(epoch) != tag || n == 0 {
			// Counted in older, directly or moved there when a newer
			// epoch's key arrived.
			d.older.Add(-1)
			return
		}
		if d.newest.CompareAndSwap(w, packEpochCount(uint64(tag), n-1)) {
			return
		}
	}
}

// olderThan reports whether dirty keys of an epoch before epoch may still
// be waiting for writeback.
func (d *dirtyEpochs) olderThan(epoch uint64) bool {
	if d.unsureN.Load() > 0 {
		return true
	}
	for {
		w := d.newest.Load()
		o := d.older.Load()
		if d.newest.Load() != w {
			continue // a newer epoch's key moved counts meanwhile: look again
		}
		if o != 0 {
			// Negative would be an accounting bug: stay on the safe
			// side.
			return true
		}
		tag, n := unpackEpochCount(w)
		return n > 0 && epochAfter(epoch, tag)
	}
}

// reset sets the state for a volume attached in epoch current with dirty
// keys replayed from the log: all of them belong to earlier epochs. The
// tag starts at current so that later epochs compare against a nearby
// value (the 32-bit comparison holds for epochs less than 2^31 apart).
func (d *dirtyEpochs) reset(replayedDirtyKeys int64, current uint64) {
	d.newest.Store(packEpochCount(current, 0))
	d.older.Store(max(replayedDirtyKeys, 0))
}
