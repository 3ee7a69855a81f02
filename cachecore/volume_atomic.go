package cachecore

import (
	"context"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// Atomic writes (blk.AtomicWriter, served as SCSI WRITE ATOMIC(16)).
//
// An atomic write is a cache write whose keys are appended as one group:
// its data goes to the cache media first, then, under the stripe lock of
// its range (it never crosses a stripe: see atomicWriteMax), its extents
// replace the old ones and its keys enter one kset together
// (Cache.appendGroup closes the open kset first if they would not all fit).
// So:
//   - after a crash at any instant, replay applies the kset with all of the
//     keys or none of them (a kset is accepted whole or not at all), and the
//     intent log recovers the group whole or not at all (its records carry
//     a group count);
//   - no other write to the range interleaves: every write inserts into the
//     stripe under the same lock, so it is ordered entirely before or after;
//     readers look extents up under it too and see all or none of it.
//
// It takes the cache path in every mode, as a write overlapping dirty data
// does: the backing device alone never holds part of it (writeback of its
// keys may be cut by a crash, but the keys stay in the log until it is
// done, C6). In writethrough, writearound and passthrough mode an atomic
// write is therefore dirty cache data until writeback, not on the backing
// device at completion. A cache that failed or was detached serves no
// atomic writes (they fail with blk.ErrMedium): the backing device alone
// cannot promise them.

// atomicWriteMax is the largest atomic write and its alignment: an aligned
// window of this size never crosses a 4 MiB stripe, so its keys go to one
// kset slot under one stripe lock, and it needs at most a few keys.
const atomicWriteMax = 128 << 10

// AtomicLimits reports the atomic writes the volume guarantees: up to
// 128 KiB (or one block, if larger) inside one aligned 128 KiB window.
func (v *Volume) AtomicLimits() blk.AtomicLimits {
	m := max(int64(atomicWriteMax), int64(v.blockSize))
	return blk.AtomicLimits{MaxBytes: m, Alignment: m}
}

// WriteAtomic writes p at off all-or-nothing (see above); with fua it
// returns only when the write is durable.
func (v *Volume) WriteAtomic(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	lim := v.AtomicLimits().MaxBytes
	if off/lim != (off+int64(len(p))-1)/lim {
		return fmt.Errorf("cachecore: %s: atomic write [%d,+%d) crosses a %d-byte boundary: %w", v.name, off, len(p), lim, blk.ErrMisaligned)
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return fmt.Errorf("cachecore: %s: atomic write needs the cache, which is failed or detached: %w", v.name, blk.ErrMedium)
	}
	t0 := time.Now()
	if err := v.atomicCacheWrite(ctx, p, off); err != nil {
		return err
	}
	v.writeLat.add(time.Since(t0))
	v.stats.writeHits.Add(1)
	v.stats.writeBytes.Add(uint64(len(p)))
	v.stats.cachedWriteBytes.Add(uint64(len(p)))
	if fua {
		return v.syncDurable([]int{slotFor(v.st.id, firstPiece(off, int64(len(p)), 0).stripe)})
	}
	return nil
}

// atomicCacheWrite writes the data of an atomic write to the cache media,
// then installs its extents and appends its keys as one group under the
// stripe lock.
func (v *Volume) atomicCacheWrite(ctx context.Context, p []byte, off int64) error {
	c := v.c
	pc := firstPiece(off, int64(len(p)), 0) // the whole write: it stays in one stripe
	st := v.st.idx.get(pc.stripe)
	slot := slotFor(v.st.id, pc.stripe)
	var keys []persist.Key
	var exts []extent
	release := func() {
		for _, k := range keys {
			c.putRef(k.Pos.Seg)
		}
	}
	for done := uint32(0); done < uint32(len(p)); {
		a, err := c.allocDataWait(ctx, uint32(len(p))-done)
		if err != nil {
			release()
			return err
		}
		chunk := p[done : done+a.n]
		k := persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(pc.s + done)), Length: a.n, Pos: a.pos, Gen: a.gen, Flags: persist.KeyDirty}
		keys = append(keys, k)
		if err := c.media.WriteAt(chunk, c.store.DataOffset(a.pos)); err != nil {
			release()
			return v.mediaErr("write cache data", err)
		}
		if c.dataCRC {
			keys[len(keys)-1].DataCRC = crc32.Checksum(chunk, castagnoli)
		}
		kk := &keys[len(keys)-1]
		exts = append(exts, withSum(extent{gen: a.gen, start: pc.s + done, length: a.n, seg: a.pos.Seg, segOff: a.pos.Off, kind: extDirty}, kk, c.dataCRC))
		done += a.n
	}
	if len(keys) > persist.MaxKSetKeys {
		// Cannot happen at 128 KiB (a key covers at least 4 KiB unless
		// segments are tiny); refuse rather than split the group.
		release()
		return fmt.Errorf("cachecore: %s: atomic write needs %d keys, more than a kset holds: %w", v.name, len(keys), blk.ErrMedium)
	}
	st.mu.Lock()
	if c.failed.Load() {
		st.mu.Unlock()
		release()
		return c.failedErr()
	}
	for i := range exts {
		x := exts[i]
		dropped := st.list.installWrite(x)
		v.st.dirtyBytes.Add(int64(x.length) - dropped)
	}
	sp := v.appendDirtyGroup(slot, keys)
	st.mu.Unlock()
	c.commitSpill(sp)
	return nil
}

// appendDirtyGroup is appendDirtyKey for the keys of one atomic write: one
// group in one kset, counted dirty with their flush epoch.
func (v *Volume) appendDirtyGroup(slot int, keys []persist.Key) spill {
	c := v.c
	v.st.dirtyKeys.Add(int64(len(keys)))
	before := c.epoch.Load()
	sp := c.appendGroup(slot, keys, true)
	after := c.epoch.Load()
	for _, k := range keys {
		v.epochs.added(before, before == after, dirtyKeyIDOf(&k))
	}
	return sp
}
