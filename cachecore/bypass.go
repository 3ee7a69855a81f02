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

// seqDetector is a bcache-style table of recent I/O streams: a request of a
// tracked stream's initiator continues the stream if it starts where the
// stream ended, or it is one of the stream's pieces delivered out of order
// (below); otherwise it starts a stream in the least recently used entry.
// The stream's sequential byte count decides the cutoff.
//
// A target serves a queue's commands in parallel, so a sequential stream at
// queue depth 32 reaches the detector shuffled within its in-flight
// requests. A rule that wants each request to start exactly at the end finds
// no read stream at that depth over iSCSI (its fills go on until the cache
// is full), and finds a write stream only now and then (it takes the cache
// and the bypass paths by turns, slower than either). So each entry also
// knows its stream's last seqPieces pieces (requests of the size that
// started it, aligned to its end): a request up to seqReorderDepth pieces
// past the end continues the stream and leaves the pieces it skipped
// missing, and a missing piece that arrives late fills its place. A piece
// seen before (a rewrite, a re-read) or anything before the stream began is
// not the stream's: it starts one of its own, as under the exact rule. The
// count is the bytes of the stream's requests, and none while they cover
// less than half of the range the stream's end moved over.
type seqDetector struct {
	mu      sync.Mutex
	entries [seqEntries]seqEntry
}

const (
	seqEntries      = 64
	seqWindow       = 5 * time.Second
	seqPieces       = 64 // the bits of seqEntry.seen
	seqReorderDepth = 32
)

type seqEntry struct {
	stream string
	end    int64  // the end of the furthest request of the stream
	piece  int64  // the size of the request that started the stream
	seen   uint64 // bit i: the piece ending i pieces before end arrived (or is before the stream)
	moved  int64  // how far end moved, from the start of the first request
	bytes  int64  // the bytes of the stream's requests
	last   int64  // unix nanoseconds; 0: unused (the scan below compares integers, not time.Time)
}

// place reports whether [off, off+n) belongs to e's stream: at its end, a
// piece up to seqReorderDepth pieces past it, or a missing piece behind it.
// late is true for the latter; behind is then the piece's bit.
func (e *seqEntry) place(off, n int64) (ok, late bool, behind uint) {
	if off == e.end {
		return true, false, 0
	}
	if n != e.piece {
		return false, false, 0
	}
	if off > e.end {
		return off-e.end <= seqReorderDepth*n && (off-e.end)%n == 0, false, 0
	}
	if (e.end-off)%n != 0 {
		return false, false, 0
	}
	i := (e.end-off)/n - 1
	if i >= seqPieces || e.seen&(1<<uint(i)) != 0 {
		return false, false, 0
	}
	return true, true, uint(i)
}

// observe records [off, off+n) of stream and returns the stream's
// sequential byte count including this request.
func (d *seqDetector) observe(stream string, off, n int64, now time.Time) int64 {
	t := now.UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	lru, lruLast := 0, d.entries[0].last
	var cont *seqEntry // the longest stream the request belongs to
	var late bool
	var behind uint
	for i := range d.entries {
		e := &d.entries[i]
		if e.last != 0 && t-e.last < int64(seqWindow) && e.stream == stream {
			if ok, l, b := e.place(off, n); ok {
				if cont == nil || e.bytes > cont.bytes {
					cont, late, behind = e, l, b
				}
				continue
			}
		}
		if e.last < lruLast {
			lru, lruLast = i, e.last
		}
	}
	e := cont
	if e == nil {
		d.entries[lru] = seqEntry{stream: stream, end: off + n, piece: n, seen: ^uint64(0), moved: n, bytes: n, last: t}
		return n
	}
	switch {
	case late:
		e.seen |= 1 << behind
	case n == e.piece:
		// at or past the end: the skipped pieces are missing
		skip := uint((off - e.end) / n)
		e.seen = e.seen<<(skip+1) | 1
		e.moved += off + n - e.end
		e.end = off + n
	default:
		// another size at the end: the pieces behind no longer line up
		e.seen = ^uint64(0)
		e.moved += n
		e.end += n
	}
	e.bytes += n
	e.last = t
	if e.bytes*2 < e.moved {
		return 0
	}
	return min(e.bytes, e.moved)
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
