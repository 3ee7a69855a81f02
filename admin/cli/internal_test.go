package cli

import (
	"bytes"
	"fmt"
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
	p.update(admin.Job{State: admin.JobRunning, Started: start, Progress: &admin.Progress{WrittenBytes: 2 << 30, DirtyBytes: 6 << 30, StartDirtyBytes: 8 << 30,
		RateBytesPerSec: 1 << 30, Remaining: 6 * time.Second}})
	p.update(admin.Job{State: admin.JobRunning, Started: start, Progress: &admin.Progress{WrittenBytes: 6 << 30, DirtyBytes: 2 << 30, StartDirtyBytes: 8 << 30,
		RateBytesPerSec: 2 << 30, Remaining: time.Second}})
	out := buf.String()
	if strings.Count(out, "\r\x1b[K") != 2 || strings.Contains(out, "\n") {
		t.Errorf("bar not redrawn in place: %q", out)
	}
	if !strings.Contains(out, "drain db1 [#######.......................]  25.0%  2.0 GiB written, 6.0 GiB left, 1.0 GiB/s") ||
		!strings.Contains(out, "[######################........]  75.0%  6.0 GiB written, 2.0 GiB left, 2.0 GiB/s") ||
		!strings.Contains(out, ", about 6s left") || !strings.Contains(out, ", about 1s left") {
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
		p.update(admin.Job{State: admin.JobRunning, Started: time.Now(), Progress: &admin.Progress{WrittenBytes: 100 - dirty, DirtyBytes: dirty, StartDirtyBytes: 100, Done: dirty == 0}})
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// Steps 0, 1 (89 left), 5 (50 left), 10 (0 left): 95/91 and 49 repeat a step.
	if len(lines) != 4 || !strings.Contains(lines[2], " 50% written back") || !strings.Contains(lines[3], "100% written back") {
		t.Errorf("plain progress lines %q", lines)
	}
}

func TestETA(t *testing.T) {
	for _, tc := range []struct {
		p    admin.Progress
		want string
	}{
		{admin.Progress{DirtyBytes: 100, StartDirtyBytes: 100}, ""},               // no rate yet
		{admin.Progress{WrittenBytes: 100, StartDirtyBytes: 100, Done: true}, ""}, // done
		{admin.Progress{WrittenBytes: 25, DirtyBytes: 75, StartDirtyBytes: 100, Remaining: 30 * time.Second}, ", about 30s left"},
		// The daemon's estimate from the recent rate, not the average
		// since the start: 4.3 % after 10 s is not "about 3m40s left".
		{admin.Progress{WrittenBytes: 43, DirtyBytes: 957, StartDirtyBytes: 1000, RateBytesPerSec: 100, Remaining: 9570 * time.Millisecond}, ", about 9.6s left"},
	} {
		if got := eta(tc.p); got != tc.want {
			t.Errorf("eta(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

// TestPlainProgressSmoothDrain: through a pipe, a drain whose written bytes
// grow smoothly prints one line per 10 % step, the last one only with the
// report that says the work is done; a job that ends between two polls
// still gets its 100 % line.
func TestPlainProgressSmoothDrain(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressView(&buf, "mode db1")
	const total = 1000
	for w := int64(0); w < total; w += 5 {
		p.update(admin.Job{State: admin.JobRunning, Started: time.Now(), Progress: &admin.Progress{WrittenBytes: w, DirtyBytes: total - w, StartDirtyBytes: total,
			RateBytesPerSec: 100, Remaining: time.Duration(total-w) * 10 * time.Millisecond}})
	}
	if strings.Contains(buf.String(), "100%") {
		t.Fatalf("100 %% before the drain was done: %q", buf.String())
	}
	p.update(admin.Job{State: admin.JobSucceeded, Started: time.Now(), Finished: time.Now(), Progress: &admin.Progress{WrittenBytes: total, StartDirtyBytes: total, Done: true}})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 11 {
		t.Fatalf("%d lines, want 11 (0 %% to 100 %% in steps of 10): %q", len(lines), lines)
	}
	for i, l := range lines {
		if want := fmt.Sprintf("mode db1: %3d%% written back", i*10); !strings.HasPrefix(l, want) {
			t.Errorf("line %d = %q, want it to start with %q", i, l, want)
		}
	}
	if !strings.Contains(lines[5], "500 B written, 500 B left, 100 B/s, about 5s left") {
		t.Errorf("50 %% line %q", lines[5])
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
