package cachecore

import (
	"context"
	"fmt"

	"github.com/cachelun/cachelun/persist"
)

// Discard: dropped from the cache and the backing device, or written as
// zeroes through the cache over dirty data (C6).

// Discard invalidates [off, off+n); the range then reads as zeroes. Parts
// without dirty data get a tombstone and a backing discard. Dirty data not
// yet written back cannot simply be dropped (a crash after its tombstone
// and before the backing discard would expose data older than it, C5),
// nor discarded on the backing device under it (writeback would undo the
// discard): a discard larger than discardZeroLimit has the volume's dirty
// data written back first, so that the range then becomes one backing
// discard and a thin LUN reports it deallocated; a smaller one, or dirty
// data a write put there meanwhile, is overwritten with zeroes through the
// cache.
func (v *Volume) Discard(ctx context.Context, off, n int64) error {
	if err := v.check(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return v.directDiscard(ctx, off, n)
	}
	err := v.discard(ctx, off, n)
	if v.retryDirect(err) {
		return v.directDiscard(ctx, off, n)
	}
	return err
}

func (v *Volume) directDiscard(ctx context.Context, off, n int64) error {
	v.noteDirect()
	err := v.dev.Discard(ctx, off, n)
	v.noteDirect()
	if err != nil {
		return v.backingErr("discard", off, err)
	}
	return nil
}

// discardZeroLimit is the largest discard that, while older dirty data
// keeps it from the backing device, is written as zeroes through the cache
// instead of waiting for writeback; larger ones wait rather than fill the
// cache with zeroes.
const discardZeroLimit = 1 << 20

func (v *Volume) discard(ctx context.Context, off, n int64) error {
	c := v.c
	limit := int64(discardZeroLimit)
	if l := c.config().discardZeroLimit; l > 0 {
		limit = l
	}
	if n <= limit && v.mustHoldBack() {
		// C6: the zeroes join the older dirty data in the cache
		// and reach the backing device in log order.
		v.stats.heldBack.Add(1)
		zbuf := make([]byte, min(n, stripeSize))
		for _, pc := range splitPieces(off, n) {
			if err := v.cacheWritePiece(ctx, zbuf[:pc.len()], pc); err != nil {
				return err
			}
		}
		return nil
	}
	if n > limit && v.holdsDirty(off, n) {
		// Make the dirty data older than the discard (a new flush epoch)
		// and wait for writeback to write it back and flush the backing
		// device: the backing device then receives the discard after it,
		// in log order (C6), and the range holds no dirty data left to
		// zero. Writeback runs at full speed meanwhile (drainers).
		if err := c.flushAll(); err != nil {
			return fmt.Errorf("cachecore: %s: %w", v.name, err)
		}
		if err := v.waitOrdered(ctx); err != nil {
			return err
		}
	}
	first, last := chunkRange(off, n)
	v.tracker.inc(first, last)
	defer v.tracker.dec(first, last)
	type rng struct{ off, n int64 }
	var backing []rng
	var zero []piece
	var tombSlots slotSet
	addBacking := func(a, b int64) {
		if b <= a {
			return
		}
		if k := len(backing) - 1; k >= 0 && backing[k].off+backing[k].n == a {
			backing[k].n += b - a
			return
		}
		backing = append(backing, rng{a, b - a})
	}
	// A replicated volume journals every discard, cached data or not, so
	// that its copies apply it in log order (replicate.go).
	replicated := v.repl.Load() != nil
	for _, pc := range splitPieces(off, n) {
		st := v.st.idx.peek(pc.stripe)
		if st == nil && replicated {
			st = v.st.idx.get(pc.stripe)
		}
		if st == nil {
			addBacking(pc.abs(pc.s), pc.abs(pc.e))
			continue
		}
		st.mu.Lock()
		ds, de, dirty := st.list.dirtySpan(pc.s, pc.e)
		parts := [][2]uint32{{pc.s, pc.e}}
		if dirty {
			parts = [][2]uint32{{pc.s, ds}, {de, pc.e}}
			zero = append(zero, piece{stripe: pc.stripe, s: ds, e: de})
		}
		slot := slotFor(v.st.id, pc.stripe)
		var sp []spill
		for _, r := range parts {
			if r[1] <= r[0] {
				continue
			}
			if st.list.replace(r[0], r[1], nil) || replicated {
				sp = append(sp, c.appendKey(slot, persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(r[0])), Length: r[1] - r[0], Flags: persist.KeyTombstone}))
				tombSlots.add(slot)
			}
			addBacking(pc.abs(r[0]), pc.abs(r[1]))
		}
		st.mu.Unlock()
		for _, s := range sp {
			c.commitSpill(s)
		}
	}
	if len(zero) > 0 {
		zbuf := make([]byte, stripeSize)
		for _, pc := range zero {
			if err := v.cacheWritePiece(ctx, zbuf[:pc.len()], pc); err != nil {
				return err
			}
		}
	}
	if err := c.syncSlots(tombSlots.list); err != nil {
		return fmt.Errorf("cachecore: %s: %w", v.name, err)
	}
	if len(backing) > 0 {
		// A backing discard is a write of zeroes: it may not overtake
		// older dirty data either (C6).
		if err := v.waitOrdered(ctx); err != nil {
			return err
		}
		v.noteDirect()
		defer v.noteDirect()
	}
	for _, r := range backing {
		if err := v.dev.Discard(ctx, r.off, r.n); err != nil {
			return v.backingErr("discard", r.off, err)
		}
	}
	return nil
}

// holdsDirty reports whether the index holds dirty data in [off, off+n).
func (v *Volume) holdsDirty(off, n int64) bool {
	for _, pc := range splitPieces(off, n) {
		st := v.st.idx.peek(pc.stripe)
		if st == nil {
			continue
		}
		st.mu.Lock()
		_, _, dirty := st.list.dirtySpan(pc.s, pc.e)
		st.mu.Unlock()
		if dirty {
			return true
		}
	}
	return false
}
