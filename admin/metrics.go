package admin

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports the backend's state as Prometheus metrics. It reads the
// same snapshots as the API, under the same budget, so a scrape never waits
// for data-path work.
type collector struct {
	snaps *snapshotter

	volReadHits, volReadPartialHits, volReadMisses, volWriteHits *prometheus.Desc
	volReadHitBytes, volReadMissBytes, volWriteBytes             *prometheus.Desc
	volBypassedRequests, volBypassedBytes, volBypassRaces        *prometheus.Desc
	volHeldBack, cacheCarried, cacheIntentRecovered              *prometheus.Desc
	volFillBytes, volAdmissionsRefused, volGhostAdmits           *prometheus.Desc
	volReappendBytes                                             *prometheus.Desc
	volDirtyBytes, volWritebackBytes, volWritebackLag, volErrors *prometheus.Desc
	volSize, volMode, volBackingDegraded                         *prometheus.Desc
	cacheSegments, cacheDirtyBytes, cacheGCRuns, cacheGCFreed    *prometheus.Desc
	cacheGCKept                                                  *prometheus.Desc
	cacheDeferred, cacheFailed, cacheJournalLSN                  *prometheus.Desc
	cacheGhostWindow, cacheReappendCredit                        *prometheus.Desc
	sessions, inflight, snapshotAge, snapshotStale               *prometheus.Desc
	advisorHitRatio, advisorCacheHitRatio                        *prometheus.Desc
	advisorSampled, advisorCacheSampled                          *prometheus.Desc
}

