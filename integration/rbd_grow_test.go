//go:build ceph

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRBDGrowsLive: `rbd resize` grows the image under the running
// daemon; an initiator with a session open gets CAPACITY DATA HAS CHANGED,
// then the new READ CAPACITY, and writes past the old end, which reach the
// image; a new session sees the new size; an image shrunk below the volume
// (rbd resize --allow-shrink) is reported in `volume show` and changes
// nothing.
func TestRBDGrowsLive(t *testing.T) {
	needTools(t, "qemu-io", "iscsi-readcapacity16")
	c := needCeph(t)
	image := rbdImage(t, c, 64)
	dir := t.TempDir()
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, "", ""))
	url := d.url(0)
	s := startQemuSession(t, url)
	s.do("write -P 0x11 0 64k", "wrote 65536/65536 bytes at offset 0")
	s.do("length", "64 MiB")

	ctx := context.Background()
	start := time.Now()
	if _, err := c.Run(ctx, "rbd", "resize", "--no-progress", "--size", "96M", image); err != nil {
		t.Fatal(err)
	}
	resized := time.Now()
	d.waitLog("backing device grew", 1)
	// librbd's update watch wakes the resize watcher: well inside its
	// 2 s poll (logged, not asserted: a loaded machine may be slower)
	t.Logf("volume grown %v after rbd resize returned (%v after it started)",
		time.Since(resized).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	growthSeen(t, s, url, 64, 96)

	// The data past the old end reaches the image.
	drain(t, dir)
	img := rbdExport(t, c, image)
	if len(img) != 96<<20 {
		t.Fatalf("exported image has %d bytes", len(img))
	}
	for i, b := range img[95<<20:] {
		if b != 0x22 {
			t.Fatalf("image byte %d is 0x%02x, want 0x22", 95<<20+i, b)
		}
	}

	if _, err := c.Run(ctx, "rbd", "resize", "--no-progress", "--allow-shrink", "--size", "80M", image); err != nil {
		t.Fatal(err)
	}
	d.waitLog("backing device shrank below its volume", 1)
	r := adminRun(t, dir, "volume", "show", "vol")
	if r.exitCode != 0 || !strings.Contains(r.out, "SHRUNK") {
		t.Fatalf("volume show does not report the shrunk image:\n%s", r.out)
	}
	s.do("length", "96 MiB")
	if rc := mustRun(t, toolTimeout, "iscsi-readcapacity16", url); !strings.Contains(rc, fmt.Sprintf("RETURNED LOGICAL BLOCK ADDRESS:%d", 96<<20/512-1)) {
		t.Fatalf("the LUN must keep its size when the image shrinks:\n%s", rc)
	}
	if _, err := fmt.Fprintln(s.stdin, "quit"); err != nil {
		t.Fatal(err)
	}
	<-s.done
	t.Logf("qemu-io session:\n%s", s.out)
	d.stop()
}
