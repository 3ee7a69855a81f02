package cachecore

import (
	"time"

	"github.com/cachelun/cachelun/persist"
)

const gcMaxKsetsPerTail = 64

// gcLoop reclaims clean log while the share of used segments is above
// GCPercent or a writer waits for space.
func (c *Cache) gcLoop() {
	defer c.workers.Done()
	ctx := c.workersCtx
	for {
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-c.failedCh:
			t.Stop()
			return
		case <-c.gcKick:
		case <-t.C:
		}
		t.Stop()
		for c.needGC() && ctx.Err() == nil && !c.failed.Load() {
			ok := c.gcStep()
			c.checkLiveInvariants("GC step")
			if !ok {
				break
			}
		}
	}
}

func (c *Cache) needGC() bool {
	free, quar := c.segs.counts()
	n := uint32(len(c.segs.segs))
	used := n - free - quar
	need := c.spaceWait.Load() > 0 || int(used)*100 > int(n)*c.config().GCPercent
	if need && !c.policy.full.Load() {
		// Whoever sees it first (GC, or writeback asking for space)
		// records that GC has work: cacheFull keeps its margin from now
		// on.
		c.policy.full.Store(true)
	}
	return need
}

// gcStep advances key_tail over up to gcMaxKsetsPerTail clean ksets (never
// past dirty_tail, nor past keys writeback has not yet marked clean): it drops their segment references (a segment reaching
// zero has its generation bumped and persisted, then is free), persists
// key_tail, then drops their keys from the index and frees the kset
// segments key_tail has left. It reports whether it made progress.
func (c *Cache) gcStep() bool {
	kt := c.store.KeyTail()
	// Never past dirty_tail, nor past the keys whose written-back
	// extents writeback has yet to mark clean (cleanLSN).
	limit := min(c.store.DirtyTail().LSN, c.cleanLSN.Load())
	if kt.LSN >= limit {
		return false
	}
	c.stats.gcRuns.Add(1)
	r := c.store.Replay(kt)
	var next persist.Tail
	n := 0
	var passed []persist.Key
	// A step passes ksets until it has passed the last key into some
	// segment, so that the step frees it (in log order, the oldest data
	// segment), and gcLoop checks its threshold again. Passing more at a
	// time evicts more than the threshold asks (a step of 64 large ksets
	// freed ten segments of 32 at once); passing a fixed amount of data
	// ended most steps partway into the next segment, whose passed data
	// was evicted (or re-appended) while its space stayed taken until the
	// next step: about half a segment of every cache held nothing. Two
	// segments' worth bounds a step whose keys point into segments that
	// later keys point into too (several data heads).
	var passedBytes uint64
	// dropping: the references the step drops, by segment (putRef below).
	dropping := map[uint32]int64{}
	frees := false
	for n < gcMaxKsetsPerTail && !frees && passedBytes < 2*uint64(c.segs.dataSize) {
		ks, ok := r.Next()
		if !ok || ks.LSN >= limit {
			break
		}
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if k.Flags == persist.KeyTombstone {
				continue
			}
			passed = append(passed, *k)
			passedBytes += uint64(k.Length)
			if int(k.Pos.Seg) < len(c.segs.segs) {
				dropping[k.Pos.Seg]++
			}
		}
		for i := range ks.Keys {
			k := &ks.Keys[i]
			// A segment whose references are all keys this step passes
			// is freed by it. (Only when to stop depends on this: a
			// reference taken or dropped meanwhile moves the stop.)
			if k.Flags != persist.KeyTombstone && int(k.Pos.Seg) < len(c.segs.segs) && c.segs.segs[k.Pos.Seg].refs.Load() <= dropping[k.Pos.Seg] {
				frees = true
				break
			}
		}
		for i := range ks.Keys {
			if v := ks.Keys[i].Volume; v < uint32(len(c.liveKeys)) {
				c.liveKeys[v].Add(-1)
			}
		}
		next = ks.Next
		n++
	}
	if n == 0 {
		if err := r.StopReason(); err != nil && isMediaFault(err) {
			c.fail("gc read log", err)
		}
		return false
	}
	// Order: generation bumps (in putRef), then key_tail, then the index.
	// Until key_tail is durable a crash replays the passed keys, so they
	// stay in the index and a bypass write over them still journals its
	// tombstone. Extents whose segment was bumped and reused meanwhile fail
	// the readers' generation check.
	// The segments the step frees; of them, those 2q keeps in place hold
	// one reference of the step's until evictKeys has appended their keys
	// again, so dropping the passed keys' references never frees them.
	freeing := map[uint32]bool{}
	for s, d := range dropping {
		if c.segs.segs[s].refs.Load() <= d {
			freeing[s] = true
		}
	}
	keep := c.secondChance(kt.LSN, passed, freeing)
	for s := range keep {
		c.segs.segs[s].refs.Add(1)
	}
	freeBefore, _ := c.segs.counts()
	for i := range passed {
		if s := passed[i].Pos.Seg; int(s) < len(c.segs.segs) {
			c.putRef(s)
		}
	}
	if c.failed.Load() {
		return false
	}
	if err := c.store.SetKeyTail(next); err != nil {
		if isMediaFault(err) {
			c.fail("persist key tail", err)
		}
		return false
	}
	c.evictKeys(passed, keep)
	for s := range keep {
		c.putRef(s)
	}
	if c.distrustClean && next.LSN >= c.distrustUntil {
		info := c.store.Info()
		info.Flags &^= InfoFlagRetired
		if err := c.store.SetInfo(info); err != nil {
			if isMediaFault(err) {
				c.fail("persist cache info", err)
			}
			return false
		}
		c.distrustClean = false
	}
	c.logMu.Lock()
	var release []uint32
	for len(c.logSegs) > 1 && c.logSegs[0] != next.Pos.Seg {
		release = append(release, c.logSegs[0])
		c.logSegs = c.logSegs[1:]
	}
	c.logMu.Unlock()
	for _, s := range release {
		c.segs.release(s)
	}
	freeAfter, _ := c.segs.counts()
	if freeAfter > freeBefore {
		c.stats.gcSegmentsFreed.Add(uint64(freeAfter - freeBefore))
	}
	return true
}

