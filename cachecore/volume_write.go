package cachecore

import (
	"context"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// Writes: the route of each write (cache, bypass, held back), the cache
// path with its keys and journal slots, bypass writes with their
// tombstones, and Flush.

type writeRoute uint8

const (
	routeCache   writeRoute = iota // dirty data in the cache
	routeThrough                   // backing write, then a clean copy in the cache
	routeBypass                    // tombstone + backing write
	routeFull                      // cache full: bypass only where nothing is cached
)

const (
	reasonSequential = iota
	reasonCongestion
	reasonFull
	reasonMode
	numReasons
)

var reasonNames = [numReasons]string{"sequential", "congestion", "full", "mode"}

// route chooses the path of a write and, for a bypass, its reason (the
// bypass statistics are counted when pieces actually bypass). A FUA write
// in a mode that caches writes (writeback, writeonly) is not a sequential
// stream's, as bcache does in writeback mode with synchronous writes: a
// database's log written with FUA would otherwise wait for the slow device
// once it had grown past the cutoff.
func (v *Volume) route(ctx context.Context, off, n int64, fua bool) (writeRoute, int) {
	if v.repl.Load() != nil {
		// Every change of a replicated volume goes through the shipped
		// log (replicate.go): a write that reached the shared backing
		// device directly could be overwritten by an older shipped copy
		// replayed at a takeover. A full cache makes it wait for space.
		return routeCache, -1
	}
	m := v.Mode()
	if m == ModePassthrough || m == ModeWritearound {
		return routeBypass, reasonMode
	}
	vc := v.vcfg.Load()
	if vc.SequentialCutoff > 0 && !(fua && m.cachesWrites()) && v.seq.observe(blk.Stream(ctx), off, n, v.c.clock().Now()) >= vc.SequentialCutoff {
		return routeBypass, reasonSequential
	}
	if v.writeLat.congested(vc.CongestedWriteThreshold) {
		return routeBypass, reasonCongestion
	}
	if m.cachesWrites() && v.c.segs.dataFree() <= 0 {
		return routeFull, reasonFull
	}
	if m == ModeWritethrough {
		return routeThrough, -1
	}
	return routeCache, -1
}

// mustHoldBack reports whether a write issued now must not reach the
// backing device directly: the volume still has dirty data of an older
// flush epoch that is not yet written back and flushed there (C6;
// see the package documentation for the argument).
func (v *Volume) mustHoldBack() bool {
	epoch := v.c.epoch.Load()
	if !v.epochs.olderThan(epoch) {
		return false
	}
	v.heldBackAt.Store(time.Now().UnixNano())
	v.c.kickWriteback()
	return true
}

// waitOrdered waits until the volume has no dirty data of a flush epoch
// older than the current one left to write back, with writeback at full
// speed meanwhile. Backing discards larger than discardZeroLimit wait here
// (rather than writing zeroes through the cache, which a whole-device
// discard would fill). It waits as long as writeback needs: ctx bounds it.
func (v *Volume) waitOrdered(ctx context.Context) error {
	c := v.c
	epoch := c.epoch.Load()
	if !v.epochs.olderThan(epoch) {
		return nil
	}
	c.drainers.Add(1)
	defer c.drainers.Add(-1)
	for v.epochs.olderThan(epoch) {
		if err := c.failedErr(); err != nil {
			return err
		}
		if err := c.pauseForWriteback(ctx, 2*time.Millisecond, "a discard waited for writeback"); err != nil {
			return err
		}
	}
	return nil
}

// pauseForWriteback kicks writeback and waits up to d for it to make
// progress. It fails when ctx ends or the cache starts closing (what says
// who was waiting); a cache failure ends the wait early and is left to the
// caller's next check.
func (c *Cache) pauseForWriteback(ctx context.Context, d time.Duration, what string) error {
	c.kickWriteback()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closing:
		return fmt.Errorf("cachecore: cache closing while %s: %w", what, blk.ErrNotReady)
	case <-c.failedCh:
	case <-t.C:
	}
	return nil
}

