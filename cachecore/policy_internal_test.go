package cachecore

import (
	"bytes"
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/cachelun/cachelun/persist"
)

// TestGhostSet: what was added is found; after twice its limit of newer
// inserts it is forgotten; blocks never added are rarely found (the Bloom
// filters' false positives stay near their design rate).
func TestGhostSet(t *testing.T) {
	const limit = 4096
	g := newGhostSet(limit, false)
	for b := range int64(limit / 2) {
		g.add(ghostKey(1, b<<ghostBlockShift))
	}
	for b := range int64(limit / 2) {
		if !g.has(ghostKey(1, b<<ghostBlockShift)) {
			t.Fatalf("block %d added and not found", b)
		}
	}
	false1 := 0
	for b := range int64(10000) {
		if g.has(ghostKey(2, b<<ghostBlockShift)) { // another volume
			false1++
		}
	}
	if false1 > 300 {
		t.Errorf("%d of 10000 blocks never added found (want about 1 %%)", false1)
	}
	for b := range int64(2 * limit) {
		g.add(ghostKey(3, b<<ghostBlockShift))
	}
	forgotten := 0
	for b := range int64(limit / 2) {
		if !g.has(ghostKey(1, b<<ghostBlockShift)) {
			forgotten++
		}
	}
	if forgotten < limit/2*9/10 {
		t.Errorf("only %d of %d old blocks forgotten after %d newer inserts", forgotten, limit/2, 2*limit)
	}
}

// TestGhostSetWidestWindow: an adaptive ghost set whose filters hold
// their widest window (four times the entries they were sized for, at the
// least rounding up) still finds what it holds and admits few blocks it
// never saw: under 1.5e-3 of lookups (about 6e-4 by the Bloom formula).
func TestGhostSetWidestWindow(t *testing.T) {
	const entries = 6553 // 80 bits each: just under a power of two
	g := newGhostSet(entries, true)
	g.widen(1 << 40)
	for b := range 2 * g.maxLimit {
		g.add(ghostKey(1, b<<ghostBlockShift))
	}
	for b := g.maxLimit; b < 2*g.maxLimit; b++ {
		if !g.has(ghostKey(1, b<<ghostBlockShift)) {
			t.Fatalf("block %d added and not found", b)
		}
	}
	falsePos := 0
	const lookups = 100000
	for b := range int64(lookups) {
		if g.has(ghostKey(2, b<<ghostBlockShift)) {
			falsePos++
		}
	}
	if falsePos > lookups*15/10000 {
		t.Errorf("%d of %d blocks never added found", falsePos, lookups)
	}
}

// TestParsePolicy: every listed policy parses; "" is fifo; others fail.
func TestParsePolicy(t *testing.T) {
	for _, p := range Policies() {
		if got, err := ParsePolicy(string(p)); err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %q, %v", p, got, err)
		}
	}
	if got, err := ParsePolicy(""); err != nil || got != PolicyFIFO {
		t.Errorf(`ParsePolicy("") = %q, %v`, got, err)
	}
	if _, err := ParsePolicy("lru"); err == nil {
		t.Error("ParsePolicy(lru) accepted")
	}
}

// TestMetadataPerExtent: the index costs 40 bytes of memory per cached
// extent (one per key, 4 KiB to 1 MiB of data) and the policy's hit count
// lives in its padding; the ghost set and evictedHot (each sized for a
// sixteenth of the cached blocks per filter, two filters, rounded up to a
// power of two) add at most 20 bits each per cached 4 KiB block.
// docs/yardstick.md reports these; a change shows here.
func TestMetadataPerExtent(t *testing.T) {
	if s := unsafe.Sizeof(extent{}); s != 40 {
		t.Errorf("an index extent takes %d bytes, docs/yardstick.md says 40", s)
	}
	if persist.KeySize != 40 {
		t.Errorf("a key takes %d bytes of journal, docs/yardstick.md says 40", persist.KeySize)
	}
	for _, cached := range []int64{3 << 20, 4 << 20, 5 << 20} {
		bits := 0
		for _, g := range []*ghostSet{newGhostSet(cached/ghostDiv, true), newGhostSet(cached/ghostDiv, false)} { // as Open sizes them
			bits += len(g.filters) * len(g.filters[0]) * 64
		}
		if per := float64(bits) / float64(cached); per > 40 {
			t.Errorf("ghost set and evictedHot for %d cached blocks: %.1f bits per block, want at most 40", cached, per)
		}
	}
}

