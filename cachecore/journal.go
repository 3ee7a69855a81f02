package cachecore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cachelun/cachelun/persist"
)

const ksetSlots = 16

// ksetSlot is one in-memory kset. A key goes to the slot chosen by its
// (volume, stripe), and is appended under the stripe lock, so all keys of a
// block pass through one slot in index order. Closed ksets of a slot are
// written to the log strictly in the order they were closed (each waits
// until its predecessor is written), which keeps the log order per block
// equal to the index order; a kset is acknowledged once it and everything
// before it in the log is durable. Different slots commit concurrently, and
// the journal coalesces all their persists.
//
// Group commit: a sync (FUA write, Flush) that finds a commit of its slot
// in flight and not yet writing its kset (still persisting data or waiting
// for its predecessor) does not close a kset of its own behind it; its
// keys stay in the open kset, which gathers every key arriving meanwhile,
// and the first waiter to see that commit reach its kset write closes and
// commits them all at once (one data persist, overlapping the kset persist
// in flight, unless commits are unfenced; then one kset persist). appended and pendingKset.upto let a
// waiter tell whether its keys are already in a closed kset.
//
// Lock order: stripe.mu, then ksetSlot.mu.
type ksetSlot struct {
	idx      int // position in Cache.slots
	mu       sync.Mutex
	open     []persist.Key
	epoch    uint64
	dataSeg  uint64 // Cache.dataSegs when the open kset opened
	opened   time.Time
	appended uint64       // keys appended to this slot so far
	last     *pendingKset // most recently closed kset of this slot
	// dirtyAt: per volume, when the open kset got its first dirty key;
	// unlogged: closed ksets with dirty keys not yet in the log (for the
	// writeback lag, see dirtyAges).
	dirtyAt  []volAge
	unlogged []*pendingKset
}

// pendingKset is a closed kset on its way to the log.
type pendingKset struct {
	slot  int
	keys  []persist.Key
	epoch uint64
	upto  uint64 // the slot's appended count when it closed
	prev  *pendingKset
	// dirtyAt is the slot's dirtyAt when it closed.
	dirtyAt []volAge
	// appended is closed when the commit has written the kset to the log
	// (inLog) or has ended without doing so; the next kset of the slot
	// waits for it before writing its own.
	appended chan struct{}
	inLog    bool // valid once appended is closed
	// journaling is closed when the commit starts writing the kset (its
	// data is durable, or written if commits are unfenced, and its
	// predecessor is in the log) or ends.
	journaling chan struct{}
	done       chan struct{}
	err        error // valid once done is closed
}

// isJournaling reports whether pk's commit is writing its kset (or ended).
func (pk *pendingKset) isJournaling() bool {
	select {
	case <-pk.journaling:
		return true
	default:
		return false
	}
}

// finished reports whether pk's commit has ended (durable or failed).
func (pk *pendingKset) finished() bool {
	select {
	case <-pk.done:
		return true
	default:
		return false
	}
}

func slotFor(vol uint32, stripe uint64) int {
	return int((uint64(vol)*0x9E3779B1 + stripe) % ksetSlots)
}

// closeLocked turns the open keys into a pending kset. slot.mu is held.
func (s *ksetSlot) closeLocked() *pendingKset {
	if len(s.open) == 0 {
		return nil
	}
	pk := &pendingKset{slot: s.idx, keys: s.open, epoch: s.epoch, upto: s.appended, prev: s.last, journaling: make(chan struct{}), appended: make(chan struct{}), done: make(chan struct{})}
	s.last = pk
	s.open = nil
	if len(s.dirtyAt) > 0 {
		pk.dirtyAt = s.dirtyAt
		s.dirtyAt = nil
		s.unlogged = append(s.unlogged, pk)
	}
	return pk
}

// spill holds ksets closed by an append that the caller commits after
// releasing the stripe lock.
type spill [2]*pendingKset

