package backend

import (
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/devtest"
)

// checkDevice runs the shared conformance checks (internal/devtest) on dev.
func checkDevice(t *testing.T, dev Device, align int64) {
	t.Helper()
	devtest.CheckDevice(t, dev, align, ErrClosed)
}

func TestMemoryConformance(t *testing.T) {
	checkDevice(t, NewMemory(3<<20+512), 512)
}

func TestFaultyConformance(t *testing.T) {
	checkDevice(t, NewFaulty(NewMemory(2<<20)), 512)
}

func TestSlowConformance(t *testing.T) {
	checkDevice(t, NewSlow(NewMemory(2<<20), SlowOptions{Latency: 20 * time.Microsecond, IOPS: 1 << 20}), 512)
}