// WriteAt writes p at off; with fua it returns only when the data is
// durable.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return v.directWrite(ctx, p, off, fua)
	}
	var err error
	r, reason := v.route(ctx, off, int64(len(p)), fua)
	if r != routeCache && v.mustHoldBack() {
		// Older dirty data first: this write joins it in the cache (a
		// full cache makes it wait for space: back-pressure).
		v.stats.heldBack.Add(1)
		r = routeCache
	}
	switch r {
	case routeCache:
		if err = v.cacheWrite(ctx, p, off, fua); err == nil {
			v.stats.cachedWriteBytes.Add(uint64(len(p)))
		}
	default:
		err = v.bypassWrite(ctx, p, off, fua, r, reason)
	}
	if v.retryDirect(err) {
		return v.directWrite(ctx, p, off, fua)
	}
	if err == nil {
		v.stats.writeBytes.Add(uint64(len(p)))
	}
	return err
}

func (v *Volume) directWrite(ctx context.Context, p []byte, off int64, fua bool) error {
	v.noteDirect()
	err := v.dev.WriteAt(ctx, p, off)
	v.noteDirect()
	if err != nil {
		return v.backingErr("write", off, err)
	}
	if fua {
		if err := v.dev.Flush(ctx); err != nil {
			return v.backingErr("flush", off, err)
		}
	}
	v.stats.writeBytes.Add(uint64(len(p)))
	return nil
}

// slotSet collects kset slots to sync.
type slotSet struct {
	list []int
	seen [ksetSlots]bool
}

func (s *slotSet) add(i int) {
	if !s.seen[i] {
		s.seen[i] = true
		s.list = append(s.list, i)
	}
}

// cacheWrite is the writeback path: data into the cache, key into the
// index and the open kset under the stripe lock, acknowledge.
func (v *Volume) cacheWrite(ctx context.Context, p []byte, off int64, fua bool) error {
	var slots slotSet
	measure := v.vcfg.Load().CongestedWriteThreshold > 0
	var t0 time.Time
	if measure {
		t0 = time.Now()
	}
	for done := int64(0); done < int64(len(p)); {
		pc := firstPiece(off+done, int64(len(p))-done, done)
		if err := v.cacheWritePiece(ctx, p[pc.bufOff:pc.bufOff+pc.len()], pc); err != nil {
			return err
		}
		slots.add(slotFor(v.st.id, pc.stripe))
		done += pc.len()
	}
	if measure {
		v.writeLat.add(time.Since(t0))
	}
	v.stats.writeHits.Add(1)
	if fua {
		return v.syncDurable(slots.list)
	}
	return nil
}

// syncDurable makes the keys in the given slots durable and starts a new
// flush epoch (a FUA write orders everything after it): when it returns,
// the epoch is past the one its keys were appended in, so writes issued
// after it are never collapsed with them by writeback. Concurrent syncs
// share one epoch bump, so writes arriving while a commit is in flight
// still gather in one kset (group commit).
func (v *Volume) syncDurable(slots []int) error {
	appendedIn := v.c.epoch.Load() // ≥ the epoch of every key of the caller
	err := v.c.syncSlots(slots)
	for {
		cur := v.c.epoch.Load()
		if cur > appendedIn || v.c.epoch.CompareAndSwap(cur, cur+1) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("cachecore: %s: %w", v.name, err)
	}
	return nil
}

func (v *Volume) cacheWritePiece(ctx context.Context, data []byte, pc piece) error {
	c := v.c
	st := v.st.idx.get(pc.stripe)
	slot := slotFor(v.st.id, pc.stripe)
	dataSeg := c.dataSegs.Load()
	for done := uint32(0); done < uint32(len(data)); {
		a, err := c.allocDataWait(ctx, uint32(len(data))-done)
		if err != nil {
			return err
		}
		chunk := data[done : done+a.n]
		if err := c.media.WriteAt(chunk, c.store.DataOffset(a.pos)); err != nil {
			c.putRef(a.pos.Seg)
			return v.mediaErr("write cache data", err)
		}
		s := pc.s + done
		k := persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(s)), Length: a.n, Pos: a.pos, Gen: a.gen, Flags: persist.KeyDirty}
		if c.dataCRC {
			k.DataCRC = crc32.Checksum(chunk, castagnoli)
		}
		x := withSum(extent{gen: a.gen, start: s, length: a.n, seg: a.pos.Seg, segOff: a.pos.Off, kind: extDirty}, &k, c.dataCRC)
		st.mu.Lock()
		if c.failed.Load() {
			st.mu.Unlock()
			c.putRef(a.pos.Seg)
			return c.failedErr()
		}
		dropped := st.list.installWrite(x)
		v.st.dirtyBytes.Add(int64(a.n) - dropped)
		sp := v.appendDirtyKey(slot, k, dataSeg)
		st.mu.Unlock()
		c.commitSpill(sp)
		done += a.n
	}
	return nil
}

