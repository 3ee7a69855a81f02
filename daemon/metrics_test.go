package daemon

import (
	"bytes"
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cachelun/cachelun/internal/blk"
)

// metricSum adds up every series of family name whose labels include all of
// want (histograms count their observations), from a fresh snapshot: a
// scrape whose backend read overruns its budget reports the previous
// snapshot (cachelun_admin_snapshot_stale 1), which a loaded machine
// makes happen, so such a scrape is taken again (for up to 10 s).
func metricSum(t *testing.T, d *Daemon, name string, want map[string]string) float64 {
	t.Helper()
	var mfs []*dto.MetricFamily
	for try := 0; ; try++ {
		var err error
		if mfs, err = d.registry.Gather(); err != nil {
			t.Fatalf("gather: %v", err)
		}
		if !staleScrape(mfs) {
			break
		}
		if try == 100 {
			t.Fatalf("every scrape for 10 s reported a stale snapshot")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += metricValue(m)
		}
	}
	return sum
}

// staleScrape reports whether a scrape reported an older snapshot.
func staleScrape(mfs []*dto.MetricFamily) bool {
	for _, mf := range mfs {
		if mf.GetName() == "cachelun_admin_snapshot_stale" {
			for _, m := range mf.GetMetric() {
				if metricValue(m) != 0 {
					return true
				}
			}
		}
	}
	return false
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

// The daemon's metrics follow what the host does through a LUN: rereading
// turns misses into hits, a long sequential stream is bypassed, dirty bytes
// rise with writes and fall to zero after a drain, and every operation on
// the LUN lands in the latency histograms.
func TestMetricsFollowWorkload(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	d.mu.RLock()
	lu := d.targets["iqn.2026-11.io.cachelun:unit"].LU(3)
	d.mu.RUnlock()
	if lu == nil {
		t.Fatal("LUN 3 not mapped")
	}
	vol := lu.Volume() // what the SCSI server calls: instrumented
	vl := map[string]string{"volume": "v0"}

	buf := make([]byte, 64<<10)
	if err := vol.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	misses := metricSum(t, d, "cachelun_volume_read_misses_total", vl)
	hits := metricSum(t, d, "cachelun_volume_read_hits_total", vl)
	if misses < 1 {
		t.Fatalf("first read of a cold range: %v misses", misses)
	}
	// The fill is written after the read returned: reread once it is in.
	d.mu.RLock()
	oc, ok := d.eng.cache("c0")
	d.mu.RUnlock()
	if !ok {
		t.Fatal("cache c0 not open")
	}
	oc.cache.WaitFills()
	if err := vol.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if got := metricSum(t, d, "cachelun_volume_read_hits_total", vl); got <= hits {
		t.Fatalf("rereading a filled range: hits %v -> %v", hits, got)
	}

	// Dirty bytes rise with a cached write and fall to zero after a drain.
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{0x3c}, 8192), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if got := metricSum(t, d, "cachelun_volume_dirty_bytes", vl); got <= 0 {
		t.Fatalf("dirty bytes after a writeback-mode write: %v", got)
	}
	cv, _ := d.eng.cacheVolume("v0")
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cv.Drain(dctx, nil); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if got := metricSum(t, d, "cachelun_volume_dirty_bytes", vl); got != 0 {
		t.Fatalf("dirty bytes after drain: %v", got)
	}

	// A sequential stream longer than the cutoff (4 MiB) is bypassed. Its
	// first 4 MiB are cached; a flush epoch that closes meanwhile (the
	// journal's timer) would hold the rest back behind them (C6), so they
	// are written back before the stream goes on.
	sctx := blk.WithStream(ctx, "iqn.test,i,0x1/lun3")
	chunk := bytes.Repeat([]byte{0x7e}, 256<<10)
	for off := int64(2 << 20); off < 8<<20; off += int64(len(chunk)) {
		if off == 6<<20 {
			if err := cv.Drain(dctx, nil); err != nil {
				t.Fatalf("drain: %v", err)
			}
		}
		if err := vol.WriteAt(sctx, chunk, off, false); err != nil {
			t.Fatal(err)
		}
	}
	if got := metricSum(t, d, "cachelun_volume_bypassed_bytes_total", map[string]string{"volume": "v0", "reason": "sequential"}); got <= 0 {
		t.Fatalf("sequential bypass bytes after a 6 MiB stream: %v", got)
	}

	for _, op := range []string{"read", "write"} {
		if got := metricSum(t, d, "cachelun_volume_op_duration_seconds", map[string]string{"volume": "v0", "op": op}); got < 2 {
			t.Errorf("latency histogram for %s has %v observations", op, got)
		}
	}
}
