package coreadapter_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/coreadapter"
	"github.com/cachelun/cachelun/internal/tracebench"
)

// chromium runs Debian's chromium headless with args and returns its
// stdout. As root it needs --no-sandbox; the other flags keep it off the
// network (nothing but the loopback URL it is given) and quick to start.
func chromium(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, "chromium", append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.Bytes())
	}
	return out
}

// TestStatusPageInBrowser serves the status page of a real engine whose
// volume has read a Zipf trace, renders it in headless chromium and checks
// that the advisor's plots are there and that every point of them carries
// the figures GET /v1/advice gives; it keeps a screenshot (logged) for a
// human to look at.
func TestStatusPageInBrowser(t *testing.T) {
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("chromium is not installed (Debian package chromium; .ci/run installs it): the status page is not rendered in a browser")
	}
	cfg := tracebench.EngineConfig{CacheBytes: 32 << 20}
	capacity, err := tracebench.Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr := tracebench.Zipf("zipf", 1.0, 4*capacity, 8*capacity, 1)
	e, err := tracebench.OpenEngine(cfg, tr.Blocks)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, q := range tr.Reqs {
		if err := e.Do(q); err != nil {
			t.Fatal(err)
		}
	}

	socket := filepath.Join(t.TempDir(), "admin.sock")
	srv, err := admin.NewServer(admin.Config{
		Backend: admin.BackendFuncs{
			VolumesFunc: func() []admin.VolumeAPI { return []admin.VolumeAPI{coreadapter.Volume(e.Volume(), "nvme0")} },
			CachesFunc: func() []admin.CacheAPI {
				return []admin.CacheAPI{coreadapter.Cache("nvme0", "/var/lib/cachelun/nvme0.cache", e.Cache(), nil)}
			},
		},
		SocketPath: socket, MetricsListen: "127.0.0.1:0", Version: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	select {
	case <-srv.Ready():
	case err := <-served:
		t.Fatal(err)
	}
	api, err := admin.NewClient(socket).Advice(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(api.Volumes) != 1 || len(api.Caches) != 1 || api.Volumes[0].References != uint64(len(tr.Reqs)) {
		t.Fatalf("advice: %+v", api)
	}
	url := "http://" + srv.Addr("metrics").String() + "/"

	dom := string(chromium(t, "--dump-dom", url))
	svg := regexp.MustCompile(`(?s)<svg class="advice"[^>]*aria-label="([^"]*)"[^>]*>(.*?)</svg>`)
	point := regexp.MustCompile(`<circle class="point"[^>]*data-size-factor="([^"]*)" data-bytes="([^"]*)" data-hit-ratio="([^"]*)"`)
	plots := svg.FindAllStringSubmatch(dom, -1)
	want := map[string]admin.Advice{"volume trace (cache nvme0)": api.Volumes[0], "cache nvme0 (all its volumes)": api.Caches[0]}
	if len(plots) != len(want) {
		t.Fatalf("the rendered page has %d advisor plots, want %d:\n%s", len(plots), len(want), dom)
	}
	for _, p := range plots {
		a, ok := want[p[1]]
		if !ok {
			t.Errorf("unexpected plot %q", p[1])
			continue
		}
		if !regexp.MustCompile(`<polyline class="curve"[^>]*points="[0-9., ]{100,}"`).MatchString(p[2]) || !bytes.Contains([]byte(p[2]), []byte(`class="today"`)) {
			t.Errorf("plot %q lacks its curve or today's mark", p[1])
		}
		pts := point.FindAllStringSubmatch(p[2], -1)
		if len(pts) != len(a.Points) {
			t.Fatalf("plot %q: %d points, the API has %d", p[1], len(pts), len(a.Points))
		}
		for i, m := range pts {
			f, _ := strconv.ParseFloat(m[1], 64)
			n, _ := strconv.ParseInt(m[2], 10, 64)
			hr, _ := strconv.ParseFloat(m[3], 64)
			ap := a.Points[i]
			if f != ap.SizeFactor || n != ap.Bytes || math.Abs(hr-ap.HitRatio) > 1e-12 {
				t.Errorf("plot %q point %d: factor %v, %d bytes, hit ratio %v; API: %+v", p[1], i, f, n, hr, ap)
			}
		}
		// a Zipf 1.0 trace over 4× the cache: the curve rises with size
		if !(a.Points[0].HitRatio > 0.3 && a.Points[4].HitRatio > a.Points[0].HitRatio+0.1) {
			t.Errorf("%q: implausible curve %+v", p[1], a.Points)
		}
		t.Logf("%s: %s", p[1], fmtPoints(a))
	}

	out := os.Getenv("CACHELUN_TEST_OUT")
	if out == "" {
		out = filepath.Join("..", "..", "integration", "out") // ignored by git, kept across runs
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(out, "status-page-advisor.png"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(shot)
	chromium(t, "--screenshot="+shot, "--window-size=1200,900", "--hide-scrollbars", url)
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 20000 {
		t.Fatalf("screenshot %s: %d bytes, not a PNG of a page", shot, len(png))
	}
	t.Logf("screenshot of the status page: %s (%d bytes)", shot, len(png))
}

func fmtPoints(a admin.Advice) string {
	s := ""
	for _, p := range a.Points {
		s += fmt.Sprintf(" %g×=%.3f", p.SizeFactor, p.HitRatio)
	}
	return s
}
