package cachecore

import (
	"context"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// COMPARE AND WRITE: compare and write under the stripe locks of the range.

// CompareAndWrite atomically compares [off, off+len(compare)) with compare
// and, only if equal, writes data there. The stripe locks of the range are
// held (in ascending order) from the compare to the index update, and no
// bypass write may be in flight on the range, so no other write
// interleaves. The new data always goes through the cache as dirty data.
func (v *Volume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	if len(compare) != len(data) {
		return fmt.Errorf("cachecore: %s: compare and write with %d compare and %d data bytes: %w", v.name, len(compare), len(data), blk.ErrMisaligned)
	}
	if err := v.check(off, int64(len(data))); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return v.directCAW(ctx, off, compare, data, fua)
	}
	err := v.caw(ctx, off, compare, data, fua)
	if v.retryDirect(err) {
		return v.directCAW(ctx, off, compare, data, fua)
	}
	if err == nil {
		v.stats.writeBytes.Add(uint64(len(data)))
		v.stats.cachedWriteBytes.Add(uint64(len(data)))
		v.stats.writeHits.Add(1)
	}
	return err
}

func (v *Volume) directCAW(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	v.directMu.Lock()
	defer v.directMu.Unlock()
	cur := make([]byte, len(compare))
	if err := v.dev.ReadAt(ctx, cur, off); err != nil {
		return v.backingErr("read", off, err)
	}
	if i := firstDiff(cur, compare); i >= 0 {
		return &blk.MiscompareError{Offset: int64(i)}
	}
	return v.directWrite(ctx, data, off, fua)
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (v *Volume) caw(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	c := v.c
	pieces := splitPieces(off, int64(len(data)))
	type prepared struct {
		pc     piece
		st     *stripe
		allocs []allocation
	}
	prep := make([]prepared, len(pieces))
	dataSeg := c.dataSegs.Load()
	putAll := func() {
		for _, pp := range prep {
			for _, a := range pp.allocs {
				c.putRef(a.pos.Seg)
			}
		}
	}
	for i, pc := range pieces {
		prep[i].pc = pc
		prep[i].st = v.st.idx.get(pc.stripe)
		src := data[pc.bufOff : pc.bufOff+pc.len()]
		for done := uint32(0); done < uint32(len(src)); {
			a, err := c.allocDataWait(ctx, uint32(len(src))-done)
			if err != nil {
				putAll()
				return err
			}
			prep[i].allocs = append(prep[i].allocs, a)
			if err := c.media.WriteAt(src[done:done+a.n], c.store.DataOffset(a.pos)); err != nil {
				putAll()
				return v.mediaErr("write cache data", err)
			}
			done += a.n
		}
	}
	first, last := chunkRange(off, int64(len(data)))
	lock := func() {
		for _, pp := range prep {
			pp.st.mu.Lock()
		}
	}
	unlock := func() {
		for _, pp := range prep {
			pp.st.mu.Unlock()
		}
	}
	for {
		lock()
		if !v.tracker.active(first, last) {
			break
		}
		unlock()
		select {
		case <-ctx.Done():
			putAll()
			return ctx.Err()
		case <-v.c.closing:
			putAll()
			return fmt.Errorf("cachecore: cache closing: %w", blk.ErrNotReady)
		case <-time.After(time.Millisecond):
		}
	}
	cur := make([]byte, len(compare))
	for _, pp := range prep {
		if err := v.readLocked(ctx, pp.st, pp.pc, cur[pp.pc.bufOff:pp.pc.bufOff+pp.pc.len()]); err != nil {
			unlock()
			putAll()
			return err
		}
	}
	if i := firstDiff(cur, compare); i >= 0 {
		unlock()
		putAll()
		return &blk.MiscompareError{Offset: int64(i)}
	}
	var spills []spill
	var slots slotSet
	for _, pp := range prep {
		slot := slotFor(v.st.id, pp.pc.stripe)
		slots.add(slot)
		s := pp.pc.s
		for _, a := range pp.allocs {
			k := persist.Key{Volume: v.st.id, Offset: uint64(pp.pc.abs(s)), Length: a.n, Pos: a.pos, Gen: a.gen, Flags: persist.KeyDirty}
			if c.dataCRC {
				b := pp.pc.bufOff + int64(s-pp.pc.s)
				k.DataCRC = crc32.Checksum(data[b:b+int64(a.n)], castagnoli)
			}
			x := withSum(extent{gen: a.gen, start: s, length: a.n, seg: a.pos.Seg, segOff: a.pos.Off, kind: extDirty}, &k, c.dataCRC)
			dropped := pp.st.list.installWrite(x)
			v.st.dirtyBytes.Add(-dropped)
			v.st.dirtyBytes.Add(int64(a.n))
			spills = append(spills, v.appendDirtyKey(slot, k, dataSeg))
			s += a.n
		}
	}
	unlock()
	for _, sp := range spills {
		c.commitSpill(sp)
	}
	if fua {
		return v.syncDurable(slots.list)
	}
	return nil
}

// readLocked reads a piece with its stripe lock held (no placeholders, no
// fills).
func (v *Volume) readLocked(ctx context.Context, st *stripe, pc piece, dst []byte) error {
	cur := pc.s
	i, j := st.list.span(pc.s, pc.e)
	readBacking := func(a, b uint32) error {
		if b <= a {
			return nil
		}
		if err := v.dev.ReadAt(ctx, dst[a-pc.s:b-pc.s], pc.abs(a)); err != nil {
			return v.backingErr("read", pc.abs(a), err)
		}
		return nil
	}
	for k := i; k < j; k++ {
		x := st.list.ext[k]
		if err := readBacking(cur, x.start); err != nil {
			return err
		}
		a, b := max(x.start, cur), min(x.end(), pc.e)
		if x.hasData() {
			it := readItem{seg: x.seg, segOff: x.segOff + (a - x.start), gen: x.gen}
			ok, err := v.copyHit(dst[a-pc.s:b-pc.s], &it)
			if err != nil {
				return err
			}
			if !ok {
				// Evicted by GC (its key is behind the durable key_tail
				// and was written back): the backing device has the data.
				if err := readBacking(a, b); err != nil {
					return err
				}
			}
		} else if err := readBacking(a, b); err != nil {
			return err
		}
		cur = b
	}
	return readBacking(cur, pc.e)
}
