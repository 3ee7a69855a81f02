package integration

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestSIGTERMWithBusySessions stops the daemon while initiators are
// logged in and busy: it must ask them to log out, drain, close the cache
// and exit with status 0 (d.stop allows 60s before calling it a hang), and the data a
// client wrote and flushed before must be there after the next start.
func TestSIGTERMWithBusySessions(t *testing.T) {
	needTools(t, "qemu-io")
	if _, err := exec.LookPath("iscsi-perf"); err != nil {
		t.Fatalf("iscsi-perf is missing (Debian package libiscsi-bin)")
	}
	dir := t.TempDir()
	d := startDaemon(t, dir, writeConfig(t, dir, configOptions{lunSize: "1GiB"}))
	qemuIO(t, d.url(0), "write -P 0x7e 0 4M", "flush")

	// two busy sessions: a reader at QD 32 and a sequential writer that
	// starts at 8 MiB and, bounded by its count (200000 x 4 KiB), ends
	// before the LUN does: qemu-img bench wraps around to offset 0 at the
	// end of the image, which would overwrite the checked region
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	perf := exec.CommandContext(ctx, "iscsi-perf", "-m", "32", "-b", "8", "-r", d.url(0))
	bench := exec.CommandContext(ctx, "qemu-img", "bench", "-f", "raw", "-w", "-t", "none", "-c", "200000",
		"-d", "16", "-s", "4k", "-o", "8388608", d.url(0))
	for _, c := range []*exec.Cmd{perf, bench} {
		c.WaitDelay = 5 * time.Second
		if err := c.Start(); err != nil {
			t.Fatalf("%s: %v", c.Path, err)
		}
	}
	// both clients logged in: they issue their commands from then on
	d.waitLog("session logged in", 2)

	start := time.Now()
	d.stop() // requires exit status 0 within 60s
	took := time.Since(start)
	t.Logf("shutdown with busy sessions took %s", took.Round(time.Millisecond))
	cancel()
	perf.Wait()
	bench.Wait()

	d.restart()
	qemuIO(t, d.url(0), "read -P 0x7e 0 4M")
	d.stop()
}
