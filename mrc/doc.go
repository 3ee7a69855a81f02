// Package mrc estimates miss-ratio curves online: for a stream of block
// references, the hit ratio an LRU cache of any size would have had. It
// implements spatially hashed sampling in the manner of SHARDS (Waldspurger,
// Park, Garthwaite, Ahmad: "Efficient MRC Construction with SHARDS", FAST
// 2015) and, for validation, the exact curve from full Mattson stack
// distances (Exact).
//
// # How it works
//
// Each block id is hashed (a fixed mixing function with a per-estimator
// seed); a reference is sampled when hash mod P < T (P = 2^24), so a block
// is either always or never sampled and the sampled blocks are a uniform
// random share R = T/P of all blocks. For a sampled reference the estimator
// counts the distinct sampled blocks referenced since the previous
// reference to the same block (its stack distance among sampled blocks, d)
// and records the distance 1 + (d-1)/R in a histogram with 32 buckets per
// power of two. The hit ratio at size C is the share of recorded references
// whose distance is at most C (linear within a bucket).
//
// Constant memory: at most Config.MaxTracked sampled blocks are tracked.
// When one more would be tracked, the blocks with the largest hash value
// are dropped and T is lowered to that value (so they are never sampled
// again), and the histogram's counts are scaled by T'/T so that every count
// is on the scale of the new rate. Memory is O(MaxTracked) whatever the
// working set: about 100 bytes per tracked block, a 16 KiB histogram and
// a 64 KiB sketch (below): about 1.7 MiB at the default MaxTracked.
//
// Two corrections of sampling noise, applied by Curve. The sampled blocks
// are R of all blocks only on average: a HyperLogLog sketch of every block
// seen (2^14 registers, ±0.8 %, fed the same hash as the sampling test)
// estimates the distinct blocks M, and every count is scaled by R·M over
// the first references actually sampled (on a loop, whose blocks are all
// alike, this alone makes the estimate exact).
// What remains is the mix of the sampled blocks: the number of sampled
// references differs from its expectation R·N (N references in all)
// mostly because a hot block happens to be sampled or not, and that
// difference is credited to the shortest distance (SHARDS_adj, the
// paper's §4.3), where hot blocks' references are.
//
// # Error bound
//
// Sampling blocks, not references, means the estimate's error comes from
// which blocks happen to be sampled. With S distinct sampled blocks in the
// working set the standard error of the hit ratio at a size C is about
// sqrt(h(1-h)/S') where S' is the number of sampled blocks whose reuse
// decides hits at C, so the error shrinks with the working set, not the
// trace length. The paper reports a mean absolute error below 0.01 at R =
// 0.01 on production traces. Measured here against Exact on every trace of
// the yardstick (internal/tracebench: Zipf α 0.8–1.2 over working sets
// 2–10× the cache, a hot set with scans, a loop, a mixed trace) at R = 0.01
// and a 45 000-block cache: mean error 0.005, at most 0.012 at 1× the
// cache, 0.03 at 0.5×–4×, and 0.041 at 0.25× (a quarter of that cache is
// 112 sampled blocks of distance); with a 100 000-block cache at most
// 0.019 at every size (CACHELUN_LONG=1). Without the corrections the mean
// error was 0.08 on these skewed traces; with SHARDS_adj alone 0.008, and
// a loop off by 0.057. Sizes below about 100/R blocks (100 sampled blocks)
// are not resolved: ask for them at a higher rate. With MaxTracked reached
// the rate is lower and the error larger in proportion to 1/sqrt(R).
//
// The curve is LRU's. cachelun's engine is a log: with its 2q policy its
// hit ratio at the same size is about LRU's or above on the yardstick's
// Zipf traces and far above on scans and loops, and below where writes
// overwrite cached blocks; with fifo it is below LRU's on the Zipf traces
// (internal/tracebench measures each). The curve counts every reference
// since New or Reset: it describes the workload since then, not the last
// minutes.
//
// # Concurrency
//
// An Estimator is safe for concurrent use. Access takes a lock only for
// sampled references (R of them): the sampling test reads T atomically,
// the reference count is an atomic counter and the sketch's registers are
// updated with compare-and-swap. Curve copies the histogram under the
// same lock. There is one lock per Estimator and no other; no
// callback runs under it. Exact is not safe for concurrent use.
package mrc