// appendKey adds k to slot i; it must be called with the stripe lock of
// the key's range held. A kset of an older flush epoch is closed first and
// a full kset after the append; both are returned for committing.
func (c *Cache) appendKey(i int, k persist.Key) (sp spill) {
	return c.appendKeyLive(i, k, true)
}

// appendKeyLive is appendKey; countLive=false for a key whose live-log
// count was already taken (recovered from the intent log and replayed).
func (c *Cache) appendKeyLive(i int, k persist.Key, countLive bool) (sp spill) {
	return c.appendKeyAt(i, k, countLive, 0)
}

// appendKeyAt is appendKeyLive for a dirty key acknowledged at dirtyAt
// (unix nanoseconds; 0: now), for the writeback lag.
func (c *Cache) appendKeyAt(i int, k persist.Key, countLive bool, dirtyAt int64) (sp spill) {
	return c.appendKeyIn(i, k, countLive, dirtyAt, c.dataSegs.Load())
}

// appendKeyIn is appendKeyAt for a key of a request that began when
// Cache.dataSegs was dataSeg (see openForLocked): the keys of one request
// are never split over two ksets by a segment switch during the request.
func (c *Cache) appendKeyIn(i int, k persist.Key, countLive bool, dirtyAt int64, dataSeg uint64) (sp spill) {
	s := &c.slots[i]
	s.mu.Lock()
	sp[0] = c.openForLocked(s, 1, dataSeg)
	c.appendLocked(s, i, k, countLive, dirtyAt, 0)
	if len(s.open) >= persist.MaxKSetKeys {
		sp[1] = s.closeLocked()
	}
	s.mu.Unlock()
	return sp
}

// appendGroup appends keys to slot i so that they land in one kset: the
// open kset is closed first when they would not all fit in it (or it is of
// an older flush epoch), and the intent log records them as a group, which
// recovery applies whole or not at all. The keys of an atomic write go
// through it (WriteAtomic); the stripe lock of their range is held.
func (c *Cache) appendGroup(i int, keys []persist.Key, countLive bool) (sp spill) {
	s := &c.slots[i]
	s.mu.Lock()
	sp[0] = c.openForLocked(s, len(keys), c.dataSegs.Load())
	for j, k := range keys {
		c.appendLocked(s, i, k, countLive, 0, uint32(len(keys)-1-j))
	}
	if len(s.open) >= persist.MaxKSetKeys {
		sp[1] = s.closeLocked()
	}
	s.mu.Unlock()
	return sp
}

// openForLocked makes the open kset of s one of the current flush epoch
// with room for n more keys, closing the one open if it is not, or if it
// opened before a data head took a new segment (dataSeg, the
// Cache.dataSegs of the request whose keys are appended, is newer than the
// kset's); the closed kset is returned for committing. s.mu is held.
//
// The data-segment rule keeps the log in about the data area's order. A
// slot's kset gathers the keys of its stripes for as long as it is open;
// were it open until full (MaxKSetKeys in each of the ksetSlots slots,
// several MiB of 4 KiB writes or fills), the keys of one kset would point
// into several segments, each of them shared with the ksets of the other
// slots, and GC would have to pass all those ksets, evicting several
// segments' worth of data at once, before any segment came free: a cache
// of 32 segments then held on average a tenth less than it can. Closed at
// the segment switch, the ksets of each segment precede (give or take the
// keys appended while a head switched) those of the next. The request's
// own epoch, not the current one, is compared so that a write whose data
// straddles a segment end keeps its keys in one kset.
func (c *Cache) openForLocked(s *ksetSlot, n int, dataSeg uint64) *pendingKset {
	var closed *pendingKset
	ep := c.epoch.Load()
	if len(s.open) > 0 && (s.epoch != ep || s.dataSeg < dataSeg || len(s.open)+n > persist.MaxKSetKeys) {
		closed = s.closeLocked()
	}
	if len(s.open) == 0 {
		s.open = make([]persist.Key, 0, 16)
		// A request that began before the latest segment switch opens
		// a kset of the latest: the keys of the requests after it need
		// not close it again.
		s.epoch, s.dataSeg = ep, max(dataSeg, c.dataSegs.Load())
		s.opened = c.clock().Now()
	}
	return closed
}

