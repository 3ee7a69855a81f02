package tracebench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// BlockSize is the cache block size of every trace (the engine's default).
const BlockSize = 4096

// EngineConfig sizes the engine under test.
type EngineConfig struct {
	CacheBytes  int64  // cache file size
	SegmentSize uint32 // bytes; default 1 MiB
	// Volume is the volume's configuration; the zero value means
	// cachecore.DefaultVolumeConfig with 4 KiB blocks and the latency
	// (congestion) bypass off: it depends on timing, the replay must not.
	Volume *cachecore.VolumeConfig
	// Policy, when set, replaces the volume configuration's policy.
	Policy cachecore.Policy
}

// Engine is a cache opened for a replay: a fresh cache file on a crash
// media (in memory, counting the bytes written to it) and one volume on a
// backend.Memory device.
type Engine struct {
	cache *cachecore.Cache
	vol   *cachecore.Volume
	media *countingMedia
	ctx   context.Context
	buf   []byte
	// usedSum and usedN: the segments in use, summed over the requests
	// since GC first ran (settled), so that a result can say how full GC
	// keeps the cache on average once it is warm.
	usedSum, usedN uint64
	settled        bool
	segBlocks      int
}

// countingMedia counts the bytes written to the cache media: the engine's
// write amplification is that over the data it installed.
type countingMedia struct {
	persist.Media
	written atomic.Int64
}

func (m *countingMedia) WriteAt(p []byte, off int64) error {
	m.written.Add(int64(len(p)))
	return m.Media.WriteAt(p, off)
}

// OpenEngine formats a cache, opens it and adds a volume of the given
// size in blocks.
func OpenEngine(cfg EngineConfig, volumeBlocks uint64) (*Engine, error) {
	if cfg.SegmentSize == 0 {
		cfg.SegmentSize = 1 << 20
	}
	m := &countingMedia{Media: persist.NewCrashMedia(cfg.CacheBytes, persist.TearPage)}
	store, err := persist.Format(m, persist.FormatOptions{SegmentSize: cfg.SegmentSize, BlockSize: BlockSize})
	if err != nil {
		return nil, err
	}
	ctx := blk.WithStream(context.Background(), "tracebench")
	// ksets close at segment switches, when full and at settle's flush,
	// never on the wall clock: the replay is the same every time.
	c, err := cachecore.Open(ctx, store, cachecore.Config{JournalFlushInterval: time.Hour})
	if err != nil {
		return nil, err
	}
	vc := cachecore.DefaultVolumeConfig()
	vc.BlockSize = BlockSize
	vc.CongestedReadThreshold, vc.CongestedWriteThreshold = 0, 0
	if cfg.Volume != nil {
		vc = *cfg.Volume
	}
	if cfg.Policy != "" {
		vc.Policy = cfg.Policy
	}
	dev := backend.NewMemory(int64(volumeBlocks) * BlockSize)
	v, err := c.AddVolume(ctx, "trace", dev, vc)
	if err != nil {
		c.Close(ctx)
		return nil, err
	}
	return &Engine{cache: c, vol: v, media: m, ctx: ctx, buf: make([]byte, 16*BlockSize), segBlocks: int(store.SegmentDataSize() / BlockSize)}, nil
}

// Close closes the cache.
func (e *Engine) Close() error { return e.cache.Close(e.ctx) }

// SegmentBlocks is the blocks of data a segment of the cache holds (the
// layout Log simulates).
func (e *Engine) SegmentBlocks() int { return e.segBlocks }

// Volume is the engine volume (tests use its advisor).
func (e *Engine) Volume() *cachecore.Volume { return e.vol }

// Cache is the engine cache.
func (e *Engine) Cache() *cachecore.Cache { return e.cache }

// overThreshold reports whether GC has work (GCThresholdPassed), counting
// the segments in use towards the occupancy once GC has run.
func (e *Engine) overThreshold() bool {
	s := e.cache.Stats()
	if e.settled {
		e.usedSum += uint64(s.SegmentsUsed)
		e.usedN++
	}
	return pastGCThreshold(s, e.cache.GCPercent())
}