func newCollector(snaps *snapshotter) *collector {
	vol := []string{"volume"}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &collector{
		snaps:                snaps,
		volReadHits:          desc("cachelun_volume_read_hits_total", "Read requests served entirely from the cache.", vol...),
		volReadPartialHits:   desc("cachelun_volume_read_partial_hits_total", "Read requests served partly from the cache.", vol...),
		volReadMisses:        desc("cachelun_volume_read_misses_total", "Read requests that missed the cache.", vol...),
		volWriteHits:         desc("cachelun_volume_write_hits_total", "Write requests that went through the cache.", vol...),
		volReadHitBytes:      desc("cachelun_volume_read_hit_bytes_total", "Bytes read from the cache.", vol...),
		volReadMissBytes:     desc("cachelun_volume_read_miss_bytes_total", "Bytes read from the backing device on misses.", vol...),
		volWriteBytes:        desc("cachelun_volume_write_bytes_total", "Bytes written by initiators.", vol...),
		volBypassedRequests:  desc("cachelun_volume_bypassed_requests_total", "Requests that bypassed the cache, by reason.", "volume", "reason"),
		volBypassedBytes:     desc("cachelun_volume_bypassed_bytes_total", "Bytes that bypassed the cache, by reason.", "volume", "reason"),
		volHeldBack:          desc("cachelun_volume_held_back_writes_total", "Writes that would have gone to the backing device but took the cache path because older dirty data was not yet written back.", vol...),
		volFillBytes:         desc("cachelun_volume_fill_bytes_total", "Bytes of read misses installed in the cache.", vol...),
		volAdmissionsRefused: desc("cachelun_volume_admissions_refused_total", "Read misses the cache policy did not cache (2q: the ghost set did not know the block).", vol...),
		volGhostAdmits:       desc("cachelun_volume_ghost_admits_total", "Read misses cached because the ghost set remembered the block (2q).", vol...),
		volReappendBytes:     desc("cachelun_volume_reappend_bytes_total", "Clean data appended again by GC because it was read since written (2q's second chance); over fill and write bytes, GC's write amplification.", vol...),
		cacheCarried:         desc("cachelun_cache_writeback_carried_keys_total", "Keys of volumes that are not attached journaled again by writeback to move past them.", "cache"),
		cacheIntentRecovered: desc("cachelun_cache_intent_recovered_keys_total", "Keys of writes acknowledged by a crashed process, recovered from the intent log at start.", "cache"),
		volBypassRaces:       desc("cachelun_volume_read_bypass_races_total", "Read misses not cached because a bypass write to the same chunk was in flight.", vol...),
		volDirtyBytes:        desc("cachelun_volume_dirty_bytes", "Bytes in the cache not yet written back.", vol...),
		volWritebackBytes:    desc("cachelun_volume_writeback_bytes_total", "Bytes written back to the backing device.", vol...),
		volWritebackLag:      desc("cachelun_writeback_lag_seconds", "Age of the oldest acknowledged write not yet on the backing device, 0 when clean (dirty data replayed at start counts from the start).", vol...),
		volErrors:            desc("cachelun_volume_errors_total", "Errors by kind.", "volume", "kind"),
		volSize:              desc("cachelun_volume_size_bytes", "Volume size.", vol...),
		volMode:              desc("cachelun_volume_mode", "Current cache mode (1 for the active mode).", "volume", "mode"),
		volBackingDegraded:   desc("cachelun_volume_backing_degraded", "1 when the backing device reports itself degraded, fenced or shrunk (RBD: its last request failed, or its lock was lost; any backing: it is smaller than the volume); 0 otherwise.", vol...),
		cacheSegments:        desc("cachelun_cache_segments", "Cache segments by state.", "cache", "state"),
		cacheDirtyBytes:      desc("cachelun_cache_dirty_bytes", "Bytes in the cache file not yet written back.", "cache"),
		cacheGhostWindow:     desc("cachelun_cache_ghost_window_blocks", "Latest refused or evicted blocks the 2q ghost set remembers at least.", "cache"),
		cacheReappendCredit:  desc("cachelun_cache_reappend_credit_bytes", "Data garbage collection may still append again instead of evicting it (2q second chance).", "cache"),
		cacheGCRuns:          desc("cachelun_cache_gc_runs_total", "Garbage collection passes.", "cache"),
		cacheGCFreed:         desc("cachelun_cache_gc_segments_freed_total", "Segments freed by garbage collection.", "cache"),
		cacheGCKept:          desc("cachelun_cache_gc_segments_kept_total", "Segments garbage collection passed and kept in place, their data mostly read (2q).", "cache"),
		cacheDeferred:        desc("cachelun_cache_deferred_writes_total", "Writes that waited for free space.", "cache"),
		cacheFailed:          desc("cachelun_cache_failed", "1 when the cache has been retired after a media failure.", "cache"),
		cacheJournalLSN:      desc("cachelun_cache_journal_lsn", "Journal log sequence number of the key head and the tails.", "cache", "pointer"),
		sessions:             desc("cachelun_iscsi_sessions", "Open sessions by transport and target.", "transport", "target"),
		inflight:             desc("cachelun_inflight_commands", "Commands being executed, by transport and target.", "transport", "target"),
		snapshotAge:          desc("cachelun_admin_snapshot_age_seconds", "Age of the state snapshot this scrape reports.", nil...),
		advisorHitRatio:      desc("cachelun_advisor_hit_ratio", "Estimated read hit ratio of the volume with the cache at size_factor times its size today (LRU miss-ratio curve, SHARDS sampling).", "volume", "size_factor"),
		advisorCacheHitRatio: desc("cachelun_advisor_cache_hit_ratio", "Estimated read hit ratio of all the cache's volumes with the cache at size_factor times its size today.", "cache", "size_factor"),
		advisorSampled:       desc("cachelun_advisor_sampled_blocks", "Distinct blocks the volume's hit ratio estimate was sampled from; under 100 every figure is rough.", "volume"),
		advisorCacheSampled:  desc("cachelun_advisor_cache_sampled_blocks", "Distinct blocks the cache's hit ratio estimate was sampled from; under 100 every figure is rough.", "cache"),
		snapshotStale:        desc("cachelun_admin_snapshot_stale", "1 when the backend did not answer within the read budget and this scrape reports an older snapshot.", nil...),
	}
}

