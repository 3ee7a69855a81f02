package integration

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var metricsURLPattern = regexp.MustCompile(`metrics=(http://127\.0\.0\.1:9420/metrics)`)

// TestQuickStartOperable runs the quick start as a new user would: `cachelun
// serve --listen 127.0.0.1:0` (the embedded default, in ./cachelun-data),
// after a first start and stop through the harness's flags, then, from
// that directory, `cachelun status` without flags and a scrape of the
// metrics URL the start log names, http://127.0.0.1:9420/metrics. Every
// documented error kind is there, at zero.
func TestQuickStartOperable(t *testing.T) {
	needTools(t, "curl")
	wd := t.TempDir()
	d := startDaemon(t, filepath.Join(wd, "cachelun-data"), "")
	d.stop()
	// and once more exactly as a new user runs it: no flag but --listen,
	// so /metrics is on the default 127.0.0.1:9420 (no other test uses it)
	if l, err := net.Listen("tcp", "127.0.0.1:9420"); err != nil {
		t.Skipf("127.0.0.1:9420 is in use on this machine: %v", err)
	} else {
		l.Close()
	}
	d = &daemon{t: t, dataDir: filepath.Join(wd, "cachelun-data"), quickStart: true}
	d.start()
	t.Cleanup(func() {
		if d.running() {
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			d.saveLog()
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binaryPath, "status")
	cmd.Dir = wd
	cmd.Env = append(os.Environ(), "CACHELUN_ADMIN_SOCKET=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "demo") || !strings.Contains(string(out), "demo-cache") {
		t.Errorf("cachelun status in the quick start's directory: %v\n%s", err, out)
	}
	cmd = exec.CommandContext(ctx, binaryPath, "status")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "CACHELUN_ADMIN_SOCKET=")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "looked at:") {
		t.Errorf("cachelun status elsewhere: %v\n%s", err, out)
	}

	m := metricsURLPattern.FindStringSubmatch(d.log.String())
	if m == nil {
		t.Fatalf("the start log names no metrics URL:\n%s", d.log)
	}
	body := mustRun(t, toolTimeout, "curl", "-sSf", m[1])
	for _, want := range []string{
		`cachelun_volume_errors_total{kind="backing_read",volume="demo"} 0`,
		`cachelun_volume_errors_total{kind="cache_media",volume="demo"} 0`,
		`cachelun_iscsi_sessions{target="iqn.2026-11.io.cachelun:demo",transport="iscsi"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, body)
		}
	}
	if page := mustRun(t, toolTimeout, "curl", "-sSf", strings.TrimSuffix(m[1], "metrics")); !strings.Contains(page, "demo") {
		t.Errorf("status page:\n%s", page)
	}
	d.stop()
}