// appendLocked adds k to the open kset of s (slot i), with its intent
// record; groupLeft is the number of keys of its group that follow it.
// s.mu is held.
func (c *Cache) appendLocked(s *ksetSlot, i int, k persist.Key, countLive bool, dirtyAt int64, groupLeft uint32) {
	s.open = append(s.open, k)
	s.appended++
	if k.Flags == persist.KeyDirty && (dirtyAt != 0 || !s.hasDirtyLocked(k.Volume)) {
		// One clock read per volume and kset: the first dirty key is the
		// oldest of the kset.
		if dirtyAt == 0 {
			dirtyAt = c.clock().Now().UnixNano()
		}
		s.noteDirtyLocked(k.Volume, dirtyAt)
	}
	if c.intent != nil {
		c.intent.record(i, s.appended, s.epoch, &k, groupLeft)
	}
	if countLive && k.Volume < uint32(len(c.liveKeys)) {
		c.liveKeys[k.Volume].Add(1)
	}
}

// commitSpill commits spilled ksets in the background.
func (c *Cache) commitSpill(sp spill) {
	for _, pk := range sp {
		if pk != nil {
			c.commitAsync(pk)
		}
	}
}

func (c *Cache) commitAsync(pk *pendingKset) {
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.commit(pk)
	}()
}

