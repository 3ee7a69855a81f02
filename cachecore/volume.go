package cachecore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

const (
	volOnline int32 = iota
	volRemoving
	volClosed
	// volPaused: a healthy Detach holds new requests for a moment (they
	// wait in enter, they do not fail).
	volPaused
)

// Volume is a cached volume; it implements target/scsi.Volume.
type Volume struct {
	c         *Cache
	st        *volState
	name      string
	size      int64
	blockSize int
	dev       backend.Device

	mode atomic.Pointer[Mode]
	vcfg atomic.Pointer[VolumeConfig]

	state    atomic.Int32
	inflight atomic.Int64

	// abandoned: Detach with force gave up this volume's dirty data; it
	// serves its backing device from then on.
	abandoned atomic.Bool
	tracker   *bypassTracker
	// epochs knows whether dirty data of an older flush epoch is still
	// waiting for writeback: no write may reach the backing device
	// directly until it is written back (C6).
	epochs dirtyEpochs
	// heldBackAt is when (unix ns) a write last took the cache path only
	// because of epochs; writeback runs at full speed for a while after,
	// so that bypass can resume.
	heldBackAt atomic.Int64
	seq        seqDetector
	readLat    latencyEWMA
	writeLat   latencyEWMA

	// directSeq counts writes that reach the backing device directly
	// (bypass, writethrough, discard), counted before they are issued;
	// flushedSeq is the directSeq a completed backing flush covered. Flush
	// flushes the backing device when they differ (C3),
	// and so does a kset commit holding clean keys of the volume: a clean
	// key may only become durable once the backing data it mirrors is.
	directSeq, flushedSeq atomic.Uint64
	backingFlushMu        sync.Mutex
	// directMu serializes COMPARE AND WRITE on the backing device after a
	// cache failure.
	directMu sync.Mutex

	stats volCounters
}

func newVolume(c *Cache, vs *volState, dev backend.Device, vc VolumeConfig) *Volume {
	v := &Volume{c: c, st: vs, name: vs.name, size: vs.size, blockSize: vc.BlockSize, dev: dev, tracker: newBypassTracker(vs.size)}
	m := vc.Mode
	v.mode.Store(&m)
	v.vcfg.Store(&vc)
	v.stats.errors = make(map[string]uint64)
	// Replayed dirty keys all belong to epochs of an earlier session,
	// before the cache's current epoch. Writeback does not touch a volume
	// that is not attached, so nothing uncounts them meanwhile.
	v.epochs.reset(vs.dirtyKeys.Load(), c.epoch.Load())
	// Open counted the bytes dirty in the replayed index; recount (the
	// volume may have been detached and attached again), then every index
	// change keeps the count up to date.
	vs.dirtyBytes.Store(vs.idx.dirtyBytes())
	return v
}

// Name returns the volume name.
func (v *Volume) Name() string { return v.name }

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size }

// BlockSize returns the logical block size reported to hosts.
func (v *Volume) BlockSize() int { return v.blockSize }

// Mode returns the current cache mode.
func (v *Volume) Mode() Mode { return *v.mode.Load() }

func (v *Volume) check(off int64, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("cachecore: %s: offset %d length %d: %w", v.name, off, n, blk.ErrOutOfRange)
	}
	bs := int64(v.blockSize)
	if off%bs != 0 || n%bs != 0 {
		return fmt.Errorf("cachecore: %s: offset %d length %d not multiples of %d: %w", v.name, off, n, bs, blk.ErrMisaligned)
	}
	if off > v.size || n > v.size-off {
		return fmt.Errorf("cachecore: %s: [%d,+%d) beyond size %d: %w", v.name, off, n, v.size, blk.ErrOutOfRange)
	}
	return nil
}

func (v *Volume) enter() error {
	for {
		v.inflight.Add(1)
		s := v.state.Load()
		if s == volOnline {
			v.c.ioCount.Add(1)
			return nil
		}
		v.inflight.Add(-1)
		if s != volPaused {
			return fmt.Errorf("cachecore: volume %s is offline: %w", v.name, blk.ErrNotReady)
		}
		if ch := v.c.resumed.Load(); ch != nil {
			<-*ch
		}
	}
}

func (v *Volume) exit() { v.inflight.Add(-1) }

