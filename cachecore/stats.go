package cachecore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// VolumeStats are a volume's counters since it was added.
type VolumeStats struct {
	// Requests: a read is a hit when every byte came from the cache, a
	// partial hit when some did, a miss when none did. WriteHits counts
	// writes that landed in the cache (dirty or writethrough copies not
	// included).
	ReadHits, ReadPartialHits, ReadMisses, WriteHits uint64
	ReadHitBytes, ReadMissBytes, WriteBytes          uint64
	// Requests and bytes that skipped the cache, by reason: "sequential",
	// "congestion", "full", "mode".
	BypassedRequests, BypassedBytes map[string]uint64
	// ReadBypassRaces counts read misses not cached because a bypass
	// write was in flight on the same 32 MiB chunk.
	ReadBypassRaces uint64
	// FillBytes counts bytes of read misses installed in the cache (the
	// fill worker writes them after the read returned); FillsDropped
	// counts read-miss fills not cached because the fill queue was full
	// (the worker was behind: admission gives way to the reads).
	FillBytes, FillsDropped uint64
	// Policy2Q (policy.go): AdmissionsRefused are read misses not filled
	// because the ghost set did not know the block (the cache was full);
	// GhostAdmits were filled because it did; ReappendBytes is clean
	// data GC appended again (second chance) instead of evicting it.
	AdmissionsRefused, GhostAdmits, ReappendBytes uint64
	// HeldBack counts writes that would have gone to the backing device
	// directly (bypass, writethrough) but took the cache path because
	// dirty data of an older flush epoch was not yet written back
	// (C6: the backing device stays flush-consistent).
	HeldBack uint64
	// DirtyBytes is the data of this volume dirty in the index: bytes
	// whose newest data is in the cache and not yet written back (an
	// overwrite of dirty data counts once; writeback, discards and
	// tombstones subtract).
	DirtyBytes     int64
	WritebackBytes uint64
	// CopySharedBytes counts bytes CopyFrom copied into the volume by
	// sharing cached data (new keys, no data moved); CopyMovedBytes the
	// bytes it read from the source and wrote as dirty data.
	CopySharedBytes, CopyMovedBytes uint64
	// WritebackLag is the age of the oldest acknowledged write of the
	// volume whose data is not yet on the backing device, 0 when clean.
	// Kept per kset: it may exceed the oldest write's age by the time
	// writeback takes for one kset. Dirty data replayed at Open counts as
	// written at Open (the log keeps no times): after a restart the lag
	// is at most the time since Open, a lower bound (see dirtyAges).
	WritebackLag time.Duration
	Errors       map[string]uint64 // by kind: backing_read, backing_write, backing_flush, backing_discard, cache_media, writeback
}

// CacheStats are cache-wide counters and positions.
type CacheStats struct {
	Segments, SegmentsUsed, SegmentsFree, SegmentsQuarantined uint32
	KeyHead, DirtyTail, KeyTail                               persist.Tail
	GCRuns, GCSegmentsFreed                                   uint64
	// GCSegmentsKept counts the segments GC passed and kept in place
	// (2q: their data was mostly read; policy.go), their keys journaled
	// again.
	GCSegmentsKept uint64
	DeferredWrites uint64 // writes that waited for free space
	// WritebackCarriedKeys counts keys of volumes that are not attached
	// that writeback journaled again to move past them.
	WritebackCarriedKeys uint64
	// IntentRecoveredKeys counts keys recovered from the intent log at
	// Open (writes acknowledged by a process that crashed).
	IntentRecoveredKeys uint64
	// DirtyBytes sums the volumes' DirtyBytes (bytes dirty in the index),
	// attached or not.
	DirtyBytes    int64
	Failed        bool
	FailureReason string
	// DataCRCErrors counts cache data found failing its checksum (read
	// hits and writeback, caches with data CRCs).
	DataCRCErrors uint64
	// Detached: Detach took the cache out of service; its volumes use
	// their backing devices alone.
	Detached bool
	// GhostWindowBlocks is the ghost set's window (2q): it remembers at
	// least this many of the latest blocks refused or evicted. It widens
	// as the ghost set admits blocks and narrows as blocks GC evicted
	// although they were read come back.
	GhostWindowBlocks int64
	// ReappendCreditBytes is the data GC may still append again instead
	// of evicting it (2q's second chance; credit earned as the host
	// installs data, up to a fifth of the data area).
	ReappendCreditBytes int64
}

