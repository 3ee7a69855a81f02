// Package tracebench is cachelun's trace-driven yardstick for hit ratios
// (docs/yardstick.md): synthetic block traces with fixed seeds, the reference
// policies computed on them (Belady's MIN, the offline optimum with
// optional admission; LRU; FIFO; Log, an ideal log-structured cache laid
// out as the engine's, in log order or cleaned out of it), and a replay of
// a trace through the real engine in process (cachecore on an in-memory or
// temporary-file cache, backend.Memory as the backing device), so that a
// change of the engine's admission or eviction is measured against the same
// figures.
//
// A trace is a sequence of requests of whole cache blocks (4 KiB). The
// policies see every block of a request; a read request is a hit when every
// block hits, and byte hit ratios count the blocks that hit. Writes are
// write-allocate (as the engine in writeback mode): they install the block
// but do not count in the hit ratios. MIN evicts the block whose next read
// is farthest (a block whose next reference is a write has no useful next
// read) and does not admit a block whose next read is farther than every
// cached one's: no policy of the same capacity does better on read hits.
// FIFO is classic: a hit does not move a block.
//
// The tests (yardstick_test.go) print the yardstick table, check the
// engine's fifo policy against the ideal log of its capacity (it must hold
// what the log holds) and the advisor (package mrc) against the exact LRU
// curve; where_test.go (CACHELUN_WHERE=1) sorts the blocks LRU hits and the
// engine misses by what the engine had done with them. The short versions
// run by default; CACHELUN_LONG=1 runs the full-size ones.
//
// Nothing here is safe for concurrent use; each replay owns its cache.
package tracebench