// commit persists the data of pk's keys, then, once its predecessor in
// the slot has been written to the log, writes the kset and waits until it
// is durable. The data persist does not wait for the predecessor, and the
// kset write waits only for the predecessor's write, not for its persist:
// the journal makes ksets durable in log order, so ksets of one slot
// written back to back share a persist while the log order per block stays
// the index order.
//
// With unfenced commits (persist.Store.UnfencedCommits: data CRCs, and a
// media whose flush covers every earlier write) there is no data persist:
// the kset's persist makes the data durable as well, so a FUA write waits
// for one flush instead of two, and replay ends the log at a kset whose
// data did not make it (persist.Store.ReplayVerified).
//
// A full journal (no free segment) is retried until GC or writeback frees
// one; only a media fault or a hard stop ends it with an error.
func (c *Cache) commit(pk *pendingKset) {
	defer close(pk.done)
	journaling, appended := false, false
	startJournaling := func() {
		if !journaling {
			journaling = true
			close(pk.journaling)
		}
	}
	markAppended := func(ok bool) {
		if !appended {
			appended = true
			pk.inLog = ok
			close(pk.appended)
		}
	}
	defer startJournaling()
	defer markAppended(false)
	if err := c.failedErr(); err != nil {
		pk.err = err
		return
	}
	c.flushBackingForClean(pk.keys)
	if !c.unfenced {
		if err := c.persistKeyData(pk.keys); err != nil {
			c.fail("persist data", err)
			pk.err = c.failedErr()
			return
		}
	}
	if prev := pk.prev; prev != nil {
		<-prev.appended
		pk.prev = nil
		if !prev.inLog {
			// Its keys never reached the log (a failure or a hard stop):
			// ours must not get ahead of them.
			<-prev.done
			pk.err = prev.err
			if pk.err == nil {
				pk.err = c.failedErr()
			}
			if pk.err == nil {
				pk.err = errors.New("cachecore: the previous kset of the slot was not committed")
			}
			return
		}
	}
	if err := c.failedErr(); err != nil {
		pk.err = err
		return
	}
	startJournaling()
	backoff := time.Millisecond
	var ks persist.KSet
	var replicated []func(context.Context) error
	for {
		var err error
		// With unfenced commits the data was written before the keys were
		// appended; the persist that makes this kset durable makes it
		// durable too. Volumes with a Replicator ship the kset's records
		// in log order (replicate.go).
		ks, replicated, err = c.appendShipped(pk.keys, pk.epoch, c.unfenced)
		if err == nil {
			break
		}
		if !errors.Is(err, persist.ErrJournalFull) {
			c.fail("commit kset", err)
			pk.err = c.failedErr()
			return
		}
		c.stats.journalFullWaits.Add(1)
		c.kickGC()
		c.kickWriteback()
		select {
		case <-c.segs.waitCh():
		case <-time.After(backoff):
		case <-c.hardStop:
			pk.err = fmt.Errorf("cachecore: cache closed while the journal was full: %w", err)
			return
		case <-c.failedCh:
			pk.err = c.failedErr()
			return
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
	markAppended(true)
	c.logDirtyAges(pk, ks.LSN)
	if err := c.journal.WaitDurable(ks.LSN); err != nil {
		c.fail("commit kset", err)
		pk.err = c.failedErr()
		return
	}
	for _, wait := range replicated {
		// Durable here; FUA writes and flushes also wait for the copies.
		if err := wait(c.workersCtx); err != nil {
			pk.err = fmt.Errorf("cachecore: kset %d durable here but not replicated: %w", ks.LSN, err)
			c.committed(ks.LSN, len(replicated) > 0, false)
			return
		}
	}
	if c.intent != nil {
		c.intent.setJournaled(pk.slot, pk.upto)
	}
	c.committed(ks.LSN, len(replicated) > 0, true)
	c.kickWriteback()
}

// committed records that the commit of kset lsn returned (ok: it
// succeeded; replicated: it waited for its copies) and moves durableHead
// up to the first kset whose commit has not: a replicated kset that still
// waits for its copies holds writeback back even when later ksets (of
// other slots, or with nothing to ship) are done, so that no kset reaches
// the backing device before the copies that must hold it do, or before the
// Replicator has learned which copies missed it (WritebackGate).
func (c *Cache) committed(lsn uint64, replicated, ok bool) {
	c.durMu.Lock()
	if replicated {
		if i := slices.Index(c.replWaiting, lsn); i >= 0 {
			c.replWaiting = slices.Delete(c.replWaiting, i, i+1)
		}
	}
	if ok {
		c.committedTop = max(c.committedTop, lsn+1)
	}
	target := c.committedTop
	if len(c.replWaiting) > 0 {
		target = min(target, c.replWaiting[0])
	}
	c.durMu.Unlock()
	for {
		cur := c.durableHead.Load()
		if target <= cur || c.durableHead.CompareAndSwap(cur, target) {
			break
		}
	}
}

// flushBackingForClean flushes the backing device of every volume with
// clean keys in the kset if it saw direct writes since its last flush: a
// clean key that became durable before the backing data it mirrors could
// outlive that data in a crash. A failing flush is logged and the commit
// goes on (the keys are already in the index).
func (c *Cache) flushBackingForClean(keys []persist.Key) {
	var done [persist.MaxVolumes]bool
	for i := range keys {
		k := &keys[i]
		if k.Flags != persist.KeyClean || k.Volume >= persist.MaxVolumes || done[k.Volume] {
			continue
		}
		done[k.Volume] = true
		vs := c.vols[k.Volume].Load()
		if vs == nil {
			continue
		}
		v := vs.vol.Load()
		if v == nil {
			continue
		}
		if err := v.flushBacking(c.workersCtx); err != nil {
			v.stats.addError("backing_flush")
			c.log.Warn("backing flush before committing clean keys failed", "volume", v.name, "err", err)
		}
	}
}

// persistKeyData makes the cache data of the keys durable, merging
// adjacent ranges, with one media flush for all of them where the media
// allows it (persist.PersistRanges).
func (c *Cache) persistKeyData(keys []persist.Key) error {
	var buf [persist.MaxKSetKeys]persist.Span
	rs := buf[:0]
	for i := range keys {
		k := &keys[i]
		if k.Flags == persist.KeyTombstone {
			continue
		}
		rs = append(rs, persist.Span{Off: c.store.DataOffset(k.Pos), N: int64(k.Length)})
	}
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b persist.Span) int { return cmpU64(uint64(a.Off), uint64(b.Off)) })
	merged := rs[:1]
	for _, r := range rs[1:] {
		cur := &merged[len(merged)-1]
		if r.Off <= cur.Off+cur.N {
			cur.N = max(cur.N, r.Off+r.N-cur.Off)
			continue
		}
		merged = append(merged, r)
	}
	return persist.PersistRanges(c.store.Media(), merged)
}

