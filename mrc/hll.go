package mrc

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// hll is a HyperLogLog sketch of the distinct blocks seen (Flajolet et
// al. 2007): 2^14 registers, a standard error of about 0.8 %, 64 KiB. It
// is fed the estimator's block hash, whose bits it shares with the tag.
// Registers are updated with compare-and-swap, so add takes no lock.
type hll struct {
	reg [1 << hllBits]atomic.Uint32
}

const hllBits = 14

func (h *hll) add(x uint64) {
	r := &h.reg[x&(1<<hllBits-1)]
	// The rank is the leading zeros, plus one, of bits 14..39: the top 24
	// bits of x are the estimator's sampling tag (a sampled block has a
	// small tag, which must not make its rank large), the low 14 the
	// register. 26 bits count up to about 2^14 · 2^26 distinct blocks.
	rank := uint32(bits.LeadingZeros64(x<<24|1<<(24+hllBits-1))) + 1
	for {
		cur := r.Load()
		if rank <= cur || r.CompareAndSwap(cur, rank) {
			return
		}
	}
}

func (h *hll) reset() {
	for i := range h.reg {
		h.reg[i].Store(0)
	}
}

// estimate returns the estimated number of distinct values added.
func (h *hll) estimate() float64 {
	const m = 1 << hllBits
	sum, zeros := 0.0, 0
	for i := range h.reg {
		v := h.reg[i].Load()
		sum += math.Ldexp(1, -int(v))
		if v == 0 {
			zeros++
		}
	}
	if zeros == m {
		return 0
	}
	est := 0.7213 / (1 + 1.079/m) * m * m / sum
	if est <= 2.5*m && zeros > 0 {
		return m * math.Log(float64(m)/float64(zeros)) // linear counting for small sets
	}
	return est
}
