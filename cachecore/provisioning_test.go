package cachecore_test

import (
	"bytes"
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
	v, check := provisioningRig(t)
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

// provisioningRig is a writeback volume on a 64 MiB backing file whose
// writeback stays idle unless asked for, and a check of its Provisioning.
func provisioningRig(t *testing.T) (*cachecore.Volume, func(off, n, wantRun int64, wantMapped bool)) {
	t.Helper()
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
	t.Cleanup(func() { c.Close(ctx) })
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
	return v, check
}

// TestDiscardOfDirtyDataIsDeallocated: a large discard over dirty data not
// yet written back leaves a hole on the backing device that Provisioning
// reports (SANITIZE BLOCK ERASE, UNMAP on a thin LUN): the dirty data is
// written back first and the range is then discarded on the backing
// device, not overwritten with zeroes through the cache.
func TestDiscardOfDirtyDataIsDeallocated(t *testing.T) {
	ctx := context.Background()
	v, check := provisioningRig(t)
	data := bytes.Repeat([]byte{0xa5}, 128<<10)
	for _, off := range []int64{0, 1 << 20, 4<<20 - 128<<10, 6 << 20} {
		if err := v.WriteAt(ctx, data, off, false); err != nil {
			t.Fatal(err)
		}
	}
	check(1<<20, 64<<10, 64<<10, true)
	if err := v.Discard(ctx, 0, 4<<20); err != nil {
		t.Fatal(err)
	}
	check(0, 4<<20, 4<<20, false)
	got := make([]byte, 4<<20)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("the discarded range does not read as zeroes")
	}
	if e := v.Explain(1 << 20); e.Dirty {
		t.Fatalf("the discarded range still holds dirty data: %+v", e)
	}
	// Dirty data outside the range was written back, not dropped.
	check(6<<20, 128<<10, 128<<10, true)
	got = got[:len(data)]
	if err := v.ReadAt(ctx, got, 6<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data outside the discarded range: %v", err)
	}
}
