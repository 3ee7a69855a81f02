package persist

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
)

// TearUnit is the granularity at which unpersisted writes survive or vanish
// in a crash image: 8 bytes models DAX (8-byte atomic stores, cache lines
// flushed independently), 4096 models page-granular writeback.
type TearUnit int

const (
	TearDAX  TearUnit = 8
	TearPage TearUnit = 4096
)

// CrashMedia is an in-memory Media that records every write and persist so
// that a test can produce the image a crash would leave at any persist
// point. It is safe for concurrent use.
//
// Persist makes durable every tear unit overlapping the range, rounded out
// to 64 bytes (a cache line) for TearDAX and to the unit for larger units;
// with SetWholeFlush, every tear unit written so far (a pwrite-fdatasync
// file).
type CrashMedia struct {
	size  int64
	unit  int64
	whole bool // a Persist persists the whole media (set before use)
	// base is the content before the first recorded write (nil: zeroes);
	// the history in mu.log applies on top of it.
	base []byte

	mu struct {
		sync.Mutex
		cur     []byte    // what reads see
		durable []byte    // what survives any crash now; nil: equal to cur (fresh image)
		dirty   unitSet   // tear units written since they were last persisted
		log     []crashOp // history, for images of earlier points
		points  int
		hook    func(point int)
		preHook func(point int)
		failIn  int // calls left before failing; <0 = off
		failErr error
		closed  bool
	}
}

type crashOp struct {
	persist bool
	off     int64
	data    []byte // write payload
	n       int64  // persist length
}

// NewCrashMedia returns a zeroed crash media of size bytes.
func NewCrashMedia(size int64, unit TearUnit) *CrashMedia {
	if unit <= 0 {
		unit = TearDAX
	}
	m := &CrashMedia{size: size, unit: int64(unit)}
	m.mu.cur = make([]byte, size)
	m.mu.durable = make([]byte, size)
	m.mu.dirty = newUnitSet(size, int64(unit))
	m.mu.failIn = -1
	return m
}

func (m *CrashMedia) Size() int64     { return m.size }
func (m *CrashMedia) Kind() MediaKind { return KindCrash }

// failLocked counts one call against FailAfter and reports the injected error.
func (m *CrashMedia) failLocked() error {
	if m.mu.closed {
		return ErrClosed
	}
	if m.mu.failIn < 0 {
		return nil
	}
	if m.mu.failIn == 0 {
		return fmt.Errorf("%w: injected: %w", ErrMediaFault, m.mu.failErr)
	}
	m.mu.failIn--
	return nil
}

func (m *CrashMedia) ReadAt(p []byte, off int64) error {
	if err := checkRange(m.size, off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.failLocked(); err != nil {
		return err
	}
	copy(p, m.mu.cur[off:])
	return nil
}

func (m *CrashMedia) WriteAt(p []byte, off int64) error {
	if err := checkRange(m.size, off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.failLocked(); err != nil {
		return err
	}
	if m.mu.durable == nil {
		// A fresh image: its content so far is durable and is the base
		// of its history.
		m.mu.durable = append([]byte(nil), m.mu.cur...)
		if len(m.mu.log) == 0 {
			m.base = append([]byte(nil), m.mu.cur...)
		}
	}
	copy(m.mu.cur[off:], p)
	m.mu.dirty.setRange(off/m.unit, (off+int64(len(p))+m.unit-1)/m.unit)
	m.mu.log = append(m.mu.log, crashOp{off: off, data: append([]byte(nil), p...)})
	return nil
}

// SetWholeFlush makes every Persist persist every write made before it, as
// an fdatasync of a file does (FlushCoversMedia then reports true). Call it
// before the media is used; crash images inherit it.
func (m *CrashMedia) SetWholeFlush(on bool) { m.whole = on }

func (m *CrashMedia) flushCoversMedia() bool { return m.whole }

// persistUnits copies the dirty tear units a Persist(off, n) makes durable
// from src to dst and clears them in dirty.
func (m *CrashMedia) persistUnits(dirty unitSet, dst, src []byte, off, n int64) {
	copyUnit := func(u int64) {
		s, e := u*m.unit, min((u+1)*m.unit, m.size)
		copy(dst[s:e], src[s:e])
		dirty.clear(u)
	}
	if m.whole {
		for _, u := range dirty.members() {
			copyUnit(u)
		}
		return
	}
	lo, hi := m.persistSpan(off, n)
	for u := lo / m.unit; u*m.unit < hi; u++ {
		if dirty.has(u) {
			copyUnit(u)
		}
	}
}

// persistSpan rounds [off, off+n) out to the persist granularity.
func (m *CrashMedia) persistSpan(off, n int64) (lo, hi int64) {
	g := max(m.unit, 64)
	lo = off / g * g
	hi = min((off+n+g-1)/g*g, m.size)
	return lo, hi
}

func (m *CrashMedia) Persist(off, n int64) error {
	if err := checkRange(m.size, off, n); err != nil {
		return err
	}
	m.mu.Lock()
	if err := m.failLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	if m.mu.preHook != nil {
		m.mu.preHook(m.mu.points + 1)
	}
	m.persistUnits(m.mu.dirty, m.mu.durable, m.mu.cur, off, n)
	m.mu.log = append(m.mu.log, crashOp{persist: true, off: off, n: n})
	m.mu.points++
	point, hook := m.mu.points, m.mu.hook
	m.mu.Unlock()
	if hook != nil {
		hook(point)
	}
	return nil
}

func (m *CrashMedia) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.closed = true
	return nil
}

// PersistPoints is the number of Persist calls completed so far.
func (m *CrashMedia) PersistPoints() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.points
}