// appendDirtyKey appends the dirty key k to kset slot with the stripe lock
// of its range held, and counts it dirty for the volume, with its flush
// epoch, before the write can be acknowledged. The epoch is read before and
// after the append: if a flush moved it in between, the key's exact epoch
// is unknown and it counts as older until written back. dataSeg is the
// Cache.dataSegs read before the write allocated its space
// (openForLocked).
func (v *Volume) appendDirtyKey(slot int, k persist.Key, dataSeg uint64) spill {
	c := v.c
	v.st.dirtyKeys.Add(1)
	before := c.epoch.Load()
	sp := c.appendKeyIn(slot, k, true, 0, dataSeg)
	after := c.epoch.Load()
	v.epochs.added(before, before == after, dirtyKeyIDOf(&k))
	return sp
}

// allocDataWait allocates cache space, waiting (bounded by ctx) for GC or
// writeback to free a segment when the cache is full.
func (c *Cache) allocDataWait(ctx context.Context, n uint32) (allocation, error) {
	waited := false
	defer func() {
		if waited {
			c.spaceWait.Add(-1)
		}
	}()
	for {
		ch := c.segs.waitCh()
		a, err := c.allocData(n)
		if err == nil {
			return a, nil
		}
		if ferr := c.failedErr(); ferr != nil {
			return allocation{}, ferr
		}
		if !waited {
			waited = true
			c.spaceWait.Add(1)
			c.stats.deferredWrites.Add(1)
		}
		c.kickGC()
		c.kickWriteback()
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return allocation{}, ctx.Err()
		case <-c.closing:
			t.Stop()
			return allocation{}, fmt.Errorf("cachecore: cache closing while waiting for space: %w", blk.ErrNotReady)
		case <-c.failedCh:
		}
		t.Stop()
	}
}

type bypassPiece struct {
	pc    piece
	token uint64 // writethrough placeholder
}

