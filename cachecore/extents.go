package cachecore

import (
	"slices"
	"sort"

	"github.com/cachelun/cachelun/persist"
)

// extKind says what an index extent maps to.
type extKind uint8

const (
	// extEmpty is a placeholder: a miss fill (or a writethrough fill) is in
	// flight for the range. Reads treat it as a miss without creating a
	// second placeholder. It may only be deleted or shortened at its end:
	// the fill that owns it is tied to its start offset.
	extEmpty extKind = iota + 1
	extClean         // cache data equal to the backing device
	extDirty         // cache data not yet written back
)

func (k extKind) String() string {
	switch k {
	case extEmpty:
		return "placeholder"
	case extClean:
		return "clean"
	case extDirty:
		return "dirty"
	}
	return "?"
}

// extent maps [start, start+length) of a stripe (offsets relative to the
// stripe start) to cache data at (seg, segOff). It is a value type of 32
// bytes; a stripe keeps its extents in one sorted slice, so an index entry
// costs 32 bytes plus slice slack instead of a tree node with pointers.
type extent struct {
	// gen is the segment generation the data was written under; for a
	// placeholder it is the token of the fill that owns it.
	gen    uint64
	start  uint32
	length uint32
	seg    uint32
	segOff uint32
	kind   extKind
	// hits counts the references since the data was written, saturating
	// (Policy2Q's second chance ranks by it): reads, and a host write
	// over cached data starts its copy one above that data's count
	// (installWrite).
	hits uint8
	// sumOff, sumLen and sum are, on a cache with data CRCs, the segment
	// offset and length of the data of the whole key the extent comes
	// from and its CRC32C (persist.Key.DataCRC): what a read hit and
	// writeback verify before they use any part of it. sumLen 0: none.
	sumOff, sumLen, sum uint32
}

// withSum returns x carrying the checksum of key k's data (on a cache with
// data CRCs; x unchanged otherwise).
func withSum(x extent, k *persist.Key, dataCRC bool) extent {
	if dataCRC && k.Flags != persist.KeyTombstone {
		x.sumOff, x.sumLen, x.sum = k.Pos.Off, k.Length, k.DataCRC
	}
	return x
}

func (e *extent) end() uint32 { return e.start + e.length }

// hasData reports whether the extent points at cache data.
func (e *extent) hasData() bool { return e.kind == extClean || e.kind == extDirty }

// cutFront drops the first n bytes; the data position moves with the start.
func (e *extent) cutFront(n uint32) {
	e.start += n
	e.length -= n
	if e.hasData() {
		e.segOff += n
	}
}

// sameLineage reports whether e holds (part of) the data of a key that
// started at keyStart (stripe-relative) at cache position (seg, segOff)
// under generation gen: splits and front cuts keep that relation.
func (e *extent) sameLineage(keyStart, seg, segOff uint32, gen uint64) bool {
	return e.hasData() && e.seg == seg && e.gen == gen &&
		e.start >= keyStart && e.segOff-segOff == e.start-keyStart
}

// extentList is the ordered, non-overlapping extent set of one stripe.
type extentList struct {
	ext []extent
}

// span returns the index range [i, j) of the extents overlapping [s, e).
func (l *extentList) span(s, e uint32) (int, int) {
	ext := l.ext
	i := sort.Search(len(ext), func(k int) bool { return ext[k].end() > s })
	j := i
	for j < len(ext) && ext[j].start < e {
		j++
	}
	return i, j
}

// replace makes [s, e) hold exactly n (when n != nil, n must cover [s, e))
// or nothing (n == nil: a tombstone), resolving the five overlap cases of an
// existing extent T against the range K = [s, e):
//
//   - T before or after K: untouched;
//   - T covers K's head (T.start < s < T.end <= e): T is cut back to s;
//   - T inside K: deleted;
//   - T covers K's tail (s <= T.start < e < T.end): data extents are cut at
//     the front to e (their position advances); placeholders are deleted
//     (they are never trimmed at the front);
//   - K inside T (T.start < s, e < T.end): data extents are split around K;
//     a placeholder keeps only [T.start, s).
//
// It reports whether any data extent was touched.
func (l *extentList) replace(s, e uint32, n *extent) (touchedData bool) {
	touchedData, _ = l.replaceDirty(s, e, n)
	return touchedData
}

// replaceDirty is replace that also returns how many dirty bytes of [s, e)
// it dropped, for the dirty accounting (an overwrite of dirty data must not
// count twice).
func (l *extentList) replaceDirty(s, e uint32, n *extent) (touchedData bool, droppedDirty int64) {
	i, j := l.span(s, e)
	return l.replaceSpan(i, j, s, e, n)
}

