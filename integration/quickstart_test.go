package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var metricsURLPattern = regexp.MustCompile(`metrics=(http://127\.0\.0\.1:[0-9]+/metrics)`)

// TestQuickStartOperable runs the quick start as a new user would: the
// embedded default in ./cachelun-data of a fresh directory, then, from
// that directory, `cachelun status` without flags and a scrape of the
// metrics URL the start log names (port 0 here instead of 9420: tests run
// daemons side by side). Every documented error kind is there, at zero.
func TestQuickStartOperable(t *testing.T) {
	needTools(t, "curl")
	wd := t.TempDir()
	d := startDaemon(t, filepath.Join(wd, "cachelun-data"), "")

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