// TestSecondChanceSpendsOnMostHit: GC passes written-back data, half of it
// read once and half three times, interleaved, with credit for a quarter:
// what it re-appends is data read three times only (the budget goes to the
// most hit data of a step, not to the first in log order), and written
// data is re-appended once writeback made it clean, like a fill.
// readMostlyBlocks blocks of 4 KiB, within one GC step (a segment of
// data), written, written back, then the even ones read once and the odd
// ones three times (newReadMostlyRig). GC does not keep segments in
// place on it: what these tests look at is what it re-appends.
const readMostlyBlocks = 24

// newReadMostlyRig sets up readMostlyBlocks on a 2q volume; off(i) is
// block i's offset (every third block, so that no two are one extent).
func newReadMostlyRig(t *testing.T) (*itRig, func(int) int64) {
	t.Helper()
	vc := DefaultVolumeConfig()
	vc.SequentialCutoff = 0
	if vc.Policy != Policy2Q {
		t.Fatalf("default policy %q", vc.Policy)
	}
	r := newItRig(t, 32, 8<<20, Config{noKeepInPlace: true}, vc)
	ctx := context.Background()
	const n, bs = readMostlyBlocks, 4096
	off := func(i int) int64 { return int64(i) * 3 * bs }
	buf := make([]byte, bs)
	for i := range n {
		fillPattern(buf, uint64(i))
		if err := r.vol.WriteAt(ctx, buf, off(i), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		reads := 1
		if i%2 == 1 {
			reads = 3
		}
		for range reads {
			if err := r.vol.ReadAt(ctx, buf, off(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if s := r.vol.Stats(); s.ReadHits != n/2*4 {
		t.Fatalf("%d read hits, want %d (all written data cached)", s.ReadHits, n/2*4)
	}
	return r, off
}

func TestSecondChanceSpendsOnMostHit(t *testing.T) {
	r, off := newReadMostlyRig(t)
	const n, bs = readMostlyBlocks, 4096
	// Credit for a quarter of the blocks, none to earn.
	c := r.cache
	c.refillCredit()
	c.policy.credit.Store(n / 4 * bs)
	if !c.gcStep() {
		t.Fatal("GC made no progress over written-back data")
	}
	c.waitFills()
	if got := r.vol.Stats().ReappendBytes; got != n/4*bs {
		t.Fatalf("re-appended %d bytes, want %d", got, n/4*bs)
	}
	kept := [2]int{}
	for i := range n {
		if r.vol.Explain(off(i)).State == "hit" {
			kept[i%2]++
		}
	}
	if kept[0] != 0 || kept[1] != n/4 {
		t.Fatalf("kept %d blocks read once and %d read three times, want 0 and %d", kept[0], kept[1], n/4)
	}
	readBackAndClose(t, r, n, off, func(i int) uint64 { return uint64(i) })
}

// readBackAndClose checks that block i of n, at off(i), reads back
// fillPattern(want(i)), then closes the cache and checks its invariants.
func readBackAndClose(t *testing.T, r *itRig, n int, off func(int) int64, want func(int) uint64) {
	t.Helper()
	ctx := context.Background()
	buf, got := make([]byte, 4096), make([]byte, 4096)
	for i := range n {
		fillPattern(buf, want(i))
		if err := r.vol.ReadAt(ctx, got, off(i)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, buf) {
			t.Fatalf("block %d reads back wrong", i)
		}
	}
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestSecondChanceCountsOverwrites: a host write over cached data is a
// reference (installWrite). Of 12 blocks written (in one segment, so that
// one GC step passes them all), the first third is written once and never
// read, the second written twice, the last written, read three times and
// written again; all written back. With credit for every block GC
// re-appends the blocks written again and evicts those written once; with
// credit for a third it re-appends the blocks read before their
// overwrite, whose copy starts above the others' count.
func TestSecondChanceCountsOverwrites(t *testing.T) {
	for _, share := range []int{1, 3} {
		vc := DefaultVolumeConfig()
		vc.SequentialCutoff = 0
		r := newItRig(t, 32, 8<<20, Config{noKeepInPlace: true}, vc)
		ctx := context.Background()
		const n, bs = 12, 4096
		off := func(i int) int64 { return int64(i) * 3 * bs }
		buf := make([]byte, bs)
		write := func(i int, version uint64) {
			fillPattern(buf, uint64(i)<<8|version)
			if err := r.vol.WriteAt(ctx, buf, off(i), false); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			write(i, 0)
		}
		for i := n / 3; i < n; i++ {
			if i >= 2*n/3 {
				for range 3 {
					if err := r.vol.ReadAt(ctx, buf, off(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			write(i, 1)
		}
		if err := r.vol.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.vol.Drain(ctx, nil); err != nil {
			t.Fatal(err)
		}
		c := r.cache
		c.refillCredit()
		c.stats.gcSegmentsFreed.Store(uint64(len(c.segs.segs))) // past the first pass: no reserve
		c.policy.credit.Store(int64(n / share * bs))
		if !c.gcStep() {
			t.Fatal("GC made no progress over written-back data")
		}
		c.waitFills()
		kept := [3]int{}
		for i := range n {
			if r.vol.Explain(off(i)).State == "hit" {
				kept[i/(n/3)]++
			}
		}
		want := [3]int{0, n / 3, n / 3}
		if share == 3 {
			want[1] = 0
		}
		if kept != want {
			t.Fatalf("credit for 1/%d of the blocks: kept %v (written once, written twice, read and written again), want %v", share, kept, want)
		}
		readBackAndClose(t, r, n, off, func(i int) uint64 { return uint64(i)<<8 | min(uint64(i/(n/3)), 1) })
	}
}

// TestSecondChanceKeepsReserve: until GC has passed the whole log once,
// data read once since it was written is re-appended only from credit
// beyond half of creditLimit. With credit for every block of the step but
// short of that reserve, GC keeps the data read three times, evicts the
// data read once and remembers it in evictedHot; with the reserve on top
// it keeps both, and so it does without the reserve once GC has freed as
// many segments as the cache has.
func TestSecondChanceKeepsReserve(t *testing.T) {
	for _, tc := range []struct{ withReserve, passedOnce bool }{{false, false}, {true, false}, {false, true}} {
		withReserve := tc.withReserve
		r, off := newReadMostlyRig(t)
		const n, bs = readMostlyBlocks, 4096
		c := r.cache
		if tc.passedOnce {
			c.stats.gcSegmentsFreed.Store(uint64(len(c.segs.segs)))
		}
		c.refillCredit()
		reserve := c.creditLimit() / 2
		if reserve < 2*n*bs {
			t.Fatalf("reserve %d bytes, want it larger than the step's data", reserve)
		}
		credit := int64(n * bs)
		if withReserve {
			credit += reserve
		}
		c.policy.credit.Store(credit)
		reappended := r.vol.Stats().ReappendBytes
		if !c.gcStep() {
			t.Fatal("GC made no progress over written-back data")
		}
		c.waitFills()
		reappended = r.vol.Stats().ReappendBytes - reappended
		if got := c.Stats().ReappendCreditBytes; got != credit-int64(reappended) {
			t.Fatalf("Stats reports %d bytes of credit after re-appending %d of %d, want the rest", got, reappended, credit)
		}
		kept := [2]int{}
		for i := range n {
			if r.vol.Explain(off(i)).State == "hit" {
				kept[i%2]++
			}
		}
		want := [2]int{0, n / 2}
		if withReserve || tc.passedOnce {
			want[0] = n / 2
		}
		if kept != want {
			t.Fatalf("credit %d (reserve %d): kept %d blocks read once and %d read three times, want %v", credit, reserve, kept[0], kept[1], want)
		}
		if want[0] == 0 {
			for i := 0; i < n; i += 2 {
				if !c.policy.evictedHot.has(ghostKey(r.vol.st.id, off(i))) {
					t.Fatalf("block %d, read once and evicted, not in evictedHot", i)
				}
			}
		}
		// Closed first: the journal's background commits would race the walk.
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := c.CheckInvariants(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAdmitGhostWindow: a block GC evicted although it was read is
// admitted by evictedHot after refusals have pushed it out of the ghost
// set, and narrows the ghost set's window; a block the ghost set admits
// widens it; the window stays within its bounds.
func TestAdmitGhostWindow(t *testing.T) {
	r := newItRig(t, 32, 8<<20, Config{}, DefaultVolumeConfig())
	v := r.vol
	g, hot := r.cache.policy.ghost, r.cache.policy.evictedHot
	w0 := g.limit.Load()
	if g.minLimit != w0/ghostWindowRange || g.maxLimit != w0*ghostWindowRange {
		t.Fatalf("window %d within [%d, %d], want a quarter to four times", w0, g.minLimit, g.maxLimit)
	}
	hot.add(ghostKey(v.st.id, 0)) // block 0: GC evicted it although it was read
	g.add(ghostKey(v.st.id, 0))
	if v.admitGhost(4096) {
		t.Fatal("a block never seen admitted")
	}
	for i := range 2 * g.maxLimit { // refusals of another volume
		g.add(ghostKey(v.st.id+1, i<<ghostBlockShift))
	}
	if g.has(ghostKey(v.st.id, 0)) || g.has(ghostKey(v.st.id, 4096)) {
		t.Fatal("the ghost set still remembers after twice its widest window of newer inserts")
	}
	if !v.admitGhost(0) {
		t.Fatal("a block evicted although read not admitted once the ghost set forgot it")
	}
	if got := g.limit.Load(); got != w0-ghostNarrowStep {
		t.Fatalf("window %d after an admission by evictedHot, want %d", got, w0-ghostNarrowStep)
	}
	if v.admitGhost(8192) || !v.admitGhost(8192) {
		t.Fatal("a block missed twice in a row not admitted the second time")
	}
	if got := g.limit.Load(); got != w0-ghostNarrowStep+1 {
		t.Fatalf("window %d after an admission by the ghost set, want %d", got, w0-ghostNarrowStep+1)
	}
	if got := r.cache.Stats().GhostWindowBlocks; got != w0-ghostNarrowStep+1 {
		t.Fatalf("Stats reports a window of %d blocks, want %d", got, w0-ghostNarrowStep+1)
	}
	if s := v.Stats(); s.GhostAdmits != 2 || s.AdmissionsRefused != 2 {
		t.Fatalf("%d ghost admits and %d refusals, want 2 and 2", s.GhostAdmits, s.AdmissionsRefused)
	}
	g.widen(1 << 40)
	if got := g.limit.Load(); got != g.maxLimit {
		t.Fatalf("window %d widened past %d", got, g.maxLimit)
	}
	g.narrow(1 << 40)
	if got := g.limit.Load(); got != g.minLimit {
		t.Fatalf("window %d narrowed past %d", got, g.minLimit)
	}
}

// TestCacheFullMargin: once GC has run, a cache counts as full (2q admits
// by the ghost set) one segment below GC's threshold when the threshold is
// under fullMarginFrom segments, two below it from there on: two segments
// of a small cache's threshold are a large share of its data. Before, it
// is full only once the next fill could take a segment past the
// threshold: once the segments under it are in use and one of the data
// heads has no room for it.
func TestCacheFullMargin(t *testing.T) {
	for _, tc := range []struct {
		segments, margin int
	}{{31, 1}, {200, 2}} {
		r := newItRig(t, tc.segments, 8<<20, Config{}, DefaultVolumeConfig())
		c := r.cache
		if tc.segments >= 128 && len(c.heads) < 2 {
			t.Fatalf("%d segments: %d data heads, want several", tc.segments, len(c.heads))
		}
		n := len(c.segs.segs)
		limit := n * c.config().GCPercent / 100
		saved := c.segs.nFree.Load()
		// setRoom leaves room bytes in the last head, and every other
		// head empty: any head may take the next fill.
		setRoom := func(room uint32) {
			for i := range c.heads {
				c.heads[i].off.Store(0)
			}
			c.heads[len(c.heads)-1].off.Store(c.segs.dataSize - room)
		}
		for _, room := range []uint32{0, 2048, 4096, c.segs.dataSize / 8, c.segs.dataSize} {
			setRoom(room)
			for used := limit - 3; used <= limit+1; used++ {
				c.segs.nFree.Store(int32(n - used))
				want := used > limit || used == limit && room < 4096
				if got := c.cacheFull(4096); got != want {
					t.Errorf("%d segments (threshold %d), before GC ran: with %d in use and %d bytes of room in the heads, full = %v, want %v", n, limit, used, room, got, want)
				}
			}
		}
		c.policy.full.Store(true)
		for _, room := range []uint32{0, c.segs.dataSize} {
			setRoom(room)
			for used := limit - 3; used <= limit+1; used++ {
				c.segs.nFree.Store(int32(n - used))
				if got, want := c.cacheFull(4096), used > limit-tc.margin; got != want {
					t.Errorf("%d segments (threshold %d), after GC ran: with %d in use, full = %v, want %v", n, limit, used, got, want)
				}
			}
		}
		c.segs.nFree.Store(saved)
	}
}

// TestGCKeepsMostlyReadSegments: GC keeps a segment whose clean data was
// mostly read in place (its keys journaled again, no data moved, nothing
// freed) and frees one read little; the kept data survives a replay, still
// where it was, and the next pass over it, unread since, evicts it and
// frees the segment. Every block reads back right throughout.
func TestGCKeepsMostlyReadSegments(t *testing.T) {
	r := newKeepRig(t)
	ctx := context.Background()
	c := r.cache
	const bs = 4096
	buf := make([]byte, bs)
	// The first two segments are what GC passes.
	blocks, segOf := writeCleanSegments(t, r, 3)
	first, second := segOf[blocks[0]], uint32(0)
	for _, off := range blocks {
		if segOf[off] != first {
			second = segOf[off]
			break
		}
	}
	// Every block of the first segment read, a quarter of the second's.
	n := 0
	for _, off := range blocks {
		read := segOf[off] == first
		if segOf[off] == second {
			read = n%4 == 0
			n++
		}
		if read {
			if err := r.vol.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.policy.credit.Store(0) // nothing re-appended: kept or evicted
	// check looks at every block of the two segments; with read, it then
	// reads every block (hits count, misses fill the cache again).
	check := func(when string, wantHit func(off int64) bool, read bool) {
		t.Helper()
		for _, off := range blocks {
			if segOf[off] != first && segOf[off] != second {
				continue
			}
			e := r.vol.Explain(off)
			if hit := e.State == "hit"; hit != wantHit(off) {
				t.Fatalf("%s: block %d in segment %d: %s, want hit %v", when, off/bs, segOf[off], e.State, wantHit(off))
			}
			if e.State == "hit" && e.Pos.Seg != segOf[off] {
				t.Fatalf("%s: block %d moved from segment %d to %d", when, off/bs, segOf[off], e.Pos.Seg)
			}
		}
		got := make([]byte, bs)
		for _, off := range blocks {
			if !read {
				break
			}
			fillPattern(buf, uint64(off/bs))
			if err := r.vol.ReadAt(ctx, got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, buf) {
				t.Fatalf("%s: block %d reads back wrong", when, off/bs)
			}
		}
	}
	p0 := r.media.PersistPoints()
	kept0, freed0 := c.Stats().GCSegmentsKept, c.Stats().GCSegmentsFreed
	for c.Stats().GCSegmentsKept == kept0 || c.Stats().GCSegmentsFreed == freed0 {
		if !c.gcStep() {
			t.Fatalf("GC stopped before passing both segments (kept %d, freed %d)", c.Stats().GCSegmentsKept-kept0, c.Stats().GCSegmentsFreed-freed0)
		}
	}
	if k, f := c.Stats().GCSegmentsKept-kept0, c.Stats().GCSegmentsFreed-freed0; k != 1 || f != 1 {
		t.Fatalf("GC kept %d segments and freed %d, want 1 and 1", k, f)
	}
	if c.segs.segs[first].refs.Load() == 0 {
		t.Fatalf("kept segment %d has no references", first)
	}
	kept := func(off int64) bool { return segOf[off] == first }
	check("after GC", kept, false)
	// A power cut anywhere in the steps, or before the kept keys are
	// durable, loses no block (the backing device holds the data too).
	if err := c.flushAll(); err != nil {
		t.Fatal(err)
	}
	for p := p0; p <= r.media.PersistPoints(); p++ {
		st, err := persist.Open(r.media.CrashImage(p, nil))
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		ci, err := Open(ctx, st, r.cfg)
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		v, err := ci.AddVolume(ctx, "v", r.dev.Clone(), r.vc)
		if err != nil {
			t.Fatalf("crash at persist point %d: %v", p, err)
		}
		got := make([]byte, bs)
		for _, off := range blocks {
			fillPattern(buf, uint64(off/bs))
			if err := v.ReadAt(ctx, got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, buf) {
				t.Fatalf("crash at persist point %d: block %d reads back wrong (%s)", p, off/bs, v.Explain(off).State)
			}
		}
		if err := ci.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("crash images of persist points %d to %d read back right", p0, r.media.PersistPoints())
	r.reopen(nil)
	c = r.cache
	c.policy.credit.Store(0)
	check("after replay", kept, false)
	// Unread since, the kept data goes at GC's next pass over its keys,
	// and its segment with it. (The writeback worker moves dirty_tail
	// over the clean ksets that hold them first.)
	for deadline := time.Now().Add(10 * time.Second); c.store.DirtyTail().LSN < c.durableHead.Load(); {
		if time.Now().After(deadline) {
			t.Fatalf("writeback leaves dirty_tail at %v, the durable head is LSN %d", c.store.DirtyTail(), c.durableHead.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	gen := c.segs.segs[first].currentGen()
	for c.segs.segs[first].currentGen() == gen {
		if !c.gcStep() {
			t.Fatalf("GC stopped before passing the kept keys (segment %d, %d references; key_tail %v)", first, c.segs.segs[first].refs.Load(), c.store.KeyTail())
		}
	}
	check("after the second pass", func(off int64) bool { return false }, true)
}

// newKeepRig is a 2q volume on a cache of 16 segments.
func newKeepRig(t *testing.T) *itRig {
	vc := DefaultVolumeConfig()
	vc.SequentialCutoff = 0
	return newItRig(t, 16, 8<<20, Config{}, vc)
}

// writeCleanSegments writes 4 KiB blocks from offset 0 until they lie in
// n segments (the last one the data head's), then writes them back; it
// returns their offsets and the segment of each.
func writeCleanSegments(t *testing.T, r *itRig, n int) ([]int64, map[int64]uint32) {
	t.Helper()
	ctx := context.Background()
	const bs = 4096
	buf := make([]byte, bs)
	var blocks []int64
	segOf := map[int64]uint32{}
	segs := map[uint32]bool{}
	for off := int64(0); len(segs) < n; off += bs {
		fillPattern(buf, uint64(off/bs))
		if err := r.vol.WriteAt(ctx, buf, off, false); err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, off)
		segOf[off] = r.vol.Explain(off).Pos.Seg
		segs[segOf[off]] = true
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	return blocks, segOf
}

// TestGCKeepsAFewInARow: with every segment read all over, GC keeps
// maxKeptInARow of them in place and then frees the next (the log still
// turns); while a writer waits for space it keeps none.
func TestGCKeepsAFewInARow(t *testing.T) {
	for _, waiting := range []bool{false, true} {
		r := newKeepRig(t)
		ctx := context.Background()
		c := r.cache
		buf := make([]byte, 4096)
		blocks, _ := writeCleanSegments(t, r, maxKeptInARow+3)
		for _, off := range blocks {
			if err := r.vol.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
		}
		c.policy.credit.Store(0)
		if waiting {
			c.spaceWait.Add(1)
		}
		freed0 := c.Stats().GCSegmentsFreed
		for c.Stats().GCSegmentsFreed == freed0 {
			if !c.gcStep() {
				t.Fatalf("waiting %v: GC stopped before freeing a segment (kept %d)", waiting, c.Stats().GCSegmentsKept)
			}
		}
		want := uint64(maxKeptInARow)
		if waiting {
			want = 0
			c.spaceWait.Add(-1)
		}
		if got := c.Stats().GCSegmentsKept; got != want {
			t.Fatalf("a writer waiting %v: GC kept %d segments before freeing one, want %d", waiting, got, want)
		}
	}
}

// TestGCKeepsNothingUnderABypassWrite: GC chooses to keep a segment read
// all over, but a bypass write is in flight on its chunk (C7): its data
// is evicted, not kept (a kept key could follow the bypass write's
// tombstone in the log and bring the old data back at a replay), and the
// segment is freed.
func TestGCKeepsNothingUnderABypassWrite(t *testing.T) {
	r := newKeepRig(t)
	ctx := context.Background()
	c := r.cache
	buf := make([]byte, 4096)
	blocks, segOf := writeCleanSegments(t, r, 3)
	first := segOf[blocks[0]]
	for _, off := range blocks {
		if err := r.vol.ReadAt(ctx, buf, off); err != nil {
			t.Fatal(err)
		}
	}
	c.policy.credit.Store(0)
	chunk := uint64(blocks[0]) >> chunkShift
	if uint64(blocks[len(blocks)-1])>>chunkShift != chunk {
		t.Fatal("the blocks span two chunks")
	}
	r.vol.tracker.inc(chunk, chunk)
	gen := c.segs.segs[first].currentGen()
	for c.segs.segs[first].currentGen() == gen {
		if !c.gcStep() {
			t.Fatalf("GC stopped before freeing segment %d (kept %d)", first, c.Stats().GCSegmentsKept)
		}
	}
	r.vol.tracker.dec(chunk, chunk)
	if c.Stats().GCSegmentsKept == 0 {
		t.Fatal("GC did not choose to keep the segment: the test shows nothing")
	}
	for _, off := range blocks {
		if segOf[off] == first && r.vol.Explain(off).State == "hit" {
			t.Fatalf("block %d of segment %d kept in place with a bypass write in flight on its chunk", off/4096, first)
		}
	}
}

// TestGCKeepsNoKeyWithAWiderCRC: on a cache with data CRCs, an extent
// whose CRC covers more than the extent (the rest of its write was
// overwritten since) is evicted, not kept in place: a kept key carries
// the extent's CRC, which would not match its data (persist.Check would
// call the cache corrupt, a replay would drop the key). Every other block
// of the segment is kept, and the journal checks clean.
func TestGCKeepsNoKeyWithAWiderCRC(t *testing.T) {
	ctx := context.Background()
	vc := DefaultVolumeConfig()
	vc.SequentialCutoff = 0
	r := newItRigCRC(t, 16, 8<<20, Config{}, vc)
	m, c, v := r.media, r.cache, r.vol
	const bs = 4096
	// An 8 KiB write at 0, its second block overwritten: the extent left
	// of the first block has a CRC of 8 KiB.
	two := make([]byte, 2*bs)
	fillPattern(two[:bs], 0)
	fillPattern(two[bs:], 1)
	if err := v.WriteAt(ctx, two, 0, false); err != nil {
		t.Fatal(err)
	}
	first := v.Explain(0).Pos.Seg
	buf := make([]byte, bs)
	fillPattern(buf, 1)
	if err := v.WriteAt(ctx, buf, bs, false); err != nil {
		t.Fatal(err)
	}
	// Then single blocks until two more segments are taken.
	blocks := []int64{0}
	segs := map[uint32]bool{first: true}
	for off := int64(2 * bs); len(segs) < 3; off += bs {
		fillPattern(buf, uint64(off/bs))
		if err := v.WriteAt(ctx, buf, off, false); err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, off)
		segs[v.Explain(off).Pos.Seg] = true
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var inFirst []int64
	for _, off := range blocks {
		if e := v.Explain(off); e.Pos.Seg == first {
			inFirst = append(inFirst, off)
		}
		if err := v.ReadAt(ctx, buf, off); err != nil {
			t.Fatal(err)
		}
	}
	c.policy.credit.Store(0)
	gen := c.segs.segs[first].currentGen()
	for c.Stats().GCSegmentsKept == 0 && c.segs.segs[first].currentGen() == gen {
		if !c.gcStep() {
			t.Fatal("GC stopped before passing the first segment")
		}
	}
	if c.Stats().GCSegmentsKept == 0 {
		t.Fatal("GC did not keep the first segment: the test shows nothing")
	}
	for _, off := range inFirst {
		hit := v.Explain(off).State == "hit"
		if off == 0 && hit {
			t.Fatal("block 0, whose extent's CRC covers 8 KiB, kept in place")
		}
		if off != 0 && !hit {
			t.Fatalf("block %d of the kept segment evicted", off/bs)
		}
	}
	if err := c.flushAll(); err != nil {
		t.Fatal(err)
	}
	st2, err := persist.Open(m.CrashImage(m.PersistPoints(), nil))
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := persist.Check(st2); err != nil || len(problems) > 0 {
		t.Fatalf("journal check after keeping: %v %q", err, problems)
	}
}
