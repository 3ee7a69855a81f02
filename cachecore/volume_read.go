package cachecore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// Reads: hits under the segment generation check (and the data CRC), misses
// through placeholders and fills (C7), and prefetch.

// ReadAt reads len(p) bytes at off.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
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
	v.sampleRead(off, int64(len(p)))
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return v.directRead(ctx, p, off)
	}
	fill := v.readFillDecision(ctx, off, int64(len(p)))
	var acct readAcct
	acct.gated = fill && v.vcfg.Load().Policy == Policy2Q && v.c.cacheFull(int64(len(p)))
	err := v.read(ctx, p, off, fill, &acct, nil)
	if v.retryDirect(err) {
		return v.directRead(ctx, p, off)
	}
	if err == nil {
		v.stats.countRead(&acct)
	}
	return err
}

func (v *Volume) directRead(ctx context.Context, p []byte, off int64) error {
	if err := v.dev.ReadAt(ctx, p, off); err != nil {
		return v.backingErr("read", off, err)
	}
	v.stats.readMisses.Add(1)
	v.stats.readMissBytes.Add(uint64(len(p)))
	return nil
}

// readFillDecision says whether misses of this read may be cached.
func (v *Volume) readFillDecision(ctx context.Context, off, n int64) bool {
	if !v.Mode().fillsReads() {
		return false
	}
	vc := v.vcfg.Load()
	if vc.SequentialCutoff > 0 {
		if v.seq.observe(blk.Stream(ctx), off, n, v.c.clock().Now()) >= vc.SequentialCutoff {
			v.stats.bypass(reasonSequential, n)
			return false
		}
	}
	if v.readLat.congested(vc.CongestedReadThreshold) {
		v.stats.bypass(reasonCongestion, n)
		return false
	}
	if v.c.segs.dataFree() <= 0 {
		v.stats.bypass(reasonFull, n)
		return false
	}
	if v.c.fills.full.Load() {
		// The fill worker is behind: this fill would be dropped.
		v.stats.fillsDropped.Add(1)
		return false
	}
	return true
}

type readAcct struct {
	hitBytes, missBytes uint64
	// gated: each miss is filled only if the ghost set admits it
	// (Policy2Q on a full cache: admitGhost).
	gated bool
}

const (
	itemHit uint8 = iota
	itemBacking
	itemFill
)

type readItem struct {
	kind   uint8
	s, e   uint32
	seg    uint32
	segOff uint32
	gen    uint64 // hit: generation; fill: placeholder token
	// hit: the extent's kind and its key's checksum (extent.sum*)
	dirty               bool
	sumOff, sumLen, sum uint32
}

// read reads p at off, filling misses into the cache when fill is set.
// Fills are queued (queueFill) and the read returns without waiting for
// them; with filled set (Prefetch) a full queue is waited for instead of
// dropping the fill, and filled counts the fills until each was installed
// or dropped.
func (v *Volume) read(ctx context.Context, p []byte, off int64, fill bool, acct *readAcct, filled *sync.WaitGroup) error {
	for done := int64(0); done < int64(len(p)); {
		pc := firstPiece(off+done, int64(len(p))-done, done)
		if err := v.readPiece(ctx, p[pc.bufOff:pc.bufOff+pc.len()], pc, fill, acct, filled); err != nil {
			return err
		}
		done += pc.len()
	}
	return nil
}

