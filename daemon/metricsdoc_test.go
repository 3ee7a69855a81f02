package daemon

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cachelun/cachelun/internal/testkit"
)

// documentedMetric is one row of a metric table in docs/metrics.md.
type documentedMetric struct {
	name   string
	label  string   // the label in braces after the name ("" when none)
	values []string // the values of label the row lists
}

// parseMetricDocs reads the metric tables of docs/metrics.md: rows that
// start with "| `cachelun_…`". The values of a braced label are the
// backticked words of the row's last column other than the label itself
// ("`reason` = `sequential`, `congestion`, …").
func parseMetricDocs(t *testing.T, path string) []documentedMetric {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(cachelun_[a-z0-9_]+)(?:\\{([a-z_]+)\\})?` \\|")
	word := regexp.MustCompile("`([a-z_]+)`")
	var out []documentedMetric
	for _, line := range strings.Split(string(raw), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		dm := documentedMetric{name: m[1], label: m[2]}
		if dm.label != "" {
			cols := strings.Split(line, "|")
			for _, w := range word.FindAllStringSubmatch(cols[len(cols)-2], -1) {
				if w[1] != dm.label {
					dm.values = append(dm.values, w[1])
				}
			}
		}
		out = append(out, dm)
	}
	if len(out) < 20 {
		t.Fatalf("%s: only %d metric rows parsed", path, len(out))
	}
	return out
}

// Every metric docs/metrics.md documents exists on a fresh daemon, before
// any I/O, session or error: with every label value the docs list, and
// counters at zero. Every metric the daemon exports and every metric the
// Grafana dashboard queries is documented. The docs are the list; this
// test ties the registry and the dashboard to it.
func TestDocumentedMetricsExistAtStart(t *testing.T) {
	docs := parseMetricDocs(t, "../docs/metrics.md")
	dir := t.TempDir()
	d, err := startDaemon(context.Background(), testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())

	// the first scrape may find no snapshot yet (the engine answers
	// within the read budget or the scrape reports only staleness)
	var families map[string]*dto.MetricFamily
	testkit.WaitFor(t, 5*time.Second, "a scrape with the engine's snapshot (cachelun_volume_size_bytes)", func() bool {
		mfs, err := d.registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		families = map[string]*dto.MetricFamily{}
		for _, mf := range mfs {
			families[mf.GetName()] = mf
		}
		return families["cachelun_volume_size_bytes"] != nil
	})
	documented := map[string]bool{}
	for _, dm := range docs {
		documented[dm.name] = true
		if strings.HasPrefix(dm.name, "cachelun_cluster_") {
			continue // a cluster node's: TestDocumentedClusterMetricsExistAtStart
		}
		mf := families[dm.name]
		if mf == nil {
			t.Errorf("%s is documented but a fresh daemon does not export it", dm.name)
			continue
		}
		for _, v := range dm.values {
			found := false
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == dm.label && lp.GetValue() == v {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("%s{%s=%q} is documented but a fresh daemon does not export it", dm.name, dm.label, v)
			}
		}
		if mf.GetType() == dto.MetricType_COUNTER {
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("%s %v: %v on a fresh daemon, want 0", dm.name, m.GetLabel(), v)
				}
			}
		}
	}
	for name := range families {
		if strings.HasPrefix(name, "cachelun_") && !documented[name] {
			t.Errorf("%s is exported but not documented in docs/metrics.md", name)
		}
	}
	// the dashboard queries only documented metrics
	dash, err := os.ReadFile("../contrib/grafana/cachelun.json")
	if err != nil {
		t.Fatal(err)
	}
	var queried []string
	for _, n := range regexp.MustCompile(`cachelun_[a-z0-9_]+`).FindAllString(string(dash), -1) {
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && documented[b] {
				n = b
			}
		}
		if !slices.Contains(queried, n) {
			queried = append(queried, n)
		}
	}
	for _, n := range queried {
		if !documented[n] {
			t.Errorf("contrib/grafana/cachelun.json queries %s, which docs/metrics.md does not document", n)
		}
	}
}
