package backend

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock stands still; After records the requested wait and fires at once.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now.Add(d)
	return ch
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) take() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waits
	c.waits = nil
	return w
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSlowLatencyAndIOPSPacing(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{now: time.Unix(1000, 0)}
	s := NewSlow(NewMemory(1<<20), SlowOptions{Latency: 5 * time.Millisecond, IOPS: 200, Clock: clk})
	// Four requests issued at the same instant: slots 0, 5, 10, 15 ms, each
	// plus 5 ms latency.
	p := make([]byte, 4096)
	for range 2 {
		if err := s.WriteAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.ReadAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
	}
	want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 15 * time.Millisecond, 20 * time.Millisecond}
	if got := clk.take(); !equalDurations(got, want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
	// After the backlog drains, a request pays only the latency.
	clk.advance(time.Second)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := clk.take(); !equalDurations(got, []time.Duration{5 * time.Millisecond}) {
		t.Fatalf("idle wait %v, want [5ms]", got)
	}
}

func TestSlowBandwidthCap(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{now: time.Unix(1000, 0)}
	s := NewSlow(NewMemory(4<<20), SlowOptions{BytesPerSec: 1 << 20, Clock: clk})
	// 1 MiB/s: a 512 KiB write takes 500 ms of the budget, so the second
	// waits 500 ms and a flush (no bytes) passes at once.
	p := make([]byte, 512<<10)
	if err := s.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if got := clk.take(); !equalDurations(got, []time.Duration{500 * time.Millisecond}) {
		t.Fatalf("waits %v, want [500ms]", got)
	}
}

func TestSlowRealClockAndCancel(t *testing.T) {
	s := NewSlow(NewMemory(1<<20), SlowOptions{Latency: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read on an hour-latency device: %v", err)
	}
	s2 := NewSlow(NewMemory(1<<20), SlowOptions{Latency: 2 * time.Millisecond})
	start := time.Now()
	if err := s2.WriteAt(context.Background(), make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 2*time.Millisecond {
		t.Fatal("latency not applied with the real clock")
	}
}

func TestParseSlowSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want SlowOptions
	}{
		{"", SlowOptions{}},
		{"latency=5ms,iops=200", SlowOptions{Latency: 5 * time.Millisecond, IOPS: 200}},
		{"latency=5ms,iops=200,bw=100MiB", SlowOptions{Latency: 5 * time.Millisecond, IOPS: 200, BytesPerSec: 100 << 20}},
		{" bw = 1G/s , latency=250us ", SlowOptions{Latency: 250 * time.Microsecond, BytesPerSec: 1 << 30}},
		{"bw=4096", SlowOptions{BytesPerSec: 4096}},
		{"bw=64KB", SlowOptions{BytesPerSec: 64 << 10}},
		{"bw=2t", SlowOptions{BytesPerSec: 2 << 40}},
		{"IOPS=7", SlowOptions{IOPS: 7}},
	} {
		got, err := ParseSlowSpec(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSlowSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		back, err := ParseSlowSpec(got.String())
		if err != nil || back != got {
			t.Errorf("round trip of %q via %q: %+v, %v", c.in, got.String(), back, err)
		}
	}
	for _, bad := range []string{"latency", "latency=", "latency=5", "latency=-1ms", "iops=x", "iops=-3",
		"bw=1.5G", "bw=10Q", "bw=ib", "bw=99999999999T", "speed=1", "iops=1,iops=2", ",", "bw=-1"} {
		if o, err := ParseSlowSpec(bad); err == nil {
			t.Errorf("ParseSlowSpec(%q) = %+v, want an error", bad, o)
		}
	}
}

func FuzzParseSlowSpec(f *testing.F) {
	for _, s := range []string{"latency=5ms,iops=200,bw=100MiB", "bw=1G/s", "", "iops=0", "bw=9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		o, err := ParseSlowSpec(spec)
		if err != nil {
			return
		}
		if o.Latency < 0 || o.IOPS < 0 || o.BytesPerSec < 0 {
			t.Fatalf("%q gave negative limits %+v", spec, o)
		}
		back, err := ParseSlowSpec(o.String())
		if err != nil || back != o {
			t.Fatalf("%q: round trip via %q gave %+v, %v", spec, o.String(), back, err)
		}
	})
}