// waitIdle waits until no request of the volume is running.
func (v *Volume) waitIdle(ctx context.Context) error {
	for v.inflight.Load() != 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// direct reports whether I/O must go straight to the backing device
// because the cache failed, or returns the error the failure policy
// prescribes for this volume.
func (v *Volume) direct() (bool, error) {
	c := v.c
	if !c.failed.Load() {
		// A healthy cache detached after writing back all of its dirty
		// data: the backing device holds everything.
		return c.detached.Load(), nil
	}
	if c.detached.Load() || v.abandoned.Load() {
		return true, nil
	}
	switch c.config().OnCacheFailure {
	case FailPassthrough:
		return true, nil
	case FailFail:
		return false, c.failedErr()
	}
	if v.st.dirtyKeys.Load() > 0 {
		return false, fmt.Errorf("cachecore: %s holds dirty data in the failed cache: %w", v.name, c.failedErr())
	}
	return true, nil
}

// retryDirect reports whether an operation that failed with err should be
// redone on the backing device because the cache failed under it and the
// policy lets this volume continue.
func (v *Volume) retryDirect(err error) bool {
	if err == nil || !v.c.failed.Load() {
		return false
	}
	if !isMediaFault(err) && !errors.Is(err, ErrCacheFailed) {
		return false
	}
	d, _ := v.direct()
	return d
}

func (v *Volume) backingErr(op string, off int64, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	v.stats.addError("backing_" + op)
	return fmt.Errorf("cachecore: %s: backing %s at %d: %w: %w", v.name, op, off, blk.ErrMedium, err)
}

func (v *Volume) mediaErr(what string, err error) error {
	v.c.fail(what, err)
	v.stats.addError("cache_media")
	return fmt.Errorf("cachecore: %s: %s: %w", v.name, what, v.c.failedErr())
}

// ---- reads ----

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
	if d, err := v.direct(); err != nil {
		return err
	} else if d {
		return v.directRead(ctx, p, off)
	}
	fill := v.readFillDecision(ctx, off, int64(len(p)))
	var acct readAcct
	err := v.read(ctx, p, off, fill, &acct)
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
	return true
}

type readAcct struct{ hitBytes, missBytes uint64 }

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

func (v *Volume) read(ctx context.Context, p []byte, off int64, fill bool, acct *readAcct) error {
	for done := int64(0); done < int64(len(p)); {
		pc := firstPiece(off+done, int64(len(p))-done, done)
		if err := v.readPiece(ctx, p[pc.bufOff:pc.bufOff+pc.len()], pc, fill, acct); err != nil {
			return err
		}
		done += pc.len()
	}
	return nil
}

