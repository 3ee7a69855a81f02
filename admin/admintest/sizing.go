package admintest

import (
	"math"

	"github.com/cachelun/cachelun/admin"
)

// sizingHolder is the settable advisor curve of a fake volume or cache.
type sizingHolder struct {
	sizing admin.SizingCurve
}

// SetSizing replaces what Sizing reports (the zero curve until then: no
// references, hit ratio 0 everywhere).
func (v *Volume) SetSizing(sc admin.SizingCurve) {
	v.mu.Lock()
	v.sz.sizing = sc
	v.mu.Unlock()
}

// Sizing implements admin.VolumeAPI.
func (v *Volume) Sizing() admin.SizingCurve {
	v.waitReads()
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sz.sizing
}

// SetSizing replaces what Sizing reports.
func (c *Cache) SetSizing(sc admin.SizingCurve) {
	c.mu.Lock()
	c.sz.sizing = sc
	c.mu.Unlock()
}

// Sizing implements admin.CacheAPI.
func (c *Cache) Sizing() admin.SizingCurve {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sz.sizing
}

// LinearSizing is a curve for tests: the hit ratio grows linearly from 0
// to max at workingSet bytes and stays there; the cache holds capacity
// bytes.
func LinearSizing(capacity, workingSet int64, max float64) admin.SizingCurve {
	hr := func(n int64) float64 {
		if n >= workingSet {
			return max
		}
		return max * float64(n) / float64(workingSet)
	}
	return admin.SizingCurve{
		CapacityBytes: capacity, BlockSize: 4096, References: 1000000, SampleRate: 0.01, SampledBlocks: 10000,
		HitRatio: hr,
		SizeFor: func(target float64) (int64, bool) {
			if target > max {
				return 0, false
			}
			return int64(math.Ceil(target / max * float64(workingSet))), true
		},
	}
}
