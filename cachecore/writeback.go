package cachecore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cachelun/cachelun/persist"
)

const (
	wbMaxKsets = 256 // ksets written back per backing flush at most
	// wbLookaheadPerKset and wbLookaheadMin bound how far past a full
	// pass writeback reads the log for later keys of the same flush epoch
	// that overwrite the pass's data (see collapseAhead): 8 ksets per kset
	// of the pass, at least 64, so that the log read again stays in
	// proportion to the pass: a full pass of 256 ksets reads up to 2048
	// more, at most 256 Ki keys (10 MiB), 13-26 ms at persist's measured
	// replay decode rate of 10-20 M keys/s.
	wbLookaheadPerKset = 8
	wbLookaheadMin     = 64
	wbMaxRun           = 1 << 20 // bytes per backing write at most
	wbWorkers          = 4       // concurrent backing writes of one pass
	wbTrickleRate      = 1 << 20 // bytes/s below the target dirty percentage
	wbMinRate          = 4 << 20
	// wbExcessSeconds: between the target and the high watermark,
	// writeback runs at (dirty - target) / wbExcessSeconds bytes/s
	// (bcache's writeback_rate_p_term_inverse is 40 as well).
	wbExcessSeconds = 40
)

// writebackLoop is the ordered writeback worker. It holds the cache (its
// goroutine is counted in c.workers, which Close waits for) from start to
// exit, and exits promptly when the cache fails or closes.
func (c *Cache) writebackLoop() {
	defer c.workers.Done()
	ctx := c.workersCtx
	backoff := 10 * time.Millisecond
	stalled := false
	for {
		if ctx.Err() != nil || c.failed.Load() {
			return
		}
		n, err := c.writebackPass(ctx)
		if err == nil {
			stalled = false
		}
		c.checkLiveInvariants("writeback pass")
		var wait time.Duration
		switch {
		case errors.Is(err, errCarryAttached):
			// The keys carried so far are harmless duplicates; write
			// back at once now that the volume is there.
			wait = 0
		case errors.Is(err, errWritebackStalled):
			if !stalled {
				c.log.Info("writeback waits for a volume to be attached", "err", err)
			}
			stalled = true
			wait = time.Second
		case err != nil:
			if ctx.Err() != nil || c.failed.Load() {
				return
			}
			c.wbErrMu.Lock()
			c.wbErr = err
			c.wbErrMu.Unlock()
			c.wbFailures.Add(1)
			c.log.Warn("writeback pass failed; retrying", "err", err, "backoff", backoff)
			wait = backoff
			backoff = min(backoff*2, 2*time.Second)
		case n == 0:
			backoff = 10 * time.Millisecond
			if c.spaceWait.Load() > 0 || c.drainers.Load() > 0 || c.writesHeldBack() {
				// Writers wait for space or a drain waits: get their keys
				// committed so they can be written back.
				c.closeAged(c.clock().Now(), 0)
				wait = 5 * time.Millisecond
			} else {
				wait = 100 * time.Millisecond
			}
		default:
			backoff = 10 * time.Millisecond
			wait = c.writebackPause(n)
		}
		if wait <= 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-c.failedCh:
			t.Stop()
			return
		case <-c.wbKick:
			// Keep the backoff or the rate: a kick does not cut the pause
			// short, unless full speed is wanted now (a drain, writers
			// waiting for space). Later kicks are watched too: the one
			// that matters may come after one that did not.
			for (err != nil && !stalled) || (n > 0 && !c.writebackFullSpeed()) {
				done := false
				select {
				case <-t.C:
					done = true
				case <-ctx.Done():
					done = true
				case <-c.failedCh:
					done = true
				case <-c.wbKick:
				}
				if done {
					break
				}
			}
		case <-t.C:
		}
		t.Stop()
	}
}

func (c *Cache) capacity() int64 {
	return int64(len(c.segs.segs)) * int64(c.segs.dataSize)
}

func (c *Cache) writebackFullSpeed() bool {
	cfg := c.config()
	if c.drainers.Load() > 0 || c.spaceWait.Load() > 0 || c.writesHeldBack() {
		return true
	}
	if c.dirtyBytes()*100 >= c.capacity()*int64(cfg.Writeback.HighWatermarkPercent) {
		return true
	}
	return c.idleFor() >= cfg.Writeback.IdleAfter
}

// heldBackWindow is how long writeback runs at full speed after a write
// of a volume took the cache path only because older dirty data was not
// yet written back: bypass resumes once writeback has caught up.
const heldBackWindow = 250 * time.Millisecond

