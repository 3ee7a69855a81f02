package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
)

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {8 << 20, "8.0 MiB"},
		{100 << 30, "100.0 GiB"}, {3 << 40, "3.0 TiB"}, {-2048, "-2.0 KiB"},
	} {
		if got := humanBytes(tc.n); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestProgressBarOnTerminal(t *testing.T) {
	var buf bytes.Buffer
	p := &progressView{w: &buf, tty: true, label: "drain db1", lastStep: -1}
	start := time.Now().Add(-2 * time.Second)
	p.update(admin.Job{State: admin.JobRunning, Started: start, Progress: &admin.Progress{DirtyBytes: 6 << 30, StartDirtyBytes: 8 << 30}})
	p.update(admin.Job{State: admin.JobRunning, Started: start, Progress: &admin.Progress{DirtyBytes: 2 << 30, StartDirtyBytes: 8 << 30}})
	out := buf.String()
	if strings.Count(out, "\r\x1b[K") != 2 || strings.Contains(out, "\n") {
		t.Errorf("bar not redrawn in place: %q", out)
	}
	if !strings.Contains(out, "drain db1 [#######.......................]  25.0%  6.0 GiB dirty of 8.0 GiB") ||
		!strings.Contains(out, "[######################........]  75.0%  2.0 GiB dirty of 8.0 GiB") ||
		!strings.Contains(out, ", about 6") { // 25% took 2s: about 6s for the other 75%
		t.Errorf("bar %q", out)
	}
	p.update(admin.Job{State: admin.JobSucceeded, Started: start, Finished: time.Now()})
	if !strings.HasSuffix(buf.String(), "\r\x1b[K") || p.drawn {
		t.Errorf("bar not cleared at the end: %q", buf.String())
	}
}

func TestPlainProgressLinesPerStep(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressView(&buf, "drain db1") // a buffer is not a terminal
	for _, dirty := range []int64{100, 95, 91, 89, 50, 49, 0} {
		p.update(admin.Job{State: admin.JobRunning, Started: time.Now(), Progress: &admin.Progress{DirtyBytes: dirty, StartDirtyBytes: 100}})
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// Steps 0, 1 (89 left), 5 (50 left), 10 (0 left): 95/91 and 49 repeat a step.
	if len(lines) != 4 || !strings.Contains(lines[2], " 50% written back") || !strings.Contains(lines[3], "100% written back") {
		t.Errorf("plain progress lines %q", lines)
	}
}

func TestETA(t *testing.T) {
	for _, tc := range []struct {
		p       admin.Progress
		elapsed time.Duration
		want    string
	}{
		{admin.Progress{DirtyBytes: 100, StartDirtyBytes: 100}, time.Second, ""}, // no rate yet
		{admin.Progress{DirtyBytes: 0, StartDirtyBytes: 100}, time.Second, ""},   // done
		{admin.Progress{DirtyBytes: 75, StartDirtyBytes: 100}, 10 * time.Second, ", about 30s left"},
		{admin.Progress{DirtyBytes: 50, StartDirtyBytes: 100}, 2 * time.Minute, ", about 2m0s left"},
	} {
		if got := eta(tc.p, tc.elapsed); got != tc.want {
			t.Errorf("eta(%+v, %v) = %q, want %q", tc.p, tc.elapsed, got, tc.want)
		}
	}
}

func TestReasonsSkipZeroes(t *testing.T) {
	got := reasons(map[string]uint64{"full": 0, "sequential": 3, "mode": 0}, map[string]uint64{"sequential": 4096, "full": 0})
	if got != "sequential 3 (4.0 KiB)" {
		t.Errorf("reasons = %q", got)
	}
	if got := reasons(map[string]uint64{"full": 0}, nil); got != "none" {
		t.Errorf("all-zero reasons = %q", got)
	}
	if got := countsByKind(map[string]uint64{"backing_read": 0, "writeback": 2}); got != "writeback 2" {
		t.Errorf("countsByKind = %q", got)
	}
}
