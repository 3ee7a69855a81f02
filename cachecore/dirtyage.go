package cachecore

import (
	"sort"
	"sync"
	"time"
)

// The writeback lag of a volume is the age of its oldest acknowledged
// write whose data is not yet on the backing device (0 when clean). It is
// tracked per kset, not per key: a kset remembers, per volume, when the
// first dirty key of that volume was appended to it (acknowledged right
// after), and once the kset is in the log the volume keeps (LSN, time)
// until writeback has moved dirty_tail past that LSN, which is when all of
// the kset's data is on the backing device and flushed. The lag is the
// time since the oldest such entry, over the open ksets, the closed ones
// on their way to the log and the logged ones. A kset's entry is as old as
// its oldest dirty write, so the lag is never under-reported; it is
// over-reported at most by the time writeback takes to finish a kset it
// has started.
//
// Across a restart the append times are not in the log: the dirty keys
// replayed at Open count as acknowledged when the cache was opened, a lower
// bound of their age. Keys carried forward in the log (volumes not
// attached) keep the time of the keys they replace.

// volAge is a volume's first dirty append to an in-memory kset.
type volAge struct {
	vol uint32
	at  int64 // unix nanoseconds
}

// loggedAge is a kset in the log holding dirty keys of a volume, with the
// append time of the first of them.
type loggedAge struct {
	lsn uint64
	at  int64
}

// dirtyAges holds the logged ksets with dirty keys of one volume that
// writeback has not passed yet, in LSN order.
type dirtyAges struct {
	mu     sync.Mutex
	logged []loggedAge
}

// add records a kset of the log (commits of different slots may append
// slightly out of LSN order; the slice stays sorted).
func (d *dirtyAges) add(lsn uint64, at int64) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.logged)
	if n == 0 || d.logged[n-1].lsn < lsn {
		d.logged = append(d.logged, loggedAge{lsn, at})
		return
	}
	i := sort.Search(n, func(i int) bool { return d.logged[i].lsn >= lsn })
	if i < n && d.logged[i].lsn == lsn {
		d.logged[i].at = min(d.logged[i].at, at)
		return
	}
	d.logged = append(d.logged, loggedAge{})
	copy(d.logged[i+1:], d.logged[i:])
	d.logged[i] = loggedAge{lsn, at}
}

// passed drops the ksets before dirtyTail: written back and flushed.
func (d *dirtyAges) passed(dirtyTail uint64) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i := 0
	for i < len(d.logged) && d.logged[i].lsn < dirtyTail {
		i++
	}
	if i > 0 {
		d.logged = append(d.logged[:0], d.logged[i:]...)
	}
}

// oldest returns the oldest append time of the ksets before upto (0: none).
func (d *dirtyAges) oldest(upto uint64) int64 {
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var t int64
	for _, e := range d.logged {
		if e.lsn >= upto {
			break
		}
		if t == 0 || e.at < t {
			t = e.at
		}
	}
	return t
}

// hasDirtyLocked reports whether the open kset of s has a dirty key of
// vol; s.mu is held.
func (s *ksetSlot) hasDirtyLocked(vol uint32) bool {
	for i := range s.dirtyAt {
		if s.dirtyAt[i].vol == vol {
			return true
		}
	}
	return false
}

// noteDirtyLocked records that a dirty key of vol was appended at at to
// the open kset of s; s.mu is held.
func (s *ksetSlot) noteDirtyLocked(vol uint32, at int64) {
	for i := range s.dirtyAt {
		if s.dirtyAt[i].vol == vol {
			s.dirtyAt[i].at = min(s.dirtyAt[i].at, at)
			return
		}
	}
	s.dirtyAt = append(s.dirtyAt, volAge{vol, at})
}

// oldestDirtyLocked returns the oldest first-dirty time of vol in the open
// kset of s and in its closed ksets not yet in the log (0: none); s.mu is
// held.
func (s *ksetSlot) oldestDirtyLocked(vol uint32) int64 {
	var t int64
	see := func(list []volAge) {
		for _, e := range list {
			if e.vol == vol && (t == 0 || e.at < t) {
				t = e.at
			}
		}
	}
	see(s.dirtyAt)
	for _, pk := range s.unlogged {
		see(pk.dirtyAt)
	}
	return t
}

// logDirtyAges moves the first-dirty times of pk, now in the log at lsn,
// to its volumes; called by the commit once the kset is in the log.
func (c *Cache) logDirtyAges(pk *pendingKset, lsn uint64) {
	if len(pk.dirtyAt) == 0 {
		return
	}
	for _, e := range pk.dirtyAt {
		if vs := c.vols[e.vol].Load(); vs != nil {
			vs.ages.add(lsn, e.at)
		}
	}
	// Only now out of the slot: a reader that looked at the slot first and
	// the volume second sees the kset in one of the two.
	s := &c.slots[pk.slot]
	s.mu.Lock()
	if i := indexOf(s.unlogged, pk); i >= 0 {
		s.unlogged = append(s.unlogged[:i], s.unlogged[i+1:]...)
	}
	s.mu.Unlock()
}

func indexOf(list []*pendingKset, pk *pendingKset) int {
	for i, x := range list {
		if x == pk {
			return i
		}
	}
	return -1
}

// writebackLag is the age of the oldest acknowledged write of vs not yet
// on the backing device, 0 when clean. The slots are read before the
// logged ksets: a kset only moves from the slots to the volume, so it is
// seen at least once.
func (c *Cache) writebackLag(vs *volState) time.Duration {
	if vs.dirtyKeys.Load() <= 0 {
		return 0
	}
	var t int64
	for i := range c.slots {
		s := &c.slots[i]
		s.mu.Lock()
		x := s.oldestDirtyLocked(vs.id)
		s.mu.Unlock()
		if x != 0 && (t == 0 || x < t) {
			t = x
		}
	}
	if x := vs.ages.oldest(^uint64(0)); x != 0 && (t == 0 || x < t) {
		t = x
	}
	if t == 0 {
		return 0
	}
	return max(c.clock().Now().Sub(time.Unix(0, t)), 0)
}