// writesHeldBack reports whether a volume recently held a write back from
// its backing device (Volume.mustHoldBack).
func (c *Cache) writesHeldBack() bool {
	since := time.Now().Add(-heldBackWindow).UnixNano()
	for i := range c.vols {
		vs := c.vols[i].Load()
		if vs == nil {
			continue
		}
		if v := vs.vol.Load(); v != nil && v.heldBackAt.Load() > since {
			return true
		}
	}
	return false
}

// writebackPause returns how long to wait after writing n bytes to hold
// the controller's rate: trickle below the target dirty percentage, a rate
// proportional to the excess up to the high watermark, full speed above
// it, when the volumes are idle, or when a drain or a writer waiting for
// space needs it.
func (c *Cache) writebackPause(n int64) time.Duration {
	rate := c.writebackRate()
	if rate == 0 {
		return 0
	}
	return time.Duration(float64(n) / float64(rate) * float64(time.Second))
}

// writebackRate is the controller's rate in bytes/s; 0 means flat out.
func (c *Cache) writebackRate() int64 {
	cfg := c.config().Writeback
	if c.drainers.Load() > 0 || c.spaceWait.Load() > 0 || c.writesHeldBack() {
		return 0
	}
	var rate int64
	if !c.writebackFullSpeed() {
		dirty := c.dirtyBytes()
		target := c.capacity() * int64(cfg.TargetDirtyPercent) / 100
		switch {
		case dirty <= target:
			rate = wbTrickleRate
		case cfg.HighWatermarkPercent <= cfg.TargetDirtyPercent:
			rate = 0
		default:
			// Proportional to the excess, as bcache's controller: the
			// excess would be written back in about wbExcessSeconds.
			// Between the target and the high watermark the cache
			// absorbs the host's writes and writeback leaves the CPU and
			// the devices to them; above the watermark it runs flat out.
			rate = max(wbMinRate, (dirty-target)/wbExcessSeconds)
		}
	}
	if cfg.MaxBytesPerSec > 0 && (rate == 0 || rate > cfg.MaxBytesPerSec) {
		rate = cfg.MaxBytesPerSec
	}
	return rate
}

// wbRange is one range to write back, collapsed within a flush epoch.
type wbTarget struct {
	vs   *volState
	v    *Volume
	list map[uint64]*extentList // stripe → collapsed keys
	// written: bytes of this pass on the backing device (under writeRuns'
	// mutex), counted in the volume's wbUnmarked until the pass ends.
	written int64
}

var errWritebackStalled = errors.New("cachecore: writeback waits: only dirty data of volumes not attached is left")

// errCarryAttached ends a writeback pass that was carrying keys of a
// volume attached meanwhile; the next pass writes them back.
var errCarryAttached = errors.New("cachecore: volume attached while its dirty keys were carried forward")

// carryGrace is how long after Open writeback waits for a volume with
// dirty data to be attached before it carries its keys forward.
const carryGrace = 10 * time.Second

// needSpace reports whether writers or GC need the log to move on.
func (c *Cache) needSpace() bool {
	return c.spaceWait.Load() > 0 || c.drainers.Load() > 0 || c.needGC()
}