// bypassWrite writes to the backing device around the cache: count the
// write in flight on its chunks, drop (and journal a tombstone for) cached
// data of the range under the stripe lock, persist the tombstone, write the
// backing device, then (writethrough) install a clean copy. A piece that
// overlaps dirty data takes the cache path instead, or writeback would
// later overwrite the new backing data with older cache data.
//
// With routeFull (the cache has no free segment) only pieces with nothing
// cached bypass (they need no tombstone); the others wait for space in the
// cache path.
func (v *Volume) bypassWrite(ctx context.Context, p []byte, off int64, fua bool, r writeRoute, reason int) error {
	through := r == routeThrough
	c := v.c
	first, last := chunkRange(off, int64(len(p)))
	v.tracker.inc(first, last)
	defer v.tracker.dec(first, last)

	var tombSlots, cacheSlots slotSet
	var direct []bypassPiece
	for _, pc := range splitPieces(off, int64(len(p))) {
		st := v.st.idx.get(pc.stripe)
		st.mu.Lock()
		if st.list.anyDirty(pc.s, pc.e) || (r == routeFull && st.list.anyData(pc.s, pc.e)) {
			st.mu.Unlock()
			if err := v.cacheWritePiece(ctx, p[pc.bufOff:pc.bufOff+pc.len()], pc); err != nil {
				v.cancelThrough(direct)
				return err
			}
			cacheSlots.add(slotFor(v.st.id, pc.stripe))
			continue
		}
		bp := bypassPiece{pc: pc}
		var ph *extent
		if through {
			bp.token = c.token.Add(1)
			ph = &extent{gen: bp.token, start: pc.s, length: pc.e - pc.s, kind: extEmpty}
		}
		if st.list.replace(pc.s, pc.e, ph) {
			slot := slotFor(v.st.id, pc.stripe)
			sp := c.appendKey(slot, persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(pc.s)), Length: pc.e - pc.s, Flags: persist.KeyTombstone})
			st.mu.Unlock()
			c.commitSpill(sp)
			tombSlots.add(slot)
		} else {
			st.mu.Unlock()
		}
		direct = append(direct, bp)
	}
	if reason >= 0 && len(direct) > 0 {
		var n int64
		for _, bp := range direct {
			n += bp.pc.len()
		}
		v.stats.bypass(reason, n)
	}
	if cacheSlots.list != nil {
		v.stats.writeHits.Add(1)
	}
	// The tombstones are durable before the backing write, so a crash
	// cannot bring the old cached data back.
	if err := c.syncSlots(tombSlots.list); err != nil {
		v.cancelThrough(direct)
		return fmt.Errorf("cachecore: %s: %w", v.name, err)
	}
	if len(direct) > 0 {
		v.noteDirect()
		defer v.noteDirect() // after the writes too: see noteDirect
	}
	for i := 0; i < len(direct); {
		j := i + 1
		for j < len(direct) && direct[j].pc.bufOff == direct[j-1].pc.bufOff+direct[j-1].pc.len() {
			j++
		}
		start := direct[i].pc.bufOff
		end := direct[j-1].pc.bufOff + direct[j-1].pc.len()
		if err := v.dev.WriteAt(ctx, p[start:end], off+start); err != nil {
			v.cancelThrough(direct)
			return v.backingErr("write", off+start, err)
		}
		i = j
	}
	if fua {
		if len(direct) > 0 {
			if err := v.dev.Flush(ctx); err != nil {
				v.cancelThrough(direct)
				return v.backingErr("flush", off, err)
			}
		}
		if err := v.syncDurable(cacheSlots.list); err != nil {
			v.cancelThrough(direct)
			return err
		}
	}
	if through {
		for _, bp := range direct {
			st := v.st.idx.get(bp.pc.stripe)
			v.fill(st, bp.pc, bp.pc.s, bp.token, p[bp.pc.bufOff:bp.pc.bufOff+bp.pc.len()], 1)
		}
	}
	return nil
}

func (v *Volume) cancelThrough(direct []bypassPiece) {
	for _, bp := range direct {
		if bp.token == 0 {
			continue
		}
		st := v.st.idx.get(bp.pc.stripe)
		st.mu.Lock()
		removePlaceholder(st, bp.pc.s, bp.token)
		st.mu.Unlock()
	}
}

// Flush makes every write acknowledged before it durable: all open ksets
// close, and the backing device is flushed if writes reached it directly
// since the last flush.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	d, err := v.direct()
	if err != nil {
		return err
	}
	if !d {
		if err := v.c.flushAll(); err != nil {
			if !v.retryDirect(err) {
				return fmt.Errorf("cachecore: %s: flush: %w", v.name, err)
			}
		}
	}
	if d {
		v.noteDirect()
	}
	if err := v.flushBacking(ctx); err != nil {
		return v.backingErr("flush", 0, err)
	}
	return nil
}

// noteDirect counts a direct backing write (or discard) before it is
// issued and again once it completed: a backing flush that started while
// the write was in flight may not cover it, so the count taken after
// completion makes the next Flush flush again (C3).
func (v *Volume) noteDirect() { v.directSeq.Add(1) }

// flushBacking flushes the backing device if direct writes happened since
// the last backing flush.
func (v *Volume) flushBacking(ctx context.Context) error {
	seq := v.directSeq.Load()
	if seq == v.flushedSeq.Load() {
		return nil
	}
	v.backingFlushMu.Lock()
	defer v.backingFlushMu.Unlock()
	if seq <= v.flushedSeq.Load() {
		return nil // a flush that started after seq was counted covered it
	}
	seq = v.directSeq.Load()
	if err := v.dev.Flush(ctx); err != nil {
		return err
	}
	v.flushedSeq.Store(seq)
	return nil
}