// replaceSpan is replaceDirty for the extents [i, j) that l.span(s, e)
// returned.
func (l *extentList) replaceSpan(i, j int, s, e uint32, n *extent) (touchedData bool, droppedDirty int64) {
	var buf [3]extent
	repl := buf[:0]
	var right *extent
	if i < j {
		first := l.ext[i]
		if first.start < s {
			left := first
			left.length = s - first.start
			repl = append(repl, left)
			if first.end() > e && first.hasData() {
				r := first
				r.cutFront(e - first.start)
				right = &r
			}
		}
		last := l.ext[j-1]
		if last.start >= s && last.end() > e && last.hasData() {
			r := last
			r.cutFront(e - last.start)
			right = &r
		}
		for k := i; k < j; k++ {
			x := &l.ext[k]
			if x.hasData() {
				touchedData = true
			}
			if x.kind == extDirty {
				droppedDirty += int64(min(x.end(), e) - max(x.start, s))
			}
		}
	}
	if n != nil {
		repl = append(repl, *n)
	}
	if right != nil {
		repl = append(repl, *right)
	}
	if i == j && len(repl) == 1 {
		l.ext = slices.Insert(l.ext, i, repl[0])
		return touchedData, droppedDirty
	}
	l.ext = slices.Replace(l.ext, i, j, repl...)
	return touchedData, droppedDirty
}

// installWrite puts x, the dirty extent of a host write, over [x.start,
// x.end()) and returns the dirty bytes it dropped. A write over cached data
// is a reference to the block, as LRU and S3-FIFO count one: x's hit count
// starts one above the most any data it replaces was referenced, so that
// GC's second chance (policy.go) keeps a block written again as it keeps
// one read again. Counting reads only, GC would evict a block written and
// read in turn whenever it found the newest copy unread (Zipf 1.0 over 4x
// the cache with 30 % writes: 0.004 of the byte hit ratio, 0.01 with half
// the requests writes; docs/yardstick.md). Data written once (a block not
// cached, a log written and never read) starts at 0 and goes when GC
// passes it unread.
func (l *extentList) installWrite(x extent) (droppedDirty int64) {
	i, j := l.span(x.start, x.end())
	replaced := false
	var most uint8
	for n := i; n < j; n++ {
		if o := &l.ext[n]; o.hasData() {
			replaced, most = true, max(most, o.hits)
		}
	}
	x.hits = 0
	if replaced {
		x.hits = min(most, maxHits-1) + 1
	}
	_, droppedDirty = l.replaceSpan(i, j, x.start, x.end(), &x)
	return droppedDirty
}

// dirtyBytes returns the bytes covered by dirty extents.
func (l *extentList) dirtyBytes() int64 {
	var n int64
	for k := range l.ext {
		if l.ext[k].kind == extDirty {
			n += int64(l.ext[k].length)
		}
	}
	return n
}

// find returns the index of the extent that starts exactly at s, or -1.
func (l *extentList) find(s uint32) int {
	ext := l.ext
	i := sort.Search(len(ext), func(k int) bool { return ext[k].start >= s })
	if i < len(ext) && ext[i].start == s {
		return i
	}
	return -1
}

// removeAt deletes the extent at index i.
func (l *extentList) removeAt(i int) { l.ext = slices.Delete(l.ext, i, i+1) }

// removeIndexes removes the extents at the given indexes (in any order,
// repeats allowed) in one pass over the list.
func (l *extentList) removeIndexes(idx []int) {
	switch len(idx) {
	case 0:
		return
	case 1:
		l.removeAt(idx[0])
		return
	}
	slices.Sort(idx)
	w, next := idx[0], 0
	for r := idx[0]; r < len(l.ext); r++ {
		if next < len(idx) && idx[next] == r {
			for next < len(idx) && idx[next] == r {
				next++
			}
			continue
		}
		l.ext[w] = l.ext[r]
		w++
	}
	clear(l.ext[w:])
	l.ext = l.ext[:w]
}

// anyDirty reports whether a dirty extent overlaps [s, e).
func (l *extentList) anyDirty(s, e uint32) bool {
	i, j := l.span(s, e)
	for k := i; k < j; k++ {
		if l.ext[k].kind == extDirty {
			return true
		}
	}
	return false
}

// anyData reports whether a data extent (clean or dirty) overlaps [s, e).
func (l *extentList) anyData(s, e uint32) bool {
	i, j := l.span(s, e)
	for k := i; k < j; k++ {
		if l.ext[k].hasData() {
			return true
		}
	}
	return false
}

// dirtySpan returns the smallest range covering the parts of [s, e) that
// overlap dirty extents, and ok=false when there are none.
func (l *extentList) dirtySpan(s, e uint32) (ds, de uint32, ok bool) {
	i, j := l.span(s, e)
	for k := i; k < j; k++ {
		x := &l.ext[k]
		if x.kind != extDirty {
			continue
		}
		a, b := max(x.start, s), min(x.end(), e)
		if !ok {
			ds, de, ok = a, b, true
			continue
		}
		ds, de = min(ds, a), max(de, b)
	}
	return ds, de, ok
}

// checkInvariants returns a description of the first broken invariant
// (sorted, non-overlapping, non-empty, inside the stripe), or "".
func (l *extentList) checkInvariants(limit uint32) string {
	for k := range l.ext {
		x := &l.ext[k]
		if x.length == 0 {
			return "empty extent"
		}
		if x.end() > limit || x.end() < x.start {
			return "extent beyond stripe"
		}
		if k > 0 && l.ext[k-1].end() > x.start {
			return "overlapping or unsorted extents"
		}
	}
	return ""
}
