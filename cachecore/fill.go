package cachecore

import (
	"sync"
	"sync/atomic"
)

// Asynchronous read-miss fills.
//
// A read miss returns to the host as soon as its backing read completes;
// the copy into the cache happens here, off the read's critical path. The
// read puts a copy of the data on a bounded queue (fillQueue) and leaves
// its EMPTY placeholder in the index; one worker per cache takes the queue
// in batches, allocates cache space for a whole batch at once, writes it
// with one media write per contiguous allocation (one system call instead
// of one per miss, and no pwrite contention between readers) and installs
// each fill under its stripe lock only if its placeholder is still in place
// and no bypass write is in flight on the chunk (C7, the same check a
// synchronous fill made: a write that landed meanwhile replaced or removed
// the placeholder, and the late fill is dropped). The keys go to the open
// ksets like any key and are committed with them (never a flush of their
// own).
//
// When the queue is full the fill is dropped (its placeholder removed) and
// the read is not slowed: an admission decision, counted in
// VolumeStats.FillsDropped. A queued fill counts as a request of its
// volume (Volume.inflight), so waitIdle (Close, RemoveVolume, Detach)
// waits for it to be installed or dropped.

const (
	// fillQueueBytes bounds the data waiting in the queue: what the
	// worker cannot keep up with is not cached.
	fillQueueBytes = 8 << 20
	// fillBatchBytes is the most data the worker writes per batch.
	fillBatchBytes = 1 << 20
)

// fillReq is one queued fill: backing data for the placeholder token at
// stripe offset s of piece pc.
type fillReq struct {
	v     *Volume
	st    *stripe
	pc    piece
	s     uint32
	token uint64
	data  []byte
	// done, if not nil, is called once the fill was installed or dropped
	// (Prefetch waits for its fills).
	done func()
	// reappend: GC's second chance (policy.go), not a read miss.
	reappend bool
}

// fillQueue is the bounded queue between read misses and the fill worker.
type fillQueue struct {
	mu      sync.Mutex
	reqs    []fillReq
	bytes   int
	stopped bool
	// full: the queue holds about all it may (set and cleared under mu,
	// read without it): a read miss that finds it set is not filled at
	// all (no placeholder, no copy), as it would be dropped.
	full atomic.Bool
	// room is signalled when the worker took requests (Prefetch waits for
	// room instead of dropping).
	room sync.Cond
	// pending counts fills queued or being installed; idle is signalled
	// (under mu) when it drops to zero (waitFills).
	pending atomic.Int64
	// pendingBytes: the data of those fills (cacheFull counts it as
	// taken).
	pendingBytes atomic.Int64
	idle         sync.Cond
	kick         chan struct{}
	pool         sync.Pool // *[]byte of 4 KiB, the common fill size
}

func (q *fillQueue) init() {
	q.room.L = &q.mu
	q.idle.L = &q.mu
	q.kick = make(chan struct{}, 1)
}

// buf returns a buffer of n bytes for fill data.
func (q *fillQueue) buf(n int) []byte {
	if n == 4096 {
		if b, ok := q.pool.Get().(*[]byte); ok {
			return *b
		}
	}
	return make([]byte, n)
}

func (q *fillQueue) put(b []byte) {
	if len(b) == 4096 {
		q.pool.Put(&b)
	}
}

// queueFill hands a fill to the worker. It returns false when the fill was
// not queued (the queue is full and wait is false, or the worker stopped):
// the caller then removes the placeholder. data is copied.
func (v *Volume) queueFill(st *stripe, pc piece, s uint32, token uint64, data []byte, wait bool, done func(), reappend bool) bool {
	q := &v.c.fills
	// The copy is made before taking the queue's lock: every reader of
	// a cold volume comes here, and the worker takes the lock too.
	b := q.buf(len(data))
	copy(b, data)
	q.mu.Lock()
	for !q.stopped && q.bytes > 0 && q.bytes+len(data) > fillQueueBytes {
		if !wait {
			q.mu.Unlock()
			q.put(b)
			v.stats.fillsDropped.Add(1)
			return false
		}
		q.room.Wait()
	}
	if q.stopped {
		q.mu.Unlock()
		q.put(b)
		return false
	}
	// Counted as a request of the volume until installed or dropped, so
	// that waiting for the volume to be idle waits for its fills.
	v.inflight.Add(1)
	q.reqs = append(q.reqs, fillReq{v: v, st: st, pc: pc, s: s, token: token, data: b, done: done, reappend: reappend})
	q.bytes += len(data)
	if q.bytes >= fillQueueBytes-fillBatchBytes/4 {
		q.full.Store(true)
	}
	q.pending.Add(1)
	q.pendingBytes.Add(int64(len(b)))
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
	return true
}

