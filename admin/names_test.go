package admin_test

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// exportedNames gathers every metric family the daemon's collectors
// export when every kind of object is present.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	v := admintest.NewVolume("db1", "nvme0", 1<<20, 512)
	v.SetStats(admin.VolumeStats{
		BypassedRequests: map[string]uint64{"sequential": 1}, BypassedBytes: map[string]uint64{"sequential": 1},
		Errors: map[string]uint64{"backing_read": 1},
	})
	b := admintest.NewBackend([]*admintest.Volume{v}, []*admintest.Cache{admintest.NewCache("nvme0", "")})
	b.SetSessions([]admin.Session{{Transport: "iscsi", Target: "t"}})
	if _, err := admin.NewServer(admin.Config{Backend: b, Registry: reg}); err != nil {
		t.Fatal(err)
	}
	lat, err := admin.NewLatency(reg)
	if err != nil {
		t.Fatal(err)
	}
	lat.ObserveLatency("db1", admin.OpRead, time.Millisecond)
	lat.InstrumentVolume("db1", nil) // creates the error series
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

var metricName = regexp.MustCompile(`cachelun_[a-z0-9_]+`)

// baseName strips the series suffixes of histograms.
func baseName(n string, known map[string]bool) string {
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if b, ok := strings.CutSuffix(n, suffix); ok && known[b] {
			return b
		}
	}
	return n
}

// TestDocsAndDashboardNameRealMetrics: every metric docs/metrics.md and the
// Grafana dashboard use is exported, and every exported metric is
// documented.
func TestDocsAndDashboardNameRealMetrics(t *testing.T) {
	names := exportedNames(t)
	if len(names) < 25 {
		t.Fatalf("only %d metric families exported", len(names))
	}
	for _, file := range []string{"../docs/metrics.md", "../contrib/grafana/cachelun.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		used := map[string]bool{}
		for _, n := range metricName.FindAllString(string(data), -1) {
			used[baseName(n, names)] = true
		}
		for n := range used {
			if strings.HasPrefix(n, "cachelun_cluster_") {
				continue // a cluster node's, not admin's: daemon's TestDocumentedClusterMetricsExistAtStart ties them
			}
			if !names[n] {
				t.Errorf("%s uses %s, which is not exported", file, n)
			}
		}
		if strings.HasSuffix(file, ".md") {
			var missing []string
			for n := range names {
				if !used[n] {
					missing = append(missing, n)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				t.Errorf("%s does not document %v", file, missing)
			}
		}
	}
}

// TestMetricNamesLint runs the Prometheus naming linter over the exported
// metrics.
func TestMetricNamesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	v := admintest.NewVolume("db1", "nvme0", 1<<20, 512)
	b := admintest.NewBackend([]*admintest.Volume{v}, []*admintest.Cache{admintest.NewCache("nvme0", "")})
	if _, err := admin.NewServer(admin.Config{Backend: b, Registry: reg}); err != nil {
		t.Fatal(err)
	}
	lat, err := admin.NewLatency(reg)
	if err != nil {
		t.Fatal(err)
	}
	lat.ObserveLatency("db1", admin.OpRead, time.Millisecond)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