// carryNames names the volumes of carried keys, for the log.
func (c *Cache) carryNames(keys []persist.Key) string {
	seen := map[uint32]bool{}
	var names []string
	for i := range keys {
		id := keys[i].Volume
		if seen[id] {
			continue
		}
		seen[id] = true
		if vs := c.vols[id].Load(); vs != nil {
			names = append(names, fmt.Sprintf("%q (id %d, %d dirty bytes)", vs.name, id, vs.dirtyBytes.Load()))
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// carryForward journals again the dirty keys of volumes that are not
// attached (their backing device is not there to write to), so that
// dirty_tail can pass their old position and writeback of every other
// volume goes on: one log shared by all volumes must not stall because of
// one. The data stays where it is; each new key takes a reference on its
// segment like any key in the log. Only keys whose data the index still
// holds as dirty are carried (later keys of the same volume may have
// replaced them). The keys keep their log order and get a flush epoch of
// their own, after every key appended so far, so the volume's epochs stay
// ordered (C6 holds for its backing device once it is attached).
// GC never evicts dirty extents, so passing the old keys leaves the
// carried ones in the index.
//
// upto is the LSN after the carried keys: the carried copies keep the
// append time of the originals (the oldest kset of their volume before
// upto), so the writeback lag does not restart.
func (c *Cache) carryForward(keys []persist.Key, upto uint64) error {
	// The caller holds carryMu: no volume is attached while this runs. One
	// attached since the pass looked ends the pass before anything is
	// carried; the next pass writes its keys back.
	for i := range keys {
		if vs := c.vols[keys[i].Volume].Load(); vs != nil && vs.vol.Load() != nil {
			return fmt.Errorf("%w: %q", errCarryAttached, vs.name)
		}
	}
	c.epoch.Add(1)
	var slots slotSet
	n := 0
	for i := range keys {
		k := &keys[i]
		vs := c.vols[k.Volume].Load()
		if vs == nil || int(k.Pos.Seg) >= len(c.segs.segs) {
			continue
		}
		for st, p := range vs.indexedPieces(k) {
			// The volume is not attached: nothing but writeback and GC
			// touch its index, and neither drops a dirty extent.
			st.mu.Lock()
			// Only the parts of the key the index still holds: a later
			// key of the volume may have replaced some of it, and a
			// carried copy of the whole key would bring the replaced
			// bytes back over the newer ones at the next replay.
			var live []persist.Key
			i0, j0 := st.list.span(p.s, p.e)
			for x := i0; x < j0; x++ {
				e := &st.list.ext[x]
				if e.kind != extDirty || !e.sameLineage(p.s, k.Pos.Seg, p.segOff, k.Gen) {
					continue
				}
				s, t := max(e.start, p.s), min(e.end(), p.e)
				if s >= t {
					continue
				}
				live = append(live, persist.Key{Volume: k.Volume, Offset: uint64(p.abs(s)), Length: t - s,
					Pos: persist.Pos{Seg: e.seg, Off: e.segOff + (s - e.start)}, Gen: e.gen, Flags: persist.KeyDirty})
			}
			if len(live) == 0 {
				st.mu.Unlock()
				continue
			}
			slot := slotFor(k.Volume, p.stripe)
			at := vs.ages.oldest(upto)
			var spills []spill
			for j := range live {
				if c.dataCRC {
					if err := c.setDataCRC(&live[j]); err != nil {
						st.mu.Unlock()
						return err
					}
				}
				c.segs.segs[live[j].Pos.Seg].refs.Add(1)
				vs.dirtyKeys.Add(1)
				spills = append(spills, c.appendKeyAt(slot, live[j], true, at))
			}
			st.mu.Unlock()
			for _, sp := range spills {
				c.commitSpill(sp)
			}
			slots.add(slot)
			n += len(live)
		}
	}
	c.epoch.Add(1)
	if n == 0 {
		return nil
	}
	if err := c.syncSlots(slots.list); err != nil {
		return err
	}
	if c.stats.writebackCarried.Add(uint64(n)) == uint64(n) {
		c.log.Warn("writeback carries dirty data of volumes that are not attached forward in the log; attach them (or drain them while attached) to write it back",
			"volumes", c.carryNames(keys))
	}
	return nil
}

// setDataCRC computes the data CRC of a carried key (a part of an older
// key, so the older CRC does not apply).
func (c *Cache) setDataCRC(k *persist.Key) error {
	b := make([]byte, k.Length)
	if err := c.media.ReadAt(b, c.store.DataOffset(k.Pos)); err != nil {
		c.fail("writeback read cache data", err)
		return err
	}
	k.DataCRC = crc32.Checksum(b, castagnoli)
	return nil
}

// writebackPass writes back the next run of committed ksets of one flush
// epoch from dirty_tail: collapse overwrites, write the backing devices
// from the cache data, flush them, persist dirty_tail, then mark the keys
// clean in the index. It returns the number of bytes written.
func (c *Cache) writebackPass(ctx context.Context) (int64, error) {
	dt := c.store.DirtyTail()
	durable := c.durableHead.Load()
	if dt.LSN >= durable {
		return 0, nil
	}
	// After durable is read: the waits of the ksets before it returned,
	// and the gates know what they saw.
	if err := c.gateReplicas(ctx); err != nil {
		return 0, err
	}
	r := c.store.Replay(dt)
	// A rate-limited pass takes about a tenth of a second's worth of data,
	// so that writeback is spread out rather than written in bursts that
	// compete with the host for the CPU between long pauses.
	budget := int64(1) << 62
	if rate := c.writebackRate(); rate > 0 {
		budget = max(rate/10, wbMaxRun)
	}
	maxKsets := wbMaxKsets
	if n := c.config().wbPassKsets; n > 0 {
		maxKsets = n
	}
	var batch []persist.KSet
	var batchBytes int64
	atLimit := false // the pass stopped at its size limits, inside its epoch
	for {
		if len(batch) >= maxKsets || batchBytes >= budget {
			atLimit = true
			break
		}
		ks, ok := r.Next()
		if !ok || ks.LSN >= durable {
			break
		}
		if len(batch) > 0 && ks.Epoch != batch[0].Epoch {
			break
		}
		batch = append(batch, ks)
		for i := range ks.Keys {
			if ks.Keys[i].Flags == persist.KeyDirty {
				batchBytes += int64(ks.Keys[i].Length)
			}
		}
	}
	if len(batch) == 0 {
		if err := r.StopReason(); err != nil && errors.Is(err, persist.ErrMediaFault) {
			c.fail("writeback read log", err)
			return 0, err
		}
		return 0, nil
	}
	targets := make(map[uint32]*wbTarget)
	var carry []persist.Key // dirty keys of volumes not attached
	attachedDirty := false
	for _, ks := range batch {
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if k.Volume >= uint32(len(c.vols)) {
				continue
			}
			vs := c.vols[k.Volume].Load()
			if vs == nil {
				continue // volume removed: its keys were written back before
			}
			t := targets[k.Volume]
			if t == nil {
				t = &wbTarget{vs: vs, v: vs.vol.Load(), list: make(map[uint64]*extentList)}
				targets[k.Volume] = t
			}
			if t.v == nil {
				if k.Flags == persist.KeyDirty {
					carry = append(carry, *k)
				}
				continue
			}
			if k.Flags == persist.KeyDirty {
				attachedDirty = true
			}
			end := min(int64(k.Offset)+int64(k.Length), vs.size.Load())
			if int64(k.Offset) >= end {
				continue
			}
			for _, p := range splitPieces(int64(k.Offset), end-int64(k.Offset)) {
				l := t.list[p.stripe]
				if l == nil {
					l = &extentList{}
					t.list[p.stripe] = l
				}
				switch k.Flags {
				case persist.KeyDirty:
					x := withSum(extent{gen: k.Gen, start: p.s, length: p.e - p.s, seg: k.Pos.Seg, segOff: k.Pos.Off + uint32(p.bufOff), kind: extDirty}, k, c.dataCRC)
					l.replace(p.s, p.e, &x)
				case persist.KeyClean:
					x := withSum(extent{gen: k.Gen, start: p.s, length: p.e - p.s, seg: k.Pos.Seg, segOff: k.Pos.Off + uint32(p.bufOff), kind: extClean}, k, c.dataCRC)
					l.replace(p.s, p.e, &x)
				default:
					l.replace(p.s, p.e, nil)
				}
			}
		}
	}
	if atLimit {
		collapseAhead(r, max(wbLookaheadPerKset*len(batch), wbLookaheadMin), batch[0].Epoch, durable, targets)
	}
	last := batch[len(batch)-1]
	if len(carry) > 0 && c.clock().Now().Before(c.carryAfter) {
		// Right after Open the daemon is still attaching its volumes:
		// wait for them rather than carry every dirty key forward.
		return 0, fmt.Errorf("%w: %s", errWritebackStalled, c.carryNames(carry))
	}
	if len(carry) > 0 && !attachedDirty && last.Next.LSN >= durable && !c.needSpace() {
		// Nothing but data of volumes not attached, and nothing after
		// it: wait rather than carry the same keys forward again.
		return 0, fmt.Errorf("%w: %s", errWritebackStalled, c.carryNames(carry))
	}
	written, err := c.writeRuns(ctx, targets)
	defer func() {
		// Marked clean below, or to be written again by the next pass.
		for _, t := range targets {
			if t.written != 0 {
				t.v.stats.wbUnmarked.Add(-t.written)
			}
		}
	}()
	if err != nil {
		return written, err
	}
	for _, t := range targets {
		if t.v == nil {
			continue
		}
		if err := t.v.dev.Flush(ctx); err != nil {
			t.v.stats.addError("writeback")
			return written, fmt.Errorf("cachecore: writeback flush of %s: %w", t.vs.name, err)
		}
	}
	if len(carry) > 0 {
		// Journaled again (durable) before dirty_tail passes the
		// originals, or a crash in between would take them for written
		// back. carryMu keeps AddVolume out until the originals are
		// uncounted below, so an attached volume's accounting starts from
		// a settled count.
		c.carryMu.Lock()
		defer c.carryMu.Unlock()
		if err := c.carryForward(carry, last.Next.LSN); err != nil {
			return written, err
		}
	}
	if err := c.store.SetDirtyTail(last.Next); err != nil {
		if isMediaFault(err) {
			c.fail("persist dirty tail", err)
		}
		return written, err
	}
	if hook := c.knobs.afterDirtyTail.Load(); hook != nil {
		(*hook)()
	}
	c.stats.writebackBytes.Add(uint64(written))
	for _, t := range targets {
		if t.v != nil && t.written != 0 {
			t.v.stats.progMu.Lock()
		}
	}
	for _, ks := range batch {
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if k.Flags != persist.KeyDirty {
				continue
			}
			if t := targets[k.Volume]; t != nil && t.v == nil {
				// Carried forward: the parts still live are counted as
				// new dirty keys; the original is done.
				t.vs.dirtyKeys.Add(-1)
				continue
			}
			c.markClean(k, ks.Epoch)
		}
	}
	for _, t := range targets {
		if t.v != nil && t.written != 0 {
			t.v.stats.wbUnmarked.Add(-t.written)
			t.written = 0
			t.v.stats.progMu.Unlock()
		}
	}
	// After markClean: until a key is clean its kset's age still counts,
	// and GC may not pass it.
	for _, t := range targets {
		t.vs.ages.passed(last.Next.LSN)
	}
	c.cleanLSN.Store(last.Next.LSN)
	c.trimReplicas(last.Next.LSN)
	c.kickGC()
	return max(written, 1), nil
}

// collapseAhead extends the pass's collapsing past its end: it reads on
// (r is positioned after the pass's last kset) over up to maxKsets ksets
// of the same flush epoch that are durable, and drops from the pass's
// ranges every part that a dirty key there overwrites. The pass then does
// not write back data the backing device would get a newer version of in
// the same epoch anyway.
//
// This keeps the backing device a crash image that respects the host's
// flushes: after the pass it holds every epoch before this one and a
// subset of this epoch's writes, and the overwriting keys are durable in
// the log (a crash replays them from dirty_tail) and are written back
// before any key of a later epoch, as the walk stops at the first kset of
// another epoch. Only dirty keys of volumes in the pass collapse; clean
// keys and tombstones never drop a range (conservative).
//
// In a full log under random overwrites (the steady state of a cache
// whose log wraps) writeback would otherwise write back nearly every
// version of every block.
func collapseAhead(r *persist.Replayer, maxKsets int, epoch, durable uint64, targets map[uint32]*wbTarget) {
	for range maxKsets {
		ks, ok := r.Next()
		if !ok || ks.LSN >= durable || ks.Epoch != epoch {
			return
		}
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if k.Flags != persist.KeyDirty {
				continue
			}
			t := targets[k.Volume]
			if t == nil || t.v == nil {
				continue
			}
			end := min(int64(k.Offset)+int64(k.Length), t.vs.size.Load())
			if int64(k.Offset) >= end {
				continue
			}
			for _, p := range splitPieces(int64(k.Offset), end-int64(k.Offset)) {
				if l := t.list[p.stripe]; l != nil {
					l.replace(p.s, p.e, nil)
				}
			}
		}
	}
}