func (v *Volume) readPiece(ctx context.Context, dst []byte, pc piece, fill bool, acct *readAcct) error {
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
				if !fill || raced {
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
		hits := 0
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
			acct.hitBytes += uint64(it.e - it.s)
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
				v.fill(st, pc, it.s, it.gen, buf, 0)
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

// fill installs data read from the backing device (or just written
// through) for the placeholder token at stripe offset s, if the
// placeholder is still there and no other bypass write is in flight on the
// chunk (ownBypass is the caller's own count on the chunk). Cache space is
// taken without waiting; a fill that finds no space is dropped.
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
		return
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
		return
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
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ---- writes ----

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
// bypass statistics are counted when pieces actually bypass).
func (v *Volume) route(ctx context.Context, off, n int64) (writeRoute, int) {
	m := v.Mode()
	if m == ModePassthrough || m == ModeWritearound {
		return routeBypass, reasonMode
	}
	vc := v.vcfg.Load()
	if vc.SequentialCutoff > 0 && v.seq.observe(blk.Stream(ctx), off, n, v.c.clock().Now()) >= vc.SequentialCutoff {
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
	r, reason := v.route(ctx, off, int64(len(p)))
	if r != routeCache && v.mustHoldBack() {
		// Older dirty data first: this write joins it in the cache (a
		// full cache makes it wait for space: back-pressure).
		v.stats.heldBack.Add(1)
		r = routeCache
	}
	switch r {
	case routeCache:
		err = v.cacheWrite(ctx, p, off, fua)
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
		_, dropped := st.list.replaceDirty(x.start, x.end(), &x)
		v.st.dirtyBytes.Add(int64(a.n) - dropped)
		sp := v.appendDirtyKey(slot, k)
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
// is unknown and it counts as older until written back.
func (v *Volume) appendDirtyKey(slot int, k persist.Key) spill {
	c := v.c
	v.st.dirtyKeys.Add(1)
	before := c.epoch.Load()
	sp := c.appendKey(slot, k)
	after := c.epoch.Load()
	v.epochs.added(before, before == after, dirtyKeyID{seg: k.Pos.Seg, off: k.Pos.Off, gen: k.Gen})
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

// Discard invalidates [off, off+n); the range then reads as zeroes. Parts
// without dirty data get a tombstone and a backing discard; parts with
// dirty data not yet written back are overwritten with zeroes through the
// cache (a backing discard there would be undone by writeback).
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
	if n <= discardZeroLimit && v.mustHoldBack() {
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
	for _, pc := range splitPieces(off, n) {
		st := v.st.idx.peek(pc.stripe)
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
			if st.list.replace(r[0], r[1], nil) {
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
			_, dropped := pp.st.list.replaceDirty(x.start, x.end(), &x)
			v.st.dirtyBytes.Add(-dropped)
			v.st.dirtyBytes.Add(int64(a.n))
			spills = append(spills, v.appendDirtyKey(slot, k))
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
	for done := int64(0); done < n; {
		l := min(n-done, step)
		var acct readAcct
		if err := v.read(ctx, buf[:l], off+done, v.c.segs.dataFree() > 0, &acct); err != nil {
			return err
		}
		done += l
	}
	return nil
}

// ---- operator API ----

// SetMode switches the cache mode live. Leaving a mode that caches writes
// writes back the volume's dirty data first (with progress); writes that
// overlap dirty data keep taking the cache path until it is written back.
func (v *Volume) SetMode(ctx context.Context, m Mode, progress func(Progress)) error {
	m, err := ParseMode(string(m))
	if err != nil {
		return err
	}
	old := v.mode.Swap(&m)
	vc := *v.vcfg.Load()
	vc.Mode = m
	v.vcfg.Store(&vc)
	if old.cachesWrites() && !m.cachesWrites() {
		return v.drain(ctx, progress)
	}
	return nil
}

// Drain writes back all dirty data of the volume now.
func (v *Volume) Drain(ctx context.Context, progress func(Progress)) error {
	return v.drain(ctx, progress)
}

func (v *Volume) drain(ctx context.Context, progress func(Progress)) error {
	c := v.c
	c.drainers.Add(1)
	defer c.drainers.Add(-1)
	meter := newProgressMeter(c, v)
	lastFlush := time.Time{}
	for {
		keys := v.st.dirtyKeys.Load()
		if progress != nil {
			progress(meter.report(keys <= 0))
		}
		if keys <= 0 {
			return nil
		}
		if err := c.failedErr(); err != nil {
			return err
		}
		if time.Since(lastFlush) > 50*time.Millisecond {
			if err := c.flushAll(); err != nil {
				return err
			}
			lastFlush = time.Now()
		}
		if err := c.pauseForWriteback(ctx, 10*time.Millisecond, "a drain waited"); err != nil {
			return err
		}
	}
}

// SetConfig changes the live tunables (mode, sequential cutoff,
// congestion thresholds); BlockSize cannot change. A mode change here does
// not wait for dirty data to be written back (SetMode does).
func (v *Volume) SetConfig(vc VolumeConfig) error {
	if vc.BlockSize == 0 {
		vc.BlockSize = v.blockSize
	}
	if vc.Mode == "" {
		vc.Mode = v.Mode()
	}
	vc, err := vc.withDefaults()
	if err != nil {
		return err
	}
	if vc.BlockSize != v.blockSize {
		return fmt.Errorf("cachecore: %s: block size cannot change live (%d → %d)", v.name, v.blockSize, vc.BlockSize)
	}
	m := vc.Mode
	v.vcfg.Store(&vc)
	v.mode.Store(&m)
	v.c.kickWriteback()
	return nil
}

// Explanation describes what the cache holds for one block.
type Explanation struct {
	Offset int64
	State  string // "miss", "placeholder", "hit", or "offline"
	Dirty  bool
	Pos    persist.Pos
	Gen    uint64 // segment generation the data was written under
	// Checksum, on a cache with data CRCs and a hit: "ok", or why the
	// data of the block's key fails its CRC32C (verified now).
	Checksum string
}

// Explain reports what the index holds for the block at off.
func (v *Volume) Explain(off int64) Explanation {
	e := Explanation{Offset: off, State: "miss"}
	if off < 0 || off >= v.size {
		e.State = "out of range"
		return e
	}
	st := v.st.idx.peek(uint64(off) >> stripeShift)
	if st == nil {
		return e
	}
	o := uint32(off & (stripeSize - 1))
	st.mu.Lock()
	defer st.mu.Unlock()
	i, j := st.list.span(o, o+1)
	if i == j {
		return e
	}
	x := st.list.ext[i]
	if x.kind == extEmpty {
		e.State = "placeholder"
		return e
	}
	e.State = "hit"
	e.Dirty = x.kind == extDirty
	e.Pos = persist.Pos{Seg: x.seg, Off: x.segOff + (o - x.start)}
	e.Gen = x.gen
	if x.sumLen > 0 {
		b := make([]byte, 1)
		var bad *dataCRCError
		switch err := v.c.readVerified(b, x.seg, x.segOff+(o-x.start), x.sumOff, x.sumLen, x.sum); {
		case err == nil:
			e.Checksum = "ok"
		case errors.As(err, &bad):
			e.Checksum = "bad: " + bad.Error()
		default:
			e.Checksum = "unreadable: " + err.Error()
		}
	}
	return e
}