func (v *Volume) readPiece(ctx context.Context, dst []byte, pc piece, fill bool, acct *readAcct, filled *sync.WaitGroup) error {
	c := v.c
	chunk := uint64(pc.abs(pc.s)) >> chunkShift
	for attempt := 0; ; attempt++ {
		var st *stripe
		if fill {
			st = v.st.idx.get(pc.stripe)
		} else {
			st = v.st.idx.peek(pc.stripe)
		}
		var itemsBuf [8]readItem
		items := itemsBuf[:0]
		if st != nil {
			st.mu.Lock()
			i, j := st.list.span(pc.s, pc.e)
			cur := pc.s
			for k := i; k < j; k++ {
				x := &st.list.ext[k]
				if x.start > cur {
					items = append(items, readItem{kind: itemFill, s: cur, e: x.start})
				}
				a, b := max(x.start, cur), min(x.end(), pc.e)
				if x.hasData() {
					markHit(x)
					items = append(items, readItem{kind: itemHit, s: a, e: b, seg: x.seg, segOff: x.segOff + (a - x.start), gen: x.gen,
						dirty: x.kind == extDirty, sumOff: x.sumOff, sumLen: x.sumLen, sum: x.sum})
				} else {
					items = append(items, readItem{kind: itemBacking, s: a, e: b})
				}
				cur = b
			}
			if cur < pc.e {
				items = append(items, readItem{kind: itemFill, s: cur, e: pc.e})
			}
			raced := fill && v.tracker.count(chunk) != 0
			for k := range items {
				it := &items[k]
				if it.kind != itemFill {
					continue
				}
				if !fill || raced || acct.gated && !v.admitGhost(pc.abs(it.s)) {
					it.kind = itemBacking
					continue
				}
				it.gen = c.token.Add(1)
				ph := extent{gen: it.gen, start: it.s, length: it.e - it.s, kind: extEmpty}
				st.list.replace(it.s, it.e, &ph)
			}
			st.mu.Unlock()
			if raced && len(items) > 0 {
				v.stats.readBypassRaces.Add(1)
			}
		} else {
			items = append(items, readItem{kind: itemBacking, s: pc.s, e: pc.e})
		}

		stale := false
		measure := v.vcfg.Load().CongestedReadThreshold > 0
		var t0 time.Time
		if measure {
			t0 = time.Now()
		}
		hits, hitBytes := 0, uint64(0)
		for k := range items {
			it := &items[k]
			if it.kind != itemHit {
				continue
			}
			ok, err := v.copyHit(dst[it.s-pc.s:it.e-pc.s], it)
			var bad *dataCRCError
			if errors.As(err, &bad) {
				v.dataCRCFailed(pc.abs(it.s), bad, "read")
				if !it.dirty {
					// Clean data is the backing device's data: drop the
					// rotten copy and read the backing device instead.
					v.dropExtent(st, pc, it)
					stale = true
					break
				}
				v.cancelFills(st, items)
				return fmt.Errorf("cachecore: %s: read at %d: %w: %w", v.name, pc.abs(it.s), bad, blk.ErrMedium)
			}
			if err != nil {
				v.cancelFills(st, items)
				return err
			}
			if !ok {
				stale = true
				break
			}
			hits++
			hitBytes += uint64(it.e - it.s)
		}
		if hits > 0 && measure {
			v.readLat.add(time.Since(t0))
		}
		if stale {
			v.cancelFills(st, items)
			v.dropStale(st, pc)
			if attempt > 100 {
				return fmt.Errorf("cachecore: %s: read kept finding stale cache entries: %w", v.name, blk.ErrMedium)
			}
			continue
		}
		// Counted only now: an attempt that found a stale hit is retried
		// and counts its hits again.
		acct.hitBytes += hitBytes
		for k := range items {
			it := &items[k]
			if it.kind == itemHit {
				continue
			}
			buf := dst[it.s-pc.s : it.e-pc.s]
			if err := v.dev.ReadAt(ctx, buf, pc.abs(it.s)); err != nil {
				v.cancelFills(st, items[k:])
				return v.backingErr("read", pc.abs(it.s), err)
			}
			acct.missBytes += uint64(len(buf))
			if it.kind == itemFill {
				// The host gets its data now; the fill is written and
				// journaled by the fill worker, or dropped (C7 holds at
				// install time: installFill).
				var done func()
				if filled != nil {
					filled.Add(1)
					done = filled.Done
				}
				if !v.queueFill(st, pc, it.s, it.gen, buf, filled != nil, done, false) {
					v.cancelFills(st, items[k:k+1])
					if done != nil {
						done()
					}
				}
			}
		}
		return nil
	}
}

// copyHit copies cache data under the segment's read lock after checking
// that the generation still matches; ok=false means the data was evicted.
func (v *Volume) copyHit(dst []byte, it *readItem) (ok bool, err error) {
	c := v.c
	s := &c.segs.segs[it.seg]
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gen != it.gen {
		return false, nil
	}
	if err := c.readVerified(dst, it.seg, it.segOff, it.sumOff, it.sumLen, it.sum); err != nil {
		var bad *dataCRCError
		if errors.As(err, &bad) {
			return false, err
		}
		return false, v.mediaErr("read cache data", err)
	}
	return true, nil
}

