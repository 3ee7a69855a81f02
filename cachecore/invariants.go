package cachecore

import (
	"errors"
	"fmt"

	"github.com/cachelun/cachelun/persist"
)

// ErrInvariant is wrapped by CheckInvariants' errors: the engine's
// structures disagree with each other (a bug, never an I/O condition).
var ErrInvariant = errors.New("cachecore: invariant broken")

// CheckInvariants verifies the engine's structures against each other and
// against the cache file. The cache must be quiescent: closed, or with no
// request, writeback or GC pass running (a test between operations). It
// checks, and returns every violation found (joined, each wrapping
// ErrInvariant):
//
//   - every stripe's extent list: sorted, non-overlapping, non-empty,
//     within the stripe and the volume;
//   - every cached extent points at data inside one segment's data area;
//     a current extent (its generation is the segment's) lies in a data
//     segment; dirty extents are always current (dirty data is never
//     evicted);
//   - each volume's dirty bytes equal the dirty extents of its index;
//   - tail order: key_tail <= dirty_tail <= the journal head (LSNs);
//   - segment references: a segment's reference count equals the keys of
//     the live log (key_tail..head, every generation) and of open or
//     pending ksets pointing into it, plus one per data head on it; a data
//     segment has references, a free or journal segment none;
//   - the intent log (while open): no slot claims more keys journaled than
//     were appended to it.
//
// persist.Check verifies the cache file's own structure; tests run both.
func (c *Cache) CheckInvariants() error {
	var errs []error
	bad := func(format string, args ...any) {
		if len(errs) < 32 {
			errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvariant}, args...)...))
		}
	}
	c.checkIndex(bad)

	kt, dt, head := c.store.KeyTail(), c.store.DirtyTail(), c.journal.Head()
	if !(kt.LSN <= dt.LSN && dt.LSN <= head.LSN) {
		bad("tail order: key_tail LSN %d, dirty_tail LSN %d, head LSN %d", kt.LSN, dt.LSN, head.LSN)
	}

	if !c.failed.Load() {
		c.checkRefs(kt, head, bad)
	}

	if c.intent != nil && !c.closed.Load() {
		for i := range c.slots {
			s := &c.slots[i]
			s.mu.Lock()
			appended := s.appended
			s.mu.Unlock()
			if j := c.intent.journaled(i); j > appended {
				bad("intent log slot %d: %d keys journaled, %d appended", i, j, appended)
			}
		}
	}
	return errors.Join(errs...)
}

// checkLiveInvariants runs, in binaries built with the invariants tag,
// the checks that hold while requests run (every stripe under its lock,
// extents against segments, tail order) after each writeback pass and GC
// step, and panics on a violation: a test run under the tag stops at the
// first pass that broke a structure, not at the symptom much later.
func (c *Cache) checkLiveInvariants(after string) {
	if !invariantsBuild || c.failed.Load() {
		return
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w after a %s: "+format, append([]any{ErrInvariant, after}, args...)...))
	}
	c.checkIndexLive(bad, false)
	kt, dt, head := c.store.KeyTail(), c.store.DirtyTail(), c.journal.Head()
	if !(kt.LSN <= dt.LSN && dt.LSN <= head.LSN) {
		bad("tail order: key_tail LSN %d, dirty_tail LSN %d, head LSN %d", kt.LSN, dt.LSN, head.LSN)
	}
	if err := errors.Join(errs...); err != nil {
		panic(err)
	}
}

// checkIndex checks the stripes and the dirty accounting of a quiescent
// cache.
func (c *Cache) checkIndex(bad func(string, ...any)) { c.checkIndexLive(bad, true) }