// syncSlot makes every key appended to slot i so far durable. If those
// keys are all in closed ksets it waits for the last of them. Otherwise,
// while the slot's last commit has not reached its kset write, it waits
// and leaves its keys in the open kset to be batched with keys arriving
// meanwhile; then it closes the open kset (everything accumulated) and
// commits it on the caller's goroutine. Other syncs whose keys it
// took wait for that commit instead of committing their own.
func (c *Cache) syncSlot(i int) error {
	s := &c.slots[i]
	s.mu.Lock()
	target := s.appended
	for {
		if s.last != nil && s.last.upto >= target {
			// Every key up to target is in a closed kset; the last one
			// is durable only after all before it.
			pk := s.last
			s.mu.Unlock()
			<-pk.done
			return pk.err
		}
		if len(s.open) == 0 {
			// Nothing open and everything closed has been committed and
			// pruned.
			s.mu.Unlock()
			return c.failedErr()
		}
		if inflight := s.last; inflight != nil && !inflight.finished() && !inflight.isJournaling() {
			// Its data persist or its wait for its predecessor is still
			// running: gather keys until it writes its kset.
			s.mu.Unlock()
			<-inflight.journaling
			if err := c.failedErr(); err != nil {
				return err
			}
			s.mu.Lock()
			continue
		}
		pk := s.closeLocked()
		s.mu.Unlock()
		c.commit(pk)
		return pk.err
	}
}

// syncSlots syncs several slots concurrently so their commits share
// persists.
func (c *Cache) syncSlots(slots []int) error {
	switch len(slots) {
	case 0:
		return nil
	case 1:
		return c.syncSlot(slots[0])
	}
	errs := make([]error, len(slots))
	var wg sync.WaitGroup
	for k, i := range slots[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k+1] = c.syncSlot(i)
		}()
	}
	errs[0] = c.syncSlot(slots[0])
	wg.Wait()
	return errors.Join(errs...)
}

// flushAll closes a flush epoch: keys appended from now on belong to the
// next epoch, and every key appended before returns durable.
func (c *Cache) flushAll() error {
	c.epoch.Add(1)
	all := make([]int, 0, ksetSlots)
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		busy := len(s.open) > 0 || s.last != nil
		s.mu.Unlock()
		if busy {
			all = append(all, i)
		}
	}
	return c.syncSlots(all)
}

// closeAged closes ksets that have been open for longer than the journal
// flush interval (run by the flusher goroutine).
func (c *Cache) closeAged(now time.Time, interval time.Duration) {
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		var pk *pendingKset
		if len(s.open) > 0 && now.Sub(s.opened) >= interval {
			pk = s.closeLocked()
		}
		s.mu.Unlock()
		if pk != nil {
			c.commitAsync(pk)
		}
	}
}

// pruneSlots drops references to finished pending ksets so their keys can
// be collected.
func (c *Cache) pruneSlots() {
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		if s.last != nil {
			select {
			case <-s.last.done:
				if s.last.err == nil {
					s.last = nil
				}
			default:
			}
		}
		s.mu.Unlock()
	}
}
