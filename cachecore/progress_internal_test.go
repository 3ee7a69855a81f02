package cachecore

import (
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// TestProgressETAFollowsRecentRate: a drain that starts slowly (4.3 % in
// its first 10 s, a backing device busy with the host) and then writes
// back at 100 MiB/s estimates the time left from the recent rate, not from
// the average since the start (which said minutes for a drain that ended
// in seconds).
func TestProgressETAFollowsRecentRate(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1_000_000, 0))
	c := &Cache{}
	cfg := Config{Clock: clk}
	c.cfg.Store(&cfg)
	v := &Volume{c: c, st: &volState{}}
	const total = 1000 << 20
	v.st.dirtyBytes.Store(total)
	m := newProgressMeter(c, v)
	written := int64(0)
	step := func(d time.Duration, n int64) Progress {
		clk.Add(d)
		written += n
		v.stats.writebackBytes.Add(uint64(n))
		v.st.dirtyBytes.Add(-n)
		return m.report(false)
	}
	if p := step(0, 0); p.Remaining != 0 || p.Rate != 0 || p.Fraction() != 0 {
		t.Fatalf("at the start: %+v, want no estimate yet", p)
	}
	// Slow start: 43 MiB in 10 s.
	for range 100 {
		step(100*time.Millisecond, 43<<20/100)
	}
	// Then 100 MiB/s for 6 s: the window of the last 5 s sees only that.
	var p Progress
	for range 60 {
		p = step(100*time.Millisecond, 10<<20)
	}
	left := total - written
	want := time.Duration(float64(left) / float64(100<<20) * float64(time.Second))
	if p.Rate < 95<<20 || p.Rate > 105<<20 {
		t.Errorf("rate %d B/s after 6 s at 100 MiB/s, want about 100 MiB/s", p.Rate)
	}
	if p.Remaining < want*9/10 || p.Remaining > want*11/10 {
		t.Errorf("estimated %v left, want about %v (%d MiB at 100 MiB/s)", p.Remaining, want, left>>20)
	}
	if p.WrittenBytes != written || p.DirtyBytes != left || p.StartDirtyBytes != total {
		t.Errorf("report %+v, want %d written, %d left of %d", p, written, left, total)
	}
	if f := p.Fraction(); f <= 0.6 || f >= 0.7 {
		t.Errorf("fraction %v, want %v", f, float64(written)/total)
	}
	// The samples stay bounded by the window.
	if n := len(m.samples); n > int(progressWindow/progressSampleEvery)+2 {
		t.Errorf("%d samples kept for a %v window", n, progressWindow)
	}
	if d := m.report(true); !d.Done || d.Fraction() != 1 || d.DirtyBytes != 0 {
		t.Errorf("final report %+v", d)
	}
}