// GCThresholdPassed reports whether GC has work on c: more than its
// GCPercent of the segments in use.
func GCThresholdPassed(c *cachecore.Cache) bool { return pastGCThreshold(c.Stats(), c.GCPercent()) }

func pastGCThreshold(s cachecore.CacheStats, gcPercent int) bool {
	return int(s.SegmentsUsed)*100 > int(s.Segments)*gcPercent
}

// settle is CatchUp; from the first one on, overThreshold counts the
// occupancy.
func (e *Engine) settle() error {
	e.settled = true
	return CatchUp(e.ctx, e.cache, e.vol, e.overThreshold)
}

// CatchUp runs the background work of cache c, with its volume v, to
// completion, as it would run on a real daemon between requests given
// time: the open ksets are committed (the journal flush interval would do
// it), dirty data is written back (the writeback controller would), and GC
// reclaims until over (GCThresholdPassed, or a caller's own count of it)
// is false; then GC's re-appends, which go through the fill worker, are
// installed. Without this a replay, or a test issuing requests back to
// back, would measure its own speed against the engine's timers (GC polls
// every 100 ms) rather than the policy: fills would bypass a cache that is
// full only because GC had not run yet. So the figures are the engine's
// policy with GC always on time, its best case.
func CatchUp(ctx context.Context, c *cachecore.Cache, v *cachecore.Volume, over func() bool) error {
	if err := v.Flush(ctx); err != nil {
		return err
	}
	if err := v.Drain(ctx, nil); err != nil {
		return err
	}
	cfg := cachecore.Config{} // keeps every tunable; SetConfig kicks GC and writeback
	for i := 0; i < 100000; i++ {
		if !over() {
			c.WaitFills()
			return nil
		}
		if err := c.SetConfig(cfg); err != nil {
			return err
		}
		time.Sleep(50 * time.Microsecond)
	}
	return fmt.Errorf("tracebench: GC did not get the cache under its threshold (%+v)", c.Stats())
}

// Do runs one request.
func (e *Engine) Do(q Req) error {
	if e.overThreshold() {
		if err := e.settle(); err != nil {
			return err
		}
	}
	p := e.buf[:int(q.N)*BlockSize]
	off := int64(q.Block) * BlockSize
	if q.Write {
		p[0]++ // overwrites carry new data
		return e.vol.WriteAt(e.ctx, p, off, false)
	}
	if err := e.vol.ReadAt(e.ctx, p, off); err != nil {
		return err
	}
	// As if the next request came after the fill worker's turn: the
	// replay measures the policy, not the worker's speed (a block read
	// again while its fill is queued is read from the backing device).
	e.cache.WaitFills()
	return nil
}

// EngineResult is the engine's outcome on a trace.
type EngineResult struct {
	Result
	// MediaBytes were written to the cache file (data, ksets, metadata);
	// InstalledBytes of data were put in the cache (filled read misses
	// and cached writes). Their ratio is the engine's write amplification:
	// the journal, metadata and ReappendBytes, the clean data GC appended
	// again (Policy2Q's second chance).
	MediaBytes, InstalledBytes, ReappendBytes uint64
	GCRuns, SegmentsFreed                     uint64
	Bypassed                                  map[string]uint64 // requests that skipped the cache, by reason
	// Occupancy is the mean number of segments in use (data and journal)
	// from GC's first run on, as a share of the most GC lets be used:
	// below 1 by what GC frees beyond its threshold each time it runs (0
	// when GC never ran: the trace fit).
	Occupancy float64
}

// WriteAmp is media bytes written per byte installed.
func (r EngineResult) WriteAmp() float64 { return ratio(r.MediaBytes, r.InstalledBytes) }

// ReappendAmp is GC's write amplification from re-appends: data bytes
// written per byte the host installed.
func (r EngineResult) ReappendAmp() float64 {
	return ratio(r.InstalledBytes+r.ReappendBytes, r.InstalledBytes)
}