type volCounters struct {
	readHits, readPartialHits, readMisses, writeHits atomic.Uint64
	readHitBytes, readMissBytes, writeBytes          atomic.Uint64
	bypassReq, bypassBytes                           [numReasons]atomic.Uint64
	readBypassRaces                                  atomic.Uint64
	fillBytes, fillsDropped                          atomic.Uint64
	admissionsRefused, ghostAdmits, reappendBytes    atomic.Uint64
	// cachedWriteBytes: the part of writeBytes written into the cache
	// (not bypassed): with fillBytes, what earns 2q's re-append credit.
	cachedWriteBytes                atomic.Uint64
	writebackBytes                  atomic.Uint64
	heldBack                        atomic.Uint64
	copySharedBytes, copyMovedBytes atomic.Uint64
	// wbUnmarked: bytes the writeback pass in flight has written but not
	// yet marked clean (they still count in dirtyBytes), for Progress.
	wbUnmarked atomic.Int64
	// progMu: a pass marks its keys clean and uncounts wbUnmarked under
	// the write lock, so Progress never sees one without the other.
	progMu sync.RWMutex

	errMu  sync.Mutex
	errors map[string]uint64
}

func (s *volCounters) bypass(reason int, n int64) {
	s.bypassReq[reason].Add(1)
	s.bypassBytes[reason].Add(uint64(n))
}

func (s *volCounters) addError(kind string) {
	s.errMu.Lock()
	s.errors[kind]++
	s.errMu.Unlock()
}

func (s *volCounters) countRead(a *readAcct) {
	switch {
	case a.missBytes == 0:
		s.readHits.Add(1)
	case a.hitBytes == 0:
		s.readMisses.Add(1)
	default:
		s.readPartialHits.Add(1)
	}
	s.readHitBytes.Add(a.hitBytes)
	s.readMissBytes.Add(a.missBytes)
}

// Stats returns the volume's counters.
func (v *Volume) Stats() VolumeStats {
	s := &v.stats
	out := VolumeStats{
		ReadHits: s.readHits.Load(), ReadPartialHits: s.readPartialHits.Load(), ReadMisses: s.readMisses.Load(),
		WriteHits: s.writeHits.Load(), ReadHitBytes: s.readHitBytes.Load(), ReadMissBytes: s.readMissBytes.Load(),
		WriteBytes: s.writeBytes.Load(), ReadBypassRaces: s.readBypassRaces.Load(), HeldBack: s.heldBack.Load(),
		FillBytes: s.fillBytes.Load(), FillsDropped: s.fillsDropped.Load(),
		AdmissionsRefused: s.admissionsRefused.Load(), GhostAdmits: s.ghostAdmits.Load(), ReappendBytes: s.reappendBytes.Load(),
		CopySharedBytes: s.copySharedBytes.Load(), CopyMovedBytes: s.copyMovedBytes.Load(),
		BypassedRequests: make(map[string]uint64), BypassedBytes: make(map[string]uint64),
		DirtyBytes: max(v.st.dirtyBytes.Load(), 0), WritebackBytes: s.writebackBytes.Load(),
		Errors: make(map[string]uint64),
	}
	for i := range numReasons {
		out.BypassedRequests[reasonNames[i]] = s.bypassReq[i].Load()
		out.BypassedBytes[reasonNames[i]] = s.bypassBytes[i].Load()
	}
	s.errMu.Lock()
	for k, n := range s.errors {
		out.Errors[k] = n
	}
	s.errMu.Unlock()
	out.WritebackLag = v.c.writebackLag(v.st)
	return out
}

// Stats returns the cache-wide counters.
func (c *Cache) Stats() CacheStats {
	free, quar := c.segs.counts()
	n := uint32(len(c.segs.segs))
	s := CacheStats{
		Segments: n, SegmentsFree: free, SegmentsQuarantined: quar, SegmentsUsed: n - free - quar,
		KeyHead: c.journal.Head(), DirtyTail: c.store.DirtyTail(), KeyTail: c.store.KeyTail(),
		GCRuns: c.stats.gcRuns.Load(), GCSegmentsFreed: c.stats.gcSegmentsFreed.Load(), GCSegmentsKept: c.stats.gcSegmentsKept.Load(),
		DeferredWrites:       c.stats.deferredWrites.Load(),
		WritebackCarriedKeys: c.stats.writebackCarried.Load(), IntentRecoveredKeys: c.stats.intentRecovered.Load(), DirtyBytes: c.dirtyBytes(),
		Failed: c.failed.Load(), DataCRCErrors: c.stats.dataCRCErrors.Load(), Detached: c.detached.Load(),
		GhostWindowBlocks: c.policy.ghost.limit.Load(), ReappendCreditBytes: c.policy.credit.Load(),
	}
	if s.Failed {
		c.failMu.Lock()
		s.FailureReason = c.failReason
		c.failMu.Unlock()
	}
	return s
}

func (c *Cache) dirtyBytes() int64 {
	var t int64
	for i := range c.vols {
		if vs := c.vols[i].Load(); vs != nil {
			t += max(vs.dirtyBytes.Load(), 0)
		}
	}
	return t
}