// evictKeys removes from the index the extents that still hold the data
// of the keys key_tail is passing (FIFO eviction): after a restart the
// keys would not be replayed either. Clean extents in the segments 2q
// keeps in place (keep) stay, their keys journaled again (keepInPlace)
// under the same stripe lock, so that the index never holds less than a
// replay would bring back. The keys of a step are grouped by stripe and
// each stripe's list is compacted once, not once per key: a step passes a
// segment's worth of keys, and removing them one by one moved the rest of
// a stripe's list (up to a thousand extents) for each.
func (c *Cache) evictKeys(passed []persist.Key, keep map[uint32]bool) {
	type lineage struct {
		p   keyPiece
		seg uint32
		gen uint64
	}
	type stripeKeys struct {
		vs       *volState
		lineages []lineage
	}
	byStripe := map[*stripe]*stripeKeys{}
	var order []*stripe
	for i := range passed {
		k := &passed[i]
		vs := c.dataKeyVolume(k)
		if vs == nil {
			continue
		}
		for st, p := range vs.indexedPieces(k) {
			sk := byStripe[st]
			if sk == nil {
				sk = &stripeKeys{vs: vs}
				byStripe[st] = sk
				order = append(order, st)
			}
			sk.lineages = append(sk.lineages, lineage{p: p, seg: k.Pos.Seg, gen: k.Gen})
		}
	}
	var drop []int
	var spills []spill
	var kept map[int]bool // extents of the stripe kept in place (keep only)
	if len(keep) > 0 {
		kept = map[int]bool{}
		// The kept keys get ksets of their own: GC's next pass over
		// them then passes a kept segment's keys together, not spread
		// among the keys the heads take meanwhile.
		c.closeAged(c.clock().Now(), 0)
		defer c.closeAged(c.clock().Now(), 0)
	}
	for _, st := range order {
		sk := byStripe[st]
		var kv *Volume
		if len(keep) > 0 {
			kv = keepingVolume(sk.vs)
		}
		drop, spills = drop[:0], spills[:0]
		clear(kept)
		st.mu.Lock()
		for _, l := range sk.lineages {
			i, j := st.list.span(l.p.s, l.p.e)
			for n := i; n < j; n++ {
				x := &st.list.ext[n]
				// A dirty extent of the lineage was carried forward by
				// writeback for a volume that is not attached: a later
				// key holds it. (Written-back keys are marked clean
				// before GC may pass them: cleanLSN.) Dirty data is never
				// evicted.
				if x.kind == extDirty || !x.sameLineage(l.p.s, l.seg, l.p.segOff, l.gen) || kept[n] {
					continue
				}
				if kv != nil && keep[l.seg] {
					if sp, ok := kv.keepInPlace(st, l.p.piece, x); ok {
						kept[n] = true
						spills = append(spills, sp)
						continue
					}
				}
				drop = append(drop, n)
			}
		}
		st.list.removeIndexes(drop)
		st.mu.Unlock()
		for _, sp := range spills {
			c.commitSpill(sp)
		}
		if kv != nil {
			kv.exit()
		}
	}
}

// dataKeyVolume returns the volume state of a data key GC passes (nil for a
// tombstone or a volume no longer in the cache).
func (c *Cache) dataKeyVolume(k *persist.Key) *volState {
	if k.Flags == persist.KeyTombstone || k.Volume >= uint32(len(c.vols)) {
		return nil
	}
	return c.vols[k.Volume].Load()
}
