//go:build ceph

package rbd

import (
	"context"
	"testing"
	"time"
)

// TestUpdateWatch: `rbd resize` by another client fires Updated (librbd's
// update watch) without any polling, and the next PollSize has the new
// size; Close removes the watch.
func TestUpdateWatch(t *testing.T) {
	spec := newImage(t, 8<<20)
	d := openT(t, spec, testOptions(t))
	if d.Updated() == nil {
		t.Fatal("no update channel")
	}
	if !d.watching {
		t.Fatal("update watch not registered")
	}
	start := time.Now()
	if _, err := cluster.Run(context.Background(), "rbd", "resize", "--no-progress", "--size", "24M", spec.Pool+"/"+spec.Image); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Updated():
	case <-time.After(30 * time.Second):
		t.Fatal("no update notification within 30 s of rbd resize")
	}
	t.Logf("update notification %v after rbd resize started", time.Since(start).Round(time.Millisecond))
	if sz, changed, err := d.PollSize(); err != nil || !changed || sz != 24<<20 {
		t.Fatalf("PollSize after the notification: %d %v %v", sz, changed, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := updateWatchers.Load(d.watchTag); ok || d.watching {
		t.Fatal("update watch left registered after Close")
	}
}
