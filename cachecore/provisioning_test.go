package cachecore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// TestVolumeProvisioning: dirty data is mapped before it is written back;
// elsewhere the backing file's holes show through, written-back data is
// mapped, and a discard makes a hole again.
func TestVolumeProvisioning(t *testing.T) {
	ctx := context.Background()
	dev, err := backend.OpenFile(filepath.Join(t.TempDir(), "backing"), backend.FileOptions{Create: true, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	m := persist.NewCrashMedia(persist.SegmentsOffset+32*(1<<20), persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, st, cachecore.Config{Writeback: cachecore.WritebackConfig{IdleAfter: 1 << 62, TargetDirtyPercent: 90, HighWatermarkPercent: 95}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.AddVolume(ctx, "v", dev, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	check := func(off, n, wantRun int64, wantMapped bool) {
		t.Helper()
		mapped, run, err := v.Provisioning(ctx, off, n)
		if err != nil || mapped != wantMapped || run != wantRun {
			t.Fatalf("Provisioning(%d, %d) = %v, %d, %v; want %v, %d", off, n, mapped, run, err, wantMapped, wantRun)
		}
	}
	if _, _, err := dev.Provisioning(ctx, 0, 4096); err != nil {
		t.Skipf("backing file system does not report holes: %v", err)
	}
	check(0, 4<<20, 4<<20, false)
	if err := v.WriteAt(ctx, make([]byte, 64<<10), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	check(0, 4<<20, 1<<20, false)     // the hole before the dirty data
	check(1<<20, 3<<20, 64<<10, true) // dirty: mapped though the file has a hole there
	if err := v.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	check(1<<20, 3<<20, 64<<10, true) // written back: the file holds it
	if err := v.Discard(ctx, 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	check(0, 4<<20, 4<<20, false)
}
