package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Clock is the time source of Slow. nil means the real clock.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// SlowOptions configures Slow. Zero fields disable their limit.
type SlowOptions struct {
	// Latency is added to every request (concurrent requests wait in
	// parallel, as on a device with a queue).
	Latency time.Duration
	// IOPS caps requests per second (reads, writes, flushes, discards).
	IOPS int
	// BytesPerSec caps the bytes read plus written per second.
	BytesPerSec int64
	// Clock is the time source; nil means the real clock.
	Clock Clock
}

// String renders the options in ParseSlowSpec syntax.
func (o SlowOptions) String() string {
	var parts []string
	if o.Latency > 0 {
		parts = append(parts, "latency="+o.Latency.String())
	}
	if o.IOPS > 0 {
		parts = append(parts, "iops="+strconv.Itoa(o.IOPS))
	}
	if o.BytesPerSec > 0 {
		parts = append(parts, "bw="+strconv.FormatInt(o.BytesPerSec, 10))
	}
	return strings.Join(parts, ",")
}

// ParseSlowSpec parses "latency=5ms,iops=200,bw=100MiB" (any subset, any
// order; sizes accept K/M/G/T with or without "iB"/"B", all binary, plus
// "/s"). The empty string gives no limits.
func ParseSlowSpec(spec string) (SlowOptions, error) {
	var o SlowOptions
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return o, nil
	}
	seen := map[string]bool{}
	for item := range strings.SplitSeq(spec, ",") {
		key, val, ok := strings.Cut(strings.TrimSpace(item), "=")
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		if !ok || val == "" {
			return SlowOptions{}, fmt.Errorf("backend: slow spec %q: item %q is not key=value", spec, item)
		}
		if seen[key] {
			return SlowOptions{}, fmt.Errorf("backend: slow spec %q: %s given twice", spec, key)
		}
		seen[key] = true
		switch key {
		case "latency":
			d, err := time.ParseDuration(val)
			if err != nil || d < 0 {
				return SlowOptions{}, fmt.Errorf("backend: slow spec %q: latency %q: want a duration like 5ms", spec, val)
			}
			o.Latency = d
		case "iops":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return SlowOptions{}, fmt.Errorf("backend: slow spec %q: iops %q: want a non-negative integer", spec, val)
			}
			o.IOPS = n
		case "bw", "bandwidth":
			n, err := parseBytes(strings.TrimSuffix(val, "/s"))
			if err != nil {
				return SlowOptions{}, fmt.Errorf("backend: slow spec %q: bw %q: %w", spec, val, err)
			}
			o.BytesPerSec = n
		default:
			return SlowOptions{}, fmt.Errorf("backend: slow spec %q: unknown key %q (want latency, iops, bw)", spec, key)
		}
	}
	return o, nil
}

func parseBytes(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToLower(s[len(num):])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a size like 100MiB")
	}
	shift := 0
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i") {
	case "":
		if unit != "" && unit != "b" {
			return 0, fmt.Errorf("unknown unit %q", unit)
		}
	case "k":
		shift = 10
	case "m":
		shift = 20
	case "g":
		shift = 30
	case "t":
		shift = 40
	default:
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	if n > (1<<62)>>shift {
		return 0, errors.New("size overflows")
	}
	return n << shift, nil
}

// Slow wraps a Device with a fixed per-request latency and IOPS/bandwidth
// caps, to emulate an HDD (latency=5ms,iops=200) or a cloud disk in tests
// and benchmarks. The caps are a pacing scheduler (a token bucket holding one
// token): each request reserves the next free slot, so a burst is spread out
// at exactly the configured rate.
type Slow struct {
	dev   Device
	opts  SlowOptions
	clock Clock

	mu       sync.Mutex
	nextIO   time.Time // earliest start of the next request under the IOPS cap
	nextByte time.Time // earliest start under the bandwidth cap
}

var _ Device = (*Slow)(nil)

// NewSlow wraps dev.
func NewSlow(dev Device, opts SlowOptions) *Slow {
	c := opts.Clock
	if c == nil {
		c = realClock{}
	}
	return &Slow{dev: dev, opts: opts, clock: c}
}

// Inner returns the wrapped device.
func (s *Slow) Inner() Device { return s.dev }

// Options returns the options the device was created with.
func (s *Slow) Options() SlowOptions { return s.opts }

// delay waits for the request's slot plus the latency.
func (s *Slow) delay(ctx context.Context, bytes int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock.Now()
	start := now
	if s.opts.IOPS > 0 || (s.opts.BytesPerSec > 0 && bytes > 0) {
		s.mu.Lock()
		if s.opts.IOPS > 0 {
			start = later(start, s.nextIO)
		}
		if s.opts.BytesPerSec > 0 && bytes > 0 {
			start = later(start, s.nextByte)
		}
		if s.opts.IOPS > 0 {
			s.nextIO = start.Add(time.Second / time.Duration(s.opts.IOPS))
		}
		if s.opts.BytesPerSec > 0 && bytes > 0 {
			s.nextByte = start.Add(time.Duration(float64(bytes) / float64(s.opts.BytesPerSec) * float64(time.Second)))
		}
		s.mu.Unlock()
	}
	wait := start.Sub(now) + s.opts.Latency
	if wait <= 0 {
		return nil
	}
	select {
	case <-s.clock.After(wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Size returns the wrapped device's size.
func (s *Slow) Size() int64 { return s.dev.Size() }

// ReadAt waits, then reads.
func (s *Slow) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := checkRange("read", off, int64(len(p)), s.dev.Size()); err != nil {
		return err
	}
	if err := s.delay(ctx, int64(len(p))); err != nil {
		return err
	}
	return s.dev.ReadAt(ctx, p, off)
}

// WriteAt waits, then writes.
func (s *Slow) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := checkRange("write", off, int64(len(p)), s.dev.Size()); err != nil {
		return err
	}
	if err := s.delay(ctx, int64(len(p))); err != nil {
		return err
	}
	return s.dev.WriteAt(ctx, p, off)
}

// Flush waits, then flushes.
func (s *Slow) Flush(ctx context.Context) error {
	if err := s.delay(ctx, 0); err != nil {
		return err
	}
	return s.dev.Flush(ctx)
}

// Discard waits, then discards. Discards count against the IOPS cap, not
// the bandwidth cap.
func (s *Slow) Discard(ctx context.Context, off, n int64) error {
	if err := checkRange("discard", off, n, s.dev.Size()); err != nil {
		return err
	}
	if err := s.delay(ctx, 0); err != nil {
		return err
	}
	return s.dev.Discard(ctx, off, n)
}

// Close closes the wrapped device.
func (s *Slow) Close() error { return s.dev.Close() }