// SetPersistHook installs fn, called (without locks held) after each Persist
// completes, with the 1-based persist point.
func (m *CrashMedia) SetPersistHook(fn func(point int)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.hook = fn
}

// SetPrePersistHook installs fn, called with the media's lock held right
// before a Persist takes effect, with the persist point it will become. A
// crash image of point p with unpersisted writes that survive (CrashImage
// with an rng) is a crash at the end of the interval between points p and
// p+1: what else the test records for that crash (another device's durable
// state) must be taken here, at point p+1's pre-hook. fn must not call the
// media.
func (m *CrashMedia) SetPrePersistHook(fn func(point int)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.preHook = fn
}

// FailAfter makes every ReadAt, WriteAt and Persist after n more calls fail
// with an error wrapping ErrMediaFault and err. n < 0 turns injection off.
func (m *CrashMedia) FailAfter(n int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.failIn, m.mu.failErr = n, err
}

// CrashImage returns a fresh CrashMedia holding what a crash right after
// persist point `point` could leave: everything persisted by calls
// 1..point; bytes written but not persisted by then are dropped (rng ==
// nil) or each of their tear units independently survives with the newest
// content written by then (rng != nil). point 0 is the state before any
// persist; point must not exceed PersistPoints().
func (m *CrashMedia) CrashImage(point int, rng *rand.Rand) *CrashMedia {
	m.mu.Lock()
	defer m.mu.Unlock()
	if point < 0 || point > m.mu.points {
		panic(fmt.Sprintf("persist: CrashImage(%d) with %d persist points", point, m.mu.points))
	}
	img := &CrashMedia{size: m.size, unit: m.unit, whole: m.whole}
	img.mu.dirty = newUnitSet(m.size, m.unit)
	img.mu.failIn = -1
	var cur []byte
	var dirty unitSet
	if point == m.mu.points {
		img.mu.cur = m.durableLocked()
		cur, dirty = m.mu.cur, m.mu.dirty
	} else {
		img.mu.cur = make([]byte, m.size)
		// Rebuild the state at the point from the history.
		cur = make([]byte, m.size)
		if m.base != nil {
			copy(img.mu.cur, m.base)
			copy(cur, m.base)
		}
		dirty = newUnitSet(m.size, m.unit)
		seen := 0
		for _, op := range m.mu.log {
			if op.persist {
				if seen == point {
					break
				}
				seen++
				m.persistUnits(dirty, img.mu.cur, cur, op.off, op.n)
				continue
			}
			copy(cur[op.off:], op.data)
			dirty.setRange(op.off/m.unit, (op.off+int64(len(op.data))+m.unit-1)/m.unit)
		}
	}
	if rng != nil {
		for _, u := range dirty.members() { // ascending: deterministic for a given rng
			if rng.IntN(2) == 0 {
				s, e := u*m.unit, min((u+1)*m.unit, m.size)
				copy(img.mu.cur[s:e], cur[s:e])
			}
		}
	}
	// img.mu.durable stays nil: the image's durable content is its current
	// content until it is written.
	return img
}

// durableLocked returns a copy of the durable content.
func (m *CrashMedia) durableLocked() []byte {
	if m.mu.durable == nil {
		return append([]byte(nil), m.mu.cur...)
	}
	return append([]byte(nil), m.mu.durable...)
}

// Bytes returns a copy of the current contents (what reads see).
func (m *CrashMedia) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.mu.cur...)
}

// NewCrashMediaFrom returns a crash media whose current and durable
// contents are b (copied), e.g. a golden image.
func NewCrashMediaFrom(b []byte, unit TearUnit) *CrashMedia {
	m := &CrashMedia{size: int64(len(b)), unit: int64(unit)}
	if unit <= 0 {
		m.unit = int64(TearDAX)
	}
	m.mu.cur = append([]byte(nil), b...)
	m.mu.dirty = newUnitSet(m.size, m.unit)
	m.mu.failIn = -1
	return m
}

// unitSet is a bitmap of tear units.
type unitSet []uint64

func newUnitSet(size, unit int64) unitSet { return make(unitSet, ((size+unit-1)/unit+63)/64) }

func (u unitSet) has(i int64) bool { return u[i>>6]&(1<<(i&63)) != 0 }
func (u unitSet) clear(i int64)    { u[i>>6] &^= 1 << (i & 63) }

func (u unitSet) setRange(lo, hi int64) {
	for i := lo; i < hi; i++ {
		u[i>>6] |= 1 << (i & 63)
	}
}

func (u unitSet) members() []int64 {
	var out []int64
	for w, bitsw := range u {
		for bitsw != 0 {
			b := bits.TrailingZeros64(bitsw)
			out = append(out, int64(w)*64+int64(b))
			bitsw &^= 1 << b
		}
	}
	return out
}
