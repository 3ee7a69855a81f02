package cachecore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// Copies inside the cache (blk.Copier, issue 19 step 3): CopyFrom installs
// keys for the destination that point at the source's cached data where
// it lies (no data moves), and reads and writes the rest. The design and
// its rules are in doc.go ("Copies in the cache").

var _ blk.Copier = (*Volume)(nil)

// copyChunkMax bounds one step of a copy: the bytes read and written for
// uncached parts are buffered per step, and overlapping copies within a
// volume are "read all, then write all" step by step in the direction
// that never overwrites source data not yet read (as memmove).
const copyChunkMax = 1 << 20

// maxSharesPerSegment bounds the share registry of one segment
// generation; a copy that would need more entries moves its data instead.
const maxSharesPerSegment = 4096

// unwrapCacheVolume returns the *Volume v is or wraps (blk.Unwrapper), or
// nil.
func unwrapCacheVolume(v blk.Volume) *Volume {
	for range 8 {
		if cv, ok := v.(*Volume); ok {
			return cv
		}
		u, ok := v.(blk.Unwrapper)
		if !ok {
			return nil
		}
		v = u.Unwrap()
	}
	return nil
}

// CopyFrom implements blk.Copier: it makes [dstOff, dstOff+n) of v hold
// what [srcOff, srcOff+n) of src held, as if all of the source were read
// first and then written. src must be (or wrap) a volume of the same
// cache and v must cache writes (writeback, writeonly); otherwise, or when
// the cache failed or is detached, it returns blk.ErrUnsupported and
// nothing was written. Cached source data is shared: the destination gets
// dirty keys pointing at it (see doc.go); the rest is read from the source
// and written to the destination as dirty data. With fua the copy is
// durable when it returns.
func (v *Volume) CopyFrom(ctx context.Context, src blk.Volume, srcOff, dstOff, n int64, fua bool) error {
	sv := unwrapCacheVolume(src)
	if sv == nil || sv.c != v.c {
		return blk.ErrUnsupported
	}
	if err := sv.check(srcOff, n); err != nil {
		return err
	}
	if err := v.check(dstOff, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if !v.Mode().cachesWrites() {
		return blk.ErrUnsupported
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	if sv != v {
		// Never wait for the source while holding the destination: a
		// healthy Detach pauses both and waits for the destination's
		// requests to end.
		if !sv.tryEnter() {
			return blk.ErrUnsupported
		}
		defer sv.exit()
	}
	if d, err := v.direct(); err != nil || d {
		return blk.ErrUnsupported
	}
	if d, err := sv.direct(); err != nil || d {
		return blk.ErrUnsupported
	}
	if sv == v && srcOff == dstOff {
		// The range already holds itself; FUA makes it durable.
		if fua {
			if err := v.c.flushAll(); err != nil {
				return fmt.Errorf("cachecore: %s: copy: %w", v.name, err)
			}
			if err := v.flushBacking(ctx); err != nil {
				return v.backingErr("flush", dstOff, err)
			}
		}
		return nil
	}
	cp := copier{v: v, sv: sv}
	backwards := sv == v && dstOff > srcOff && dstOff < srcOff+n
	for done := int64(0); done < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A step lies inside one stripe of the source and one of the
		// destination: one stripe lock each.
		var so, do, l int64
		if backwards {
			end := n - done
			l = min(end, copyChunkMax, sinceStripe(srcOff+end), sinceStripe(dstOff+end))
			so, do = srcOff+end-l, dstOff+end-l
		} else {
			l = min(n-done, copyChunkMax, toStripe(srcOff+done), toStripe(dstOff+done))
			so, do = srcOff+done, dstOff+done
		}
		if err := cp.step(ctx, so, do, l); err != nil {
			return err
		}
		done += l
	}
	v.stats.copySharedBytes.Add(uint64(cp.shared))
	v.stats.copyMovedBytes.Add(uint64(cp.moved))
	if fua {
		return v.syncDurable(cp.slots.list)
	}
	return nil
}

// toStripe returns the bytes from off to the end of its stripe.
func toStripe(off int64) int64 { return stripeSize - off&(stripeSize-1) }

// sinceStripe returns the bytes from the start of the stripe that holds
// the byte before end, up to end.
func sinceStripe(end int64) int64 { return (end-1)&(stripeSize-1) + 1 }

// copier is one CopyFrom call.
type copier struct {
	v, sv         *Volume
	buf           []byte
	slots         slotSet
	shared, moved int64
}

// copyPart is a part of a step: shared cache data (share) or a range
// read from the source and written (moved). off is relative to the step.
type copyPart struct {
	share    bool
	off, n   uint32
	seg, pos uint32 // shared data: segment and offset
	gen      uint64
	// the checksum of the source key the data belongs to (extent.sum*)
	sumOff, sumLen, sum uint32
	crc                 uint32 // the shared key's data CRC
}

// step copies l bytes from so to do; both ranges lie in one stripe.
func (cp *copier) step(ctx context.Context, so, do, l int64) error {
	v, sv, c := cp.v, cp.sv, cp.v.c
	parts, err := cp.capture(so, do, l)
	if err != nil {
		return err
	}
	release := func(from int) {
		for _, p := range parts[from:] {
			if p.share {
				c.putRef(p.seg)
			}
		}
	}
	// Moved parts are read now, before anything of the step is written.
	for i := range parts {
		p := &parts[i]
		if p.share {
			continue
		}
		if cp.buf == nil {
			cp.buf = make([]byte, copyChunkMax)
		}
		var acct readAcct
		if err := sv.read(ctx, cp.buf[p.off:p.off+p.n], so+int64(p.off), false, &acct, nil); err != nil {
			release(0)
			return err
		}
	}
	dpc := firstPiece(do, l, 0)
	slot := slotFor(v.st.id, dpc.stripe)
	cp.slots.add(slot)
	dataSeg := v.c.dataSegs.Load()
	for i := range parts {
		p := &parts[i]
		if p.share {
			continue
		}
		pc := piece{stripe: dpc.stripe, s: dpc.s + p.off, e: dpc.s + p.off + p.n, bufOff: int64(p.off)}
		if err := v.cacheWritePiece(ctx, cp.buf[p.off:p.off+p.n], pc); err != nil {
			release(0)
			return err
		}
		cp.moved += int64(p.n)
	}
	st := v.st.idx.get(dpc.stripe)
	var spills []spill
	st.mu.Lock()
	for i := range parts {
		p := &parts[i]
		if !p.share {
			continue
		}
		if c.failed.Load() {
			st.mu.Unlock()
			release(i)
			for _, sp := range spills {
				c.commitSpill(sp)
			}
			return c.failedErr()
		}
		s := dpc.s + p.off
		k := persist.Key{Volume: v.st.id, Offset: uint64(dpc.abs(s)), Length: p.n, Pos: persist.Pos{Seg: p.seg, Off: p.pos},
			Gen: p.gen, Flags: persist.KeyDirty, DataCRC: p.crc}
		x := withSum(extent{gen: p.gen, start: s, length: p.n, seg: p.seg, segOff: p.pos, kind: extDirty}, &k, c.dataCRC)
		dropped := st.list.installWrite(x)
		v.st.dirtyBytes.Add(int64(p.n) - dropped)
		spills = append(spills, v.appendDirtyKey(slot, k, dataSeg))
		cp.shared += int64(p.n)
	}
	st.mu.Unlock()
	for _, sp := range spills {
		c.commitSpill(sp)
	}
	return nil
}

// capture finds, under the source stripe's lock, the cached data of
// [so, so+l) (to be copied to do) that the destination may share: extents of a segment
// generation taken in this session, whose reference it takes (the
// reference of the key that will point at it). The rest is moved. Then,
// without locks, it reserves the lineages in the share registry and sets
// each shared key's data CRC; a part that cannot be shared is moved.
func (cp *copier) capture(so, do, l int64) ([]copyPart, error) {
	sv, c := cp.sv, cp.v.c
	spc := firstPiece(so, l, 0)
	var parts []copyPart
	moved := func(off, n uint32) { parts = appendMoved(parts, copyPart{off: off, n: n}) }
	var stale []uint32 // references taken on segments that moved on
	if st := sv.st.idx.peek(spc.stripe); st != nil {
		st.mu.Lock()
		i, j := st.list.span(spc.s, spc.e)
		cur := spc.s
		for k := i; k < j; k++ {
			x := &st.list.ext[k]
			a, b := max(x.start, spc.s), min(x.end(), spc.e)
			if a > cur {
				moved(cur-spc.s, a-cur)
			}
			cur = b
			if !x.hasData() {
				moved(a-spc.s, b-a)
				continue
			}
			seg := &c.segs.segs[x.seg]
			if seg.takenGen.Load() != x.gen+1 || !seg.tryRef() {
				moved(a-spc.s, b-a)
				continue
			}
			if seg.currentGen() != x.gen {
				stale = append(stale, x.seg)
				moved(a-spc.s, b-a)
				continue
			}
			parts = append(parts, copyPart{share: true, off: a - spc.s, n: b - a, seg: x.seg, pos: x.segOff + (a - x.start), gen: x.gen,
				sumOff: x.sumOff, sumLen: x.sumLen, sum: x.sum})
		}
		st.mu.Unlock()
		if cur < spc.e {
			moved(cur-spc.s, spc.e-cur)
		}
	} else {
		moved(0, spc.e-spc.s)
	}
	for _, s := range stale {
		c.putRef(s)
	}
	out := parts[:0]
	var mediaErr error
	for _, p := range parts {
		if !p.share {
			out = appendMoved(out, p)
			continue
		}
		ok := c.shares.reserve(p.seg, p.gen,
			shareLineage{vol: sv.st.id, diag: so + int64(p.off) - int64(p.pos)},
			shareLineage{vol: cp.v.st.id, diag: do + int64(p.off) - int64(p.pos)},
			p.pos, p.pos+p.n)
		if ok && c.dataCRC {
			crc, err := c.shareCRC(&p)
			if err != nil {
				var bad *dataCRCError
				if !errors.As(err, &bad) {
					c.putRef(p.seg)
					mediaErr = cp.v.mediaErr("read cache data", err)
					continue
				}
				// Rotten source data: the source's read path decides
				// (clean data is read from the backing device, dirty
				// data fails the copy).
				ok = false
			}
			p.crc = crc
		}
		if !ok {
			c.putRef(p.seg)
			out = appendMoved(out, copyPart{off: p.off, n: p.n})
			continue
		}
		out = append(out, p)
	}
	if mediaErr != nil {
		for _, p := range out {
			if p.share {
				c.putRef(p.seg)
			}
		}
		return nil, mediaErr
	}
	return out, nil
}

// appendMoved appends a moved part, merged with a moved part before it.
func appendMoved(parts []copyPart, p copyPart) []copyPart {
	if k := len(parts) - 1; k >= 0 && !parts[k].share && parts[k].off+parts[k].n == p.off {
		parts[k].n += p.n
		return parts
	}
	return append(parts, copyPart{off: p.off, n: p.n})
}

// shareCRC returns the data CRC of a shared part: its source key's when
// it covers that key's data exactly, else computed from the data, read
// after the whole source key's data was verified against its CRC (C9: a
// shared key never certifies rotten data).
func (c *Cache) shareCRC(p *copyPart) (uint32, error) {
	if p.sumLen != 0 && p.sumOff == p.pos && p.sumLen == p.n {
		return p.sum, nil
	}
	b := make([]byte, p.n)
	s := &c.segs.segs[p.seg]
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gen != p.gen {
		// The part holds a reference on the generation: never.
		return 0, fmt.Errorf("cachecore: shared data in segment %d has generation %d, segment is at %d", p.seg, p.gen, s.gen)
	}
	if err := c.readVerified(b, p.seg, p.pos, p.sumOff, p.sumLen, p.sum); err != nil {
		return 0, err
	}
	return crc32.Checksum(b, castagnoli), nil
}

// tryRef takes a reference on the segment unless it has none (it is being
// freed, or free): a reference taken from zero would free it twice.
func (s *segment) tryRef() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// shareLineage is the lineage of keys in a segment generation: volume vol
// maps its offset o to segment offset o - diag. Writeback's markClean and
// GC's evictKeys recognise a key's index extents by it (extent.sameLineage),
// so two keys of one lineage overlapping in the segment must never both be
// live: the older one's clean marking would take the newer one's dirty
// extent for its own.
type shareLineage struct {
	vol  uint32
	diag int64
}

type shareRange struct {
	shareLineage
	p0, p1 uint32 // segment offsets
}

type segShares struct {
	gen    uint64
	ranges []shareRange
}

// shareRegistry records, per segment generation, the lineages of the
// keys that may point at each shared range of it: the key a copy shared
// from and every key a copy made. A segment generation taken in this
// session (segment.takenGen) whose range is not in the registry has one
// lineage only: the key that wrote it (and identical carried copies). So
// the registry knows every lineage that could collide with a new shared
// key; entries go when the generation is freed (putRef).
type shareRegistry struct {
	mu sync.Mutex
	m  map[uint32]*segShares
}

// reserve records that a key of lineage dst will point at [p0, p1) of
// (seg, gen), shared from a key of lineage src; false when a key of
// lineage dst may already point at part of it (or dst is src).
func (r *shareRegistry) reserve(seg uint32, gen uint64, src, dst shareLineage, p0, p1 uint32) bool {
	if src == dst {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[uint32]*segShares)
	}
	e := r.m[seg]
	if e == nil || e.gen != gen {
		e = &segShares{gen: gen}
		r.m[seg] = e
	}
	for _, x := range e.ranges {
		if x.shareLineage == dst && x.p0 < p1 && p0 < x.p1 {
			return false
		}
	}
	if len(e.ranges)+2 > maxSharesPerSegment {
		return false
	}
	e.add(shareRange{src, p0, p1})
	e.add(shareRange{dst, p0, p1})
	return true
}