// Describe implements prometheus.Collector. It lists the descriptors
// without reading the backend, so registering never waits for it.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.volReadHits, c.volReadPartialHits, c.volReadMisses, c.volWriteHits,
		c.volReadHitBytes, c.volReadMissBytes, c.volWriteBytes,
		c.volBypassedRequests, c.volBypassedBytes, c.volBypassRaces,
		c.volHeldBack, c.cacheCarried, c.cacheIntentRecovered,
		c.volFillBytes, c.volAdmissionsRefused, c.volGhostAdmits, c.volReappendBytes,
		c.volDirtyBytes, c.volWritebackBytes, c.volWritebackLag, c.volErrors,
		c.volSize, c.volMode, c.volBackingDegraded,
		c.cacheSegments, c.cacheDirtyBytes, c.cacheGCRuns, c.cacheGCFreed, c.cacheGCKept,
		c.cacheDeferred, c.cacheFailed, c.cacheJournalLSN,
		c.cacheGhostWindow, c.cacheReappendCredit,
		c.sessions, c.inflight, c.snapshotAge, c.snapshotStale,
		c.advisorHitRatio, c.advisorCacheHitRatio, c.advisorSampled, c.advisorCacheSampled,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap, stale, err := c.snaps.get(context.Background())
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.snapshotStale, prometheus.GaugeValue, 1)
		return
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.snapshotAge, c.snaps.clock.Now().Sub(snap.taken).Seconds())
	gauge(c.snapshotStale, boolFloat(stale))

	for _, v := range snap.volumes {
		st, n := v.Stats, v.Name
		counter(c.volReadHits, float64(st.ReadHits), n)
		counter(c.volReadPartialHits, float64(st.ReadPartialHits), n)
		counter(c.volReadMisses, float64(st.ReadMisses), n)
		counter(c.volWriteHits, float64(st.WriteHits), n)
		counter(c.volReadHitBytes, float64(st.ReadHitBytes), n)
		counter(c.volReadMissBytes, float64(st.ReadMissBytes), n)
		counter(c.volWriteBytes, float64(st.WriteBytes), n)
		for _, reason := range sortedKeys(st.BypassedRequests) {
			counter(c.volBypassedRequests, float64(st.BypassedRequests[reason]), n, reason)
		}
		for _, reason := range sortedKeys(st.BypassedBytes) {
			counter(c.volBypassedBytes, float64(st.BypassedBytes[reason]), n, reason)
		}
		counter(c.volBypassRaces, float64(st.ReadBypassRaces), n)
		counter(c.volHeldBack, float64(st.HeldBackWrites), n)
		counter(c.volFillBytes, float64(st.FillBytes), n)
		counter(c.volAdmissionsRefused, float64(st.AdmissionsRefused), n)
		counter(c.volGhostAdmits, float64(st.GhostAdmits), n)
		counter(c.volReappendBytes, float64(st.ReappendBytes), n)
		gauge(c.volDirtyBytes, float64(st.DirtyBytes), n)
		counter(c.volWritebackBytes, float64(st.WritebackBytes), n)
		gauge(c.volWritebackLag, st.WritebackLag.Seconds(), n)
		for _, kind := range sortedKeys(st.Errors) {
			counter(c.volErrors, float64(st.Errors[kind]), n, kind)
		}
		gauge(c.volSize, float64(v.Size), n)
		gauge(c.volMode, 1, n, string(v.Mode))
		gauge(c.volBackingDegraded, boolFloat(v.Backing != nil && v.Backing.State != BackingOK), n)
		adv := snap.volumeAdvice(v, DefaultAdviceTarget)
		for _, p := range adv.Points {
			gauge(c.advisorHitRatio, p.HitRatio, n, factorLabel(p.SizeFactor))
		}
		gauge(c.advisorSampled, float64(adv.SampledBlocks), n)
	}
	for _, ci := range snap.caches {
		st, n := ci.Stats, ci.Name
		gauge(c.cacheSegments, float64(st.SegmentsUsed), n, "used")
		gauge(c.cacheSegments, float64(st.SegmentsFree), n, "free")
		gauge(c.cacheSegments, float64(st.SegmentsQuarantined), n, "quarantined")
		gauge(c.cacheDirtyBytes, float64(st.DirtyBytes), n)
		counter(c.cacheGCRuns, float64(st.GCRuns), n)
		counter(c.cacheGCFreed, float64(st.GCSegmentsFreed), n)
		counter(c.cacheGCKept, float64(st.GCSegmentsKept), n)
		counter(c.cacheDeferred, float64(st.DeferredWrites), n)
		counter(c.cacheCarried, float64(st.WritebackCarriedKeys), n)
		counter(c.cacheIntentRecovered, float64(st.IntentRecoveredKeys), n)
		gauge(c.cacheFailed, boolFloat(st.Failed), n)
		gauge(c.cacheGhostWindow, float64(st.GhostWindowBlocks), n)
		gauge(c.cacheReappendCredit, float64(st.ReappendCreditBytes), n)
		gauge(c.cacheJournalLSN, float64(st.KeyHead.LSN), n, "key_head")
		gauge(c.cacheJournalLSN, float64(st.DirtyTail.LSN), n, "dirty_tail")
		gauge(c.cacheJournalLSN, float64(st.KeyTail.LSN), n, "key_tail")
		adv := snap.cacheAdvice(ci, DefaultAdviceTarget)
		for _, p := range adv.Points {
			gauge(c.advisorCacheHitRatio, p.HitRatio, n, factorLabel(p.SizeFactor))
		}
		gauge(c.advisorCacheSampled, float64(adv.SampledBlocks), n)
	}
	type tt struct{ transport, target string }
	sessions, inflight := map[tt]int{}, map[tt]int{}
	for _, t := range snap.targets {
		k := tt{t.Transport, t.Name}
		sessions[k] += 0
		inflight[k] += 0
	}
	for _, s := range snap.sessions {
		k := tt{s.Transport, s.Target}
		sessions[k]++
		inflight[k] += s.InFlight
	}
	for k, n := range sessions {
		gauge(c.sessions, float64(n), k.transport, k.target)
		gauge(c.inflight, float64(inflight[k]), k.transport, k.target)
	}
}

