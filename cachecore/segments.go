package cachecore

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/persist"
)

type segState uint32

const (
	segFree segState = iota
	segData
	segKset
	segQuarantined
)

// segment is the in-memory state of one cache segment.
//
// refs counts the keys of the live log (key_tail..head) that point into the
// segment plus one while it is a data head; GC drops key references as
// key_tail passes them. When refs reaches zero the generation is bumped and
// persisted (under mu held for writing, so no reader copies during the
// bump) and the segment becomes free. Readers hold mu for reading while
// they copy and check gen first.
type segment struct {
	mu    sync.RWMutex
	gen   uint64 // guarded by mu
	refs  atomic.Int64
	state atomic.Uint32
	// takenGen is 1 + the generation under which a data head of this
	// session took the segment, or whose lineages Open adopted (0: none):
	// the in-memory share registry (volume_copy.go) knows every lineage
	// that may point at that generation, so copies may share its data.
	takenGen atomic.Uint64
}

func (s *segment) currentGen() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// segTable owns the segments and the free list.
type segTable struct {
	segs     []segment
	dataSize uint32
	// journalReserve free segments are kept for the journal: data
	// allocation never takes the last ones, so ksets (and GC progress)
	// can always be written.
	journalReserve int

	mu      sync.Mutex
	free    []uint32
	freedCh chan struct{} // closed and replaced whenever a segment is freed
	// nFree is len(free), stored under mu and read without it: the read
	// path's admission check (cacheFull) must not take mu per request.
	nFree atomic.Int32
}

var errNoSpace = errors.New("cachecore: no free cache segment")

func newSegTable(n uint32, dataSize uint32) *segTable {
	t := &segTable{segs: make([]segment, n), dataSize: dataSize, freedCh: make(chan struct{})}
	t.journalReserve = 2
	if n < 8 {
		t.journalReserve = 1
	}
	return t
}

// take removes a free segment for data (respecting the journal reserve) or
// for the journal.
func (t *segTable) take(forJournal bool) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	need := 1
	if !forJournal {
		need += t.journalReserve
	}
	if len(t.free) < need {
		return 0, false
	}
	id := t.free[0]
	t.free = t.free[1:]
	t.nFree.Store(int32(len(t.free)))
	if forJournal {
		t.segs[id].state.Store(uint32(segKset))
	} else {
		t.segs[id].state.Store(uint32(segData))
	}
	return id, true
}

// release returns a segment to the free list and wakes waiters.
func (t *segTable) release(id uint32) {
	t.mu.Lock()
	t.segs[id].state.Store(uint32(segFree))
	t.free = append(t.free, id)
	t.nFree.Store(int32(len(t.free)))
	close(t.freedCh)
	t.freedCh = make(chan struct{})
	t.mu.Unlock()
}

// waitCh returns a channel closed at the next release.
func (t *segTable) waitCh() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.freedCh
}

func (t *segTable) counts() (free, quarantined uint32) {
	t.mu.Lock()
	free = uint32(len(t.free))
	t.mu.Unlock()
	for i := range t.segs {
		if segState(t.segs[i].state.Load()) == segQuarantined {
			quarantined++
		}
	}
	return free, quarantined
}

// dataFree reports whether data allocation could get a new segment now.
func (t *segTable) dataFree() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.free) - t.journalReserve
}

// dataHead is one shard of the data allocator: it hands out space from its
// current segment, on which it holds a reference.
type dataHead struct {
	mu    sync.Mutex
	valid bool
	seg   uint32
	gen   uint64
	// The segment is handed out from both ends: pieces of a page or more
	// from the start up to off, pieces under a page from the end down to
	// back, so that a sector-sized piece between two page-sized ones
	// does not cost the rest of its page (page pieces start on a page).
	// [off, back) is free. Both are written under mu and read without it
	// by cacheFull. A head without a segment has no room: both are the
	// segment's data size.
	off, back atomic.Uint32
	_         [16]byte // keep heads on separate cache lines
}

// noSegment marks the head as holding no segment: no room (size is the
// segments' data size). h.mu is held, or the head is not in use yet.
func (h *dataHead) noSegment(size uint32) {
	h.off.Store(size)
	h.back.Store(size)
}

// room is the space between the head's two ends (read without mu: a
// hint).
func (h *dataHead) room() uint32 {
	off, back := h.off.Load(), h.back.Load()
	if back < off {
		return 0
	}
	return back - off
}

