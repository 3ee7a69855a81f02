package cachecore

import "sync/atomic"

// pageDir is a directory of lazily allocated pages (*P) that can grow while
// it is used: a volume's stripe index and its bypass tracker live in one,
// so that Volume.Grow extends them under running I/O. Growing copies the
// slot pointers into a longer directory and publishes it; a page stored
// through a slot of the old directory is the page of every later one, as
// the slots themselves are shared. Readers pay one more pointer load than a
// plain slice of slots.
type pageDir[P any] struct {
	dir atomic.Pointer[[]*atomic.Pointer[P]]
}

func (d *pageDir[P]) init(n int) {
	dir := make([]*atomic.Pointer[P], n)
	slots := make([]atomic.Pointer[P], n)
	for i := range dir {
		dir[i] = &slots[i]
	}
	d.dir.Store(&dir)
}

// len is the number of slots.
func (d *pageDir[P]) len() int { return len(*d.dir.Load()) }

// slot returns slot i, nil beyond the directory.
func (d *pageDir[P]) slot(i uint64) *atomic.Pointer[P] {
	dir := *d.dir.Load()
	if i >= uint64(len(dir)) {
		return nil
	}
	return dir[i]
}

// page returns page i, allocating it on first use with alloc; nil beyond
// the directory, or when it was never allocated and alloc is false.
func (d *pageDir[P]) page(i uint64, alloc bool) *P {
	s := d.slot(i)
	if s == nil {
		return nil
	}
	p := s.Load()
	if p == nil && alloc {
		np := new(P)
		if s.CompareAndSwap(nil, np) {
			return np
		}
		p = s.Load()
	}
	return p
}

// grow extends the directory to n slots (never shrinks it). Callers
// serialize grows; readers may run concurrently.
func (d *pageDir[P]) grow(n int) {
	old := *d.dir.Load()
	if n <= len(old) {
		return
	}
	dir := make([]*atomic.Pointer[P], n)
	copy(dir, old)
	slots := make([]atomic.Pointer[P], n-len(old))
	for i := len(old); i < n; i++ {
		dir[i] = &slots[i-len(old)]
	}
	d.dir.Store(&dir)
}
