package cachecore_test

import (
	"context"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
)

// TestBlackboxWritebackLag: the writeback lag is the age of the oldest
// acknowledged write not yet on the backing device: 0 when clean, the age
// of a burst right after it (not the time since writeback last moved, nor
// the process age), and after a restart never the time since Open for a
// cache that has been clean since.
func TestBlackboxWritebackLag(t *testing.T) {
	ctx := context.Background()
	clk := testkit.NewClock(time.Unix(1_700_000_000, 0))
	o := rigOptions{}
	o.Cfg.Clock = clk
	o.Cfg.Writeback.IdleAfter = time.Hour
	o.Cfg.Writeback.TargetDirtyPercent = 90
	o.Cfg.Writeback.HighWatermarkPercent = 95
	r := newRig(t, o, nil)
	defer r.close()
	lag := func(v *cachecore.Volume) time.Duration { return v.Stats().WritebackLag }

	if got := lag(r.vol); got != 0 {
		t.Fatalf("clean cache: lag %v, want 0", got)
	}
	// The process has been up for an hour, clean, when a burst arrives;
	// the backing device holds writeback back meanwhile.
	clk.Add(time.Hour)
	gate := r.backing.Gate(backend.OpWrite, backend.Range{})
	for i := range 4 {
		off := int64(i) * 8192
		mustOK(t, "write", r.vol.WriteAt(ctx, tagged(uint64(i+1), off, 8192), off, false))
	}
	mustOK(t, "flush", r.vol.Flush(ctx))
	if got := lag(r.vol); got != 0 {
		t.Fatalf("right after the burst: lag %v, want 0 (no time has passed)", got)
	}
	clk.Add(2 * time.Second)
	if got := lag(r.vol); got != 2*time.Second {
		t.Fatalf("2s after the burst: lag %v, want 2s", got)
	}
	gate.Release()
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	if got := lag(r.vol); got != 0 {
		t.Fatalf("drained: lag %v, want 0", got)
	}

	// Restart with dirty data: its append time is not in the log, so the
	// lag counts from Open (a lower bound), not from the first Open.
	gate = r.backing.Gate(backend.OpWrite, backend.Range{})
	mustOK(t, "write", r.vol.WriteAt(ctx, tagged(9, 0, 4096), 0, true))
	r.close()
	// The gate stays closed until the drain below: the reopened cache's
	// writeback must not clean the data before the lag is read.
	clk.Add(time.Hour)
	c, v, err := openImage(ctx, r.media, r.backing, o)
	mustOK(t, "reopen", err)
	defer c.Close(ctx)
	if v.Stats().DirtyBytes == 0 {
		t.Fatal("the reopened cache has no dirty data: the test did not hold writeback back")
	}
	clk.Add(3 * time.Second)
	if got := lag(v); got != 3*time.Second {
		t.Fatalf("3s after reopening with dirty data: lag %v, want 3s (since Open)", got)
	}
	gate.Release()
	mustOK(t, "drain after reopening", v.Drain(ctx, nil))
	if got := lag(v); got != 0 {
		t.Fatalf("drained after reopening: lag %v, want 0", got)
	}
	// Up for an hour after the restart, then a burst: its age, not uptime.
	clk.Add(time.Hour)
	gate = r.backing.Gate(backend.OpWrite, backend.Range{})
	defer gate.Release()
	mustOK(t, "write after reopening", v.WriteAt(ctx, tagged(10, 8192, 4096), 8192, true))
	clk.Add(time.Second)
	if got := lag(v); got != time.Second {
		t.Fatalf("1s after a burst, an hour after reopening: lag %v, want 1s", got)
	}
}