// factorLabel is a size factor as a label value: "0.25", "1", "4".
func factorLabel(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Latency operations recorded by InstrumentVolume.
const (
	OpRead            = "read"
	OpWrite           = "write"
	OpFlush           = "flush"
	OpDiscard         = "discard"
	OpCompareAndWrite = "compare_and_write"
	OpPrefetch        = "prefetch"
)

// LatencyBuckets are the histogram buckets (seconds) of the per-volume
// latency metric: 10 µs to 10 s, covering a DAX hit to a stalled backing
// device.
func LatencyBuckets() []float64 {
	return []float64{
		10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
		1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
		1, 2.5, 5, 10,
	}
}

// Latency records per-volume, per-operation latency histograms
// (cachelun_volume_op_duration_seconds) and error counts
// (cachelun_volume_op_errors_total). It is safe for concurrent use.
type Latency struct {
	durations *prometheus.HistogramVec
	errors    *prometheus.CounterVec
}

// NewLatency registers the latency metrics on reg.
func NewLatency(reg prometheus.Registerer) (*Latency, error) {
	l := &Latency{
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cachelun_volume_op_duration_seconds",
			Help:    "Time to complete a volume operation, as seen by the SCSI device server.",
			Buckets: LatencyBuckets(),
		}, []string{"volume", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachelun_volume_op_errors_total",
			Help: "Volume operations that returned an error.",
		}, []string{"volume", "op"}),
	}
	if err := reg.Register(l.durations); err != nil {
		return nil, err
	}
	if err := reg.Register(l.errors); err != nil {
		reg.Unregister(l.durations)
		return nil, err
	}
	return l, nil
}

// ObserveLatency records one operation. Prefer InstrumentVolume on the data
// path: it resolves the label values once instead of per call.
func (l *Latency) ObserveLatency(volume, op string, d time.Duration) {
	l.durations.WithLabelValues(volume, op).Observe(d.Seconds())
}

// Forget drops the series of a removed volume.
func (l *Latency) Forget(volume string) {
	l.durations.DeletePartialMatch(prometheus.Labels{"volume": volume})
	l.errors.DeletePartialMatch(prometheus.Labels{"volume": volume})
}
