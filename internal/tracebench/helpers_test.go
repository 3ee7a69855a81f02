package tracebench

import (
	"fmt"
	"testing"
)

// eachSegmentSize runs f as a subtest on cfg with each segment size.
func eachSegmentSize(t *testing.T, cfg EngineConfig, sizes []uint32, f func(*testing.T, EngineConfig)) {
	for _, seg := range sizes {
		t.Run(fmt.Sprintf("segment=%dKiB", seg>>10), func(t *testing.T) {
			cfg := cfg
			cfg.SegmentSize = seg
			f(t, cfg)
		})
	}
}

// openMeasured measures the capacity of cfg's cache (Capacity) and opens
// an engine whose volume has times that many blocks; the test closes it.
func openMeasured(t *testing.T, cfg EngineConfig, times int) (*Engine, int) {
	t.Helper()
	capacity, err := Capacity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, err := OpenEngine(cfg, uint64(times*capacity))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, capacity
}
