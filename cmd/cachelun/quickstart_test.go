package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/conf"
)

var metricsURL = regexp.MustCompile(`metrics=(http://127\.0\.0\.1:[0-9]+/metrics)`)

// serveInBackground runs `cachelun serve args...` until the returned stop
// is called; stop returns the exit code. It waits (bounded) for the ready
// line and fails the test if the daemon exits first.
func serveInBackground(t *testing.T, args ...string) (log *lockedBuffer, stop func() int) {
	t.Helper()
	log = &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- runServe(ctx, args, io.Discard, log) }()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(log.String(), "msg=\"cachelun ready\"") {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("serve exited with %d before it was ready:\n%s", code, log.String())
		case <-deadline:
			cancel()
			<-done
			t.Fatalf("serve not ready after 30s:\n%s", log.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	var once sync.Once
	code := 0
	stop = func() int {
		once.Do(func() { cancel(); code = <-done })
		return code
	}
	t.Cleanup(func() { stop() })
	return log, stop
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	return string(body)
}

// The embedded default serves /metrics and the status page on
// 127.0.0.1:9420; --metrics moves it (port 0 here: tests run daemons side
// by side) and the start log names the URL.
func TestQuickStartMetrics(t *testing.T) {
	if got := conf.Default().Global.MetricsListen; got != "127.0.0.1:9420" {
		t.Errorf("embedded default metrics_listen %q, want 127.0.0.1:9420", got)
	}
	dir := t.TempDir()
	log, stop := serveInBackground(t, "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
	m := metricsURL.FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("no metrics URL in the start log:\n%s", log.String())
	}
	if body := httpGet(t, m[1]); !strings.Contains(body, `cachelun_volume_size_bytes{volume="demo"} 1.073741824e+09`) {
		t.Errorf("/metrics lacks the demo volume:\n%s", body)
	}
	if page := httpGet(t, strings.TrimSuffix(m[1], "metrics")); !strings.Contains(page, "demo") {
		t.Errorf("status page lacks the demo volume:\n%s", page)
	}
	// the admin verbs find this daemon by its data dir
	var out, errb bytes.Buffer
	if code := cli.Status(context.Background(), []string{"--data-dir", dir}, &out, &errb); code != 0 || !strings.Contains(out.String(), "demo") {
		t.Errorf("status --data-dir: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if code := stop(); code != 0 {
		t.Errorf("exit %d:\n%s", code, log.String())
	}
}

func TestServeMetricsOffAndTaken(t *testing.T) {
	log, stop := serveInBackground(t, "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--metrics", "off")
	if !strings.Contains(log.String(), "metrics=off") {
		t.Errorf("--metrics off: start log:\n%s", log.String())
	}
	if code := stop(); code != 0 {
		t.Errorf("exit %d", code)
	}

	// a taken port fails the start and names the flag that moves it
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var errb bytes.Buffer
	code := runServe(context.Background(), []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--metrics", l.Addr().String()}, io.Discard, &errb)
	if code != 1 || !strings.Contains(errb.String(), l.Addr().String()) || !strings.Contains(errb.String(), "address already in use") ||
		!strings.Contains(errb.String(), "serve --metrics HOST:PORT moves it, --metrics off disables it") {
		t.Errorf("metrics port taken: exit %d\n%s", code, errb.String())
	}

	for _, bad := range []string{"9420", "127.0.0.1:99999", ":9420", "on"} {
		errb.Reset()
		if code := runServe(context.Background(), []string{"--metrics", bad}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "--metrics") {
			t.Errorf("--metrics %q: exit %d %q", bad, code, errb.String())
		}
	}
}
