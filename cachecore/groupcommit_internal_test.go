package cachecore

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// TestFUAGroupCommit: FUA writes to one kset slot that arrive while a
// commit of the slot is in flight are committed together, as one kset,
// when it finishes, and all of them are durable (they survive a crash
// right after the last one returned).
func TestFUAGroupCommit(t *testing.T) {
	const writers = 16
	r := newItRig(t, 24, 8<<20, Config{JournalFlushInterval: time.Hour}, VolumeConfig{})
	c := r.cache
	slot := slotFor(r.vol.st.id, 0)
	s := &c.slots[slot]

	// Stand-in for a commit in flight on the slot, not yet writing its
	// kset.
	inflight := &pendingKset{journaling: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	inflight.upto = s.appended
	s.last = inflight
	base := s.appended
	s.mu.Unlock()
	commitsBefore := c.journal.Stats().Commits

	ctx := context.Background()
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			fillPattern(p, uint64(w))
			errs[w] = r.vol.WriteAt(ctx, p, int64(w)*4096, true)
		}()
	}
	// Wait until every writer's key is in the open kset.
	for deadline := time.Now().Add(10 * time.Second); ; {
		s.mu.Lock()
		n := s.appended - base
		s.mu.Unlock()
		if n == writers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d keys appended", n, writers)
		}
		time.Sleep(time.Millisecond)
	}
	s.mu.Lock()
	open := len(s.open)
	s.mu.Unlock()
	if open != writers {
		t.Fatalf("%d keys in the open kset while a commit is in flight, want %d", open, writers)
	}
	close(inflight.journaling)
	close(inflight.done)
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", w, err)
		}
	}
	if got := c.journal.Stats().Commits - commitsBefore; got != 1 {
		t.Fatalf("%d kset commits for %d batched FUA writes, want 1", got, writers)
	}

	// A crash now must keep every acknowledged FUA write.
	img := r.media.CrashImage(r.media.PersistPoints(), nil)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := persist.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Open(ctx, st, r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	v2, err := c2.AddVolume(ctx, "v", r.dev, r.vc)
	if err != nil {
		t.Fatal(err)
	}
	for w := 0; w < writers; w++ {
		want := make([]byte, 4096)
		fillPattern(want, uint64(w))
		got := make([]byte, 4096)
		if err := v2.ReadAt(ctx, got, int64(w)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d differs after reopen", w)
		}
	}
}
