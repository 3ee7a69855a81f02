package cachecore

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
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

	// One write first, so that the writers below find a data head with
	// room: a head taking a segment closes the ksets opened before
	// (openForLocked), which would commit the writers' keys behind the
	// stand-in.
	warm := make([]byte, 4096)
	if err := r.vol.WriteAt(context.Background(), warm, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	// Stand-in for a commit in flight on the slot, not yet writing its
	// kset.
	inflight := &pendingKset{journaling: make(chan struct{}), appended: make(chan struct{}), inLog: true, done: make(chan struct{})}
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
	testkit.WaitFor(t, 10*time.Second, "every writer's key appended", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.appended-base == writers
	})
	s.mu.Lock()
	open := len(s.open)
	s.mu.Unlock()
	if open != writers {
		t.Fatalf("%d keys in the open kset while a commit is in flight, want %d", open, writers)
	}
	close(inflight.journaling)
	close(inflight.appended)
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

// TestSlotKsetWaitsOnlyForPredecessorWrite: a kset of a slot is written to
// the log as soon as its predecessor is there, without waiting for the
// predecessor to become durable (the journal makes ksets durable in log
// order, so both can share one persist), and it never gets ahead of a
// predecessor that did not reach the log.
func TestSlotKsetWaitsOnlyForPredecessorWrite(t *testing.T) {
	r := newItRig(t, 24, 8<<20, Config{JournalFlushInterval: time.Hour}, VolumeConfig{})
	c := r.cache
	s := &c.slots[slotFor(r.vol.st.id, 0)]
	ctx := context.Background()
	// standIn is a commit of the slot in flight that has reached its kset
	// write (journaling) but not yet the log (appended).
	standIn := func() *pendingKset {
		pk := &pendingKset{journaling: make(chan struct{}), appended: make(chan struct{}), done: make(chan struct{})}
		close(pk.journaling)
		s.mu.Lock()
		pk.upto = s.appended
		s.last = pk
		s.mu.Unlock()
		// A failing check must not leave writers blocked on it, or the
		// rig's Close would wait for them forever.
		t.Cleanup(func() {
			for _, ch := range []chan struct{}{pk.appended, pk.done} {
				select {
				case <-ch:
				default:
					close(ch)
				}
			}
		})
		return pk
	}
	write := func(blk int64) chan error {
		ch := make(chan error, 1)
		go func() {
			p := make([]byte, 4096)
			fillPattern(p, uint64(blk))
			ch <- r.vol.WriteAt(ctx, p, blk*4096, true)
		}()
		return ch
	}

	// In the log, not durable: the FUA write behind it completes.
	prev := standIn()
	prev.inLog = true
	close(prev.appended)
	select {
	case err := <-write(1):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a FUA write waited for its slot's previous kset to become durable")
	}
	close(prev.done)

	// Not in the log yet: the kset behind it waits, and when the
	// predecessor ends without reaching the log, it is not written at all.
	prev = standIn()
	head := c.journal.Head().LSN
	done := write(2)
	select {
	case err := <-done:
		t.Fatalf("a FUA write completed before its slot's previous kset was in the log (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if got := c.journal.Head().LSN; got != head {
		t.Fatalf("log head moved from %d to %d while the previous kset was not in the log", head, got)
	}
	errStandIn := errors.New("stand-in kset failed")
	prev.err = errStandIn
	close(prev.appended)
	close(prev.done)
	select {
	case err := <-done:
		if !errors.Is(err, errStandIn) {
			t.Fatalf("write after a kset that never reached the log: %v, want %v", err, errStandIn)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write behind a failed kset never returned")
	}
	if got := c.journal.Head().LSN; got != head {
		t.Fatalf("a kset was written behind a predecessor that never reached the log (head %d -> %d)", head, got)
	}
}