// dataCRCError: cache data failed the CRC of its key (rotten media).
type dataCRCError struct {
	seg, off, length uint32 // the key's data in the cache file
	want, got        uint32
}

func (e *dataCRCError) Error() string {
	return fmt.Sprintf("cache data at segment %d offset %d length %d fails its checksum (crc32c 0x%08x, key says 0x%08x)", e.seg, e.off, e.length, e.got, e.want)
}

func (e *dataCRCError) Unwrap() error { return ErrDataCRC }

// ErrDataCRC is wrapped by errors of reads (and of the writeback) that
// found cache data whose CRC32C does not match its key's (caches formatted
// with data CRCs): the data rotted on the media after it was written.
var ErrDataCRC = errors.New("cachecore: cache data fails its checksum")

// readVerified reads len(dst) bytes of cache data at (seg, off) and, when
// sumLen is not 0, first verifies the CRC32C of the whole key's data
// [sumOff, sumOff+sumLen) that they are part of: a key is checksummed
// as a whole, so a read of part of it reads all of it.
func (c *Cache) readVerified(dst []byte, seg, off, sumOff, sumLen, sum uint32) error {
	at := func(o uint32) int64 { return c.store.DataOffset(persist.Pos{Seg: seg, Off: o}) }
	if sumLen == 0 {
		return c.media.ReadAt(dst, at(off))
	}
	whole := dst
	if off != sumOff || uint32(len(dst)) != sumLen {
		whole = make([]byte, sumLen)
	}
	if err := c.media.ReadAt(whole, at(sumOff)); err != nil {
		return err
	}
	if got := crc32.Checksum(whole, castagnoli); got != sum {
		return &dataCRCError{seg: seg, off: sumOff, length: sumLen, want: sum, got: got}
	}
	if &whole[0] != &dst[0] {
		copy(dst, whole[off-sumOff:])
	}
	return nil
}

// dataCRCFailed counts and logs a checksum failure found at volume offset
// volOff by op, and remembers it for explain.
func (v *Volume) dataCRCFailed(volOff int64, bad *dataCRCError, op string) {
	v.stats.addError("data_crc")
	v.c.noteBadData(v.name, volOff, bad, op)
}

// dropExtent removes from the index the extent a clean read hit came from,
// if it is still there, so the next attempt reads the backing device.
func (v *Volume) dropExtent(st *stripe, pc piece, it *readItem) {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	i, j := st.list.span(it.s, it.e)
	for k := i; k < j; k++ {
		x := st.list.ext[k]
		if x.kind == extClean && x.seg == it.seg && x.gen == it.gen && x.sumOff == it.sumOff && x.sumLen == it.sumLen {
			st.list.replace(x.start, x.end(), nil)
			return
		}
	}
}

// cancelFills removes the placeholders of items that will not be filled.
func (v *Volume) cancelFills(st *stripe, items []readItem) {
	if st == nil {
		return
	}
	st.mu.Lock()
	for k := range items {
		if items[k].kind == itemFill {
			removePlaceholder(st, items[k].s, items[k].gen)
		}
	}
	st.mu.Unlock()
}

func removePlaceholder(st *stripe, s uint32, token uint64) {
	if i := st.list.find(s); i >= 0 && st.list.ext[i].kind == extEmpty && st.list.ext[i].gen == token {
		st.list.removeAt(i)
	}
}

// dropStale removes index extents of the piece whose segment generation
// moved on.
func (v *Volume) dropStale(st *stripe, pc piece) {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for k := 0; k < len(st.list.ext); {
		x := &st.list.ext[k]
		if x.hasData() && x.end() > pc.s && x.start < pc.e && v.c.segs.segs[x.seg].currentGen() != x.gen {
			if x.kind == extDirty {
				v.st.dirtyBytes.Add(-int64(x.length))
			}
			st.list.removeAt(k)
			continue
		}
		k++
	}
}