// Replay runs the trace on a fresh engine and returns its figures.
func Replay(cfg EngineConfig, t Trace) (EngineResult, error) {
	e, err := OpenEngine(cfg, t.Blocks)
	if err != nil {
		return EngineResult{}, err
	}
	defer e.Close()
	w0 := e.media.written.Load()
	// Bytes installed: fills are counted by the engine (FillBytes); writes
	// of requests that bypassed the cache were not cached. Only
	// multi-block requests can be sequential enough to bypass (single
	// blocks in random order never are), so only those pay for the two
	// Stats calls that tell.
	var notCached uint64
	for _, q := range t.Reqs {
		var before cachecore.VolumeStats
		if q.N > 1 {
			before = e.vol.Stats()
		}
		if err := e.Do(q); err != nil {
			return EngineResult{}, err
		}
		if q.N > 1 {
			after := e.vol.Stats()
			if sumValues(after.BypassedRequests) > sumValues(before.BypassedRequests) {
				notCached += after.WriteBytes - before.WriteBytes
			}
		}
	}
	if err := e.vol.Flush(e.ctx); err != nil {
		return EngineResult{}, err
	}
	vs, cs := e.vol.Stats(), e.cache.Stats()
	r := EngineResult{MediaBytes: uint64(e.media.written.Load() - w0), GCRuns: cs.GCRuns, SegmentsFreed: cs.GCSegmentsFreed, Bypassed: vs.BypassedRequests}
	if limit := float64(int(cs.Segments) * e.cache.GCPercent() / 100); e.usedN > 0 && limit > 0 {
		r.Occupancy = float64(e.usedSum) / float64(e.usedN) / limit
	}
	r.ReadReqs = vs.ReadHits + vs.ReadPartialHits + vs.ReadMisses
	r.ReadHits = vs.ReadHits
	r.ReadBlocks = (vs.ReadHitBytes + vs.ReadMissBytes) / BlockSize
	r.ReadHitBlock = vs.ReadHitBytes / BlockSize
	r.InstalledBytes = vs.FillBytes + vs.WriteBytes - notCached
	r.ReappendBytes = vs.ReappendBytes
	return r, nil
}

func sumValues(m map[string]uint64) uint64 {
	var s uint64
	for _, v := range m {
		s += v
	}
	return s
}

// Capacity measures how many 4 KiB blocks the engine's cache holds at
// most: distinct blocks are read into a fresh cache until GC would start
// (more than GCPercent of the segments in use), each checked with Explain
// as soon as it is read (counted once it is cached). The count is taken
// block by block because GC starts as the last read crosses the
// threshold, and evicts the oldest blocks while a count afterwards would
// still be going. The kset segments, the segments kept free for the
// journal and GC's headroom (100 - GCPercent) are what the engine spends
// beyond its data.
func Capacity(cfg EngineConfig) (int, error) {
	cfg.Policy = cachecore.PolicyFIFO // every read admitted
	blocks := uint64(cfg.CacheBytes / BlockSize * 2)
	e, err := OpenEngine(cfg, blocks)
	if err != nil {
		return 0, err
	}
	defer e.Close()
	held := 0
	// GC's first step may free a journal segment without evicting any
	// data, and then the count would go on: when the machine is slow it
	// can run before overThreshold sees the threshold crossed, so a run
	// of GC ends the count too.
	for n := uint64(0); n < blocks && !e.overThreshold() && e.cache.Stats().GCRuns == 0; n++ {
		// every other block: never sequential, so the sequential cutoff
		// stays out of it. Prefetch waits for its fill; no block is
		// evicted before the threshold.
		off := int64(2*n%blocks) * BlockSize
		if err := e.vol.Prefetch(e.ctx, off, BlockSize); err != nil {
			return 0, err
		}
		if e.vol.Explain(off).State == "hit" {
			held++
		}
	}
	return held, nil
}