// add records a range, merged with one of the same lineage it touches.
func (e *segShares) add(n shareRange) {
	for i := range e.ranges {
		x := &e.ranges[i]
		if x.shareLineage == n.shareLineage && x.p0 <= n.p1 && n.p0 <= x.p1 {
			x.p0, x.p1 = min(x.p0, n.p0), max(x.p1, n.p1)
			return
		}
	}
	e.ranges = append(e.ranges, n)
}

// maxAdoptedRanges bounds the registry entries of a segment generation
// adopted at Open (adoptReplayed): data written in runs (a VM image, a
// database file) has a few ranges per segment; a segment of scattered
// small writes, which would need an entry per key, stays move-only, so
// the registry's memory stays a small fraction of the index's.
const maxAdoptedRanges = 64

// replayedLineages gathers, while Open replays the log, the lineages of
// the keys that point at each segment generation, for adoptReplayed.
type replayedLineages struct {
	segs    []segment
	adopted map[uint32]*segShares
	refused map[uint32]bool
}

func newReplayedLineages(c *Cache) *replayedLineages {
	return &replayedLineages{segs: c.segs.segs, adopted: make(map[uint32]*segShares), refused: make(map[uint32]bool)}
}

// see records the lineage of a replayed key (one recovered from the
// intent log too). Called before any goroutine runs.
func (r *replayedLineages) see(k *persist.Key) {
	if k.Flags != persist.KeyDirty && k.Flags != persist.KeyClean || k.Length == 0 {
		return
	}
	seg := k.Pos.Seg
	if seg >= uint32(len(r.segs)) || r.refused[seg] || k.Gen != r.segs[seg].gen {
		return // a stale key: its data is gone, nothing can share it
	}
	e := r.adopted[seg]
	if e == nil {
		e = &segShares{gen: k.Gen}
		r.adopted[seg] = e
	}
	n := shareRange{shareLineage{vol: k.Volume, diag: int64(k.Offset) - int64(k.Pos.Off)}, k.Pos.Off, k.Pos.Off + k.Length}
	// the keys of a run come one after the other: most merge with the
	// range added last
	if last := len(e.ranges) - 1; last >= 0 && e.ranges[last].shareLineage == n.shareLineage &&
		e.ranges[last].p0 <= n.p1 && n.p0 <= e.ranges[last].p1 {
		e.ranges[last].p0, e.ranges[last].p1 = min(e.ranges[last].p0, n.p0), max(e.ranges[last].p1, n.p1)
		return
	}
	e.add(n)
	if len(e.ranges) > maxAdoptedRanges {
		r.refused[seg] = true
		delete(r.adopted, seg)
	}
}

