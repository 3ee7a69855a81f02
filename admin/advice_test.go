package admin_test

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
)

// The advisor's figures reach the API, the metrics and the status page
// from the backend's curve: hit ratios at 0.25×–4× today's size, the size
// for a target, and errors for a bad target or an unknown volume.
func TestAdviceAPIMetricsAndPage(t *testing.T) {
	f := newFixture(t, func(c *admin.Config) { c.MetricsListen = "127.0.0.1:0" })
	// today 256 MiB; hit ratio grows linearly to 0.8 at 512 MiB
	f.db1.SetSizing(admintest.LinearSizing(256<<20, 512<<20, 0.8))
	f.cache.SetSizing(admintest.LinearSizing(256<<20, 1<<30, 0.6))
	ctx := context.Background()

	r, err := f.client.Advice(ctx, "db1", 0.6)
	if err != nil {
		t.Fatal(err)
	}
	a := r.Volumes[0]
	if a.Volume != "db1" || a.Cache != "nvme0" || a.CacheBytes != 256<<20 || a.BlockSize != 4096 {
		t.Fatalf("advice %+v", a)
	}
	want := []float64{0.1, 0.2, 0.4, 0.8, 0.8}
	for i, p := range a.Points {
		if p.SizeFactor != admin.AdviceFactors()[i] || math.Abs(p.HitRatio-want[i]) > 1e-9 || p.Bytes != int64(p.SizeFactor*(256<<20)) {
			t.Errorf("point %d: %+v, want factor %v hit ratio %v", i, p, admin.AdviceFactors()[i], want[i])
		}
	}
	if !a.TargetReachable || a.TargetBytes != 384<<20 || a.Target != 0.6 {
		t.Errorf("target: %v %d %v, want 0.6 reachable at 384 MiB", a.Target, a.TargetBytes, a.TargetReachable)
	}
	if a.SampledBlocks != 10000 {
		t.Errorf("sampled blocks %d, want the curve's 10000", a.SampledBlocks)
	}
	if a.ResolvedFromBytes != 10000*4096 {
		t.Errorf("resolved from %d bytes, want 100 sampled blocks at 1 %% of 4 KiB blocks", a.ResolvedFromBytes)
	}
	if len(a.Curve) != 25 || a.Curve[12].SizeFactor != 1 {
		t.Errorf("curve of %d points, middle %+v", len(a.Curve), a.Curve[12])
	}
	r, err = f.client.Advice(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Volumes) != 2 || len(r.Caches) != 1 || r.Volumes[0].Target != admin.DefaultAdviceTarget {
		t.Fatalf("all advice: %d volumes, %d caches, target %v", len(r.Volumes), len(r.Caches), r.Volumes[0].Target)
	}
	if c := r.Caches[0]; c.Cache != "nvme0" || c.TargetReachable || math.Abs(c.Points[4].HitRatio-0.6) > 1e-9 {
		t.Errorf("cache advice %+v (0.9 is above its 0.6)", c)
	}
	// logs has no curve: zeros, not an error
	if l := r.Volumes[1]; l.Volume != "logs" || l.References != 0 || l.Points[2].HitRatio != 0 {
		t.Errorf("logs advice %+v", l)
	}
	for _, path := range []string{"/v1/volumes/db1/advice?target=1.5", "/v1/advice?target=x"} {
		if code, _, body := f.rawRequest(t, "GET", path, ""); code != http.StatusBadRequest || !strings.Contains(string(body), "bad_request") {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	if code, _, _ := f.rawRequest(t, "GET", "/v1/volumes/nope/advice", ""); code != http.StatusNotFound {
		t.Errorf("unknown volume: %d", code)
	}

	body, err := scrape(f.srv.Addr("metrics").String())
	if err != nil {
		t.Fatal(err)
	}
	for series, v := range map[string]string{
		`cachelun_advisor_hit_ratio{size_factor="2",volume="db1"}`:           "0.8",
		`cachelun_advisor_hit_ratio{size_factor="0.25",volume="db1"}`:        "0.1",
		`cachelun_advisor_hit_ratio{size_factor="1",volume="logs"}`:          "0",
		`cachelun_advisor_cache_hit_ratio{cache="nvme0",size_factor="4"}`:    "0.6",
		`cachelun_advisor_cache_hit_ratio{cache="nvme0",size_factor="0.25"}`: "0.0375",
		`cachelun_advisor_sampled_blocks{volume="db1"}`:                      "10000",
		`cachelun_advisor_sampled_blocks{volume="logs"}`:                     "0",
		`cachelun_advisor_cache_sampled_blocks{cache="nvme0"}`:               "10000",
	} {
		if got := sample(t, body, series); got != v {
			t.Errorf("%s = %s, want %s", series, got, v)
		}
	}

	page := statusPage(t, f)
	for _, want := range []string{`<svg class="advice"`, `data-size-factor="2" data-bytes="536870912" data-hit-ratio="0.8"`, "today 256.0 MiB", "no size reaches 90%", "volume db1 (cache nvme0)"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(page, "sampled so far") {
		t.Errorf("status page calls a curve from 10000 sampled blocks rough")
	}
	// A curve from a few sampled blocks is rough at every size, and the
	// page says so under its plot.
	few := admintest.LinearSizing(256<<20, 512<<20, 0.8)
	few.References, few.SampledBlocks = 300, 3
	f.db1.SetSizing(few)
	r, err = f.client.Advice(ctx, "db1", 0)
	if err != nil || r.Volumes[0].SampledBlocks != 3 || !r.Volumes[0].Rough() {
		t.Fatalf("advice from 3 sampled blocks: %v %+v", err, r)
	}
	if page := statusPage(t, f); !strings.Contains(page, "(rough: 3 blocks sampled so far)") {
		t.Errorf("status page does not call a curve from 3 sampled blocks rough")
	}
}

func statusPage(t *testing.T, f *fixture) string {
	t.Helper()
	resp, err := http.Get("http://" + f.srv.Addr("metrics").String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
