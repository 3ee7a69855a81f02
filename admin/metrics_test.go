package admin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func scrape(addr string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("scrape: %d %s", resp.StatusCode, body)
	}
	return string(body), nil
}

// sample returns the value of the series whose text form is series, e.g.
// `cachelun_volume_read_hits_total{volume="db1"}`.
func sample(t *testing.T, body, series string) string {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	t.Errorf("series %s not in scrape", series)
	return ""
}

func TestMetricsFollowStats(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, func(c *admin.Config) { c.Registry = reg; c.MetricsListen = "127.0.0.1:0" })
	addr := f.srv.Addr("metrics").String()
	body, err := scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]string{
		`cachelun_volume_read_hits_total{volume="db1"}`:                                       "90",
		`cachelun_volume_read_misses_total{volume="db1"}`:                                     "10",
		`cachelun_volume_bypassed_bytes_total{reason="sequential",volume="db1"}`:              "1.6777216e+07",
		`cachelun_volume_dirty_bytes{volume="db1"}`:                                           "8.388608e+06",
		`cachelun_writeback_lag_seconds{volume="db1"}`:                                        "3",
		`cachelun_volume_mode{mode="writeback",volume="db1"}`:                                 "1",
		`cachelun_cache_dirty_bytes{cache="nvme0"}`:                                           "8.388608e+06",
		`cachelun_cache_segments{cache="nvme0",state="used"}`:                                 "60",
		`cachelun_cache_failed{cache="nvme0"}`:                                                "0",
		`cachelun_iscsi_sessions{target="iqn.2026-11.io.cachelun:demo",transport="iscsi"}`:    "1",
		`cachelun_inflight_commands{target="iqn.2026-11.io.cachelun:demo",transport="iscsi"}`: "3",
		`cachelun_admin_snapshot_stale`:                                                       "0",
	} {
		if got := sample(t, body, series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}
	if !strings.Contains(body, "# TYPE cachelun_volume_read_hits_total counter") ||
		!strings.Contains(body, "# TYPE cachelun_cache_dirty_bytes gauge") {
		t.Errorf("metric types missing")
	}

	// Counters move as the engine's stats do.
	f.db1.UpdateStats(func(s *admin.VolumeStats) {
		s.ReadHits += 15
		s.BypassedBytes["congestion"] = 4096
		s.Errors = map[string]uint64{"backing_read": 2}
	})
	f.cache.SetStats(admin.CacheStats{Failed: true, SegmentsUsed: 61})
	body, err = scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]string{
		`cachelun_volume_read_hits_total{volume="db1"}`:                          "105",
		`cachelun_volume_bypassed_bytes_total{reason="congestion",volume="db1"}`: "4096",
		`cachelun_volume_errors_total{kind="backing_read",volume="db1"}`:         "2",
		`cachelun_cache_failed{cache="nvme0"}`:                                   "1",
		`cachelun_cache_segments{cache="nvme0",state="used"}`:                    "61",
	} {
		if got := sample(t, body, series); got != want {
			t.Errorf("after update %s = %s, want %s", series, got, want)
		}
	}
	// The same metrics are on the socket.
	status, _, sockBody := f.rawRequest(t, "GET", "/metrics", "")
	if status != 200 || !strings.Contains(string(sockBody), `cachelun_volume_read_hits_total{volume="db1"} 105`) {
		t.Errorf("socket /metrics: %d", status)
	}
	// The registry is the injected one, not the global default.
	if mfs, err := prometheus.DefaultGatherer.Gather(); err == nil {
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "cachelun_") {
				t.Errorf("%s registered globally", mf.GetName())
			}
		}
	}
}

func TestNewServerRejectsDuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := admin.Config{Backend: fakeEmptyBackend(), Registry: reg}
	if _, err := admin.NewServer(b); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.NewServer(b); err == nil {
		t.Fatal("second server on the same registry registered its collector twice")
	}
}

func histogram(t *testing.T, reg *prometheus.Registry, volume, op string) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cachelun_volume_op_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["volume"] == volume && labels["op"] == op {
				return m.GetHistogram()
			}
		}
	}
	return nil
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, volume, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["volume"] == volume && labels["op"] == op {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func TestInstrumentVolumeRecordsLatency(t *testing.T) {
	reg := prometheus.NewRegistry()
	lat, err := admin.NewLatency(reg)
	if err != nil {
		t.Fatal(err)
	}
	mv, err := memvol.New(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	v := lat.InstrumentVolume("db1", mv)
	ctx := context.Background()
	buf := make([]byte, 4096)
	for range 3 {
		if err := v.WriteAt(ctx, buf, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, buf, 1<<20); err == nil { // past the end
		t.Fatal("read past the end succeeded")
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if v.Size() != 1<<20 || v.BlockSize() != 512 {
		t.Errorf("geometry not forwarded")
	}
	for op, want := range map[string]uint64{admin.OpWrite: 3, admin.OpRead: 2, admin.OpFlush: 1} {
		h := histogram(t, reg, "db1", op)
		if h == nil || h.GetSampleCount() != want {
			t.Errorf("%s: histogram %v, want %d samples", op, h, want)
		}
	}
	if got := counterValue(t, reg, "cachelun_volume_op_errors_total", "db1", admin.OpRead); got != 1 {
		t.Errorf("read errors %v, want 1", got)
	}
	if got := counterValue(t, reg, "cachelun_volume_op_errors_total", "db1", admin.OpWrite); got != 0 {
		t.Errorf("write errors %v, want 0", got)
	}
	lat.ObserveLatency("db2", admin.OpRead, 3*time.Millisecond)
	if h := histogram(t, reg, "db2", admin.OpRead); h == nil || h.GetSampleCount() != 1 || h.GetSampleSum() != 0.003 {
		t.Errorf("ObserveLatency: %v", h)
	}
	lat.Forget("db2")
	if h := histogram(t, reg, "db2", admin.OpRead); h != nil {
		t.Errorf("series of a forgotten volume still exported")
	}
	if _, err := admin.NewLatency(reg); err == nil {
		t.Error("registering the latency metrics twice succeeded")
	}
	var are prometheus.AlreadyRegisteredError
	if _, err := admin.NewLatency(reg); !errors.As(err, &are) {
		t.Errorf("second registration error %v", err)
	}
}

func BenchmarkInstrumentedRead(b *testing.B) {
	reg := prometheus.NewRegistry()
	lat, err := admin.NewLatency(reg)
	if err != nil {
		b.Fatal(err)
	}
	mv, _ := memvol.New(1<<20, 512)
	buf := make([]byte, 4096)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		v    blk.Volume
	}{{"plain", mv}, {"instrumented", lat.InstrumentVolume("db1", mv)}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tc.v.ReadAt(ctx, buf, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGather measures one scrape's collection with 100 volumes.
func BenchmarkGather(b *testing.B) {
	var vols []*admintest.Volume
	for i := range 100 {
		v := admintest.NewVolume(fmt.Sprintf("vol%03d", i), "nvme0", 1<<30, 512)
		v.SetStats(admin.VolumeStats{ReadHits: 1, BypassedBytes: map[string]uint64{"sequential": 1, "congestion": 2}})
		vols = append(vols, v)
	}
	reg := prometheus.NewRegistry()
	if _, err := admin.NewServer(admin.Config{Backend: admintest.NewBackend(vols, []*admintest.Cache{admintest.NewCache("nvme0", "")}), Registry: reg}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) == 0 {
			b.Fatal(err)
		}
	}
}