// adoptReplayed lets copies share the data cached before this process
// started: it puts in the share registry the lineage of every key of the
// log, per segment generation (replayedLineages), and marks those
// generations shareable (segment.takenGen). Every lineage a new shared key
// could collide with is then known, as in the session that wrote them:
// those of the keys the log holds (also the ones the index no longer
// holds: writeback's clean marking of a key scans its whole range) and
// those a copy makes later (reserve). A segment whose keys make more than
// maxAdoptedRanges ranges, or that is quarantined, stays move-only. Open
// calls it once, after replay and before any request, worker or copy runs.
func (c *Cache) adoptReplayed(r *replayedLineages) {
	c.shares.mu.Lock()
	defer c.shares.mu.Unlock()
	if c.shares.m == nil {
		c.shares.m = make(map[uint32]*segShares, len(r.adopted))
	}
	for seg, e := range r.adopted {
		s := &c.segs.segs[seg]
		if segState(s.state.Load()) == segQuarantined || s.gen != e.gen {
			continue
		}
		c.shares.m[seg] = e
		s.takenGen.Store(e.gen + 1)
	}
}

// forget drops the entries of a segment whose generation was bumped.
func (r *shareRegistry) forget(seg uint32) {
	r.mu.Lock()
	delete(r.m, seg)
	r.mu.Unlock()
}
