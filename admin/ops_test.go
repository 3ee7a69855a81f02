package admin_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/prometheus/client_golang/prometheus"
)

// stats reset: the API's counters count from the reset, gauges and
// /metrics are untouched, a counter that restarted below its baseline
// counts from its restart, and a volume without a baseline shows its
// counters as they are.
func TestStatsReset(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, func(c *admin.Config) { c.Registry = reg; c.MetricsListen = "127.0.0.1:0" })
	ctx := context.Background()
	f.cache.SetStats(admin.CacheStats{Segments: 100, SegmentsUsed: 60, SegmentsFree: 40, DirtyBytes: 8 << 20, GCRuns: 7, DeferredWrites: 3})
	st, err := f.client.Status(ctx)
	if err != nil || st.CountersSince != nil {
		t.Fatalf("before any reset: %v, counters_since %v", err, st.CountersSince)
	}
	r, err := f.client.StatsReset(ctx)
	if err != nil || r.Volumes != 2 || r.Caches != 1 {
		t.Fatalf("reset: %+v %v", r, err)
	}
	f.db1.UpdateStats(func(s *admin.VolumeStats) {
		s.ReadHits += 3
		s.ReadMisses += 1
		s.ReadHitBytes += 3 << 10
		s.BypassedRequests["sequential"] += 2
		s.Errors = map[string]uint64{"backing_read": 1}
		s.DirtyBytes = 9 << 20
	})
	f.cache.SetStats(admin.CacheStats{Segments: 100, SegmentsUsed: 61, SegmentsFree: 39, DirtyBytes: 9 << 20, GCRuns: 2, DeferredWrites: 5})
	vr, err := f.client.Volume(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	v := vr.Volume
	if v.Stats.ReadHits != 3 || v.Stats.ReadMisses != 1 || v.Stats.ReadHitBytes != 3<<10 || v.Stats.BypassedRequests["sequential"] != 2 ||
		v.Stats.Errors["backing_read"] != 1 || v.ReadHitRatio != 0.75 {
		t.Errorf("counters since the reset: %+v ratio %v", v.Stats, v.ReadHitRatio)
	}
	if v.Stats.DirtyBytes != 9<<20 {
		t.Errorf("a gauge was adjusted: dirty %d", v.Stats.DirtyBytes)
	}
	if vr.CountersSince == nil || !vr.CountersSince.Equal(r.ResetAt) {
		t.Errorf("counters_since %v, reset at %v", vr.CountersSince, r.ResetAt)
	}
	cr, err := f.client.Caches(ctx)
	if err != nil || len(cr.Caches) != 1 {
		t.Fatal(err)
	}
	// GC runs fell below the baseline (7 → 2): the counter restarted
	if c := cr.Caches[0].Stats; c.GCRuns != 2 || c.DeferredWrites != 2 || c.SegmentsUsed != 61 {
		t.Errorf("cache counters since the reset: %+v", c)
	}
	// /metrics keeps counting from the start
	body, err := scrape(f.srv.Addr("metrics").String())
	if err != nil {
		t.Fatal(err)
	}
	if got := sample(t, body, `cachelun_volume_read_hits_total{volume="db1"}`); got != "93" {
		t.Errorf("/metrics read hits %s after a reset, want 93 (never reset)", got)
	}
	// the status page shows what status shows
	page, err := scrapePath(f.srv.Addr("metrics").String(), "/")
	if err != nil || !strings.Contains(page, "75.0%") {
		t.Errorf("status page after a reset: %v\n%s", err, page)
	}
}

// A backend that cannot print its configuration answers 404 not_found.
func TestConfigUnsupported(t *testing.T) {
	f := newFixture(t)
	_, err := f.client.Config(context.Background(), false)
	var apiErr *admin.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Code != "not_found" {
		t.Errorf("config of a backend without ConfigSource: %v", err)
	}
}

func scrapePath(addr, path string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}
