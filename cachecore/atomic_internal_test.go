package cachecore

import (
	"context"
	"testing"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// TestAppendGroupNeverStraddlesKsets: a group that does not fit in the open
// kset closes it first and lands whole in the next one.
func TestAppendGroupNeverStraddlesKsets(t *testing.T) {
	r := newItRig(t, 32, 8<<20, Config{JournalFlushInterval: time.Hour}, VolumeConfig{Mode: ModeWriteback, BlockSize: 512})
	c := r.cache
	ctx := context.Background()
	slot := slotFor(r.vol.st.id, 0)
	s := &c.slots[slot]
	open := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.open)
	}
	for b := int64(0); open() < persist.MaxKSetKeys-1; b++ {
		if b > 4*persist.MaxKSetKeys {
			t.Fatalf("open kset holds %d keys after %d writes", open(), b)
		}
		if err := r.vol.WriteAt(ctx, make([]byte, 512), b*512, false); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	k := s.open[0]
	s.mu.Unlock()
	// Two copies of a key, not counted live: the test removes them again.
	sp := c.appendGroup(slot, []persist.Key{k, k}, false)
	s.mu.Lock()
	got := len(s.open)
	s.open = s.open[:0]
	s.mu.Unlock()
	if sp[0] == nil || len(sp[0].keys) != persist.MaxKSetKeys-1 || got != 2 {
		t.Fatalf("closed kset %v, open kset holds %d keys; want the %d keys closed and the group of 2 open", sp[0] != nil, got, persist.MaxKSetKeys-1)
	}
	c.commitSpill(sp)
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWriteAtomicLimits: alignment windows are refused across, and the
// data of an accepted atomic write reads back.
func TestWriteAtomicLimits(t *testing.T) {
	r := newItRig(t, 32, 8<<20, Config{}, VolumeConfig{Mode: ModeWriteback, BlockSize: 512})
	ctx := context.Background()
	lim := r.vol.AtomicLimits()
	if lim.MaxBytes != atomicWriteMax || lim.Alignment != atomicWriteMax {
		t.Fatalf("limits %+v", lim)
	}
	p := make([]byte, atomicWriteMax)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if err := r.vol.WriteAtomic(ctx, p, 3*atomicWriteMax, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := r.vol.ReadAt(ctx, got, 3*atomicWriteMax); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != p[i] {
			t.Fatalf("byte %d reads %#x, want %#x", i, got[i], p[i])
		}
	}
	if err := r.vol.WriteAtomic(ctx, make([]byte, 1024), atomicWriteMax-512, false); err == nil {
		t.Fatal("an atomic write across a window boundary was accepted")
	}
	// CheckInvariants wants a quiescent cache.
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