// readForWriteback copies the cache data of a dirty extent under the
// segment's generation check. Dirty data is never evicted (GC stops at
// dirty_tail), so a mismatch is a bug or corruption and stops writeback.
func (c *Cache) readForWriteback(b []byte, x *extent) error {
	s := &c.segs.segs[x.seg]
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gen != x.gen {
		err := fmt.Errorf("cachecore: dirty data in segment %d has generation %d, segment is at %d", x.seg, x.gen, s.gen)
		c.log.Error("writeback found evicted dirty data", "err", err)
		return err
	}
	if err := c.readVerified(b, x.seg, x.segOff, x.sumOff, x.sumLen, x.sum); err != nil {
		var bad *dataCRCError
		if errors.As(err, &bad) {
			// Never written back: the backing device keeps its older data
			// and the dirty data stays in the cache file for recovery. The
			// cache is retired (its failure policy then fails the I/O of
			// volumes with dirty data): its media is rotting.
			c.noteBadData("", -1, bad, "writeback")
			err = fmt.Errorf("cachecore: writeback: dirty %w", bad)
		}
		c.fail("writeback read cache data", err)
		return err
	}
	return nil
}

// markClean records that a dirty key of flush epoch epoch has been written
// back and flushed on the backing device: the index extents that still
// hold its data become clean and the dirty accounting drops it. The
// volume's epoch accounting drops it last, after the stripe locks of its
// range were taken once, so it never runs before the append that counted
// it (which holds the stripe lock) finished.
func (c *Cache) markClean(k *persist.Key, epoch uint64) {
	if k.Volume >= uint32(len(c.vols)) {
		return
	}
	vs := c.vols[k.Volume].Load()
	if vs == nil {
		return
	}
	vs.dirtyKeys.Add(-1)
	if v := vs.vol.Load(); v != nil {
		defer v.epochs.cleaned(epoch, dirtyKeyIDOf(k))
	}
	for st, p := range vs.indexedPieces(k) {
		st.mu.Lock()
		i, j := st.list.span(p.s, p.e)
		for n := i; n < j; n++ {
			x := &st.list.ext[n]
			if x.kind == extDirty && x.sameLineage(p.s, k.Pos.Seg, p.segOff, k.Gen) {
				x.kind = extClean
				vs.dirtyBytes.Add(-int64(x.length))
			}
		}
		st.mu.Unlock()
	}
}