// allocAlign is the granularity of cache space: a sector. A piece of a
// page or more starts on a page (pageAlign) of the cache file, so that its
// pages are whole: a buffered write of a page that the page cache does not
// hold, at an offset that splits it, reads the page from the cache device
// first (a read for every write once the file's pages are evicted, or on a
// cache file whose blocks are allocated but not cached).
const (
	allocAlign = 512
	pageAlign  = 4096
)

// allocation is one piece of cache space holding a reference on its
// segment (for the key that will point at it).
type allocation struct {
	pos persist.Pos
	gen uint64
	n   uint32
}

// allocData returns space for up to n bytes (n is a multiple of 512) from
// a data head: a piece of a page or more from the start of its room, on a
// page, a smaller one from the end. The piece may be shorter when the room
// ends (a piece of a page or more then ends on a page). It returns
// errNoSpace when no segment is free.
func (c *Cache) allocData(n uint32) (allocation, error) {
	if c.dataCRC {
		// One allocation is one key, and a read hit verifies its key's
		// CRC over the whole key: bounded keys keep a 4 KiB hit of data
		// written (or filled) in large requests from reading megabytes.
		n = min(n, maxChecksummedKey)
	}
	h := &c.heads[c.headRR.Add(1)%uint64(len(c.heads))]
	var drop = noSeg
	h.mu.Lock()
	for {
		if h.valid {
			off, back := h.off.Load(), h.back.Load()
			var a allocation
			if n >= pageAlign {
				// From the start, on a page; a piece cut short by the
				// end of the room is cut at a page, so that its pages
				// stay whole too.
				off = min((off+pageAlign-1)&^(pageAlign-1), back)
				switch room := back - off; {
				case room >= n:
					a.n = n
				case room >= pageAlign:
					a.n = room &^ (pageAlign - 1)
				}
				if a.n > 0 {
					a.pos, a.gen = persist.Pos{Seg: h.seg, Off: off}, h.gen
					h.off.Store(off + (a.n+allocAlign-1)&^(allocAlign-1))
				}
			} else if room := back - off; room >= allocAlign {
				// From the end, packed by sectors (n < pageAlign).
				a.n = min(n, room&^(allocAlign-1))
				back -= (a.n + allocAlign - 1) &^ (allocAlign - 1)
				a.pos, a.gen = persist.Pos{Seg: h.seg, Off: back}, h.gen
				h.back.Store(back)
			}
			if a.n > 0 {
				c.segs.segs[h.seg].refs.Add(1)
				h.mu.Unlock()
				if drop != noSeg {
					c.putRef(drop)
				}
				return a, nil
			}
			drop = h.seg
			h.valid = false
			h.noSegment(c.segs.dataSize)
		}
		id, ok := c.segs.take(false)
		if !ok {
			h.mu.Unlock()
			if drop != noSeg {
				c.putRef(drop)
			}
			return allocation{}, errNoSpace
		}
		s := &c.segs.segs[id]
		s.refs.Add(1) // the head's reference
		h.valid, h.seg, h.gen = true, id, s.currentGen()
		h.off.Store(0)
		h.back.Store(c.segs.dataSize)
		s.takenGen.Store(h.gen + 1)
		c.dataSegs.Add(1)
	}
}

const noSeg = ^uint32(0)

// DataHeads is the number of data heads the cache allocates from in turn
// (one, or one per 64 segments up to 8: see Open).
func (c *Cache) DataHeads() int { return len(c.heads) }

// maxChecksummedKey is the largest key on a cache with data CRCs: a read
// hit of any part of a key reads and checksums all of it, so a 4 KiB hit
// costs at most a 16 KiB read and CRC; the metadata it adds is one 40-byte
// key (and one index extent) per 16 KiB.
const maxChecksummedKey = 16 << 10

// putRef drops one reference; the last one bumps and persists the
// segment's generation (making every key still pointing there stale) and
// frees it. Never called with a stripe lock held.
func (c *Cache) putRef(id uint32) {
	s := &c.segs.segs[id]
	if s.refs.Add(-1) != 0 {
		return
	}
	// The persist runs without the segment's lock: readers holding its
	// read lock copy data of the old generation, which stays in place
	// until the segment is released below; only the in-memory generation
	// switch excludes them. (Holding the lock across the persist made every
	// read hit in the segment wait for a media flush.)
	g, err := c.store.BumpGen(id)
	if err == nil {
		s.mu.Lock()
		s.gen = g
		s.mu.Unlock()
	}
	if err != nil {
		s.state.Store(uint32(segQuarantined))
		c.fail("bump segment generation", err)
		return
	}
	c.shares.forget(id)
	c.segs.release(id)
}
