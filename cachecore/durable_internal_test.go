package cachecore

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// holdingReplicator holds the wait of the first kset shipped until
// release is closed; the others return at once.
type holdingReplicator struct {
	release chan struct{}
	mu      sync.Mutex
	first   uint64
	shipped int
}

func (r *holdingReplicator) Ship(lsn uint64, _ []MirrorRecord) func(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shipped++
	if r.shipped > 1 {
		return func(context.Context) error { return nil }
	}
	r.first = lsn
	return func(ctx context.Context) error {
		select {
		case <-r.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *holdingReplicator) Trim(uint64) {}

func (r *holdingReplicator) firstShipped() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first, r.shipped > 0
}

// TestDurableHeadWaitsForReplication: a kset whose copies have not
// acknowledged it holds writeback back, even once later ksets with
// nothing to ship (a read's fill) have committed: writeback must not pass
// a kset before the copies that must hold it do.
func TestDurableHeadWaitsForReplication(t *testing.T) {
	vc := DefaultVolumeConfig()
	vc.SequentialCutoff = 0
	r := newItRig(t, 32, 8<<20, Config{}, vc)
	rep := &holdingReplicator{release: make(chan struct{})}
	if err := r.vol.SetReplicator(rep); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.vol.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	var held uint64
	testkit.WaitFor(t, 5*time.Second, "the write's kset shipped", func() bool {
		lsn, ok := rep.firstShipped()
		held = lsn
		return ok
	})
	buf := make([]byte, 4096)
	if err := r.vol.ReadAt(ctx, buf, 1<<20); err != nil { // a miss: its fill's kset ships nothing
		t.Fatal(err)
	}
	c := r.cache
	testkit.WaitFor(t, 5*time.Second, "a later kset committed", func() bool {
		c.durMu.Lock()
		defer c.durMu.Unlock()
		return c.committedTop > held+1
	})
	if d := c.durableHead.Load(); d > held {
		t.Fatalf("durableHead %d passes kset %d, whose copies have not acknowledged it", d, held)
	}
	close(rep.release)
	testkit.WaitFor(t, 5*time.Second, "durableHead past the kset once acknowledged", func() bool {
		return c.durableHead.Load() > held
	})
}
