package cachecore

import "github.com/cachelun/cachelun/mrc"

// The sizing advisor's hook. ReadAt reports every read request it serves
// (hits and misses, in every mode, before the cache is consulted) to a
// ReadSampler, one call per request; the default sampler feeds the
// volume's and the cache's miss-ratio estimators (package mrc, SHARDS
// sampling at 1 %, constant memory), in cache blocks. Nothing here takes a
// lock of the engine: a sampled block takes the estimator's own lock, a
// leaf; the others cost a hash and an atomic add. Kept apart from the read
// path so that changes of fills and admission do not touch it.

// ReadSampler is told of every read request a volume serves: its byte
// offset and length.
type ReadSampler interface {
	SampleRead(off, n int64)
}

// cacheAdvisor is the cache-wide estimator: the blocks of all volumes,
// keyed by volume id and block.
type cacheAdvisor struct {
	est   *mrc.Estimator
	shift uint // log2 of the cache block size
}

// volAdvisor feeds one volume's estimator and the cache's.
type volAdvisor struct {
	est   *mrc.Estimator
	cache *cacheAdvisor
	id    uint64
}

func (a *volAdvisor) SampleRead(off, n int64) {
	if n <= 0 {
		return
	}
	sh := a.cache.shift
	first := uint64(off) >> sh
	count := (uint64(off+n-1) >> sh) - first + 1
	a.est.AccessRange(first, count)
	// Volume ids are below persist.MaxVolumes and a volume has fewer than
	// 2^44 blocks (64 PiB of 4 KiB): the keys of two volumes never meet.
	a.cache.est.AccessRange(a.id<<44|first, count)
}

// advisor returns the cache's estimator, created at first use.
func (c *Cache) advisor() *cacheAdvisor {
	if a := c.adv.Load(); a != nil {
		return a
	}
	shift := uint(0)
	for bs := c.store.Superblock().BlockSize; bs > 1; bs >>= 1 {
		shift++
	}
	a := &cacheAdvisor{est: mrc.New(mrc.Config{Seed: 1}), shift: shift}
	if c.adv.CompareAndSwap(nil, a) {
		return a
	}
	return c.adv.Load()
}

// sampleRead reports a read request to the volume's sampler.
func (v *Volume) sampleRead(off, n int64) {
	if s := v.sampler.Load(); s != nil {
		(*s).SampleRead(off, n)
		return
	}
	a := &volAdvisor{est: mrc.New(mrc.Config{Seed: 2}), cache: v.c.advisor(), id: uint64(v.st.id)}
	var s ReadSampler = a
	if v.sampler.CompareAndSwap(nil, &s) {
		v.adv.Store(a)
	}
	(*v.sampler.Load()).SampleRead(off, n)
}

// SetReadSampler replaces the volume's sampler (nil restores the
// advisor's); Advice then reports no new references.
func (v *Volume) SetReadSampler(s ReadSampler) {
	if s == nil {
		v.sampler.Store(nil)
		return
	}
	v.sampler.Store(&s)
}

// Advice is a miss-ratio curve and the cache size it is read against.
type Advice struct {
	// Curve is the LRU hit ratio by cache size in blocks of BlockSize,
	// estimated from the read requests since the volume was added (or
	// the cache opened).
	Curve mrc.Curve
	// CapacityBlocks is what the cache holds today, in blocks of
	// BlockSize: the segments GC lets fill (GCPercent of them), less one
	// for the journal, times the data blocks of a segment.
	CapacityBlocks uint64
	BlockSize      int
}

// Advice returns the volume's read miss-ratio curve.
func (v *Volume) Advice() Advice {
	ad := v.c.adviceBase()
	if a := v.adv.Load(); a != nil {
		ad.Curve = a.est.Curve()
	}
	return ad
}

// Advice returns the read miss-ratio curve of all the cache's volumes.
func (c *Cache) Advice() Advice {
	ad := c.adviceBase()
	ad.Curve = c.advisor().est.Curve()
	return ad
}

func (c *Cache) adviceBase() Advice {
	bs := int(c.store.Superblock().BlockSize)
	n := uint64(len(c.segs.segs))
	used := n * uint64(c.config().GCPercent) / 100
	if used > 0 {
		used--
	}
	return Advice{CapacityBlocks: used * uint64(c.segs.dataSize) / uint64(bs), BlockSize: bs}
}
