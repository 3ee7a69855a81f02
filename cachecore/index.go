package cachecore

import (
	"iter"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/persist"
)

const (
	stripeShift = 22 // 4 MiB stripes of a volume's backing space
	stripeSize  = 1 << stripeShift
	stripePageN = 1024 // stripes per lazily allocated page (4 GiB of volume)
)

// stripe is one 4 MiB piece of a volume's index with its own lock. The
// journal append of a key happens under the same lock as its index update,
// so for every block the log order equals the index order.
type stripe struct {
	mu   sync.Mutex
	list extentList
}

type stripePage [stripePageN]atomic.Pointer[stripe]

// volIndex is the index of one volume: a paged array of lazily allocated
// stripes, so a 10 TiB volume costs 2560 page pointers until it is used.
// The page directory grows with the volume (Volume.Grow) under running I/O.
type volIndex struct {
	pages pageDir[stripePage]
}

func newVolIndex(size int64) *volIndex {
	x := &volIndex{}
	x.pages.init(indexPages(size))
	return x
}

// indexPages is the number of stripe pages a volume of size bytes needs.
func indexPages(size int64) int {
	n := (uint64(size) + stripeSize - 1) >> stripeShift
	return int((n + stripePageN - 1) / stripePageN)
}

// grow makes the index cover size bytes, keeping every stripe. Safe while
// requests run; callers serialize grows (Cache.mu).
func (x *volIndex) grow(size int64) { x.pages.grow(indexPages(size)) }

// get returns stripe n, allocating it (and its page) on first use.
func (x *volIndex) get(n uint64) *stripe {
	p := x.pages.page(n/stripePageN, true)
	if p == nil {
		return nil
	}
	s := p[n%stripePageN].Load()
	if s == nil {
		ns := new(stripe)
		if p[n%stripePageN].CompareAndSwap(nil, ns) {
			return ns
		}
		s = p[n%stripePageN].Load()
	}
	return s
}

// peek returns stripe n or nil when it was never allocated.
func (x *volIndex) peek(n uint64) *stripe {
	p := x.pages.page(n/stripePageN, false)
	if p == nil {
		return nil
	}
	return p[n%stripePageN].Load()
}

// each calls fn for every allocated stripe in order.
func (x *volIndex) each(fn func(n uint64, s *stripe)) {
	for pi := range x.pages.len() {
		p := x.pages.page(uint64(pi), false)
		if p == nil {
			continue
		}
		for k := range p {
			if s := p[k].Load(); s != nil {
				fn(uint64(pi)*stripePageN+uint64(k), s)
			}
		}
	}
}

// piece is the part of a request inside one stripe.
type piece struct {
	stripe uint64 // stripe number
	s, e   uint32 // stripe-relative range
	bufOff int64  // offset of the piece in the request buffer
}

func (p piece) len() int64 { return int64(p.e - p.s) }

// abs returns the absolute backing offset of stripe-relative offset o.
func (p piece) abs(o uint32) int64 { return int64(p.stripe<<stripeShift) + int64(o) }

// firstPiece returns the piece of [off, off+n) in the first stripe; for
// the next one call it again with off and n advanced by its length. It
// lets hot paths walk pieces without allocating.
func firstPiece(off, n, bufOff int64) piece {
	st := uint64(off) >> stripeShift
	s := uint32(off & (stripeSize - 1))
	l := min(int64(stripeSize)-int64(s), n)
	return piece{stripe: st, s: s, e: s + uint32(l), bufOff: bufOff}
}

// keyPiece is the part of a logged key inside one stripe, with the cache
// segment offset of its first byte.
type keyPiece struct {
	piece
	segOff uint32
}

// indexedPieces yields, for each piece of key k inside the volume (clipped
// to its size) whose stripe the index holds, that stripe and the piece.
// The stripe's mutex is not taken. It is how the passes that follow the log
// (clean marking, GC eviction, carry-forward) find a key's extents.
func (vs *volState) indexedPieces(k *persist.Key) iter.Seq2[*stripe, keyPiece] {
	return func(yield func(*stripe, keyPiece) bool) {
		end := min(int64(k.Offset)+int64(k.Length), vs.size.Load())
		for _, p := range splitPieces(int64(k.Offset), end-int64(k.Offset)) {
			st := vs.idx.peek(p.stripe)
			if st == nil {
				continue
			}
			if !yield(st, keyPiece{piece: p, segOff: k.Pos.Off + uint32(p.bufOff)}) {
				return
			}
		}
	}
}

// splitPieces cuts [off, off+n) at stripe boundaries.
func splitPieces(off, n int64) []piece {
	var out []piece
	if n <= 0 {
		return nil
	}
	out = make([]piece, 0, (n>>stripeShift)+2)
	for done := int64(0); done < n; {
		o := off + done
		st := uint64(o) >> stripeShift
		s := uint32(o & (stripeSize - 1))
		l := min(int64(stripeSize)-int64(s), n-done)
		out = append(out, piece{stripe: st, s: s, e: s + uint32(l), bufOff: done})
		done += l
	}
	return out
}

// dirtyBytes returns the bytes of the volume dirty in the index, taking each
// stripe lock in turn (a sum over a moving index is only exact while
// nothing writes or cleans the volume, e.g. before it is attached).
func (x *volIndex) dirtyBytes() int64 {
	var n int64
	x.each(func(_ uint64, st *stripe) {
		st.mu.Lock()
		n += st.list.dirtyBytes()
		st.mu.Unlock()
	})
	return n
}