// fillWorker installs queued fills until the cache stops; what is still
// queued then is dropped.
func (c *Cache) fillWorker() {
	defer c.workers.Done()
	q := &c.fills
	var staging []byte
	var spare []fillReq // the slice the readers append to next
	for {
		select {
		case <-c.workersCtx.Done():
			q.mu.Lock()
			q.stopped = true
			reqs := q.reqs
			q.reqs, q.bytes = nil, 0
			q.full.Store(false)
			q.room.Broadcast()
			q.mu.Unlock()
			for i := range reqs {
				c.dropFill(&reqs[i])
			}
			return
		case <-q.kick:
		}
		for {
			// Take the whole queue (the readers append to a fresh slice
			// meanwhile) and work through it in batches.
			q.mu.Lock()
			taken := q.reqs
			q.reqs, spare = spare[:0], nil
			q.bytes = 0
			q.full.Store(false)
			q.room.Broadcast()
			q.mu.Unlock()
			if len(taken) == 0 {
				spare = taken
				break
			}
			all := taken
			for len(taken) > 0 {
				n, total := 0, 0
				for n < len(taken) && (n == 0 || total+len(taken[n].data) <= fillBatchBytes) {
					total += len(taken[n].data)
					n++
				}
				if cap(staging) < total {
					staging = make([]byte, max(total, fillBatchBytes))
				}
				c.fillBatch(taken[:n], staging[:total])
				clear(taken[:n])
				taken = taken[n:]
			}
			spare = all[:0]
		}
	}
}

// fillBatch allocates cache space for every fill of the batch, writes
// their data (staging holds it back to back) and installs each one.
func (c *Cache) fillBatch(batch []fillReq, staging []byte) {
	if c.failed.Load() {
		for i := range batch {
			c.dropFill(&batch[i])
		}
		return
	}
	off := 0
	for i := range batch {
		copy(staging[off:], batch[i].data)
		off += len(batch[i].data)
	}
	// Space for the whole batch: each allocation is contiguous and holds
	// one segment reference.
	var allocBuf [4]allocation
	allocs := allocBuf[:0]
	got := 0
	for got < len(staging) {
		a, err := c.allocData(uint32(len(staging) - got))
		if err != nil {
			break
		}
		if err := c.media.WriteAt(staging[got:got+int(a.n)], c.store.DataOffset(a.pos)); err != nil {
			c.putRef(a.pos.Seg)
			batch[0].v.mediaErr("write cache data", err)
			break
		}
		allocs = append(allocs, a)
		got += int(a.n)
	}
	// Cut the allocations at the fills' boundaries: one piece (and one
	// segment reference, the key's) per key. Every reference is taken
	// before any fill is installed: an install that drops its pieces may
	// drop a segment's last reference otherwise held by a later piece.
	pieces := make([][]allocation, len(batch))
	ai, aoff := 0, uint32(0) // current allocation and offset in it
	for i := range batch {
		need := uint32(len(batch[i].data))
		for need > 0 && ai < len(allocs) {
			a := allocs[ai]
			n := min(need, a.n-aoff)
			p := allocation{pos: a.pos, gen: a.gen, n: n}
			p.pos.Off += aoff
			if aoff > 0 {
				// The allocation's own reference went to its first piece.
				c.segs.segs[a.pos.Seg].refs.Add(1)
			}
			pieces[i] = append(pieces[i], p)
			need -= n
			aoff += n
			if aoff == a.n {
				ai, aoff = ai+1, 0
			}
		}
	}
	for i := range batch {
		r := &batch[i]
		if len(pieces[i]) == 0 {
			// No space (or a media error) for this one.
			c.dropFill(r)
			continue
		}
		covered := uint32(0)
		for _, p := range pieces[i] {
			covered += p.n
		}
		if n := r.v.installFill(r.st, r.pc, r.s, r.token, r.data[:covered], pieces[i], 0); r.reappend {
			r.v.stats.reappendBytes.Add(uint64(n))
		} else {
			r.v.stats.fillBytes.Add(uint64(n))
		}
		c.finished(r)
	}
}

// finished ends a fill taken from the queue (installed or dropped).
func (c *Cache) finished(r *fillReq) {
	c.fills.pendingBytes.Add(-int64(len(r.data)))
	c.fills.put(r.data)
	r.v.exit()
	if r.done != nil {
		r.done()
	}
	if q := &c.fills; q.pending.Add(-1) == 0 {
		q.mu.Lock()
		q.idle.Broadcast()
		q.mu.Unlock()
	}
}

// WaitFills waits until every read-miss fill queued so far was installed or
// dropped. Reads never wait for fills; tools that replay traces to measure
// the policy (internal/tracebench) and tests do, so that a block read again
// right after its miss is judged by the policy, not by the fill worker's
// speed.
func (c *Cache) WaitFills() { c.waitFills() }

// waitFills: WaitFills (Prefetch waits for its own fills only).
func (c *Cache) waitFills() {
	q := &c.fills
	q.mu.Lock()
	for q.pending.Load() > 0 {
		q.idle.Wait()
	}
	q.mu.Unlock()
}

// dropFill gives up a queued fill: its placeholder goes (the next read of
// the range misses again).
func (c *Cache) dropFill(r *fillReq) {
	r.st.mu.Lock()
	removePlaceholder(r.st, r.s, r.token)
	r.st.mu.Unlock()
	c.finished(r)
}