// wbRun is a backing-contiguous run of collapsed dirty extents written
// with one backing write.
type wbRun struct {
	t    *wbTarget
	off  int64
	n    int64
	exts []extent
}

// writeRuns writes the collapsed dirty extents of a pass to the backing
// devices: sorted by offset, merged into runs of up to wbMaxRun bytes and
// written by a few goroutines (they belong to one flush epoch and do not
// overlap, so their order does not matter).
func (c *Cache) writeRuns(ctx context.Context, targets map[uint32]*wbTarget) (int64, error) {
	var runs []wbRun
	for _, t := range targets {
		if t.v == nil {
			continue
		}
		stripes := make([]uint64, 0, len(t.list))
		for sn := range t.list {
			stripes = append(stripes, sn)
		}
		slices.Sort(stripes)
		for _, sn := range stripes {
			for _, x := range t.list[sn].ext {
				if x.kind != extDirty {
					continue
				}
				off := int64(sn<<stripeShift) + int64(x.start)
				if k := len(runs) - 1; k >= 0 && runs[k].t == t && runs[k].off+runs[k].n == off && runs[k].n+int64(x.length) <= wbMaxRun {
					runs[k].n += int64(x.length)
					runs[k].exts = append(runs[k].exts, x)
					continue
				}
				runs = append(runs, wbRun{t: t, off: off, n: int64(x.length), exts: []extent{x}})
			}
		}
	}
	var (
		mu      sync.Mutex
		written int64
		first   error
		next    int
		wg      sync.WaitGroup
	)
	worker := func() {
		defer wg.Done()
		var buf []byte
		for {
			mu.Lock()
			if first != nil || next >= len(runs) {
				mu.Unlock()
				return
			}
			r := &runs[next]
			next++
			mu.Unlock()
			if cap(buf) < int(r.n) {
				buf = make([]byte, r.n)
			}
			b := buf[:r.n]
			var err error
			at := 0
			for i := range r.exts {
				x := &r.exts[i]
				if err = c.readForWriteback(b[at:at+int(x.length)], x); err != nil {
					break
				}
				at += int(x.length)
			}
			if err == nil {
				if err = r.t.v.dev.WriteAt(ctx, b, r.off); err != nil {
					r.t.v.stats.addError("writeback")
					err = fmt.Errorf("cachecore: writeback of %s at %d: %w", r.t.vs.name, r.off, err)
				}
			}
			mu.Lock()
			if err != nil && first == nil {
				first = err
			}
			if err == nil {
				written += r.n
				r.t.written += r.n
				r.t.v.stats.wbUnmarked.Add(r.n)
				r.t.v.stats.writebackBytes.Add(uint64(r.n))
			}
			mu.Unlock()
		}
	}
	nw := min(wbWorkers, len(runs))
	wg.Add(nw)
	for range nw {
		go worker()
	}
	wg.Wait()
	return written, first
}

// idleFor returns how long no host request has arrived, as observed by
// sampling the request counter.
func (c *Cache) idleFor() time.Duration {
	n := c.ioCount.Load()
	now := time.Now()
	c.idleMu.Lock()
	defer c.idleMu.Unlock()
	if n != c.idleSeen || c.idleSince.IsZero() {
		c.idleSeen, c.idleSince = n, now
		return 0
	}
	return now.Sub(c.idleSince)
}