// fill installs data just written through to the backing device (a
// writethrough write) for the placeholder token at stripe offset s, if the
// placeholder is still there and no other bypass write is in flight on the
// chunk (ownBypass is the caller's own count on the chunk). Cache space is
// taken without waiting; a fill that finds no space is dropped. Read misses
// fill asynchronously instead (queueFill).
func (v *Volume) fill(st *stripe, pc piece, s uint32, token uint64, data []byte, ownBypass uint32) {
	c := v.c
	var allocBuf [4]allocation
	allocs := allocBuf[:0]
	for done := 0; done < len(data); {
		a, err := c.allocData(uint32(len(data) - done))
		if err != nil {
			break
		}
		if err := c.media.WriteAt(data[done:done+int(a.n)], c.store.DataOffset(a.pos)); err != nil {
			c.putRef(a.pos.Seg)
			v.mediaErr("write cache data", err)
			break
		}
		allocs = append(allocs, a)
		done += int(a.n)
	}
	if n := v.installFill(st, pc, s, token, data, allocs, ownBypass); ownBypass == 0 {
		v.stats.fillBytes.Add(uint64(n))
	}
}

// installFill installs data already written to the cache at allocs (one
// segment reference each, covering a prefix of data) for the placeholder
// token at stripe offset s, if the placeholder is still there and no other
// bypass write is in flight on the chunk (C7); otherwise, or for
// allocations beyond the placeholder, it drops their references.
func (v *Volume) installFill(st *stripe, pc piece, s uint32, token uint64, data []byte, allocs []allocation, ownBypass uint32) (installed uint32) {
	c := v.c
	chunk := uint64(pc.abs(s)) >> chunkShift
	var spills []spill
	var unused []uint32
	st.mu.Lock()
	i := st.list.find(s)
	if i < 0 || st.list.ext[i].kind != extEmpty || st.list.ext[i].gen != token {
		st.mu.Unlock()
		for _, a := range allocs {
			c.putRef(a.pos.Seg)
		}
		return 0
	}
	phLen := st.list.ext[i].length
	st.list.removeAt(i)
	if v.tracker.count(chunk) != ownBypass || c.failed.Load() {
		st.mu.Unlock()
		if ownBypass == 0 {
			v.stats.readBypassRaces.Add(1)
		}
		for _, a := range allocs {
			c.putRef(a.pos.Seg)
		}
		return 0
	}
	slot := slotFor(v.st.id, pc.stripe)
	covered := uint32(0)
	for _, a := range allocs {
		if covered >= phLen {
			unused = append(unused, a.pos.Seg)
			continue
		}
		n := min(a.n, phLen-covered)
		k := persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(s + covered)), Length: n, Pos: a.pos, Gen: a.gen, Flags: persist.KeyClean}
		if c.dataCRC {
			k.DataCRC = crc32.Checksum(data[covered:covered+n], castagnoli)
		}
		x := withSum(extent{gen: a.gen, start: s + covered, length: n, seg: a.pos.Seg, segOff: a.pos.Off, kind: extClean}, &k, c.dataCRC)
		// The placeholder held the range, so no dirty data is dropped
		// here; counted anyway to keep the accounting exact.
		if _, dropped := st.list.replaceDirty(x.start, x.end(), &x); dropped > 0 {
			v.st.dirtyBytes.Add(-dropped)
		}
		spills = append(spills, c.appendKey(slot, k))
		covered += n
	}
	st.mu.Unlock()
	for _, sp := range spills {
		c.commitSpill(sp)
	}
	for _, seg := range unused {
		c.putRef(seg)
	}
	return covered
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Prefetch promotes [off, off+n) into the cache (PRE-FETCH). Modes that
// never fill reads make it a no-op.
func (v *Volume) Prefetch(ctx context.Context, off, n int64) error {
	if err := v.check(off, n); err != nil {
		return err
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if d, err := v.direct(); err != nil || d {
		return err
	}
	if !v.Mode().fillsReads() {
		return nil
	}
	const step = 1 << 20
	buf := make([]byte, min(n, step))
	// PRE-FETCH returns once the data is in the cache: wait for the fills.
	var filled sync.WaitGroup
	defer filled.Wait()
	for done := int64(0); done < n; {
		l := min(n-done, step)
		var acct readAcct
		if err := v.read(ctx, buf[:l], off+done, v.c.segs.dataFree() > 0, &acct, &filled); err != nil {
			return err
		}
		done += l
	}
	return nil
}