// checkIndexLive checks every stripe under its lock (safe while requests
// run); quiescent adds the dirty-byte totals, which writers update outside
// the stripe locks.
func (c *Cache) checkIndexLive(bad func(string, ...any), quiescent bool) {
	dataSize := c.store.SegmentDataSize()
	for id := range c.vols {
		vs := c.vols[id].Load()
		if vs == nil {
			continue
		}
		var dirty int64
		vs.idx.each(func(sn uint64, st *stripe) {
			st.mu.Lock()
			defer st.mu.Unlock()
			limit := uint32(stripeSize)
			if rest := vs.size.Load() - int64(sn<<stripeShift); rest < stripeSize {
				limit = uint32(max(rest, 0))
			}
			if msg := st.list.checkInvariants(limit); msg != "" {
				bad("volume %s stripe %d: %s", vs.name, sn, msg)
			}
			for _, x := range st.list.ext {
				if !x.hasData() {
					continue
				}
				if x.kind == extDirty {
					dirty += int64(x.length)
				}
				if x.seg >= uint32(len(c.segs.segs)) || x.segOff > dataSize || x.length > dataSize-x.segOff {
					bad("volume %s stripe %d: extent at %d+%d points outside the cache: segment %d offset %d", vs.name, sn, x.start, x.length, x.seg, x.segOff)
					continue
				}
				if x.sumLen > 0 && (x.segOff < x.sumOff || x.segOff+x.length > x.sumOff+x.sumLen) {
					bad("volume %s stripe %d: extent at %d+%d lies outside its key's checksummed data [%d, %d)", vs.name, sn, x.start, x.length, x.sumOff, x.sumOff+x.sumLen)
				}
				s := &c.segs.segs[x.seg]
				// A segment is freed by bumping its generation, then
				// setting its state (putRef), without the stripe locks:
				// the state is only compared with a generation read on
				// both sides of it.
				gen := s.currentGen()
				state := segState(s.state.Load())
				stable := s.currentGen() == gen
				switch {
				case x.gen > gen:
					bad("volume %s stripe %d: extent at %d has generation %d, segment %d is at %d", vs.name, sn, x.start, x.gen, x.seg, gen)
				case x.gen == gen && stable && state != segData:
					bad("volume %s stripe %d: current extent at %d in segment %d, which is not a data segment (state %d)", vs.name, sn, x.start, x.seg, state)
				case x.gen < gen && x.kind == extDirty:
					bad("volume %s stripe %d: dirty extent at %d lost its data: generation %d, segment %d is at %d", vs.name, sn, x.start, x.gen, x.seg, gen)
				}
			}
		})
		if got := vs.dirtyBytes.Load(); quiescent && got != dirty {
			bad("volume %s: %d dirty bytes counted, %d dirty in the index", vs.name, got, dirty)
		}
	}
}

// checkRefs recounts the segment references from the live log, the open
// and pending ksets and the data heads (quiescent caches only).
func (c *Cache) checkRefs(kt, head persist.Tail, bad func(string, ...any)) {
	n := len(c.segs.segs)
	want := make([]int64, n)
	count := func(k *persist.Key) {
		if k.Flags != persist.KeyTombstone && int(k.Pos.Seg) < n {
			want[k.Pos.Seg]++
		}
	}
	// The walk Open replayed: on a store with unfenced ksets it ends at
	// the first kset whose data did not reach the media, which plain
	// Replay would walk past.
	r := c.store.ReplayVerified(kt)
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		for i := range ks.Keys {
			count(&ks.Keys[i])
		}
	}
	if end := r.Head(); end != head {
		bad("the log walked from key_tail ends at %+v (%v), the journal head is %+v", end, r.StopReason(), head)
		return
	}
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		for j := range s.open {
			count(&s.open[j])
		}
		for pk := s.last; pk != nil; pk = pk.prev {
			if !pk.written() {
				for j := range pk.keys {
					count(&pk.keys[j])
				}
			}
		}
		s.mu.Unlock()
	}
	for i := range c.heads {
		h := &c.heads[i]
		h.mu.Lock()
		if h.valid && int(h.seg) < n {
			want[h.seg]++
		}
		h.mu.Unlock()
	}
	for i := range c.segs.segs {
		s := &c.segs.segs[i]
		got := s.refs.Load()
		state := segState(s.state.Load())
		if got != want[i] {
			bad("segment %d (state %d): %d references, %d keys and heads point into it", i, state, got, want[i])
		}
		switch {
		case state == segData && got <= 0:
			bad("data segment %d has no references (it should have been freed)", i)
		case (state == segFree || state == segKset) && got != 0:
			bad("segment %d in state %d has %d references", i, state, got)
		}
	}
}

// written reports whether pk's kset is in the log (its commit wrote it).
func (pk *pendingKset) written() bool {
	select {
	case <-pk.appended:
		return pk.inLog
	default:
		return false
	}
}
